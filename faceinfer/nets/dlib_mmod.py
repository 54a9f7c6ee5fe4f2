"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) in PyTorch.

The detector is three parts, each rebuilt from dlib 20's ``input_rgb_image_pyramid``,
``loss_mmod_`` and ``image_pyramid.h`` so that it gives dlib's own rectangles:

* **Tiled pyramid** (:func:`pyramid_layout`, :func:`build_pyramid`): the image and its
  ``pyramid_down<6>`` levels, each ``floor(5/6)`` of the one before and resized from it with
  align-corners bilinear, down to the last level of at least 5 rows. The levels are tiled into
  one tensor: down a first column from the top left, then back up a second column, bottom-right
  aligned, with ``padding`` pixels between tiles and ``outer_padding`` around them. Pixels are
  normalised as ``(value - mean) / 256`` in RGB order; the background is 0 after normalising.
* **Network** (:class:`MMODNet`): 5x5 convolutions (three of stride 2, three of stride 1) each
  with its batch norm folded in and a ReLU, then one 9x9 convolution giving a score map with one
  channel per detector window.
* **Decoding** (:func:`decode`): score map cell (c, r) is the tensor point
  ``(sx * c + ox, sy * r + oy)`` (here (8c + 14, 8r + 14)); the window is centred on it
  (80 x 80: +-39.5 px). The tile nearest the window's rounded centre is its pyramid level; the
  window is moved to that tile's origin and mapped up level by level with ``p * 1.2 + 0.3``,
  then rounded. Cells scoring above the threshold are sorted by score, highest first, and
  greedy non-maximum suppression drops a box that overlaps a kept one by dlib's test: the
  intersection over the area of the *bounding box of both* above ``nms_iou``, or the
  intersection over either box's area above ``nms_covered``.

* **Upsampling** (:func:`pyramid_up`, :func:`rect_down`): as the Python binding's
  ``upsample_num_times``, dlib's ``pyramid_up`` with ``pyramid_down<2>`` enlarges the image to
  (2H + 1) x (2W + 2) with align-corners bilinear, truncated to 8 bits, once per step; boxes come
  back with ``p / 2 - (1.25, 0.75)`` per step, rounded.

Coordinates: rectangles are dlib's, in image pixels with pixel-centre integer coordinates and
inclusive right and bottom edges; :class:`MMODDetector` returns them with exclusive edges
(``right + 1``, ``bottom + 1``), like every box in faceinfer.

Parity with ``dlib.cnn_face_detection_model_v1`` on CPU (11 photos of ``../shared/data``): the
same rectangles at ``upsample`` 0 and 1, scores within about 2e-5 at 0 (dlib's SSE bilinear
resize accumulates positions in float32) and 1.1e-3 at 1 (a pixel of the enlarged image
truncated the other way).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual name)

from faceinfer.formats.dlib_dat import DatFormatError, DatLayer, DatNetwork
from faceinfer.nets._folding import conv2d, folded_weights

if TYPE_CHECKING:
    from collections.abc import Iterator

PYRAMID_N = 6
"""dlib's ``pyramid_down<6>``: each level is (N - 1) / N of the one before."""
MIN_LEVEL_ROWS = 5
"""The pyramid stops before a level of fewer rows."""
_RATE = (PYRAMID_N - 1.0) / PYRAMID_N
_UP_RATIO = PYRAMID_N / (PYRAMID_N - 1.0)
_UP_SHIFT = 0.3
"""``pyramid_down<N>::point_up``: ``p * N / (N - 1) + 0.3``."""
_NORM_SCALE = 256.0
"""dlib divides the mean-subtracted pixels by 256 (not 255, no std)."""

Tile = tuple[int, int, int, int]
"""A pyramid level's place in the tiled tensor: (left, top, width, height) in tensor pixels."""


@dataclass(frozen=True)
class PyramidLayout:
    """Where each level of an image's pyramid lies in the tiled tensor.

    Attributes
    ----------
    tiles:
        (left, top, width, height) of each level, level 0 (the image itself) first.
    shape:
        (rows, cols) of the tiled tensor.
    """

    tiles: tuple[Tile, ...]
    shape: tuple[int, int]


def _level_sizes(rows: int, cols: int) -> list[tuple[int, int]]:
    """(rows, cols) of each pyramid level, the image first (dlib's
    ``find_pyramid_down_output_image_size`` with ``pyramid_down<6>``)."""
    sizes = [(rows, cols)]
    while True:
        rows, cols = math.floor(_RATE * rows), math.floor(_RATE * cols)
        if rows * cols == 0 or rows < MIN_LEVEL_ROWS:
            return sizes
        sizes.append((rows, cols))


