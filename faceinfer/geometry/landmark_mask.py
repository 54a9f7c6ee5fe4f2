"""Landmark-based masks of aligned faces: the "components" and "extended" face masks, the eyes and
the mouth. They are cheap to draw, so they are generated on demand and never stored.

Conventions
-----------
* Landmarks are 68-point iBUG layouts, ``(N, 68, 2)`` float arrays of ``(x, y)`` (column, row)
  coordinates in the pixel space of an **aligned** image of side ``size``: the centre of the
  pixel in column ``c`` and row ``r`` is at ``(c, r)``, so the image covers
  ``[-0.5, size - 0.5]`` on both axes. Points may lie outside the image; the polygons are
  clipped to it.
* Masks are ``(N, size, size)`` uint8 arrays indexed ``[face, row, column]``: 0 outside, 255
  inside, intermediate values on anti-aliased edges and where blur is asked for.
* Each area is a union of convex polygons (:func:`mask_hulls`): every polygon is the convex hull
  of a set of landmarks, rounded to whole pixels and filled with ``cv2.fillConvexPoly`` and
  ``cv2.LINE_AA`` into the same 8-bit canvas, so overlapping parts combine as a union. Every
  pixel whose centre lies inside a polygon is 255; the anti-aliased edge lies outside the
  polygon and reaches at most 1.5 px from it.

Compatibility with the reference system
---------------------------------------
The pipeline is the reference's, step for step, so results are identical given the same
landmarks: polygons from the landmarks rounded half to even (the eyebrows of ``face_extended``
first raised as :func:`raise_eyebrows` describes), filled anti-aliased into a uint8 canvas,
then dilation or erosion, then the blur passes, each on uint8 as OpenCV computes them. Two
differences: a dilation whose kernel rounds to 0 pixels does nothing here (the reference hands
OpenCV an empty structuring element, which raises), and the eyebrow arithmetic runs in float64
rather than float32.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import LANDMARK_MASK_PARTS_68

BlurType = Literal["gaussian", "normalized"]
"""How :func:`landmark_masks` blurs: a Gaussian (``cv2.GaussianBlur``, sigma derived from the
kernel size) or a normalized box filter (``cv2.blur``)."""

_BLUR_SHRINK: dict[str, float] = {"gaussian": 0.8, "normalized": 0.5}
"""Factor applied to the blur kernel side after each pass, per blur type."""

_INT32_LIMIT = 2.0 ** 31 - 1


class MaskArea(StrEnum):
    """The landmark mask areas. Members compare equal to their string values."""

    FACE = "face"
    """The whole face up to the eyebrows: the "components" mask."""
    FACE_EXTENDED = "face_extended"
    """The face with the eyebrows raised by half their distance to the eyes, to take in part of
    the forehead: the "extended" mask."""
    EYE = "eye"
    """Both eyes: the hulls of landmarks 36-41 and 42-47."""
    MOUTH = "mouth"
    """The outer lip contour: the hull of landmarks 48-59."""


def _index_sets(ranges: list[tuple[int, int]]) -> npt.NDArray[np.intp]:
    return np.concatenate([np.arange(start, stop) for start, stop in ranges])


_FACE_PARTS = tuple(_index_sets(ranges) for ranges in LANDMARK_MASK_PARTS_68.values())
_PARTS: dict[MaskArea, tuple[npt.NDArray[np.intp], ...]] = {
    MaskArea.FACE: _FACE_PARTS,
    MaskArea.FACE_EXTENDED: _FACE_PARTS,
    MaskArea.EYE: (np.arange(36, 42), np.arange(42, 48)),
    MaskArea.MOUTH: (np.arange(48, 60),),
}
"""Per area, the landmark indices of each polygon, in drawing order."""


def _as_area(area: MaskArea | str) -> MaskArea:
    try:
        return MaskArea(area)
    except ValueError:
        known = ", ".join(repr(member.value) for member in MaskArea)
        raise ValueError(f"expected a mask area in {known}, got {area!r}") from None


def _as_landmarks(landmarks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"expected 68-point landmarks of shape (N, 68, 2), got {points.shape}")
    bad = ~(np.isfinite(points) & (np.abs(points) < _INT32_LIMIT)).all(axis=(1, 2))
    if bad.any():
        raise ValueError("expected finite landmarks within the int32 range, got NaN, infinite "
                         f"or out-of-range points in faces {np.flatnonzero(bad).tolist()}")
    return points


def raise_eyebrows(landmarks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The landmarks of the ``face_extended`` mask: each eyebrow point moved away from a point on
    the eye below it by half their offset, which takes the mask up into the forehead.

    With ``//`` numpy's float floor division (``a // 2 == floor(a / 2)``, per coordinate), exactly
    as the reference applies it to its float aligned landmarks ``p``::

        right_mid     = (p[36] + p[0]) // 2          # between the outer right eye corner and jaw
        right_quarter = (p[36] + right_mid) // 2     # a quarter of the way from 36 to 0
        left_mid      = (p[16] + p[45]) // 2
        left_quarter  = (p[45] + left_mid) // 2      # a quarter of the way from 45 to 16
        right_refs    = [right_quarter, p[36], p[37], p[38], p[39]]
        left_refs     = [p[42], p[43], p[44], p[45], left_quarter]
        p[17:22]      = p[17:22] + (p[17:22] - right_refs) // 2
        p[22:27]      = p[22:27] + (p[22:27] - left_refs) // 2

    The floors bias each step by up to one pixel towards -inf; they are kept for compatibility.
    Computation is in float64 (the reference uses float32, which can only differ where a sum
    falls within float32 rounding of an integer).

    Parameters
    ----------
    landmarks:
        (N, 68, 2) ``(x, y)`` points in aligned-image pixels (pixel centres at integers).

    Returns
    -------
    (N, 68, 2) float64 copy with points 17..26 moved; every other point unchanged.
    """
    points = _as_landmarks(landmarks).copy()
    right_mid = (points[:, 36] + points[:, 0]) // 2
    right_quarter = (points[:, 36] + right_mid) // 2
    left_mid = (points[:, 16] + points[:, 45]) // 2
    left_quarter = (points[:, 45] + left_mid) // 2
    right_refs = np.concatenate([right_quarter[:, None], points[:, 36:40]], axis=1)
    left_refs = np.concatenate([points[:, 42:46], left_quarter[:, None]], axis=1)
    right_brow = points[:, 17:22]
    left_brow = points[:, 22:27]
    points[:, 17:22] = right_brow + (right_brow - right_refs) // 2
    points[:, 22:27] = left_brow + (left_brow - left_refs) // 2
    return points


