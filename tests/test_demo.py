"""The demo that `make demo` runs, on the sample video: real faces and landmarks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from faceinfer.cli import main
from tests.conftest import SHARED

VIDEO = SHARED / "data" / "faceswap_samples" / "test.mp4"


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} not found (../shared absent)")
def test_demo_runs_every_frame_of_the_sample_video(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-i", str(VIDEO), "-o", str(tmp_path)]) == 0
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["frame"] for e in entries] == [f"test_{n:06d}" for n in range(1, 92)]  # in order
    # The painted face of the sample video, with its 68 landmarks, in every frame.
    assert all(len(e["faces"]) == 1 for e in entries)
    assert all(len(e["faces"][0]["landmarks_xy"]) == 68 for e in entries)
    assert all(0.0 <= e["faces"][0]["align_score"] < 0.1 for e in entries)
    assert len(list(tmp_path.glob("*.png"))) == 5
    printed = capsys.readouterr().out
    assert "Frames: 91, faces found: 91" in printed
    assert str(tmp_path) in printed


def test_demo_names_a_missing_video(tmp_path: Path) -> None:
    assert main(["demo", "-i", str(tmp_path / "nothing.mp4"), "-o", str(tmp_path)]) == 1


def test_demo_names_an_unreadable_video(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert main(["demo", "-i", str(broken), "-o", str(tmp_path / "out")]) == 1
    assert f"{broken}: cannot open video" in caplog.text
