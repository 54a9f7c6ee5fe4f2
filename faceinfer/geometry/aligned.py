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

import itertools

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


def _reduce(frame: np.ndarray, to_frame: npt.NDArray[np.float64], size: int, factor: int,
            shrink: int) -> tuple[np.ndarray, npt.NDArray[np.float64]] | None:
    """The part of ``frame`` that crops of side ``size`` read through ``to_frame`` (K, 2, 3),
    reduced by ``factor`` in whole blocks of the frame's own block grid (so the result does not
    depend on which faces share the call), and the crops' matrices into it. Blocks that cross
    the frame's edge are completed with black. None if the crops read nothing of the frame."""
    height, width = frame.shape[:2]
    corners = to_frame @ np.array([[0.0, size - 1.0, 0.0, size - 1.0],
                                   [0.0, 0.0, size - 1.0, size - 1.0], [1.0, 1.0, 1.0, 1.0]])
    margin = 3 * factor  # room for the bicubic kernel on the reduced grid
    low = np.floor((corners.min(axis=(0, 2)) - margin) / factor).astype(np.int64) * factor
    high = np.ceil((corners.max(axis=(0, 2)) + margin) / factor).astype(np.int64) * factor
    x0, y0 = max(int(low[0]), 0), max(int(low[1]), 0)
    x1, y1 = min(int(high[0]), -(-width // factor) * factor), min(
        int(high[1]), -(-height // factor) * factor)
    if x1 <= x0 or y1 <= y0:
        return None
    region = frame[y0:min(y1, height), x0:min(x1, width)]
    if region.shape[0] != y1 - y0 or region.shape[1] != x1 - x0:
        region = cv2.copyMakeBorder(region, 0, y1 - y0 - region.shape[0], 0,
                                    x1 - x0 - region.shape[1], cv2.BORDER_CONSTANT, value=0)
    reduced = cv2.resize(region, ((x1 - x0) // factor, (y1 - y0) // factor),
                         interpolation=shrink)
    # Frame pixel centre p lands on (p - origin + 0.5) / factor - 0.5 in the reduced copy.
    out = to_frame / factor
    out[:, 0, 2] += (0.5 - x0) / factor - 0.5
    out[:, 1, 2] += (0.5 - y0) / factor - 0.5
    return reduced, out


def _sampling_maps(to_frame: npt.NDArray[np.float64], size: int
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``cv2.remap`` maps (size, K * size) for K crops of side ``size``, side by side: the frame
    (x, y) that each crop pixel samples, through the (K, 2, 3) aligned -> frame matrices."""
    count = len(to_frame)
    c = to_frame.astype(np.float32)
    across = np.arange(size, dtype=np.float32)[None, None, :]
    down = np.arange(size, dtype=np.float32)[:, None, None]
    map_x = c[None, :, 0, 0, None] * across + c[None, :, 0, 1, None] * down
    map_x += c[None, :, 0, 2, None]
    map_y = c[None, :, 1, 0, None] * across + c[None, :, 1, 1, None] * down
    map_y += c[None, :, 1, 2, None]
    return map_x.reshape(size, count * size), map_y.reshape(size, count * size)


def warp_aligned(images: list[np.ndarray], frame_ids: npt.NDArray[np.integer],
                 frame_to_aligned: npt.NDArray[np.floating], size: int,
                 shrink: int = cv2.INTER_AREA) -> npt.NDArray[np.uint8]:
    """Warp (N, size, size, C) aligned faces out of their frames. Outside the frame is black.

    All faces of a frame read at full resolution with the same sampling come from one
    ``cv2.remap`` call. A face shrunk by more than 2x is sampled from a copy of the part of its
    frame it reads, reduced by a power of two (with ``shrink``, pixel-area averaging by
    default), so it does not alias; the last step uses bicubic sampling. Enlarged faces use
    bilinear sampling.

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
        INTER_AREA (default): faces shrunk by more than 2x are sampled from an area-averaged
        reduction, without aliasing. INTER_LINEAR: always sample the frame directly (faster,
        aliases fine detail when shrinking a lot).
    """
    matrices = np.asarray(frame_to_aligned, dtype=np.float64)
    ids = np.asarray(frame_ids, dtype=np.int64)
    channels = images[0].shape[2] if images else 3
    out = np.zeros((len(ids), size, size, channels), dtype=np.uint8)
    if not len(ids):
        return out
    scales = _scales(matrices)
    # Power-of-two reduction level of the source for each face: 0 keeps the frame. Only
    # area averaging is anti-aliased; the fast (linear) mode samples the frame directly.
    reduce = shrink == cv2.INTER_AREA
    levels = np.where(reduce & (scales < 0.5),
                      np.floor(np.log2(1.0 / np.maximum(scales, 1e-12))), 0).astype(np.int64)
    # Where each aligned pixel centre comes from, in frame pixels.
    to_frame = np.asarray(np.linalg.inv(matrices)[:, :2], dtype=np.float64)  # aligned -> frame
    # Shrinking ends with bicubic sampling when anti-aliasing, enlarging uses bilinear.
    cubic = reduce & (scales < 1.0)
    order = np.lexsort((cubic, levels, ids))
    keys = np.stack([ids[order], levels[order], cubic[order]], axis=1)
    breaks = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    per_call = max(1, (_REMAP_LIMIT - 1) // size)  # OpenCV's remap takes < 32767 columns
    bounds = [0, *breaks.tolist(), len(order)]
    # Sampling maps for every face at once, in strip layout (size, N * size), faces in
    # ``order``: the faces of one call are then a slice of columns.
    map_x, map_y = _sampling_maps(to_frame[order], size)
    strip = np.zeros((size, len(ids) * size, channels), dtype=np.uint8)
    for first, stop in itertools.pairwise(bounds):
        face = int(order[first])
        source = images[int(ids[face])]
        interp = cv2.INTER_CUBIC if cubic[face] else cv2.INTER_LINEAR
        level = int(levels[face])
        # Faces read at full resolution share a call; a reduced face reduces only the part of
        # the frame it reads, so it goes alone.
        step = per_call if level == 0 else 1
        for start in range(first, stop, step):
            end = min(start + step, stop)
            columns = slice(start * size, end * size)
            if level:
                reduced = _reduce(source, to_frame[order[start:end]], size, 2 ** level, shrink)
                if reduced is None:
                    continue  # the crop lies wholly outside its frame: black
                region, local = reduced
                local_x, local_y = _sampling_maps(local, size)
                strip[:, columns] = cv2.remap(region, local_x, local_y, interp,
                                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                continue
            strip[:, columns] = cv2.remap(source, map_x[:, columns], map_y[:, columns], interp,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out[order] = strip.reshape(size, len(ids), size, channels).transpose(1, 0, 2, 3)
    return out
