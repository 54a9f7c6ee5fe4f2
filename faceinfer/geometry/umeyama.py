"""Batched Umeyama similarity estimation and the legacy alignment matrices built on it.

Conventions: points are (x, y) (or (x, y, z)); a returned matrix is (D+1) x (D+1) homogeneous
and maps a column vector (x, y, 1) of the source space to the target space. For alignment the
source is frame pixels and the target the normalized legacy face, where the mean face's points
lie in [0, 1] x [0, 1]: :func:`legacy_matrices` returns ``frame_to_legacy`` matrices.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import MEAN_FACE_2D_4, MEAN_FACE_2D_51, LandmarkType
from faceinfer.geometry.landmarks import landmarks_68

_RANK_TOLERANCE = 1e-9


def umeyama(source: npt.NDArray[np.floating], target: npt.NDArray[np.floating],
            estimate_scale: bool = True) -> npt.NDArray[np.float64]:
    """The least-squares similarity (rotation, uniform scale, translation) taking each set of
    source points onto the target points, after Umeyama (1991), for N point sets at once.

    Parameters
    ----------
    source:
        (N, P, D) points.
    target:
        (P, D) points shared by every set, or (N, P, D).
    estimate_scale:
        False to fix the scale at 1 (a rigid transform).

    Returns
    -------
    (N, D+1, D+1) float64 matrices ``source_to_target``. A set whose points all coincide has no
    defined transform: its matrix is all NaN. Collinear points (rank D-1) still get the proper
    rotation (never a reflection). 2D similarities use the equivalent closed form (complex
    least squares), the rest an SVD per set.
    """
    src = np.asarray(source, dtype=np.float64)
    if src.ndim != 3:
        raise ValueError(f"expected source points of shape (N, P, D), got {src.shape}")
    count, points, dims = src.shape
    dst = np.broadcast_to(np.asarray(target, dtype=np.float64), src.shape)
    out = np.full((count, dims + 1, dims + 1), np.nan)
    if count == 0:
        return out
    if dims == 2 and estimate_scale:
        return _similarity_2d(src, dst)
    src_mean, dst_mean = src.mean(axis=1), dst.mean(axis=1)
    src_c, dst_c = src - src_mean[:, None], dst - dst_mean[:, None]
    cov = np.matmul(dst_c.transpose(0, 2, 1), src_c) / points  # (N, D, D)
    u, singular, vt = np.linalg.svd(cov)
    sign = np.ones((count, dims))
    sign[np.linalg.det(cov) < 0, -1] = -1.0
    rank = np.sum(singular > _RANK_TOLERANCE * np.maximum(singular[:, :1], 1e-300), axis=1)
    rank[singular[:, 0] <= 1e-300] = 0
    # Rank D-1 (collinear in 2D): the last singular direction is free; choose the rotation.
    low = rank == dims - 1
    flip = np.linalg.det(u) * np.linalg.det(vt) < 0
    sign[low] = 1.0
    sign[low & flip, -1] = -1.0
    rotation = u @ (sign[:, :, None] * vt)
    variance = src_c.var(axis=1).sum(axis=1)
    valid = (rank > 0) & (variance > 0)
    scale = np.ones(count)
    if estimate_scale:
        scale = np.where(valid, np.sum(singular * sign, axis=1) / np.where(valid, variance, 1.0),
                         np.nan)
    linear = scale[:, None, None] * rotation
    out[:, :dims, :dims] = linear
    out[:, :dims, dims] = dst_mean - np.matmul(linear, src_mean[:, :, None])[:, :, 0]
    out[:, dims] = 0.0
    out[:, dims, dims] = 1.0
    out[~valid] = np.nan
    return out


def _similarity_2d(src: npt.NDArray[np.float64], dst: npt.NDArray[np.float64]
                   ) -> npt.NDArray[np.float64]:
    """Umeyama's answer in 2D in closed form. With points as complex numbers x (source) and y
    (target), centred, the best proper similarity is y = a * x with
    ``a = sum(conj(x) * y) / sum(|x|^2)``: |a| the scale, arg(a) the rotation. A complex factor
    cannot reflect, so mirrored faces get the best rotation, as Umeyama's sign correction
    gives."""
    src_mean, dst_mean = src.mean(axis=1), dst.mean(axis=1)
    x = src - src_mean[:, None]
    y = dst - dst_mean[:, None]
    norm = np.sum(x * x, axis=(1, 2))
    real = np.sum(x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1], axis=1)
    imag = np.sum(x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0], axis=1)
    valid = norm > 0
    norm = np.where(valid, norm, np.nan)
    cos, sin = real / norm, imag / norm  # scale * cos(angle), scale * sin(angle)
    out = np.zeros((len(src), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cos, -sin, sin, cos
    out[:, 0, 2] = dst_mean[:, 0] - (cos * src_mean[:, 0] - sin * src_mean[:, 1])
    out[:, 1, 2] = dst_mean[:, 1] - (sin * src_mean[:, 0] + cos * src_mean[:, 1])
    out[:, 2, 2] = 1.0
    out[~valid] = np.nan
    return out


def legacy_matrices(landmarks: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """``frame_to_legacy`` (N, 3, 3) matrices: the similarity taking each face's landmarks
    (frame pixels) onto the mean face in normalized legacy space.

    68- and 98-point landmarks use their 51 core points (17..67 of the 68-point layout); 51-point
    landmarks are those points; 4-point ROI landmarks go to the unit square's corners. Faces
    whose points all coincide get NaN matrices.

    Raises
    ------
    ValueError
        For landmarks that cannot be aligned (the 3D head, unknown shapes).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    kind = LandmarkType.from_shape(points.shape)
    if kind == LandmarkType.LM_2D_4:
        return umeyama(points, MEAN_FACE_2D_4)
    if kind == LandmarkType.LM_2D_51:
        return umeyama(points, MEAN_FACE_2D_51)
    if kind == LandmarkType.LM_3D_26:
        raise ValueError(f"expected 2D landmarks to align, got 3D landmarks {points.shape}")
    return umeyama(landmarks_68(points)[:, 17:], MEAN_FACE_2D_51)