def _part_points(points: npt.NDArray[np.float64],
                 area: MaskArea) -> list[npt.NDArray[np.int32]]:
    """Per polygon of ``area``, the (N, K, 2) int32 points it is the hull of: the landmarks
    (eyebrows raised for ``face_extended``) rounded half to even, as the reference rounds."""
    if area is MaskArea.FACE_EXTENDED:
        points = raise_eyebrows(points)
    rounded = np.rint(points).astype(np.int32)
    return [np.ascontiguousarray(rounded[:, indices]) for indices in _PARTS[area]]


def mask_hulls(landmarks: npt.ArrayLike,
               area: MaskArea | str) -> list[npt.NDArray[np.int32]]:
    """The convex polygons that :func:`landmark_masks` fills for one face.

    Parameters
    ----------
    landmarks:
        (68, 2) ``(x, y)`` points of one face in aligned-image pixels (pixel centres at
        integers).
    area:
        A :class:`MaskArea` or its string value.

    Returns
    -------
    One (K, 2) int32 array of ``(x, y)`` hull vertices (in ``cv2.convexHull`` order) per
    polygon: for ``face`` and ``face_extended`` the parts of
    :data:`~faceinfer.geometry.constants.LANDMARK_MASK_PARTS_68` in its order; for ``eye`` the
    right eye (36-41) then the left eye (42-47); for ``mouth`` the outer lips (48-59).

    Raises
    ------
    ValueError
        For an unknown area, or landmarks that are not one face of 68 finite points.
    """
    mask_area = _as_area(area)
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected one face's 68-point landmarks of shape (68, 2), got "
                         f"{points.shape}")
    parts = _part_points(_as_landmarks(points[None]), mask_area)
    return [cv2.convexHull(part[0]).reshape(-1, 2).astype(np.int32) for part in parts]


def blur_kernel_sizes(blur_kernel: int, blur_type: BlurType, blur_passes: int) -> list[int]:
    """The kernel side of each blur pass, as the reference's mask blur computes them: the first
    is ``blur_kernel`` raised to the next odd number if even; each next one is
    ``round(previous * factor)`` (Python's round, half to even), again raised to odd, with factor
    0.8 for ``gaussian`` and 0.5 for ``normalized``. Sizes never fall below 1 (a no-op pass)."""
    factor = _BLUR_SHRINK[blur_type]
    side = blur_kernel + (1 - blur_kernel % 2)
    sizes = []
    for _ in range(blur_passes):
        sizes.append(side)
        side = round(side * factor)
        side += 1 - side % 2
    return sizes


