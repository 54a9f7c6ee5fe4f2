"""Aligned faces: their matrices at a size and centering, sub-crops between centerings, coverage
padding, and batched warping out of frames.

Conventions
-----------
* Points are (x, y); pixel centres lie at integer coordinates.
* Normalized legacy space is where the mean face's points lie in [0, 1] x [0, 1]
  (see :mod:`faceinfer.geometry.umeyama`). ``frame_to_legacy`` matrices map frame pixels there.
* A centering shifts that space by a per-face offset (x, y) in normalized units:
  ``frame_to_centered = frame_to_legacy`` with the offset subtracted from its translation.
* An aligned image of side S at a centering puts normalized [0, 1] on pixels
  [padding, S - padding], with ``padding = round(S * EXTRACT_RATIOS[centering] / 2)``: the
  ``frame_to_aligned`` matrix is ``frame_to_centered`` scaled by ``S - 2 * padding`` plus
  ``padding``.
* All matrices are (N, 3, 3) and map homogeneous column vectors (x, y, 1).
"""
from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import EXTRACT_RATIOS, Centering

_NEAREST_EVEN = 2
_REMAP_LIMIT = 32767


def padding(size: int, centering: Centering | str) -> int:
    """Pixels of padding on each side of the core face box in an aligned image of side
    ``size`` at ``centering``: ``round(size * EXTRACT_RATIOS[centering] / 2)``."""
    return round(size * EXTRACT_RATIOS[Centering(centering)] / 2)


def centered_matrices(frame_to_legacy: npt.NDArray[np.floating],
                      offsets: npt.NDArray[np.floating] | None) -> npt.NDArray[np.float64]:
    """``frame_to_centered`` (N, 3, 3): the legacy matrices with each face's (x, y) centering
    offset, in normalized units, subtracted from their translation. None: legacy centering."""
    out = np.array(frame_to_legacy, dtype=np.float64)
    if offsets is not None:
        out[:, :2, 2] -= np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    return out


def aligned_matrices(frame_to_legacy: npt.NDArray[np.floating], size: int,
                     centering: Centering | str,
                     offsets: npt.NDArray[np.floating] | None = None) -> npt.NDArray[np.float64]:
    """``frame_to_aligned`` (N, 3, 3) matrices taking frame pixels to the pixels of aligned images
    of side ``size`` at ``centering``.

    Parameters
    ----------
    frame_to_legacy:
        (N, 3, 3) legacy alignment matrices.
    size:
        The aligned image's side in pixels.
    centering:
        legacy, face or head.
    offsets:
        (N, 2) the faces' offsets for ``centering`` in normalized units (see
        :func:`faceinfer.geometry.pose.centering_offsets`); None or zeros for legacy.
    """
    if size < 1:
        raise ValueError(f"expected an aligned size >= 1, got {size}")
    pad = padding(size, centering)
    out = centered_matrices(frame_to_legacy, offsets)
    out[:, :2] *= size - 2 * pad
    out[:, :2, 2] += pad
    return out


def coverage_padding(size: int, centering: Centering | str, coverage: float) -> int:
    """Pixels to crop from each side of an aligned image of side ``size`` to keep ``coverage``
    (in (0, 1]) of the face for training: ``round(S * (ratio + coverage - 1) / (2 * coverage))``.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"expected coverage in (0, 1], got {coverage}")
    ratio = EXTRACT_RATIOS[Centering(centering)]
    return round(size * (ratio + coverage - 1.0) / (2.0 * coverage))


def sub_crop_size(size: int, source: Centering | str, target: Centering | str,
                  coverage: float = 1.0) -> int:
    """The side of a ``target`` centering crop cut from a ``source`` crop of side ``size``, at the
    same pixel scale, rounded to an even number (a 512 head crop gives a 384 face crop and a 308
    legacy crop)."""
    ratio = (1.0 - EXTRACT_RATIOS[Centering(source)]) / (1.0 - EXTRACT_RATIOS[Centering(target)])
    return int(round(size * ratio * coverage / _NEAREST_EVEN) * _NEAREST_EVEN)


def sub_crop_origins(size: int, source: Centering | str, target: Centering | str,
                     source_offsets: npt.NDArray[np.floating] | None,
                     target_offsets: npt.NDArray[np.floating] | None,
                     coverage: float = 1.0) -> npt.NDArray[np.float64]:
    """(N, 2) the (x, y) pixel, in each ``source`` crop of side ``size``, where its ``target``
    crop (of side :func:`sub_crop_size`) starts.

    ``origin = (target_offset - source_offset) * core + (size - target_size) / 2``, with
    ``core = 2 * round(size * (1 - ratio_source) / 2)`` the source's core face box in pixels.
    """
    out_size = sub_crop_size(size, source, target, coverage)
    core = 2 * round(size * (1.0 - EXTRACT_RATIOS[Centering(source)]) / 2)
    src = np.zeros((1, 2)) if source_offsets is None else np.asarray(source_offsets, np.float64)
    dst = np.zeros((1, 2)) if target_offsets is None else np.asarray(target_offsets, np.float64)
    return (dst - src).reshape(-1, 2) * core + (size - out_size) / 2.0


def sub_crop(images: npt.NDArray[np.uint8], origins: npt.NDArray[np.floating], out_size: int
             ) -> npt.NDArray[np.uint8]:
    """Cut (N, out_size, out_size, C) crops from (N, S, S, C) aligned images at the (x, y)
    ``origins`` (rounded to whole pixels). Parts outside the source are black."""
    count, height, width = images.shape[:3]
    out = np.zeros((count, out_size, out_size, *images.shape[3:]), dtype=images.dtype)
    starts = np.rint(np.asarray(origins, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    for index, (x0, y0) in enumerate(starts.tolist()):
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + out_size, width), min(y0 + out_size, height)
        if sx1 > sx0 and sy1 > sy0:
            out[index, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = images[index, sy0:sy1, sx0:sx1]
    return out


def _scales(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The uniform scale of each (N, 3, 3) similarity."""
    return np.asarray(np.sqrt(np.abs(np.linalg.det(matrices[:, :2, :2]))), dtype=np.float64)


