"""The engine demo that `make demo` runs, on the sample video."""
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
    frames = [json.loads(line)["frame"] for line in lines]
    assert frames == [f"test_{n:06d}" for n in range(1, 92)]  # 91 frames, in order
    assert len(list(tmp_path.glob("*.png"))) == 5
    printed = capsys.readouterr().out
    assert "TEST plugins" in printed
    assert str(tmp_path) in printed


def test_demo_names_a_missing_video(tmp_path: Path) -> None:
    assert main(["demo", "-i", str(tmp_path / "nothing.mp4"), "-o", str(tmp_path)]) == 1


def test_demo_names_an_unreadable_video(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert main(["demo", "-i", str(broken), "-o", str(tmp_path / "out")]) == 1
    assert f"{broken}: cannot open video" in caplog.text