def _first_column_height(sizes: Sequence[tuple[int, int]], padding: int) -> int:
    """Rows taken by the first column of tiles: levels go down it until the next one fits beside
    the previous one and the column holds at least half the levels' height."""
    first_rows, first_cols = sizes[0]
    total = sum(rows + padding for rows, _ in sizes) - 2 * padding
    height = previous_cols = 0
    for rows, cols in sizes:
        if (cols <= first_cols - previous_cols - padding
                and (height - first_rows) * 2 >= total - first_rows):
            break
        height += rows + padding
        previous_cols = cols
    return height - padding


def _overlaps(a: Tile, b: Tile) -> bool:
    """True if two tiles share a pixel."""
    return (max(a[0], b[0]) < min(a[0] + a[2], b[0] + b[2])
            and max(a[1], b[1]) < min(a[1] + a[3], b[1] + b[3]))


def pyramid_layout(rows: int, cols: int, padding: int, outer_padding: int) -> PyramidLayout:
    """dlib's tiled pyramid layout for an image of ``rows`` x ``cols``
    (``compute_tiled_image_pyramid_details``).

    The first column holds the image and the levels below it at the left, left-aligned; the
    rest go back up a second column, right-aligned, each ``padding`` rows above the one before,
    until one would overlap the image (that level and the smaller ones are dropped).
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"pyramid_layout: expected an image of at least 1x1, "
                         f"got {rows}x{cols}")
    sizes = _level_sizes(rows, cols)
    height = _first_column_height(sizes, padding)
    tiles: list[Tile] = []
    top = outer_padding
    for level_rows, level_cols in sizes:
        if top >= height + outer_padding:
            break
        tiles.append((outer_padding, top, level_cols, level_rows))
        top += level_rows + padding
    bottom = top - padding  # exclusive bottom of the next tile in the second column
    right = outer_padding + cols  # exclusive right edge of the second column
    for level_rows, level_cols in sizes[len(tiles):]:
        tile = (right - level_cols, bottom - level_rows, level_cols, level_rows)
        if _overlaps(tile, tiles[0]):
            break
        tiles.append(tile)
        bottom -= level_rows + padding
    return PyramidLayout(tuple(tiles), (height + 2 * outer_padding, cols + 2 * outer_padding))


def build_pyramid(images: torch.Tensor, layout: PyramidLayout, mean: torch.Tensor
                  ) -> torch.Tensor:
    """The tiled, normalised pyramid of a batch of same-sized images.

    Parameters
    ----------
    images:
        (N, H, W, 3) RGB, uint8 or float with values 0 to 255, on the net's device.
    layout:
        :func:`pyramid_layout` for (H, W).
    mean:
        (3,) float32 mean R, G, B subtracted before the division by 256.

    Returns
    -------
    (N, 3, rows, cols) float32 in channels-last memory, zero outside the tiles.
    """
    rows, cols = layout.shape
    out = images.new_zeros((len(images), rows, cols, 3), dtype=torch.float32)
    out = out.permute(0, 3, 1, 2)
    level = ((images.to(torch.float32) - mean) / _NORM_SCALE).permute(0, 3, 1, 2)
    for index, (left, top, width, height) in enumerate(layout.tiles):
        if index:
            level = F.interpolate(level, size=(height, width), mode="bilinear",
                                  align_corners=True)
        out[:, :, top:top + height, left:left + width] = level
    return out


def _conv(block: list[DatLayer], channels: int) -> nn.Conv2d:
    """A torch convolution holding a [con, optional norm, ...] block's convolution with its
    norm folded in, checked against its input and the norm's width."""
    layer = block[0]
    weight = np.asarray(layer.fields["weight"])
    if weight.ndim != 4 or weight.shape[1] != channels:
        raise DatFormatError(f"{layer.tag} at byte {layer.offset}: expected filters "
                             f"(out, {channels}, rows, cols), got {weight.shape}")
    norm = next((item for item in block[1:] if item.kind != "relu"), None)
    if norm is not None:
        gamma, beta = (np.asarray(norm.fields[name]).reshape(-1) for name in ("gamma", "beta"))
        if gamma.shape != (weight.shape[0],) or beta.shape != gamma.shape:
            raise DatFormatError(f"{norm.tag} at byte {norm.offset}: expected "
                                 f"{weight.shape[0]} channels, got {gamma.shape[0]}")
    return conv2d(*folded_weights(layer, norm), layer.fields["stride"], layer.fields["padding"])