def _morph_and_blur(masks: npt.NDArray[np.uint8], kernel_side: int, dilate: bool,
                    blur_sizes: list[int], blur_type: BlurType) -> npt.NDArray[np.uint8]:
    """Dilate or erode (elliptical kernel of side ``kernel_side``; 0 for neither), then blur with
    each kernel side of ``blur_sizes`` in turn, in place, on uint8 as the reference does.

    The OpenCV filters run face by face with their default borders, which is the reference's
    behaviour: morphology ignores the border, blur reflects it (BORDER_REFLECT_101). One call on
    all faces stacked into a tall image, each with its own padded border, gives the same result
    but measured no faster for morphology and 1.5 to 3 times slower for blur (the padding copies
    dominate), so the loop over faces stays, around the OpenCV calls only.
    """
    filters: list[Callable[..., npt.NDArray[Any]]] = []
    if kernel_side:
        structure = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_side, kernel_side))
        filters.append(partial(cv2.dilate if dilate else cv2.erode, kernel=structure))
    filters += [partial(cv2.GaussianBlur, ksize=(side, side), sigmaX=0) if blur_type == "gaussian"
                else partial(cv2.blur, ksize=(side, side))
                for side in blur_sizes]
    for face in masks:
        for apply in filters:
            apply(face, dst=face)
    return masks


def landmark_masks(landmarks: npt.ArrayLike, size: int, area: MaskArea | str,
                   dilation: float = 0.0, blur_kernel: int = 0,
                   blur_type: BlurType | None = "gaussian",
                   blur_passes: int = 1) -> npt.NDArray[np.uint8]:
    """Landmark masks of N aligned faces.

    Parameters
    ----------
    landmarks:
        (N, 68, 2) ``(x, y)`` landmarks in the pixel space of the aligned images, side ``size``,
        pixel centres at integer coordinates (see the module conventions).
    size:
        Side of the aligned images, and of the masks, in pixels.
    area:
        A :class:`MaskArea` or its string value: ``face`` (the "components" mask),
        ``face_extended`` (the "extended" mask), ``eye`` or ``mouth``.
    dilation:
        Percentage of ``size``: positive dilates the mask, negative erodes it, with an
        elliptical kernel (``cv2.MORPH_ELLIPSE``) of side ``k = round(size * |dilation| / 100)``
        anchored at its centre pixel ``(k // 2, k // 2)``, so the mask grows or shrinks by about
        ``k / 2`` pixels (up to ``hypot(k / 2, 1)`` for even ``k``). ``k == 0`` does nothing.
        Image borders neither grow nor erode the mask.
    blur_kernel:
        Side in pixels of the first blur pass's kernel, raised to odd if even; 0 for no blur.
    blur_type:
        ``gaussian`` (``cv2.GaussianBlur``, sigma from the kernel size) or ``normalized``
        (box filter, ``cv2.blur``); None for no blur. Each pass works on uint8 (OpenCV rounds
        to nearest); image borders reflect (BORDER_REFLECT_101).
    blur_passes:
        Number of blur passes; the kernel shrinks after each (see :func:`blur_kernel_sizes`).

    Returns
    -------
    (N, size, size) uint8 masks: dilation or erosion is applied to the filled polygons, then the
    blur passes, in that order (as the reference does).

    Raises
    ------
    ValueError
        For an unknown area or blur type, landmarks not of shape (N, 68, 2) or not finite, a
        size below 1, a negative blur kernel, fewer than 1 blur pass, or a non-finite dilation.
    """
    mask_area = _as_area(area)
    points = _as_landmarks(landmarks)
    side = operator.index(size)
    if side < 1:
        raise ValueError(f"expected a mask size of at least 1 pixel, got {size}")
    if not math.isfinite(dilation):
        raise ValueError(f"expected a finite dilation percentage, got {dilation}")
    kernel = operator.index(blur_kernel)
    passes = operator.index(blur_passes)
    if kernel < 0:
        raise ValueError(f"expected a blur kernel of 0 (none) or more pixels, got {blur_kernel}")
    if passes < 1:
        raise ValueError(f"expected at least 1 blur pass, got {blur_passes}")
    if blur_type is not None and blur_type not in _BLUR_SHRINK:
        raise ValueError(f"expected a blur type in {sorted(_BLUR_SHRINK)} or None, got "
                         f"{blur_type!r}")

    count = points.shape[0]
    masks = np.zeros((count, side, side), dtype=np.uint8)
    parts = _part_points(points, mask_area)
    for face in range(count):
        canvas = masks[face]
        for part in parts:
            cv2.fillConvexPoly(canvas, cv2.convexHull(part[face]), 255, lineType=cv2.LINE_AA)

    kernel_side = round(side * abs(dilation) / 100)
    blur_sizes = (blur_kernel_sizes(kernel, blur_type, passes)
                  if kernel and blur_type is not None else [])
    if count == 0 or (kernel_side == 0 and not blur_sizes):
        return masks
    return _morph_and_blur(masks, kernel_side, dilation > 0, blur_sizes, blur_type or "gaussian")
