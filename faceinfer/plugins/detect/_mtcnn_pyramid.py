"""P-Net's image pyramid for the "mtcnn" detector (:mod:`faceinfer.plugins.detect.mtcnn`): the
pyramid levels, their packing into one mosaic (whole, or only the parts a P-Net window can see
past a letterbox: the content box), the window of each P-Net output cell, and filling the mosaic
from the input (OpenCV on the CPU, torch ops elsewhere).

A part's place in the mosaic and first row and column are even, so P-Net on the mosaic gives on
each part exactly what it gives on that level alone (:func:`pack_levels`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from faceinfer.plugins.detect._mtcnn_nets import PNET_CELL, PNET_STRIDE

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PyramidLevel:
    """One level of P-Net's image pyramid, the part of it P-Net scans, and where that part sits
    in the mosaic P-Net runs on. The part is the whole level unless the input has black borders
    (see :func:`level_parts`)."""

    size: int
    """The level's side in pixels (even, so P-Net's pooling never reads past it)."""
    top: int
    """The row of the part's top edge in the mosaic (even)."""
    left: int
    """The column of the part's left edge in the mosaic (even)."""
    row: int = 0
    """The level row of the part's top edge (even)."""
    col: int = 0
    """The level column of the part's left edge (even)."""
    height: int = -1
    """The part's height in level pixels (even, at least 12); -1 for the level's side."""
    width: int = -1
    """The part's width in level pixels (even, at least 12); -1 for the level's side."""

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the part."""
        return (self.size if self.height < 0 else self.height,
                self.size if self.width < 0 else self.width)

    @property
    def in_level(self) -> tuple[slice, slice]:
        """The part's rows and columns in the level."""
        height, width = self.shape
        return slice(self.row, self.row + height), slice(self.col, self.col + width)

    @property
    def in_mosaic(self) -> tuple[slice, slice]:
        """The part's rows and columns in the mosaic."""
        height, width = self.shape
        return slice(self.top, self.top + height), slice(self.left, self.left + width)


MOSAIC_GAP = 2
"""Black pixels between the levels of the mosaic, so bilinear crops near a level's edge read
black as they would past the edge of the level alone."""
CONTENT_STEP = 16
"""The box of an input's non-black pixels is widened to multiples of this many pixels before a
mosaic is laid out for it, so that small changes in dark content reuse the same layout."""


def pyramid_sizes(input_size: int, min_size: int, factor: float) -> list[int]:
    """The sides of P-Net's pyramid levels, largest first: the input scaled by
    ``12 / min_size * factor ** k`` while the scaled side is at least 12 pixels (P-Net's window),
    each rounded to an even number."""
    sizes: list[int] = []
    scale = PNET_CELL / min_size
    while input_size * scale >= PNET_CELL:
        size = max(PNET_CELL, 2 * round(input_size * scale / 2))
        if not sizes or size < sizes[-1]:
            sizes.append(size)
        scale *= factor
    return sizes


def plan_pyramid(input_size: int, min_size: int, factor: float
                 ) -> tuple[tuple[PyramidLevel, ...], int, int]:
    """Lay out P-Net's whole image pyramid (:func:`pyramid_sizes`) as one mosaic, so a single
    P-Net pass covers every scale (see :func:`pack_levels`).

    Returns
    -------
    The levels, largest first, and the mosaic's height and width.
    """
    return pack_levels([PyramidLevel(size, 0, 0)
                        for size in pyramid_sizes(input_size, min_size, factor)])


def pack_levels(parts: list[PyramidLevel]) -> tuple[tuple[PyramidLevel, ...], int, int]:
    """Place the parts of pyramid levels (largest first; ``top`` and ``left`` ignored) in one
    mosaic.

    Each part's place and first level row and column are even: P-Net has stride 2 and sees
    12 x 12 windows, so every output cell whose window lies inside a part is exactly what P-Net
    gives on that level alone. Parts are packed, in order, into columns as tall as the first
    part, each into the first column where it fits below the parts already there (and is no
    wider than the column's first part), with :data:`MOSAIC_GAP` pixels between them.

    Returns
    -------
    The parts placed, and the mosaic's height and width.
    """
    if not parts:
        return (), 0, 0
    height = parts[0].shape[0]
    columns: list[list[int]] = []  # [left, width, bottom of the last part placed]
    placed: list[PyramidLevel] = []
    for part in parts:
        rows, cols = part.shape
        for column in columns:
            top = column[2] + MOSAIC_GAP
            if top + rows <= height and cols <= column[1]:
                column[2] = top + rows
                break
        else:
            left = columns[-1][0] + columns[-1][1] + MOSAIC_GAP if columns else 0
            column = [left, cols, rows]
            columns.append(column)
            top = 0
        placed.append(dataclasses.replace(part, top=top, left=column[0]))
    return tuple(placed), height, columns[-1][0] + columns[-1][1]