def _blocks(layers: Sequence[DatLayer]) -> Iterator[list[DatLayer]]:
    """The layers grouped as [con, optional norm, optional relu] blocks.

    Raises
    ------
    DatFormatError
        If a layer is of a kind this network does not have, or out of place.
    """
    block: list[DatLayer] = []
    for layer in layers:
        expected = ("con",) if not block else ("affine", "bn_con", "relu", "con")
        if layer.kind not in expected or (layer.kind in ("affine", "bn_con")
                                          and len(block) != 1):
            raise DatFormatError(f"{layer.tag} at byte {layer.offset}: expected one of "
                                 f"{expected} in the MMOD network, got {layer.kind}")
        if layer.kind == "con" and block:
            yield block
            block = []
        block.append(layer)
    if block:
        yield block


class MMODNet(nn.Module):
    """The MMOD network: tiled pyramid (N, 3, H, W) -> score map (N, windows, H', W').

    Built from a :class:`~faceinfer.formats.dlib_dat.DatNetwork`: each convolution with the
    norm layer after it folded in (batch norms with the file's eps), and the ReLUs.

    Raises
    ------
    DatFormatError
        If the network is not a chain of convolutions, norms and ReLUs from 3 channels to one
        score channel per detector window.
    """

    def __init__(self, network: DatNetwork) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        convs: list[nn.Conv2d] = []
        channels = 3
        for block in _blocks(network.layers):
            conv = _conv(block, channels)
            convs.append(conv)
            modules.append(conv)
            modules += [nn.ReLU(inplace=True) for layer in block[1:] if layer.kind == "relu"]
            channels = conv.out_channels
        windows = len(network.loss.get("windows", ()))
        if not convs or channels != windows:
            raise DatFormatError(f"{network.path}: expected an MMOD network ending in "
                                 f"{windows} score channels, got {channels}")
        self.body = nn.Sequential(*modules)
        self.cell_to_input = _cell_to_input(convs)
        """((sx, sy), (ox, oy)): score cell (c, r) covers tensor point (sx c + ox, sy r + oy)."""

    def forward(self, pyramid: torch.Tensor) -> torch.Tensor:
        """Scores of every window at every cell of the tiled pyramid."""
        out: torch.Tensor = self.body(pyramid)
        return out


def _cell_to_input(convs: Sequence[nn.Conv2d]) -> tuple[tuple[int, int], tuple[int, int]]:
    """dlib's ``map_output_to_input`` through the convolutions, output side first: each maps
    p to ``p * stride - padding + size // 2``; returns the scale and offset (x, y)."""
    scale, offset = [1, 1], [0, 0]
    for conv in reversed(convs):
        for axis, dim in ((0, 1), (1, 0)):  # x is the columns (dim 1), y the rows (dim 0)
            stride, padding = int(conv.stride[dim]), conv.padding[dim]
            assert isinstance(padding, int)
            offset[axis] = offset[axis] * stride - padding + int(conv.kernel_size[dim]) // 2
            scale[axis] *= stride
    return (scale[0], scale[1]), (offset[0], offset[1])


@dataclass(frozen=True)
class Decoding:
    """How score cells become rectangles: the net's geometry and the loss layer's settings.

    Attributes
    ----------
    cell_scale, cell_offset:
        Score cell (c, r) covers tensor point (sx c + ox, sy r + oy): ((sx, sy), (ox, oy)).
    windows:
        (width, height) of the detector window of each score channel.
    nms_iou:
        Overlap above which NMS drops a box: intersection over the bounding box of both.
    nms_covered:
        Share of either box covered above which NMS drops a box.
    """

    cell_scale: tuple[int, int]
    cell_offset: tuple[int, int]
    windows: tuple[tuple[int, int], ...]
    nms_iou: float
    nms_covered: float


