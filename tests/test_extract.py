"""The extract application: real models end to end on the sample video and photos, every option
on synthetic frames with the test plugins, bad input, errors, crash safety and Ctrl-C."""
from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from faceinfer._registry import get_plugin
from faceinfer.app import ExtractSettings, ExtractSummary, extract
from faceinfer.app.face_images import source_sides
from faceinfer.errors import ConfigError, FaceInferError
from faceinfer.formats import faceswap
from faceinfer.formats.alignments import (
    Alignments,
    AlignmentsWriter,
    FrameRecord,
    load_alignments,
)
from faceinfer.formats.png import read_png_header
from faceinfer.plugins._testing import InjectedFailureError
from faceinfer.sources import InputError
from tests.conftest import SHARED

SAMPLES = SHARED / "data" / "faceswap_samples"
VIDEO = SAMPLES / "test.mp4"
VIDEO_FRAMES = 91
PHOTOS = ("test_img1.jpg", "test_img2.jpg", "test_img3.jpg", "test_img4.jpg")
needs_samples = pytest.mark.skipif(not VIDEO.is_file(),
                                   reason=f"{SAMPLES} not found (../shared absent)")
REPO = Path(__file__).resolve().parents[1]

TEST_PLUGINS: dict[str, Any] = {"detector": "test-blobs", "aligner": "test-landmarks",
                                "size": 256, "show_progress": False}
"""Settings that run the whole application in a fraction of a second: bright squares are the
faces."""