def warp_aligned(images: list[np.ndarray], frame_ids: npt.NDArray[np.integer],
                 frame_to_aligned: npt.NDArray[np.floating], size: int,
                 shrink: int = cv2.INTER_AREA) -> npt.NDArray[np.uint8]:
    """Warp (N, size, size, C) aligned faces out of their frames. Outside the frame is black.

    All faces of a frame that need the same source resolution and sampling come from one
    ``cv2.remap`` call. A face shrunk by more than 2x is sampled from a copy of its frame
    reduced by a power of two (with ``shrink``, pixel-area averaging by default), so it does not
    alias; the last step uses bicubic sampling. Enlarged faces use bilinear sampling.

    Parameters
    ----------
    images:
        The frames, (H, W, C) uint8.
    frame_ids:
        (N,) the frame of each face, non-decreasing.
    frame_to_aligned:
        (N, 3, 3) matrices from frame pixels to aligned pixels.
    size:
        The aligned images' side.
    shrink:
        OpenCV interpolation for reducing frames: INTER_AREA (default) or INTER_LINEAR.
    """
    matrices = np.asarray(frame_to_aligned, dtype=np.float64)
    ids = np.asarray(frame_ids, dtype=np.int64)
    channels = images[0].shape[2] if images else 3
    out = np.zeros((len(ids), size, size, channels), dtype=np.uint8)
    if not len(ids):
        return out
    scales = _scales(matrices)
    # Power-of-two reduction level of the source for each face: 0 keeps the frame.
    levels = np.where(scales < 0.5, np.floor(np.log2(1.0 / np.maximum(scales, 1e-12))), 0)
    levels = levels.astype(np.int64)
    # Where each aligned pixel centre comes from, in frame pixels.
    to_frame = np.linalg.inv(matrices)[:, :2]  # (N, 2, 3) aligned pixel -> frame pixel
    across = np.arange(size, dtype=np.float32)[None, None, :]
    down = np.arange(size, dtype=np.float32)[:, None, None]
    cubic = scales < 1.0  # shrinking ends with bicubic sampling, enlarging uses bilinear
    order = np.lexsort((cubic, levels, ids))
    keys = np.stack([ids[order], levels[order], cubic[order]], axis=1)
    breaks = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    per_call = max(1, (_REMAP_LIMIT - 1) // size)  # OpenCV's remap takes < 32767 columns
    groups = [chunk for group in np.split(order, breaks)
              for chunk in np.split(group, range(per_call, len(group), per_call))]
    for group in groups:
        frame_id, level = int(ids[group[0]]), int(levels[group[0]])
        source = images[frame_id]
        coefficients = to_frame[group]
        interp = cv2.INTER_CUBIC if cubic[group[0]] else cv2.INTER_LINEAR
        if level:
            factor = 2 ** level
            height, width = source.shape[:2]
            new_w, new_h = max(1, round(width / factor)), max(1, round(height / factor))
            source = cv2.resize(source, (new_w, new_h), interpolation=shrink)
            # Frame pixel centre p lands on (p + 0.5) * s - 0.5 in the reduced copy.
            shrunk = np.array([new_w / width, new_h / height])[None, :, None]
            coefficients = coefficients * shrunk
            coefficients[:, :, 2] += 0.5 * shrunk[:, :, 0] - 0.5
        count = len(group)
        # Sampling maps in strip layout (size, count * size): face k fills columns k*size...
        c = coefficients.astype(np.float32)[None]  # (1, count, 2, 3)
        map_x = (c[..., 0, 0, None] * across + c[..., 0, 1, None] * down
                 + c[..., 0, 2, None]).reshape(size, count * size)
        map_y = (c[..., 1, 0, None] * across + c[..., 1, 1, None] * down
                 + c[..., 1, 2, None]).reshape(size, count * size)
        strip = cv2.remap(source, map_x, map_y, interp, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
        out[group] = strip.reshape(size, count, size, channels).transpose(1, 0, 2, 3)
    return out
