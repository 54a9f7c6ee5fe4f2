"""The ``faceinfer`` command line: extract's flags, help and exit codes, the plugin listing and
the faceswap import."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceinfer._registry import get_plugin, list_plugins
from faceinfer.cli import main
from faceinfer.formats.alignments import FrameRecord, load_alignments
from faceinfer.formats.faceswap import write_fsa
from faceinfer.plugins.base import PLUGIN_TYPES
from tests.test_extract import squares, write_images

TEST_FLAGS = ["-D", "test-blobs", "-A", "test-landmarks", "-z", "256"]

EXTRACT_FLAGS = ["-i", "-o", "-b", "-p", "--format", "-s", "-e", "-N", "-v", "-D", "-A", "-M",
                 "-I", "-C", "--device", "-c", "-k", "--profile-warmup",
                 "--profile-time", "--profile-save", "-m", "-x", "-r", "-O", "-R", "-a",
                 "--no-re-align", "-g", "-f", "-n", "-l", "-z", "--centering", "-u", "-B", "-L"]


def test_extract_help_names_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["extract", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in EXTRACT_FLAGS:
        assert re.search(rf"(^|[\s\[]){flag}\b", text, re.MULTILINE), flag
    for name in list_plugins("detect"):
        assert name in text  # the detector option lists the choices
    assert "-s to go on where it stopped" in text


def test_plugins_lists_every_plugin_with_type_speed_output_and_description(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TYPE", "NAME", "SPEED", "OUTPUT", "DESCRIPTION"]
    rows = {tuple(line.split()[:2]): line for line in lines[1:]}
    expected = {(kind, name) for kind in PLUGIN_TYPES for name in list_plugins(kind)}
    assert set(rows) == expected
    outputs = {"detect": "boxes", "align": "landmarks LM_2D_68", "mask": "mask (",
               "identity": "embeddings ("}
    for (kind, name), line in rows.items():
        cls = get_plugin(kind, name)  # type: ignore[arg-type]
        assert f" {cls.speed} " in line
        assert line.endswith(cls.description)
        assert outputs[kind] in line
    assert main(["plugins", "--all"]) == 0
    assert "test-blobs" in capsys.readouterr().out


def test_extract_runs_and_prints_the_summary(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60), "b.png": squares(40, 90)})
    code = main(["extract", "-i", str(source), "-o", str(tmp_path / "out"), *TEST_FLAGS,
                 "-M", "components", "extended", "-N", "1", "--centering", "face",
                 "--no-re-align", "-L", "WARNING"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("Done: 2 of 2 frames processed")
    assert "Faces found: 3 (1 frames with several faces)" in out
    assert f"Faces saved: 3 in {tmp_path / 'out'}" in out
    assert f"Alignments: {source / 'alignments.fia'}" in out
    records = load_alignments(source / "alignments.fia")
    settings = records.meta["settings"]
    assert settings["maskers"] == ["components", "extended"]
    assert settings["re_align"] is False
    assert settings["centering"] == "face"
    assert set(records["b.png"].masks) == {"components", "extended"}


def test_extract_k_profiles_the_torch_detector_then_extracts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60), "b.png": squares(40, 90)})
    config = tmp_path / "config.toml"
    config.write_text("[detect.mtcnn]\ninput_size = 64\nmin_size = 20  # small and fast\n")
    with caplog.at_level(logging.INFO):
        code = main(["extract", "-i", str(source), "-o", str(tmp_path / "out"), "-D", "mtcnn",
                     "-A", "test-landmarks", "-z", "256", "-C", str(config), "-k",
                     "--profile-warmup", "0", "--profile-time", "0.01", "--profile-save"])
    assert code == 0
    found = re.search(r"Setting optimal batch sizes: detect\.mtcnn: (\d+)", caplog.text)
    assert found is not None
    assert "Not profiling align plugin 'test-landmarks'" in caplog.text
    assert config.read_text() == ("[detect.mtcnn]\nbatch_size = " + found.group(1) +
                                  "\ninput_size = 64\nmin_size = 20  # small and fast\n")
    assert capsys.readouterr().out.startswith("Done: 2 of 2 frames processed")


@pytest.mark.parametrize(("args", "message"), [
    (["--profile-save"], "--profile-save saves the profiler's batch sizes: add -k/--benchmark"),
    (["-k", "--profile-time", "0"], "--profile-time: expected seconds above 0"),
    (["-z", "300"], "-z/--size: expected a multiple of 64"),
    (["-m", "50", "-x", "10"], "-m/--min-size 50 is above -x/--max-size 10"),
    (["-p", "x.fsa"], "add --format faceswap"),
    (["-D", "nope"], "-D/--detector: expected a detect plugin"),
    (["-l", "2"], "-l/--ref-threshold: expected 0.01 to 0.99"),
    (["-C", "missing.toml"], "config file not found"),
])
def test_invalid_options_fail_before_any_work(tmp_path: Path, args: list[str], message: str,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = write_images(tmp_path / "frames", {"a.png": squares(60)})
    assert main(["extract", "-i", str(source), "-o", "out", *TEST_FLAGS, *args]) == 1
    assert message in caplog.text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "frames"]


def test_options_that_need_saved_faces_are_refused_without_an_output_folder(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60)})
    assert main(["extract", "-i", str(source), *TEST_FLAGS, "-u", "50"]) == 1
    assert "-u/--min-scale applies to saved faces, but no output folder (-o)" in caplog.text
    assert not (source / "alignments.fia").exists()


def test_bad_input_is_named_and_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extract", "-i", str(tmp_path / "missing.mp4"), *TEST_FLAGS]) == 1
    assert f"input not found: {tmp_path / 'missing.mp4'}" in caplog.text
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    assert main(["extract", "-i", str(folder), *TEST_FLAGS]) == 1  # nothing could be read
    out = capsys.readouterr().out
    assert "Failed to read: 1" in out
    assert str(folder / "a.jpg") in out


def test_a_partly_bad_folder_exits_0(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {"a.png": squares(60)})
    (folder / "b.jpg").write_bytes(b"not an image")
    assert main(["extract", "-i", str(folder), *TEST_FLAGS]) == 0


def test_alignments_import_converts_a_faceswap_file(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    points = np.random.default_rng(0).uniform(0, 200, (1, 68, 2)).astype(np.float32)
    thumb = cv2.imencode(".jpg", squares(60)[:96, :96])[1].tobytes()
    records = [FrameRecord("a.png", "frames", (256, 256), np.array([[10, 20, 110, 140]]),
                           np.zeros((1, 0, 2)), points, np.full(1, np.nan), thumbnails=[thumb]),
               FrameRecord("b.png", "frames", (256, 256), np.zeros((0, 4)), np.zeros((0, 0, 2)),
                           np.zeros((0, 68, 2)), np.zeros(0))]
    fsa = tmp_path / "frames" / "alignments.fsa"
    fsa.parent.mkdir()
    write_fsa(fsa, records)
    assert main(["alignments", "import", str(fsa)]) == 0
    imported = load_alignments(fsa.with_suffix(".fia"))
    assert list(imported) == ["a.png", "b.png"]
    np.testing.assert_array_equal(imported["a.png"].bboxes, records[0].bboxes)
    np.testing.assert_allclose(imported["a.png"].landmarks, points)  # type: ignore[arg-type]
    assert imported["a.png"].thumbnails == [thumb]
    assert main(["alignments", "import", str(fsa)]) == 1  # never overwrites
    assert "already exists" in caplog.text
    assert main(["alignments", "import", str(fsa), "-o", str(tmp_path / "other.fia")]) == 0
    assert list(load_alignments(tmp_path / "other.fia")) == ["a.png", "b.png"]


def test_the_log_level_is_accepted_after_the_command(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60)})
    assert main(["-L", "ERROR", "extract", "-i", str(source), *TEST_FLAGS]) == 0
    assert main(["extract", "-i", str(source), *TEST_FLAGS, "-s", "-L", "DEBUG"]) == 0
