"""Landmark types and centering types shared by every stage.

Figures follow the reference system's alignment conventions
(``../shared/reference/faceswap_constants.json``).
"""
from __future__ import annotations

import json
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt


class LandmarkType(Enum):
    """The landmark layouts faceinfer understands, each identified by its array shape."""

    LM_2D_4 = 1
    """4 points: the corners of a region of interest (l,t), (r,t), (r,b), (l,b)."""
    LM_2D_51 = 2
    """51 points: the 68-point iBUG layout without the 17 jaw points."""
    LM_2D_68 = 3
    """68 points: the iBUG 300-W layout."""
    LM_2D_98 = 4
    """98 points: the WFLW layout."""
    LM_3D_26 = 5
    """26 points in 3D: the mean head used for pose estimation."""

    @classmethod
    def from_shape(cls, shape: tuple[int, ...]) -> LandmarkType:
        """The landmark type of a landmark array of one face, shape (points, dims), or of a batch,
        shape (faces, points, dims).

        Raises
        ------
        ValueError
            If the shape is not one of the known layouts.
        """
        key = tuple(shape[-2:]) if len(shape) >= 2 else tuple(shape)
        found = _SHAPES.get(key)  # type: ignore[arg-type]
        if found is None:
            known = ", ".join(f"{s}" for s in _SHAPES)
            raise ValueError(f"expected landmarks of shape (points, dims) in {known}, got {shape}")
        return found


_SHAPES: dict[tuple[int, int], LandmarkType] = {
    (4, 2): LandmarkType.LM_2D_4,
    (51, 2): LandmarkType.LM_2D_51,
    (68, 2): LandmarkType.LM_2D_68,
    (98, 2): LandmarkType.LM_2D_98,
    (26, 3): LandmarkType.LM_3D_26,
}


class Centering(StrEnum):
    """Where an aligned crop is centred. Members compare and hash equal to their string values, so
    ``EXTRACT_RATIOS["head"]`` works as well as ``EXTRACT_RATIOS[Centering.HEAD]``."""

    LEGACY = "legacy"
    """Centred on the nose, tight: the original faceswap crop."""
    FACE = "face"
    """Shifted by the pose-derived face offset."""
    HEAD = "head"
    """Shifted by the pose-derived head offset so that the crop holds the whole head."""


CenteringType = Literal["legacy", "face", "head"]
"""The reference API's name for the centering values, as strings."""

EXTRACT_RATIOS: dict[str, float] = {
    Centering.LEGACY: 0.375,
    Centering.FACE: 0.5,
    Centering.HEAD: 0.625,
}
"""Fraction of an aligned image, both sides together, that is padding around the core face box."""


def _load_reference() -> dict[str, Any]:
    with (Path(__file__).with_name("reference_constants.json")).open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


_REFERENCE = _load_reference()

MEAN_FACE_2D_51: npt.NDArray[np.float64] = np.array(_REFERENCE["mean_face_2d_51"],
                                                    dtype=np.float64)
"""(51, 2) the legacy mean face: landmarks 17..67 of the 68-point layout, (x, y) normalized to
[0, 1]. An aligned legacy face puts a face's points here."""
MEAN_FACE_2D_4: npt.NDArray[np.float64] = np.array(_REFERENCE["mean_face_2d_4"], dtype=np.float64)
"""(4, 2) the unit square's corners, clockwise from top-left: where 4-point ROI 'landmarks'
go."""
MEAN_FACE_3D_26: npt.NDArray[np.float64] = np.array(_REFERENCE["mean_face_3d_26"],
                                                    dtype=np.float64)
"""(26, 3) the 3D mean head used for pose, matching :data:`POSE_CORE_LANDMARKS_68`."""
POSE_CORE_LANDMARKS_68: npt.NDArray[np.int64] = np.array(_REFERENCE["pose_core_landmarks_68"],
                                                         dtype=np.int64)
"""(26,) the 68-point landmark indices that correspond to :data:`MEAN_FACE_3D_26`."""
MAP_98_TO_68: npt.NDArray[np.int64] = np.array(_REFERENCE["map_98_to_68"], dtype=np.int64)
"""(68,) for each 68-point landmark, the index of the WFLW 98-point landmark that stands for
it."""
LANDMARK_PARTS_68: dict[str, tuple[int, int, bool]] = {
    name: (int(start), int(stop), bool(closed))
    for name, (start, stop, closed) in _REFERENCE["landmark_parts_68"].items()}
"""Named 68-point parts: (first index, index after the last, True if the outline is closed)."""
LANDMARK_MASK_PARTS_68: dict[str, list[tuple[int, int]]] = {
    name: [(int(start), int(stop)) for start, stop in ranges]
    for name, ranges in _REFERENCE["landmark_mask_parts_68"].items()}
"""The parts of the landmark masks: each is the convex hull of the union of its index ranges
(start, stop), stop exclusive."""


KEYPOINTS_5_LEGACY: npt.NDArray[np.float64] = np.array([
    [0.2281, 0.2219], [0.7719, 0.2219], [0.5, 0.5325], [0.2532, 0.7802], [0.7468, 0.7802]])
"""(5, 2) where a detector's five keypoints (eye on the image's left, eye on its right, nose
tip, mouth corner left, mouth corner right) sit on the legacy mean face. A similarity from a
face's keypoints to these gives an upright first alignment before any landmarks exist.

Measured with ``tools/fit_face_conventions.py``: the median over 56 upright faces of the public
photos in ``../shared/data`` of MTCNN's keypoints mapped to the mean face by each face's
landmarks, made left-right symmetric. (MTCNN's eye points lie a little outside the centres of
the eye outlines.)"""

FaceBox = tuple[float, float, float, float]
"""A box convention: where a detector draws its box on an upright face, as (left, top, right,
bottom) in legacy-normalized face space."""

FACE_BOX_DLIB_HOG: FaceBox = (-0.155, -0.236, 1.138, 1.136)
"""dlib's HOG detector (and the box convention dlib's 68-point predictor was trained on).
Measured with ``tools/fit_face_conventions.py``: the median over 57 upright faces of the public
photos in ``../shared/data``, each box mapped by the similarity of the face's landmarks (human
annotations where there are any, else dlib-68 run on that very box) to the mean face;
interquartile range 0.12-0.18."""
FACE_BOX_DLIB_CNN: FaceBox = (-0.19, -0.30, 1.14, 1.07)
"""dlib's MMOD CNN detector: about the size of the HOG box but higher on the face (more
forehead, less chin), and less steady (interquartile range about 0.19). Measured the same way
over 58 faces."""
FACE_BOX_MTCNN: FaceBox = (-0.071, -0.426, 1.048, 1.181)
"""MTCNN (O-Net's regressed box): narrower than dlib's and much higher (it takes in the
forehead). Measured the same way over 56 faces, starting dlib-68 from MTCNN's keypoints;
interquartile range 0.09-0.20."""
