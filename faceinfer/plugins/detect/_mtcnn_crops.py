"""Crops for R-Net and O-Net in the "mtcnn" detector (:mod:`faceinfer.plugins.detect.mtcnn`):
where they are cut from (the input and the levels of P-Net's mosaic) and cutting them, one
``grid_sample`` per source for all the boxes of a batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from faceinfer.plugins.detect._mtcnn_pyramid import MosaicLayout

CROP_SOURCE_SCALE = 1.57
"""Crops are sampled bilinearly from the pyramid level (or the input) where the box is nearest
to this many times the crop's side. Measured against exact area-averaged crops on the sample
images, R-Net scores differ by 0.011 on average (0.022 on candidates above 0.5) at 1.57, by
0.024 (0.047) at 1.0 (the level nearest to the crop's own scale, too blurred by the bilinear
filter on top of the level's own area filter), and by 0.012 (0.018) when sampling at twice the
resolution and averaging down, which costs four times as much. facenet-pytorch's own crops
(whole-pixel boxes, adaptive average pooling) differ from exact ones by 0.039 (0.064)."""


class Sources(NamedTuple):
    """Where R-Net's and O-Net's crops are cut from (see :func:`cut_crops`)."""

    input: torch.Tensor
    """The input (N, S + gap, S, 3), 0..2, each frame followed by black rows."""
    mosaic: torch.Tensor
    """The mosaic (N, H + gap, W, 3), 0..2, likewise."""
    layout: MosaicLayout
    """The mosaic's layout."""


def crop_sources(layout: MosaicLayout, input_size: int) -> npt.NDArray[np.float64]:
    """Where crops can be cut from: the input, then each level's part in the mosaic.

    Returns
    -------
    (L + 1, 7) rows: the source's scale from input pixels; the shift (x, y) from level pixels
    to the source's (mosaic) pixels; the span of level columns (first, end) and rows held.
    """
    rows = [(1.0, 0, 0, 0, input_size, 0, input_size)]
    for level in layout.levels:
        height, width = level.shape
        rows.append((level.size / input_size, level.left - level.col, level.top - level.row,
                     level.col, level.col + width, level.row, level.row + height))
    return np.array(rows, dtype=np.float64)


def cut_crops(sources: Sources, boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64],
              size: int, input_size: int) -> tuple[torch.Tensor, npt.NDArray[np.intp]]:
    """(K, 3, size, size) crops of the square boxes (K, 4) of frames (K,), 0..2, black
    outside the input, in the order given by the returned (K,) box indices (those cut from
    the input, then those cut from the mosaic), for an input of side ``input_size``.

    Each box is sampled bilinearly, one sample per crop pixel, from the pyramid level (or
    the input itself) where its side is nearest to :data:`CROP_SOURCE_SCALE` times
    ``size``: the levels' area averaging keeps the crops free of aliasing, and the mild
    shrink keeps them about as sharp as exact area-averaged crops. Each source's frames
    are stacked into one tall image, so one ``grid_sample`` cuts all its boxes.

    The mosaic holds only the parts of the levels that are not black: samples of a level
    outside its part by more than the black gap around it are blacked out, as are those
    outside the input.
    """
    import torch  # noqa: PLC0415
    from torch.nn import functional  # noqa: PLC0415

    table = crop_sources(sources.layout, input_size)
    side = boxes[:, 2] - boxes[:, 0]
    wanted = np.log(CROP_SOURCE_SCALE * size / side)
    choice = np.abs(np.log(table[:, 0])[None, :] - wanted[:, None]).argmin(axis=1)
    scale, shift_x, shift_y, low_x, high_x, low_y, high_y = (
        table[choice, column][:, None] for column in range(7))
    steps = (np.arange(size) + 0.5) / size
    xs = (boxes[:, :1] + side[:, None] * steps) * scale  # level pixels, edges at integers
    ys = (boxes[:, 1:2] + side[:, None] * steps) * scale
    # Outside its part (or the input) by more than the black gap, a sample would read a
    # neighbour: it is blacked out instead.
    inside = ((ys > low_y - 1.0) & (ys < high_y + 1.0))[:, :, None] & (
        (xs > low_x - 1.0) & (xs < high_x + 1.0))[:, None, :]
    device = sources.input.device
    parts: list[torch.Tensor] = []
    order = [np.flatnonzero(choice == 0), np.flatnonzero(choice > 0)]
    for source, picked in zip((sources.input, sources.mosaic), order, strict=True):
        if not len(picked):
            continue
        count, height, width = source.shape[:3]
        tall = source.reshape(1, count * height, width, 3).permute(0, 3, 1, 2)
        grid_x = (xs[picked] + shift_x[picked]) * (2.0 / width) - 1.0
        grid_y = ((ys[picked] + shift_y[picked] + (frames[picked] * height)[:, None])
                  * (2.0 / (count * height)) - 1.0)
        grid = np.empty((1, len(picked), size, size, 2), dtype=np.float32)
        grid[0, :, :, :, 0] = grid_x[:, None, :]
        grid[0, :, :, :, 1] = grid_y[:, :, None]
        sampled = functional.grid_sample(
            tall, torch.from_numpy(grid).to(device).flatten(2, 3), mode="bilinear",
            padding_mode="zeros", align_corners=False)  # (1, 3, K, size * size)
        mask = torch.from_numpy(inside[picked, None].astype(np.float32)).to(device)
        parts.append(sampled[0].transpose(0, 1).reshape(len(picked), 3, size, size) * mask)
    crops = parts[0] if len(parts) == 1 else torch.cat(parts)
    return crops.contiguous(memory_format=torch.channels_last), np.concatenate(order)
