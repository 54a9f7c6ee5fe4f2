"""Mask plugins "components" and "extended": masks drawn from a face's 68 landmarks.

They run no model: the Mask stage hands them each face's landmarks in the pixels of the aligned
crop (see :attr:`~faceinfer.plugins.base.MaskPlugin.uses_landmarks`), and they fill the convex
hulls of :func:`~faceinfer.geometry.landmark_mask.landmark_masks`. The two plugins share one
file because they are one drawing with a different area; each registers and declares its own
centering.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.errors import PluginError
from faceinfer.geometry.constants import Centering
from faceinfer.geometry.landmark_mask import MaskArea, landmark_masks
from faceinfer.plugins.base import MaskPlugin, PluginConfig


@dataclass(frozen=True)
class LandmarkMaskConfig(PluginConfig):
    """Settings of the landmark mask plugins."""

    batch_size: int = 64
    """Faces per batch. Drawing costs well under a millisecond a face, so batches can be large."""
    input_size: int = 256
    """Side, in pixels, of the aligned crop the mask is drawn in (and of the mask before it is
    resized to the stage's storage size)."""


class LandmarkMask(MaskPlugin):
    """Base of the landmark masks: fills :attr:`area` from each face's landmarks, anti-aliased,
    without dilation or blur (both belong to whoever uses the stored mask)."""

    area: ClassVar[MaskArea]
    """The landmark mask area the plugin draws."""
    uses_landmarks = True
    speed = "fast"
    config_class = LandmarkMaskConfig
    # No pixels are resampled for these plugins: the stage hands them landmarks, not crops.
    resample = "linear"

    def __init__(self, config: LandmarkMaskConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)

    def pre_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """Check the landmarks: (N, 68, 2) float (x, y) in crop pixels, pixel centres at integer
        coordinates.

        Raises
        ------
        PluginError
            For any other layout than the 68-point one.
        """
        points = np.asarray(batch, dtype=np.float32)
        if points.ndim != 3 or points.shape[1:] != (68, 2):
            got = f"{points.shape[1]} points" if points.ndim == 3 else "shape"
            raise PluginError(f"mask plugin '{self.name}' draws from 68-point landmarks: "
                              f"expected (N, 68, 2), got {got} {points.shape}")
        return points

    def process(self, batch: np.ndarray) -> npt.NDArray[np.uint8]:
        """(N, S, S) uint8 masks, 0 outside the area and 255 inside, at :attr:`input_size`."""
        return landmark_masks(batch, self.input_size, self.area)

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, S, S) float32 masks in 0..1."""
        return np.asarray(batch, dtype=np.float32) * np.float32(1.0 / 255.0)


@register_plugin("mask", "components")
class ComponentsMask(LandmarkMask):
    """The face from the jaw up to the eyebrows."""

    description = "Landmark mask: the face up to the eyebrows (68-point landmarks, no model)"
    area = MaskArea.FACE
    # Face centering: the crop made to hold the face (jaw to brows) at the best resolution. On
    # the 47 faces with 68 landmarks in ../shared/data (frontal to turned), the hull keeps >= 2%
    # of the crop's side from every edge (the chin is nearest); legacy centering, nose-centred
    # and tighter, cuts the jaw of turned faces.
    centering = Centering.FACE


@register_plugin("mask", "extended")
class ExtendedMask(LandmarkMask):
    """The face with the eyebrows raised into the forehead."""

    description = "Landmark mask: the face with part of the forehead (68-point landmarks)"
    area = MaskArea.FACE_EXTENDED
    # Face centering too: the raised brows reach above the eyebrows, but face centering has room
    # above them (>= 22% of the crop's side on the same 47 faces, where the chin keeps >= 2%), so
    # the mask keeps the face's resolution; head centering would give the face 37.5% of the
    # crop's side instead of 50%.
    centering = Centering.FACE
