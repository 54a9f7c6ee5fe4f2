"""Landmark types and centering types shared by every stage.

Figures follow the reference system's alignment conventions
(``../shared/reference/faceswap_constants.json``).
"""
from __future__ import annotations

from enum import Enum, StrEnum
from typing import Literal


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