# ------------------------------------------------------------------------------------ helpers
def squares(*sides: int, size: int = 256) -> np.ndarray:
    """A black BGR frame with white squares of the given sides along its diagonal."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    offset = 8
    for side in sides:
        image[offset:offset + side, offset:offset + side] = 255
        offset += side + 8
    return image


def write_images(folder: Path, images: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        assert cv2.imwrite(str(folder / name), image)
    return folder


def faces_of(records: Alignments) -> dict[str, int]:
    return {name: len(record) for name, record in records.items()}


def assert_same_records(left: FrameRecord, right: FrameRecord) -> None:
    np.testing.assert_array_equal(left.bboxes, right.bboxes)
    np.testing.assert_array_equal(left.keypoints, right.keypoints)
    assert left.landmarks is not None
    assert right.landmarks is not None
    np.testing.assert_array_equal(left.landmarks, right.landmarks)
    np.testing.assert_array_equal(left.align_scores, right.align_scores)
    assert left.thumbnails == right.thumbnails


def check_face_png(path: Path, record: FrameRecord, index: int, size: int) -> None:
    """The face PNG holds its face at ``size`` and its metadata matches the record."""
    image = cv2.imread(str(path))
    assert image is not None
    assert image.shape == (size, size, 3)
    header = read_png_header(path)
    assert header is not None
    face, source = header["alignments"], header["source"]
    left, top, right, bottom = record.bboxes[index].tolist()
    assert (face["x"], face["y"], face["w"], face["h"]) == (left, top, right - left, bottom - top)
    assert record.landmarks is not None
    np.testing.assert_allclose(face["landmarks_xy"], record.landmarks[index], atol=1e-4)
    assert source["source_filename"] == record.name
    assert source["face_index"] == index
    assert source["original_filename"] == path.name
    assert source["source_frame_dims"] == record.frame_size


# --------------------------------------------------------------------------- real models: video
@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExtractSummary]:
    """An uninterrupted extraction of the sample video with the default plugins."""
    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} not found (../shared absent)")
    folder = tmp_path_factory.mktemp("video_run")
    video = Path(shutil.copy(VIDEO, folder / "test.mp4"))
    summary = extract(video, folder / "faces", show_progress=False)
    return folder, summary


@needs_samples
def test_the_sample_video_end_to_end(video_run: tuple[Path, ExtractSummary]) -> None:
    folder, summary = video_run
    # The NOTICE: one painted face in each of the 91 frames.
    assert (summary.frames_processed, summary.faces, summary.faces_saved) == (91, 91, 91)
    assert summary.frames_in_input == summary.frames_to_process == VIDEO_FRAMES
    assert not summary.failed
    assert not summary.faces_not_saved
    assert summary.exit_code == 0
    fia = folder / "test_alignments.fia"  # the reference's place: beside the video
    assert summary.alignments_files == [fia]
    records = load_alignments(fia)
    assert list(records) == [f"test_{n:06d}" for n in range(1, 92)]
    assert records.meta["settings"]["detector"] == "mtcnn"
    assert records.meta["settings"]["re_align"] is True
    for name, record in records.items():
        assert record.source == "test"
        assert record.frame_size == (240, 426)
        assert len(record) == 1
        assert record.landmarks is not None
        assert record.landmarks.shape == (1, 68, 2)
        assert record.keypoints.shape == (1, 5, 2)
        assert 0.0 <= record.align_scores[0] < 0.1  # re-align's score: a good face
        thumb = cv2.imdecode(np.frombuffer(record.thumbnails[0], np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape == (96, 96, 3)
        check_face_png(folder / "faces" / f"{name}_0.png", record, 0, 512)
    assert sorted(p.name for p in (folder / "faces").iterdir()) == [
        f"test_{n:06d}_0.png" for n in range(1, 92)]


@needs_samples
def test_the_sample_photos_end_to_end_with_masks_and_identity(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, photos / name)
    summary = extract(photos, tmp_path / "faces", maskers=("components",),
                      identities=("dlib-resnet",), size=256, show_progress=False)
    records = load_alignments(photos / "alignments.fia")
    found = faces_of(records)
    # The NOTICE counts 3 whole faces + 1 cut off (img1), 3 (img2), 1 + 1 partial (img3), 8
    # (img4). The cut-off and partial faces may or may not be found.
    assert found["test_img1.jpg"] in (3, 4)
    assert found["test_img2.jpg"] == 3
    assert found["test_img3.jpg"] in (1, 2)
    assert found["test_img4.jpg"] == 8
    assert summary.faces == summary.faces_saved == sum(found.values())
    assert summary.frames_with_several_faces == sum(count > 1 for count in found.values())
    for name, record in records.items():
        assert record.frame_size == cv2.imread(str(photos / name)).shape[:2]
        assert set(record.masks) == {"components"}
        assert set(record.identities) == {"dlib-resnet"}
        assert record.identities["dlib-resnet"].shape == (len(record), 128)
        for index in range(len(record)):
            path = tmp_path / "faces" / f"{Path(name).stem}_{index}.png"
            check_face_png(path, record, index, 256)
            header = read_png_header(path)
            assert header is not None
            assert header["alignments"]["mask"]["components"]["mask"] == \
                record.masks["components"].data[index]
            np.testing.assert_allclose(header["alignments"]["identity"]["dlib-resnet"],
                                       record.identities["dlib-resnet"][index], atol=1e-6)


@needs_samples
def test_an_identity_filter_without_identity_plugins_adds_dlib_resnet(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLES / "test_img2.jpg", photos)
    summary = extract(photos, None, nfilter_files=(SAMPLES / "test_img3.jpg",),
                      show_progress=False)
    record = load_alignments(photos / "alignments.fia")["test_img2.jpg"]
    assert set(record.identities) == {"dlib-resnet"}  # added to compare faces
    assert len(record) == 3  # other people than test_img3's: none dropped
    assert summary.faces_filtered == {}


# --------------------------------------------------------------------- the application's logic
def test_faces_alignments_and_metadata_on_synthetic_frames(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(40, 120), "b.png": squares(),
                                                "c.png": squares(100)})
    summary = extract(source, tmp_path / "out", **TEST_PLUGINS)
    assert (summary.frames_processed, summary.faces, summary.faces_saved) == (3, 3, 3)
    assert summary.frames_with_several_faces == 1
    assert summary.faces_dirs == [tmp_path / "out"]
    records = load_alignments(source / "alignments.fia")
    assert faces_of(records) == {"a.png": 2, "b.png": 0, "c.png": 1}
    assert {record.source for record in records.values()} == {"frames"}
    assert records.meta["settings"]["aligner"] == "test-landmarks"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_0.png", "a_1.png",
                                                                    "c_0.png"]
    for name, index in (("a.png", 0), ("a.png", 1), ("c.png", 0)):
        record = records[name]
        check_face_png(tmp_path / "out" / f"{name[0]}_{index}.png", record, index, 256)
        thumb = cv2.imdecode(np.frombuffer(record.thumbnails[index], np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape == (96, 96, 3)


def test_every_nth_frame_is_processed_and_only_those_are_recorded(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {f"f{n}.png": squares(60) for n in range(1, 8)})
    summary = extract(source, tmp_path / "out", extract_every_n=3, **TEST_PLUGINS)
    assert (summary.frames_in_input, summary.frames_to_process) == (7, 3)
    assert list(load_alignments(source / "alignments.fia")) == ["f1.png", "f4.png", "f7.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f1_0.png", "f4_0.png",
                                                                    "f7_0.png"]


def test_min_scale_records_small_faces_without_saving_them(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(30, 180)})
    summary = extract(source, tmp_path / "out", min_scale=50, **TEST_PLUGINS)
    record = load_alignments(source / "alignments.fia")["a.png"]
    assert len(record) == 2  # both recorded
    assert record.landmarks is not None
    from faceinfer.aligned_batch import ExtractBatchAligned

    sides = source_sides(ExtractBatchAligned(record.landmarks))
    keep = sides >= 128  # 50 % of the 256 px output
    assert keep.tolist() == [False, True]  # the small square only is too small
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_1.png"]
    assert summary.faces_saved == 1
    assert summary.faces_not_saved == {"smaller than -u/--min-scale 50% (128 px in the frame)": 1}
    assert any("-u/--min-scale" in line for line in summary.lines())


def test_skip_existing_resumes_by_whole_detector_batches(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60), "b.png": squares(50)})
    config = tmp_path / "config.toml"
    config.write_text("[detect.test-blobs]\nbatch_size = 2\n")
    options = {**TEST_PLUGINS, "config_file": config}
    extract(source, tmp_path / "out", **options)
    first = dict(load_alignments(source / "alignments.fia"))
    write_images(source, {"c.png": squares(70, 40), "d.png": squares(30)})
    summary = extract(source, tmp_path / "out", skip_existing=True, **options)
    assert (summary.frames_processed, summary.skipped_existing) == (2, 2)
    assert summary.frames_to_process == 2
    after = load_alignments(source / "alignments.fia")
    assert faces_of(after) == {"a.png": 1, "b.png": 1, "c.png": 2, "d.png": 1}
    for name, record in first.items():
        assert_same_records(after[name], record)
    assert not list(source.glob("*_bk_*"))  # appended to, not replaced
    # A run that stopped after c.png: c's batch (c, d) is redone as a whole.
    full = dict(after)
    cut = tmp_path / "cut.fia"
    with AlignmentsWriter(cut) as writer:
        for name in ("a.png", "b.png", "c.png"):
            writer.write(full[name])
    summary = extract(source, tmp_path / "out", skip_existing=True, alignments_path=cut,
                      **options)
    assert (summary.frames_processed, summary.skipped_existing) == (2, 2)
    resumed = load_alignments(cut)
    for name, record in full.items():
        assert_same_records(resumed[name], record)
    again = extract(source, tmp_path / "out", skip_existing=True, **options)
    assert (again.frames_processed, again.frames_to_process, again.exit_code) == (0, 0, 0)


def test_a_new_run_keeps_the_old_alignments_file_as_a_backup(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60), "b.png": squares(50)})
    extract(source, None, **TEST_PLUGINS)
    (source / "b.png").unlink()
    with caplog.at_level(logging.WARNING):
        extract(source, None, **TEST_PLUGINS)
    backups = list(source.glob("alignments_bk_*.fia"))
    assert len(backups) == 1
    assert list(load_alignments(backups[0])) == ["a.png", "b.png"]
    assert list(load_alignments(source / "alignments.fia")) == ["a.png"]
    assert "use -s to resume" in caplog.text


def test_skip_existing_faces_redoes_frames_without_faces(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60), "b.png": squares()})
    extract(source, tmp_path / "out", **TEST_PLUGINS)
    write_images(source, {"b.png": squares(90)})  # a face now where there was none
    summary = extract(source, tmp_path / "out", skip_existing_faces=True, **TEST_PLUGINS)
    assert (summary.frames_processed, summary.skipped_existing) == (1, 1)
    assert faces_of(load_alignments(source / "alignments.fia")) == {"a.png": 1, "b.png": 1}
    assert (tmp_path / "out" / "b_0.png").is_file()


def test_without_an_output_folder_only_the_alignments_file_is_written(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60, 80)})
    summary = extract(source, None, **TEST_PLUGINS)
    assert summary.faces == 2
    assert summary.faces_saved == 0
    assert summary.faces_dirs == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "alignments.fia", "frames"]
    record = load_alignments(source / "alignments.fia")["a.png"]
    assert len(record) == 2
    assert all(record.thumbnails)


def test_the_alignments_path_can_be_chosen(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60)})
    target = tmp_path / "elsewhere" / "mine.fia"
    summary = extract(source, None, alignments_path=target, **TEST_PLUGINS)
    assert summary.alignments_files == [target]
    assert list(load_alignments(target)) == ["a.png"]
    assert not (source / "alignments.fia").exists()


@needs_samples
def test_batch_mode_gives_each_source_its_files(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    parent = tmp_path / "inputs"
    write_images(parent / "one", {"a.png": squares(60)})
    write_images(parent / "two", {"b.png": squares(50, 70)})
    shutil.copy(VIDEO, parent / "test.mp4")
    with caplog.at_level(logging.WARNING):
        summary = extract(parent, tmp_path / "out", batch_mode=True, extract_every_n=45,
                          alignments_path=tmp_path / "ignored.fia", **TEST_PLUGINS)
    assert "ignored in batch mode" in caplog.text
    assert not (tmp_path / "ignored.fia").exists()
    assert summary.sources == 3
    assert summary.alignments_files == [parent / "one" / "alignments.fia",
                                        parent / "test_alignments.fia",
                                        parent / "two" / "alignments.fia"]
    assert list(load_alignments(parent / "test_alignments.fia")) == [
        "test_000001", "test_000046", "test_000091"]
    assert faces_of(load_alignments(parent / "two" / "alignments.fia")) == {"b.png": 2}
    assert (tmp_path / "out" / "one" / "a_0.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "two").iterdir()) == ["b_0.png", "b_1.png"]
    video_faces = load_alignments(parent / "test_alignments.fia")
    for name, record in video_faces.items():
        for index in range(len(record)):
            assert (tmp_path / "out" / "test" / f"{name}_{index}.png").is_file()


@needs_samples
def test_faceswap_format_writes_the_fsa_and_both_png_headers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = Path(shutil.copy(VIDEO, tmp_path / "clip.mp4"))
    writes: list[Path] = []
    real_write = faceswap.write_fsa

    def counting_write(path: Path, *args: Any, **kwargs: Any) -> None:
        writes.append(Path(path))
        real_write(path, *args, **kwargs)

    monkeypatch.setattr("faceinfer.app.output.write_fsa", counting_write)
    squares_video = {**TEST_PLUGINS, "detector": "test-blobs"}
    extract(video, tmp_path / "out", output_format="faceswap", extract_every_n=45,
            save_interval=1, **squares_video)
    fsa = tmp_path / "clip_alignments.fsa"
    assert writes == [fsa] * 4  # after each of the 3 frames (-v 1), then at the end
    ours = load_alignments(tmp_path / "clip_alignments.fia")
    theirs = {record.name: record for record in faceswap.read_fsa(fsa)}
    assert list(theirs) == list(ours) == ["clip_000001", "clip_000046", "clip_000091"]
    for name, record in ours.items():
        assert theirs[name].landmarks is not None
        assert record.landmarks is not None
        np.testing.assert_array_equal(theirs[name].bboxes, record.bboxes)
        np.testing.assert_allclose(theirs[name].landmarks, record.landmarks)
        for index in range(len(record)):
            path = tmp_path / "out" / f"{name}_{index}.png"
            header = faceswap.read_faceswap_png_header(path)
            assert header is not None
            assert header["source"]["source_filename"] == f"{name}.mp4"  # faceswap 2.4's key
            assert header["source"]["alignments_version"] == 2.4
            check_face_png(path, record, index, 256)  # faceinfer's own header is there too
    if not any(len(record) for record in ours.values()):
        pytest.fail("expected the test detector to find bright regions in the video")


def test_a_folder_of_good_and_bad_images(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Every kind of bad file is named in a warning and counted; every good image, whatever its
    depth and channels, is extracted."""
    folder = tmp_path / "frames"
    good = {"a.png": squares(60), "gray.png": cv2.cvtColor(squares(70), cv2.COLOR_BGR2GRAY),
            "rgba.png": cv2.cvtColor(squares(50), cv2.COLOR_BGR2BGRA),
            "deep.png": squares(80).astype(np.uint16) * 257, "photo.jpg": squares(90)}
    write_images(folder, good)
    encoded = cv2.imencode(".jpg", squares(60))[1].tobytes()
    bad = {"empty.jpg": b"", "cut.jpg": encoded[:len(encoded) // 2],
           "cut.png": (folder / "a.png").read_bytes()[:200], "text.png": b"not an image at all",
           "fake.webp": b"RIFF\x00\x00\x00\x00WEBPVP8 "}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    (folder / "dir.jpg").mkdir()
    with caplog.at_level(logging.WARNING):
        summary = extract(folder, tmp_path / "out", **TEST_PLUGINS)
    records = load_alignments(folder / "alignments.fia")
    assert faces_of(records) == dict.fromkeys(good, 1)
    assert summary.frames_processed == len(good)
    assert summary.exit_code == 0
    assert len(summary.failed) == len(bad) + 1
    for name in [*bad, "dir.jpg"]:
        assert sum(str(folder / name) in line for line in summary.failed) == 1, name
        assert str(folder / name) in caplog.text
    assert any(f"Failed to read: {len(bad) + 1}" in line for line in summary.lines())


def test_a_video_that_breaks_midway_keeps_its_frames_and_the_batch_goes_on(
        tmp_path: Path) -> None:
    parent = tmp_path / "inputs"
    parent.mkdir()
    whole = tmp_path / "whole.avi"
    with av.open(str(whole), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 256
        for _ in range(30):
            frame = av.VideoFrame.from_ndarray(squares(60), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = whole.read_bytes()
    (parent / "broken.avi").write_bytes(data[:len(data) * 2 // 3])
    (parent / "unopenable.mp4").write_bytes(b"no video in here")
    write_images(parent / "zz_photos", {"a.png": squares(60)})
    summary = extract(parent, tmp_path / "out", batch_mode=True, **TEST_PLUGINS)
    assert len(summary.failed) == 2
    assert summary.failed[0].startswith(f"{parent / 'broken.avi'}: the video breaks at frame ")
    assert summary.failed[1].startswith(f"{parent / 'unopenable.mp4'}: ")
    done = load_alignments(parent / "broken_alignments.fia")
    assert 5 < len(done) < 30
    assert list(done) == [f"broken_{n:06d}" for n in range(1, len(done) + 1)]
    assert all(len(record) == 1 for record in done.values())
    assert list(load_alignments(parent / "zz_photos" / "alignments.fia")) == ["a.png"]
    assert summary.exit_code == 0


def test_the_first_identity_plugin_filters(tmp_path: Path) -> None:
    """test-identity describes a face by its layout; test-noop gives every face the same
    embedding, so it would keep every face if it were the one filtering."""
    other = squares(60)
    other[8:38, 8:38] = 0  # an L-shaped blob: another "person"
    source = write_images(tmp_path / "frames", {"a.png": squares(60), "b.png": other,
                                                "c.png": squares(70)})
    reference = write_images(tmp_path / "refs", {"me.png": squares(60)}) / "me.png"
    summary = extract(source, tmp_path / "out", identities=("test-identity", "test-noop"),
                      filter_files=(reference,), threshold=0.99, **TEST_PLUGINS)
    assert faces_of(load_alignments(source / "alignments.fia")) == {"a.png": 1, "b.png": 0,
                                                                    "c.png": 1}
    assert summary.faces_filtered == {"filter": 1}
    assert "  Faces dropped by the identity filter: 1" in summary.lines()


def test_nothing_readable_exits_non_zero(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_bytes(b"junk")
    summary = extract(folder, tmp_path / "out", **TEST_PLUGINS)
    assert summary.frames_processed == 0
    assert len(summary.failed) == 2
    assert summary.exit_code == 1


def test_a_plugin_error_stops_the_run_and_keeps_the_frames_done(tmp_path: Path) -> None:
    source = write_images(tmp_path / "frames",
                          {f"f{n:02d}.png": squares(40 + n) for n in range(12)})
    config = tmp_path / "config.toml"
    config.write_text('[align.test-landmarks]\nbatch_size = 1\nfail_at = "process"\n'
                      "fail_after = 6\n")
    with pytest.raises(InjectedFailureError):
        extract(source, tmp_path / "out", config_file=config, **TEST_PLUGINS)
    records = load_alignments(source / "alignments.fia")  # closed cleanly, readable
    assert len(records) <= 6
    for name in records:
        assert (tmp_path / "out" / f"{Path(name).stem}_0.png").is_file()


# ----------------------------------------------------------------------------- checks up front
@pytest.mark.parametrize(("options", "flag"), [
    ({"size": 300}, "-z/--size"), ({"size": 128}, "-z/--size"), ({"size": 1088}, "-z/--size"),
    ({"min_size": 50, "max_size": 10}, "-m/--min-size"), ({"min_size": 101}, "-m/--min-size"),
    ({"max_size": 501}, "-x/--max-size"), ({"re_feed": 11}, "-R/--re-feed"),
    ({"extract_every_n": 0}, "-N/--extract-every-n"), ({"min_scale": 201}, "-u/--min-scale"),
    ({"save_interval": -1}, "-v/--save-interval"), ({"threshold": 1.5}, "-l/--ref-threshold"),
    ({"threshold": 0.0}, "-l/--ref-threshold"), ({"normalization": "x"}, "-O/--normalization"),
    ({"centering": "middle"}, "--centering"), ({"output_format": "x"}, "--format"),
    ({"detector": "nope"}, "-D/--detector"), ({"aligner": "mtcnn"}, "-A/--aligner"),
    ({"maskers": ("components", "components")}, "-M/--masker"),
    ({"maskers": ("nope",)}, "-M/--masker"), ({"identities": ("nope",)}, "-I/--identity"),
    ({"profile_save": True}, "--profile-save"),
    ({"profile": True, "profile_save": True}, "--profile-save"),
    ({"profile": True, "profile_time": 0}, "--profile-time"),
    ({"profile": True, "profile_warmup": -1}, "--profile-warmup"),
    ({"output_dir": None, "min_scale": 10}, "-u/--min-scale"),
    ({"output_dir": None, "debug_landmarks": True}, "-B/--debug-landmarks"),
    ({"output_dir": "in"}, "-o/--output-dir"),
    ({"alignments_path": "a.json"}, "-p/--alignments"),
    ({"alignments_path": "a.fsa"}, "--format faceswap"),
    ({"size": True}, "-z/--size"), ({"re_feed": 1.5}, "-R/--re-feed"),
])
def test_invalid_settings_are_refused_naming_the_option(options: dict[str, Any],
                                                        flag: str) -> None:
    values: dict[str, Any] = {"input_path": Path("in"), "output_dir": Path("out"), **options}
    with pytest.raises(ConfigError, match=flag.replace("-", r"\-")):
        ExtractSettings(**values)


def test_valid_settings_are_normalised() -> None:
    settings = ExtractSettings(input_path="in", output_dir="out", maskers=["components"],
                               filter_files=["me.jpg"], centering="face", size=1024,
                               alignments_path="x.fsa", output_format="faceswap")
    assert settings.maskers == ("components",)
    assert settings.filter_files == (Path("me.jpg"),)
    assert settings.output_dir == Path("out")
    assert settings.centering == "face"
    assert settings.as_dict()["filter_files"] == ["me.jpg"]
    assert ExtractSettings(input_path="in").re_align is True  # on by default


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"config_file": "missing.toml"}, ConfigError, "config file not found"),
    ({"filter_files": ("missing.jpg",)}, ConfigError, "none of the Filter paths"),
    ({"input": "missing"}, InputError, "input not found"),
    ({"alignments_path": "broken.fia", "skip_existing": True}, FaceInferError,
     "not a faceinfer alignments file"),
])
def test_bad_runs_fail_before_any_work(tmp_path: Path, options: dict[str, Any],
                                       error: type[Exception], message: str) -> None:
    source = write_images(tmp_path / "frames", {"a.png": squares(60)})
    (tmp_path / "broken.fia").write_bytes(b"garbage")
    values = {key: tmp_path / value if isinstance(value, str) else
              tuple(tmp_path / item for item in value) if isinstance(value, tuple) else value
              for key, value in options.items()}
    input_path = values.pop("input", source)
    with pytest.raises(error, match=message):
        extract(input_path, tmp_path / "out", **{**TEST_PLUGINS, **values})
    assert not (tmp_path / "out").exists()
    assert not (source / "alignments.fia").exists()


# -------------------------------------------------------------------- crash safety and Ctrl-C
def start_cli(*args: str | Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "faceinfer", "extract",
                                 *map(str, args)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_for_frames(path: Path, count: int, process: subprocess.Popen[bytes], log: Path,
                    timeout: float = 180.0) -> int:
    """Wait until the alignments file being written holds ``count`` frames; returns how many
    it holds then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the extraction ended before {count} frames were written:\n"
                        f"{log.read_text()}")
        if path.is_file():
            done = len(load_alignments(path))
            if done >= count:
                return done
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"{path} did not reach {count} frames in {timeout} s:\n{log.read_text()}")


@needs_samples
def test_killed_then_resumed_gives_the_same_result_as_one_run(
        tmp_path: Path, video_run: tuple[Path, ExtractSummary]) -> None:
    reference_folder, _ = video_run
    video = Path(shutil.copy(VIDEO, tmp_path / "test.mp4"))
    fia, faces = tmp_path / "test_alignments.fia", tmp_path / "faces"
    log = tmp_path / "first.log"
    process = start_cli("-i", video, "-o", faces, log=log)
    try:
        wait_for_frames(fia, 10, process, log)
    finally:
        process.kill()  # SIGKILL: no clean-up of any kind
        process.wait(60)
    killed_at = len(load_alignments(fia))
    assert 10 <= killed_at < VIDEO_FRAMES, "expected the kill to land mid-run"
    resumed = subprocess.run([sys.executable, "-m", "faceinfer", "extract", "-i", str(video),
                              "-o", str(faces), "-s"], cwd=REPO, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Whole detector batches are skipped; the rest of the batch cut short is redone with it.
    batch = get_plugin("detect", "mtcnn").config_class().batch_size
    assert f"{killed_at // batch * batch} skipped as already done" in resumed.stdout
    reference = load_alignments(reference_folder / "test_alignments.fia")
    result = load_alignments(fia)
    assert sorted(result) == sorted(reference)
    for name, record in reference.items():
        assert_same_records(result[name], record)
    names = sorted(p.name for p in faces.iterdir())
    assert names == sorted(p.name for p in (reference_folder / "faces").iterdir())
    for name in names:
        np.testing.assert_array_equal(cv2.imread(str(faces / name)),
                                      cv2.imread(str(reference_folder / "faces" / name)))


@needs_samples
def test_ctrl_c_ends_promptly_and_keeps_everything_done(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = Path(shutil.copy(VIDEO, tmp_path / "test.mp4"))
    fia, faces = tmp_path / "test_alignments.fia", tmp_path / "faces"
    log = tmp_path / "run.log"
    process = start_cli("-i", video, "-o", faces, log=log)
    try:
        seen = wait_for_frames(fia, 5, process, log)
        process.send_signal(signal.SIGINT)
        code = process.wait(30)  # a hang fails here
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)
    output = log.read_text()
    assert code == 130, output
    assert "Interrupted:" in output
    with caplog.at_level(logging.WARNING):
        records = load_alignments(fia)
    assert "incomplete" not in caplog.text  # closed cleanly: no torn record
    assert seen <= len(records) < VIDEO_FRAMES
    assert list(records) == [f"test_{n:06d}" for n in range(1, len(records) + 1)]
    for name, record in records.items():
        for index in range(len(record)):
            assert (faces / f"{name}_{index}.png").is_file()
    assert not [p for p in faces.iterdir() if p.name.endswith(".tmp")]