def _round_half_up(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """dlib's float-to-integer point conversion: ``floor(x + 0.5)``."""
    return np.floor(values + 0.5).astype(np.int64)


def _round_rect(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """dlib's ``drectangle`` to ``rectangle`` conversion: halves rounded away from zero."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def nearest_tiles(points: npt.NDArray[np.int64], layout: PyramidLayout) -> npt.NDArray[np.int64]:
    """The pyramid level of each (x, y) tensor point (K, 2): the tile containing it, else the
    nearest one (Euclidean distance to its nearest pixel, the first on ties; dlib's
    ``nearest_rect``)."""
    tiles = np.array(layout.tiles, dtype=np.int64).reshape(-1, 4)
    low = tiles[:, :2]
    high = tiles[:, :2] + tiles[:, 2:] - 1
    nearest = np.clip(points[:, None, :], low[None], high[None])
    gap = (nearest - points[:, None, :]).astype(np.float64)
    distance = np.sqrt(gap[..., 0] * gap[..., 0] + gap[..., 1] * gap[..., 1])
    return np.asarray(np.argmin(distance, axis=1), dtype=np.int64)


def tensor_to_image(rects: npt.NDArray[np.float64], layout: PyramidLayout
                    ) -> npt.NDArray[np.int64]:
    """(K, 4) rectangles (left, top, right, bottom) in the tiled tensor -> integer rectangles
    in the image, inclusive edges (dlib's ``tiled_pyramid_to_image`` then rounding).

    Each is moved to the origin of the tile nearest its rounded centre and mapped up that
    tile's level count of times with ``p * 1.2 + 0.3``."""
    centres = _round_half_up((rects[:, :2] + rects[:, 2:]) / 2)
    levels = nearest_tiles(centres, layout)
    origins = np.array(layout.tiles, dtype=np.float64).reshape(-1, 4)[levels, :2]
    image = rects - np.tile(origins, 2)
    for step in range(int(levels.max(initial=0))):
        up = levels > step
        image[up] = image[up] * _UP_RATIO + _UP_SHIFT
    return _round_rect(image)


def overlapping(box: npt.NDArray[np.int64], kept: npt.NDArray[np.int64], iou: float,
                covered: float) -> npt.NDArray[np.bool_]:
    """Which of the (K, 4) inclusive rectangles ``kept`` overlap ``box`` by dlib's NMS test:
    intersection over the area of the bounding box of both above ``iou``, or intersection over
    either one's area above ``covered``."""
    def area(rects: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        sides = np.maximum(rects[..., 2:] - rects[..., :2] + 1, 0)
        return np.asarray(sides[..., 0] * sides[..., 1], dtype=np.float64)

    inner = area(np.concatenate([np.maximum(kept[:, :2], box[:2]),
                                 np.minimum(kept[:, 2:], box[2:])], axis=1))
    outer = area(np.concatenate([np.minimum(kept[:, :2], box[:2]),
                                 np.maximum(kept[:, 2:], box[2:])], axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = ((inner / outer > iou) | (inner / area(kept) > covered)
               | (inner / area(box) > covered))
    return np.asarray((inner > 0) & hit, dtype=np.bool_)


def suppress(rects: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], iou: float,
             covered: float) -> npt.NDArray[np.int64]:
    """Greedy NMS: indices of the rectangles kept, highest score first; each is kept unless it
    overlaps (:func:`overlapping`) one kept before it."""
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable").tolist():
        if not kept or not overlapping(rects[index], rects[kept], iou, covered).any():
            kept.append(index)
    return np.array(kept, dtype=np.int64)


def decode(scores: torch.Tensor, layout: PyramidLayout, decoding: Decoding,
           threshold: float = 0.0) -> list[npt.NDArray[np.float32]]:
    """Detections from a batch of score maps.

    Parameters
    ----------
    scores:
        (N, windows, H', W') score maps of N tiled pyramids, any device.
    layout:
        The pyramids' layout.
    decoding:
        The net's cell geometry and the NMS settings.
    threshold:
        Cells scoring above it are detections (dlib's ``adjust_threshold``; 0 is its own cut).

    Returns
    -------
    One (M, 5) float32 array per image: (left, top, right, bottom, score), image pixels,
    exclusive right and bottom edges, highest score first.
    """
    found = torch.nonzero(scores > threshold)
    values = scores[tuple(found.T)].to(torch.float32).cpu().numpy()
    sample, channel, row, col = found.cpu().numpy().astype(np.int64).T
    centre = (np.stack([col, row], axis=1) * np.array(decoding.cell_scale)
              + np.array(decoding.cell_offset)).astype(np.float64)
    half = (np.array(decoding.windows, dtype=np.float64).reshape(-1, 2)[channel] - 1) / 2
    rects = tensor_to_image(np.concatenate([centre - half, centre + half], axis=1), layout)
    out: list[npt.NDArray[np.float32]] = []
    for index in range(scores.shape[0]):
        mine = np.flatnonzero(sample == index)
        keep = mine[suppress(rects[mine], values[mine], decoding.nms_iou, decoding.nms_covered)]
        rows = np.concatenate([rects[keep, :2], rects[keep, 2:] + 1, values[keep, None]], axis=1)
        out.append(rows.astype(np.float32).reshape(-1, 5))
    return out


class MMODDetector:
    """dlib's MMOD CNN detector on a torch device: tiled pyramid, :class:`MMODNet`, decoding.

    Parameters
    ----------
    network:
        The detector read from ``mmod_human_face_detector.dat``.
    device:
        The torch device to run on.
    """

    def __init__(self, network: DatNetwork, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        """Where the net runs."""
        net = MMODNet(network).eval().to(self.device)
        # Channels-last convolutions are about twice as fast on the CPU (oneDNN).
        self.net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        """The network (the plugin's torch module)."""
        self.mean = torch.tensor(network.input["mean"], dtype=torch.float32, device=self.device)
        """Mean R, G, B subtracted from the pixels."""
        self.padding = int(network.input.get("padding", 10))
        """Pixels between pyramid tiles."""
        self.outer_padding = int(network.input.get("outer_padding", 11))
        """Pixels around the tiles."""
        scale, offset = self.net.cell_to_input
        self.decoding = Decoding(scale, offset, tuple(network.loss["windows"]),
                                 float(network.loss["nms_iou"]),
                                 float(network.loss["nms_covered"]))
        """Cell geometry and NMS settings."""
        self._layouts: dict[tuple[int, int], PyramidLayout] = {}

    def layout(self, rows: int, cols: int) -> PyramidLayout:
        """The pyramid layout for images of ``rows`` x ``cols`` (computed once per size)."""
        key = (rows, cols)
        if key not in self._layouts:
            self._layouts[key] = pyramid_layout(rows, cols, self.padding, self.outer_padding)
        return self._layouts[key]

    def __call__(self, images: np.ndarray | torch.Tensor, upsample: int = 0,
                 threshold: float = 0.0) -> list[npt.NDArray[np.float32]]:
        """Detect in a batch of same-sized images, as ``cnn_face_detection_model_v1``.

        Parameters
        ----------
        images:
            (N, H, W, 3) uint8 RGB.
        upsample:
            Times each image is enlarged about 2x first with dlib's ``pyramid_up``
            (:func:`pyramid_up`); the boxes are mapped back with :func:`rect_down`.
        threshold:
            Cells scoring above it are detections (dlib's ``adjust_threshold``).

        Returns
        -------
        One (M, 5) float32 array per image: (left, top, right, bottom, score) in image pixels,
        exclusive right and bottom edges, highest score first.
        """
        with torch.inference_mode():
            batch = torch.as_tensor(images).to(self.device, torch.float32)
            for _ in range(upsample):
                batch = pyramid_up(batch)
            layout = self.layout(int(batch.shape[1]), int(batch.shape[2]))
            scores = self.net(build_pyramid(batch, layout, self.mean))
            found = decode(scores, layout, self.decoding, threshold)
        return [rect_down(rows, upsample) for rows in found]


_DOWN2_SHIFT = np.array([1.25, 0.75])
"""``pyramid_down<2>::point_down``: ``p / 2 - (1.25, 0.75)`` for (x, y)."""


def pyramid_up(images: torch.Tensor) -> torch.Tensor:
    """dlib's ``pyramid_up`` with ``pyramid_down<2>``: (N, H, W, 3) images, values 0 to 255,
    resized with align-corners bilinear to the size of the image rectangle mapped up
    (``(p + (1.25, 0.75)) * 2``, rounded: (2H + 1) x (2W + 2)) and truncated to whole values,
    as dlib stores them in 8-bit pixels."""
    rows, cols = (int(np.floor((side - 1 + shift) * 2 + 0.5)) + 1
                  for side, shift in zip(images.shape[1:3], _DOWN2_SHIFT[::-1], strict=True))
    up = F.interpolate(images.permute(0, 3, 1, 2), size=(rows, cols), mode="bilinear",
                       align_corners=True)
    return up.floor_().clamp_(0.0, 255.0).permute(0, 2, 3, 1)


def rect_down(rows: npt.NDArray[np.float32], levels: int) -> npt.NDArray[np.float32]:
    """Detections (M, 5) found on an image enlarged ``levels`` times by :func:`pyramid_up`,
    mapped back to the image: dlib's ``rect_down`` on the inclusive corners (``p / 2 - (1.25,
    0.75)`` per level), rounded. Exclusive edges in and out; the scores are kept."""
    if not levels:
        return rows
    inclusive = np.array([0, 0, 1, 1])
    corners = rows[:, :4].astype(np.float64) - inclusive
    for _ in range(levels):
        corners = corners / 2 - np.tile(_DOWN2_SHIFT, 2)
    out = rows.copy()
    out[:, :4] = _round_half_up(corners) + inclusive
    return out