def cell_span(size: int, ratio: float, start: int, stop: int) -> tuple[int, int]:
    """The even span [first, last) of a level's rows (or columns) that P-Net must scan to see
    every window touching input rows [start, stop): the windows wholly outside see only black.

    Parameters
    ----------
    size:
        The level's side.
    ratio:
        Input pixels per level pixel.
    start, stop:
        The input rows holding content.
    """
    # Level pixels averaging any content, widened by one for rounding in the resize.
    low = max(int(np.floor(start / ratio)) - 1, 0)
    high = min(int(np.ceil(stop / ratio)) + 1, size)
    cells = size // 2 - 5  # cell k sees level rows 2k to 2k + 11
    first = min(max((low - PNET_CELL) // 2 + 1, 0), cells - 1)
    last = max(min((high + 1) // 2, cells), first + 1)
    return 2 * first, 2 * last + PNET_CELL - 2


def level_parts(sizes: list[int], input_size: int, box: tuple[int, int, int, int]
                ) -> list[PyramidLevel]:
    """The part of each pyramid level that P-Net must scan when only the input pixels in
    ``box`` (top, bottom, left, right; input pixels, exclusive ends) are not black: the windows
    wholly outside see only black, which P-Net scores far below any threshold in use (see
    :attr:`MTCNNDetector.black_score`). Places in the mosaic are left at 0."""
    top, bottom, left, right = box
    parts = []
    for size in sizes:
        ratio = input_size / size
        row, row_end = cell_span(size, ratio, top, bottom)
        col, col_end = cell_span(size, ratio, left, right)
        parts.append(PyramidLevel(size, 0, 0, row, col, row_end - row, col_end - col))
    return parts


def pyramid_cells(levels: tuple[PyramidLevel, ...], height: int, width: int, input_size: int
                  ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """For each cell of P-Net's output on the mosaic: its level, and its window in input pixels.

    Returns
    -------
    (H', W') the level index of each output cell, -1 where the cell's window is not inside a
    level's part; and (H', W', 4) the window (left, top, right, bottom) mapped back to the input.
    """
    rows, cols = max(height // 2 - 5, 0), max(width // 2 - 5, 0)
    level_of = np.full((rows, cols), -1, dtype=np.int64)
    windows = np.zeros((rows, cols, 4), dtype=np.float64)
    for index, level in enumerate(levels):
        part_rows, part_cols = level.shape
        cell_rows, cell_cols = part_rows // 2 - 5, part_cols // 2 - 5
        top, left = level.top // 2, level.left // 2
        area = (slice(top, top + cell_rows), slice(left, left + cell_cols))
        level_of[area] = index
        ratio = input_size / level.size
        start_x = (level.col + np.arange(cell_cols) * PNET_STRIDE) * ratio
        start_y = (level.row + np.arange(cell_rows) * PNET_STRIDE) * ratio
        windows[(*area, 0)] = start_x[None, :]
        windows[(*area, 1)] = start_y[:, None]
        windows[(*area, 2)] = start_x[None, :] + PNET_CELL * ratio
        windows[(*area, 3)] = start_y[:, None] + PNET_CELL * ratio
    return level_of, windows


def content_box(frames: npt.NDArray[np.float32], step: int = CONTENT_STEP
                ) -> tuple[int, int, int, int] | None:
    """The box (top, bottom, left, right; exclusive ends) of the pixels of the frames
    (N, S, S, 3), -1..1, that are not black (-1 in every channel) in any frame, widened to
    multiples of ``step`` pixels within the frame; None if every pixel is black."""
    size = frames.shape[1]
    # The frames' maximum first (contiguous, fast), then each row and column.
    lit = (frames.max(axis=0) > -1.0).reshape(size, size * 3)
    rows = np.flatnonzero(lit.any(axis=1))
    cols = np.flatnonzero(lit.any(axis=0).reshape(size, 3).any(axis=1))
    if not len(rows):
        return None

    def widen(first: int, last: int) -> tuple[int, int]:
        return first // step * step, min(-(-(last + 1) // step) * step, size)

    return (*widen(int(rows[0]), int(rows[-1])), *widen(int(cols[0]), int(cols[-1])))


@dataclass(frozen=True, eq=False)
class MosaicLayout:
    """P-Net's mosaic for one content box: the level parts it holds and its output cells."""

    levels: tuple[PyramidLevel, ...]
    """The level parts and their places in the mosaic, largest first."""
    shape: tuple[int, int]
    """(height, width) of the mosaic."""
    level_of: npt.NDArray[np.int64]
    """(H', W') the level of each P-Net output cell, -1 where its window is in no part."""
    windows: npt.NDArray[np.float64]
    """(H', W', 4) each output cell's window (left, top, right, bottom) in input pixels."""
    valid: torch.Tensor
    """``level_of >= 0`` as a bool tensor on the plugin's device."""


def resized_span(size: int, input_size: int, span: slice) -> tuple[int, int, slice]:
    """The span of a level's rows (or columns) to resize for the part ``span`` of them, and the
    input rows it is resized from.

    Level pixel edges meet input pixel edges every ``size / gcd(size, input_size)`` level
    pixels: a span widened to such edges is the area resize of the input between them, to the
    same values (OpenCV's weights depend on the position within that period only). Where the
    period is long the whole level is resized.

    Returns
    -------
    The first and end level rows resized, and the input rows they cover.
    """
    period = size // math.gcd(size, input_size)
    first = span.start // period * period
    end = min(-(-span.stop // period) * period, size)
    return first, end, slice(first * input_size // size, end * input_size // size)


def fill_mosaic_cpu(frames: npt.NDArray[np.float32], mosaic: torch.Tensor,
                    layout: MosaicLayout, input_size: int) -> None:
    """Write the level parts of the layout for the frames (N, S, S, 3), -1..1, into the
    mosaic (N, H, W, 3), 0..2, on the CPU: each level is OpenCV's INTER_AREA resize (exact
    pixel area averages), 26 ms a whole 640 frame on one core, against 46 ms for
    :func:`fill_mosaic_torch` and about 60 ms for ``F.interpolate(mode="area")`` (which
    averages whole-pixel bins, not exact areas). Only the input under a part is resized
    where the level's pixel grid meets the input's often enough (see
    :func:`resized_span`)."""
    import cv2  # noqa: PLC0415

    target = mosaic.numpy()
    size = input_size
    for level in layout.levels:
        rows, cols = level.in_level
        top, bottom, source_rows = resized_span(level.size, size, rows)
        left, right, source_cols = resized_span(level.size, size, cols)
        held = (slice(rows.start - top, rows.stop - top),
                slice(cols.start - left, cols.stop - left))
        for index, frame in enumerate(frames):
            resized = cv2.resize(frame[source_rows, source_cols], (right - left, bottom - top),
                                 interpolation=cv2.INTER_AREA)
            np.add(resized[held], 1.0, out=target[index][level.in_mosaic])


def corner_tables(levels: tuple[PyramidLevel, ...], input_size: int, device: torch.device
                  ) -> dict[str, torch.Tensor]:
    """The tables :func:`fill_mosaic_torch` reads, on ``device``: ``corner_index`` and
    ``corner_frac``, for the pixel edges of each of the (whole) levels in turn, the input pixel
    each lies in and how far into it."""
    import torch  # noqa: PLC0415

    size = input_size
    corners = np.concatenate([np.arange(level.size + 1) * (size / level.size)
                              for level in levels])
    index = np.minimum(np.floor(corners), size - 1)
    return {
        "corner_index": torch.from_numpy(index.astype(np.int64)).to(device),
        "corner_frac": torch.from_numpy((corners - index).astype(np.float32)).to(device)}


def fill_mosaic_torch(frames: torch.Tensor, mosaic: torch.Tensor, layout: MosaicLayout,
                      tables: Mapping[str, torch.Tensor],
                      buffer: Callable[[str, tuple[int, ...]], torch.Tensor]) -> None:
    """Write the level parts of the layout for the frames (N, S, S, 3), -1..1, into the
    mosaic (N, H, W, 3), 0..2, with torch ops (for GPUs).

    Each level pixel is the exact area average of the input under it (as OpenCV's
    INTER_AREA), computed separably from running sums: down the columns for all levels at
    once, then along the rows of each level. (Running sums along one axis stay small
    enough for float32; a 2D summed-area table would not.)

    ``tables`` are the whole pyramid's :func:`corner_tables`; ``buffer(name, shape)`` gives a
    work tensor kept between calls.
    """
    import torch  # noqa: PLC0415

    count, size = frames.shape[0], frames.shape[1]
    index, frac = tables["corner_index"], tables["corner_frac"]
    corners = len(index)
    running = buffer("running", (count, size + 1, size, 3))
    torch.cumsum(frames, dim=1, out=running[:, 1:])
    low = buffer("low", (count, corners, size, 3))
    high = buffer("high", (count, corners, size, 3))
    torch.index_select(running, 1, index, out=low)
    torch.index_select(running, 1, index + 1, out=high)
    torch.lerp(low, high, frac[None, :, None, None], out=low)
    # Row sums of every level's pixel rows (those between two levels mean nothing).
    rows = high[:, :-1]
    torch.sub(low[:, 1:], low[:, :-1], out=rows)
    running = buffer("running_rows", (count, size + 1, corners - 1, 3))
    torch.cumsum(rows.transpose(1, 2), dim=1, out=running[:, 1:])
    start = 0
    for level in layout.levels:
        span = level.size + 1
        corner_index, corner_frac = index[start:start + span], frac[start:start + span]
        block = running[:, :, start:start + level.size]
        sums = torch.lerp(block.index_select(1, corner_index),
                          block.index_select(1, corner_index + 1),
                          corner_frac[None, :, None, None])
        target = mosaic[(slice(None), *level.in_mosaic)]
        level_rows, level_cols = level.in_level
        torch.sub(sums[:, level_cols.start + 1:level_cols.stop + 1, level_rows],
                  sums[:, level_cols.start:level_cols.stop, level_rows],
                  out=target.transpose(1, 2))
        target.mul_((level.size / size) ** 2).add_(1.0)
        start += span
