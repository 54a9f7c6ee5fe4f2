"""Landmark layouts: conversion to the 68-point layout.

Conventions: landmarks are (x, y) float arrays of shape (N, P, 2) (or (N, 26, 3) for the 3D
head), in whatever pixel space they were given; nothing here moves them.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import MAP_98_TO_68, LandmarkType


def landmarks_68(landmarks: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """(N, P, 2) landmarks as (N, 68, 2): 68-point and 4-point (ROI) landmarks unchanged,
    98-point (WFLW) landmarks mapped to the 68-point layout.

    Raises
    ------
    ValueError
        For a layout with no 68-point equivalent (51 points, the 3D head, unknown shapes).
    """
    kind = LandmarkType.from_shape(landmarks.shape)
    if kind in (LandmarkType.LM_2D_68, LandmarkType.LM_2D_4):
        return landmarks
    if kind == LandmarkType.LM_2D_98:
        return landmarks[..., MAP_98_TO_68, :]
    raise ValueError(f"expected 4, 68 or 98 point landmarks, got {kind.name} "
                     f"{landmarks.shape}")
