"""Detector "mtcnn": the three-stage cascade of Zhang et al. (2016), "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks", written in PyTorch here.

P-Net scans an image pyramid for candidate boxes, R-Net refines them on 24 x 24 crops and O-Net
on 48 x 48 crops, which also gives five facial keypoints. The weights are the Caffe-trained ones
as converted by facenet-pytorch 2.6.0 (MIT, Timothy Esler), re-saved as a plain ``.npz`` by
``tools/convert_mtcnn.py`` (see ``weights/README.md``).

It follows the reference (facenet-pytorch's ``detect_face``: same thresholds, NMS settings and
box arithmetic), laid out for speed:

* The pyramid levels (exact pixel-area averages of the input) are packed into one mosaic per
  frame, so a single P-Net pass covers every scale (:func:`plan_pyramid`).
* Inputs letterboxed into the square (black borders, exactly -1 after scaling) are scanned
  only where a P-Net window can see a non-black pixel: the mosaic holds just those parts of
  the levels (:func:`content_box`, :func:`level_parts`, one layout kept per box, so one per
  video). A window of black alone gets P-Net's :attr:`MTCNNDetector.black_score` (0.0016),
  far below ``threshold_1``: the candidates are the same, and the mosaic is about 0.69 of the
  whole one for 16:9 frames.
* Candidate generation, NMS (:func:`nms`, exact greedy, vectorised), box regression and
  squaring run on all frames of the batch at once, in numpy.
* R-Net and O-Net each take the candidates of the whole batch in one call (in chunks of
  :data:`CROP_CHUNK`); their crops are cut in one ``grid_sample`` per source from the mosaic
  level nearest the crop's scale (see :data:`CROP_SOURCE_SCALE`), not region by region.

torch is imported when the model is built, so importing this module (to list plugins) stays
light.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.errors import ConfigError, PluginError
from faceinfer.geometry.constants import FACE_BOX_MTCNN, FaceBox
from faceinfer.plugin_utils import is_compiled
from faceinfer.plugins.base import DetectPlugin, PluginConfig

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "mtcnn.npz"
"""The vendored weights: P-Net, R-Net and O-Net tensors under ``pnet.``, ``rnet.``, ``onet.``."""
WEIGHTS_SHA256 = "926fb845f6ca1a03111a8b7de44ee8e0a49bcaa1a125816e34d324b6c2ff3549"
"""The sha256 of :data:`WEIGHTS_FILE`, as printed by ``tools/convert_mtcnn.py``."""

# NMS settings of the reference implementation (facenet-pytorch's detect_face), which the
# thresholds and the score calibration were tuned with.
PNET_SCALE_NMS_IOU = 0.5
"""P-Net: NMS within each pyramid scale of each frame, intersection over union."""
PNET_MERGED_NMS_IOU = 0.7
"""P-Net: NMS over all scales of each frame, intersection over union."""
RNET_NMS_IOU = 0.7
"""R-Net: NMS of each frame's refined candidates, intersection over union."""
ONET_NMS_MIN = 0.7
"""O-Net: NMS of each frame's final boxes, intersection over the smaller box's area."""

PNET_STRIDE = 2
"""P-Net's output stride on its input, in pixels."""
PNET_CELL = 12
"""The side of the window each P-Net output cell sees, in pixels."""
RNET_SIZE = 24
"""R-Net's input side."""
ONET_SIZE = 48
"""O-Net's input side."""
CROP_CHUNK = 512
"""Most crops cut and run through R-Net or O-Net at once (bounds the memory of the crops)."""
COMPILED_CROP_FLOOR = 16
"""Once the nets are compiled, fewer crops than this are zero-padded up to it before R-Net or
O-Net, whose count of crops is marked dynamic: one graph per net then serves every count from
this to :data:`CROP_CHUNK` (the compiled graph guards counts of 16 and up; below, and at 0 and
1, which torch always specialises, counts would compile again). The alternative, static shapes
with counts padded to power-of-two buckets, compiles once per bucket (6 per net, 10 to 15 s
each on 2 CPU cores) and ran no faster: ``bench/compile.py --crop-nets`` measured (2 shared
cores, noisy) R-Net 4 / 8 / 21 ms a call at 20 / 100 / 300 crops against 57 / 66 / 46 ms for
buckets, O-Net 68 / 132 / 276 against 69 / 130 / 400 ms."""
CROP_SOURCE_SCALE = 1.57
"""Crops are sampled bilinearly from the pyramid level (or the input) where the box is nearest
to this many times the crop's side. Measured against exact area-averaged crops on the sample
images, R-Net scores differ by 0.011 on average (0.022 on candidates above 0.5) at 1.57, by
0.024 (0.047) at 1.0 (the level nearest to the crop's own scale, too blurred by the bilinear
filter on top of the level's own area filter), and by 0.012 (0.018) when sampling at twice the
resolution and averaging down, which costs four times as much. facenet-pytorch's own crops
(whole-pixel boxes, adaptive average pooling) differ from exact ones by 0.039 (0.064)."""
INPUT_SCALE = 127.5 / 128.0
"""The nets were trained on (x - 127.5) / 128; the stage gives x / 127.5 - 1. Multiplying by
this maps one onto the other exactly (folded into each net's first convolution)."""

NET_NAMES = ("pnet", "rnet", "onet")
"""The three nets, in cascade order (also the key prefixes in the weights file)."""


@functools.cache
def _net_classes() -> dict[str, type[torch.nn.Module]]:
    """The P-Net, R-Net and O-Net module classes, defined on first use so torch is imported only
    when a model is built. Layer names match the keys of the weights file."""
    import torch  # noqa: PLC0415 (keep importing the plugin registry light)
    from torch import nn  # noqa: PLC0415
    from torch.nn import functional  # noqa: PLC0415

    def max_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
        """``max_pool2d(x, kernel, 2, ceil_mode=True)``, the same values, as maxima of strided
        views, one axis after the other. On channels-last tensors on the CPU this was measured
        1.5 to 3x faster for P-Net's 2 x 2 pool of a mosaic (1 or 2 threads), but slower for
        R-Net's and O-Net's 3 x 3 pools with 2 threads, which keep ``max_pool2d``. Shapes
        where the second tap of the last window would be missing take ``max_pool2d``."""
        height, width = x.shape[2:]
        out_height, out_width = -(-(height - kernel) // 2) + 1, -(-(width - kernel) // 2) + 1
        if height // 2 < out_height or width // 2 < out_width:
            return functional.max_pool2d(x, kernel, 2, ceil_mode=True)
        return pool_axis(pool_axis(x, 2, kernel, out_height), 3, kernel, out_width)

    def pool_axis(x: torch.Tensor, dim: int, kernel: int, out: int) -> torch.Tensor:
        """The maxima along ``dim`` of ``out`` windows of ``kernel`` at stride 2, the last one
        clipped at the end as with ``ceil_mode``."""
        size = x.shape[dim]

        def taps(offset: int) -> torch.Tensor:
            every_other = (slice(None),) * dim + (slice(None, None, 2),)
            return x.narrow(dim, offset, size - offset)[every_other]

        result = torch.maximum(taps(0).narrow(dim, 0, out), taps(1).narrow(dim, 0, out))
        for offset in range(2, kernel):
            tail = taps(offset)
            count = min(tail.shape[dim], out)
            head = result.narrow(dim, 0, count)
            torch.maximum(head, tail.narrow(dim, 0, count), out=head)
        return result

    def caffe_flatten(x: torch.Tensor) -> torch.Tensor:
        """Flatten (N, C, H, W) in Caffe's transposed (N, W, H, C) order, as the converted dense
        weights expect."""
        return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)

    class PNet(nn.Module):
        """Proposal net: fully convolutional, a 12 x 12 window per output cell at stride 2.

        ``forward`` maps (N, 3, H, W) to the face probability (N, H', W') and the box
        regression (N, 4, H', W')."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 10, 3)
            self.prelu1 = nn.PReLU(10)
            self.conv2 = nn.Conv2d(10, 16, 3)
            self.prelu2 = nn.PReLU(16)
            self.conv3 = nn.Conv2d(16, 32, 3)
            self.prelu3 = nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, 1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = max_pool(self.prelu1(self.conv1(x)), 2)
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            # Both 1 x 1 heads in one channels-last convolution: the same values, measured
            # 2.7 against 12 ms a 16:9 mosaic on the CPU (oneDNN's fast path).
            weight = torch.cat([self.conv4_1.weight, self.conv4_2.weight])
            bias = torch.cat([cast(torch.Tensor, self.conv4_1.bias),
                              cast(torch.Tensor, self.conv4_2.bias)])
            heads = functional.conv2d(x, weight.contiguous(memory_format=torch.channels_last),
                                      bias)
            prob = torch.softmax(heads[:, :2], dim=1)[:, 1]
            return prob, heads[:, 2:]

    class RNet(nn.Module):
        """Refinement net on 24 x 24 crops: (N, 3, 24, 24) to the face probability (N,) and the
        box regression (N, 4)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 28, 3)
            self.prelu1 = nn.PReLU(28)
            self.conv2 = nn.Conv2d(28, 48, 3)
            self.prelu2 = nn.PReLU(48)
            self.conv3 = nn.Conv2d(48, 64, 2)
            self.prelu3 = nn.PReLU(64)
            self.dense4 = nn.Linear(576, 128)
            self.prelu4 = nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
            x = functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
            x = self.prelu4(self.dense4(caffe_flatten(self.prelu3(self.conv3(x)))))
            prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
            return prob, self.dense5_2(x)

    class ONet(nn.Module):
        """Output net on 48 x 48 crops: (N, 3, 48, 48) to the face probability (N,), the box
        regression (N, 4) and the keypoints (N, 10): five x then five y, as fractions of the
        crop."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3)
            self.prelu1 = nn.PReLU(32)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.prelu2 = nn.PReLU(64)
            self.conv3 = nn.Conv2d(64, 64, 3)
            self.prelu3 = nn.PReLU(64)
            self.conv4 = nn.Conv2d(64, 128, 2)
            self.prelu4 = nn.PReLU(128)
            self.dense5 = nn.Linear(1152, 256)
            self.prelu5 = nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
            x = functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
            x = functional.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
            x = self.prelu5(self.dense5(caffe_flatten(self.prelu4(self.conv4(x)))))
            prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
            return prob, self.dense6_2(x), self.dense6_3(x)

    return {"pnet": PNet, "rnet": RNet, "onet": ONet}


def build_nets(weights: dict[str, npt.NDArray[np.float32]] | None = None
               ) -> dict[str, torch.nn.Module]:
    """The P-Net, R-Net and O-Net modules in eval mode on the CPU, with their weights.

    Parameters
    ----------
    weights:
        Arrays keyed ``<net>.<layer>.<param>`` as in the weights file, or None to leave the
        modules untrained.

    Raises
    ------
    PluginError
        If the weights lack a tensor of a net or hold one of the wrong shape.
    """
    import torch  # noqa: PLC0415

    nets: dict[str, torch.nn.Module] = {}
    for name, cls in _net_classes().items():
        net = cls().eval().requires_grad_(False)
        if weights is not None:
            prefix = f"{name}."
            state = {key[len(prefix):]: torch.from_numpy(np.array(value, dtype=np.float32))
                     for key, value in weights.items() if key.startswith(prefix)}
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise PluginError(f"mtcnn: the weights do not fit {name}: {err}") from err
        nets[name] = net
    return nets


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def nms(boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64],
        groups: npt.NDArray[np.int64], threshold: float, use_min: bool = False
        ) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression, independently within each group.

    Exactly the classic greedy result (visit boxes by falling score; keep a box unless a kept
    box overlaps it by more than ``threshold``), computed without a loop over boxes: the
    overlapping pairs are found by a sweep along x, then kept/suppressed states are settled in
    rounds, each deciding every box whose higher-scored neighbours are all decided.

    Parameters
    ----------
    boxes:
        (K, 4) boxes (left, top, right, bottom).
    scores:
        (K,) scores; ties are broken by index.
    groups:
        (K,) group of each box (frame, or frame and pyramid level): boxes of different groups
        never suppress each other.
    threshold:
        Suppress when the overlap is strictly above this.
    use_min:
        Overlap as intersection over the smaller box's area instead of over the union.

    Returns
    -------
    The indices of the kept boxes, by group, then by falling score.
    """
    count = len(boxes)
    if count == 0:
        return np.zeros((0,), dtype=np.intp)
    order = np.lexsort((np.arange(count), -scores, groups))
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    # Shift each group along x far enough that boxes of different groups cannot meet.
    span = float(boxes[:, 2].max() - boxes[:, 0].min()) + 1.0
    shift = (groups - groups.min()).astype(np.float64) * span
    left, right = boxes[:, 0] + shift, boxes[:, 2] + shift
    by_left = np.argsort(left, kind="stable")
    sorted_left = left[by_left]
    ends = np.searchsorted(sorted_left, right[by_left], side="left")
    counts = np.maximum(ends - np.arange(count) - 1, 0)
    total = int(counts.sum())
    if total == 0:
        return order.astype(np.intp)
    first = np.repeat(np.arange(count), counts)
    second = first + 1 + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    one, two = by_left[first], by_left[second]
    width = np.minimum(boxes[one, 2], boxes[two, 2]) - np.maximum(boxes[one, 0], boxes[two, 0])
    height = np.minimum(boxes[one, 3], boxes[two, 3]) - np.maximum(boxes[one, 1], boxes[two, 1])
    inter = np.clip(width, 0.0, None) * np.clip(height, 0.0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    denominator = np.minimum(area[one], area[two]) if use_min else area[one] + area[two] - inter
    overlaps = (inter > threshold * denominator) & (inter > 0.0)
    one, two = one[overlaps], two[overlaps]
    first_higher = rank[one] < rank[two]
    high = np.where(first_higher, one, two)
    low = np.where(first_higher, two, one)
    undecided, kept, suppressed = 0, 1, 2
    state = np.zeros(count, dtype=np.int8)
    while True:
        open_pairs = state[low] == undecided
        high, low = high[open_pairs], low[open_pairs]
        beaten = np.zeros(count, dtype=np.bool_)
        beaten[low[state[high] == kept]] = True
        state[beaten & (state == undecided)] = suppressed
        blocked = np.zeros(count, dtype=np.bool_)
        blocked[low[state[high] == undecided]] = True
        free = (state == undecided) & ~blocked
        if not free.any():
            break
        state[free] = kept
    return np.asarray(order[state[order] == kept], dtype=np.intp)


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
KEPT_LAYOUTS = 16
"""Most mosaic layouts kept (a few MB each): a video needs one, a folder of photos one per
shape of letterbox."""
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


class Sources(NamedTuple):
    """Where R-Net's and O-Net's crops are cut from (see :meth:`MTCNNDetector._crops`)."""

    input: torch.Tensor
    """The input (N, S + gap, S, 3), 0..2, each frame followed by black rows."""
    mosaic: torch.Tensor
    """The mosaic (N, H + gap, W, 3), 0..2, likewise."""
    layout: MosaicLayout
    """The mosaic's layout."""


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


def square(boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(K, 4) boxes made square about their centres, their side the longer of the two."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2,
                     centre_y + side / 2], axis=1)


def regress(boxes: npt.NDArray[np.float64], offsets: npt.NDArray[np.float64]
            ) -> npt.NDArray[np.float64]:
    """(K, 4) boxes moved by a net's (K, 4) regression, given as fractions of their size."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    return boxes + offsets * np.tile(size, 2)


@dataclass(frozen=True)
class MTCNNConfig(PluginConfig):
    """Settings of the mtcnn detector."""

    batch_size: int = 8
    """Frames per batch. All stages of the cascade run on the whole batch at once."""
    input_size: int = 640
    """Side of the square detector input that frames are letterboxed into, in pixels."""
    min_size: int = 20
    """Smallest face searched for, in pixels of the detector input (20 to 1000). Smaller finds
    smaller faces but scans a larger pyramid: the cost grows about with (1 / min_size) ** 2."""
    scale_factor: float = 0.709
    """Ratio between neighbouring pyramid scales (0.5 to 0.95). Closer to 1 tries more scales:
    slower, and a little more sensitive."""
    threshold_1: float = 0.6
    """P-Net: face probability a pyramid window needs to become a candidate (0 to 1)."""
    threshold_2: float = 0.7
    """R-Net: face probability a candidate needs to go on to O-Net (0 to 1)."""
    threshold_3: float = 0.7
    """O-Net: face probability a candidate needs to be considered at all (0 to 1)."""
    cpu_workers: int = 2
    """On the CPU, how many threads share the frames of a batch (1 to 16), each running the
    whole cascade on its part. The nets use several cores poorly on small inputs (about 1.3x
    on 2 cores), so frames in parallel go faster: 107 against 123 ms a frame on 2 cores. A
    batch of one frame always runs in one call."""
    score_threshold: float = 0.9
    """Final O-Net score a face needs to be reported (0 to 1). On the sample video false boxes
    score 0.70 to 0.86 and the real face 0.91 and up (0.98 and up with this implementation's
    crops); the faces of the sample photos score 0.97 and up."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not 48 <= self.input_size <= 4096:
            raise ConfigError(f"{name}.input_size: expected 48 to 4096, got {self.input_size}")
        if not 20 <= self.min_size <= 1000:
            raise ConfigError(f"{name}.min_size: expected 20 to 1000, got {self.min_size}")
        if self.min_size > self.input_size:
            raise ConfigError(f"{name}.min_size: expected at most input_size "
                              f"({self.input_size}), got {self.min_size}")
        if not 0.5 <= self.scale_factor <= 0.95:
            raise ConfigError(f"{name}.scale_factor: expected 0.5 to 0.95, "
                              f"got {self.scale_factor}")
        if not 1 <= self.cpu_workers <= 16:
            raise ConfigError(f"{name}.cpu_workers: expected 1 to 16, got {self.cpu_workers}")
        for key in ("threshold_1", "threshold_2", "threshold_3", "score_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}.{key}: expected 0 to 1, got {value}")


@register_plugin("detect", "mtcnn")
class MTCNNDetector(DetectPlugin):
    """MTCNN: P-Net over an image pyramid, then R-Net and O-Net on crops of the candidates.

    Each box comes with five keypoints: eye on the image's left, eye on its right, nose tip,
    mouth corner on the image's left, mouth corner on its right. Boxes are O-Net's regressed
    boxes (not squared), clipped to the input; keypoints are not clipped.
    """

    description = "MTCNN (P/R/O-Net cascade, PyTorch): face boxes with 5 keypoints"
    speed = "medium"
    keypoints = 5
    face_box: ClassVar[FaceBox | None] = FACE_BOX_MTCNN
    config_class = MTCNNConfig
    weights: ClassVar[str | None] = ("faceinfer.plugins.detect: weights/mtcnn.npz "
                                     "(facenet-pytorch 2.6.0, MIT)")
    weights_sha256: ClassVar[str | None] = WEIGHTS_SHA256

    def __init__(self, config: MTCNNConfig) -> None:
        super().__init__(config.input_size, config.batch_size, is_rgb=True, dtype="float32",
                         scale=(-1.0, 1.0), force_cpu=False, config=config)
        self.settings = config
        """The plugin's resolved config."""
        levels, height, width = plan_pyramid(config.input_size, config.min_size,
                                             config.scale_factor)
        self._sizes = [level.size for level in levels]
        self.levels = levels
        """P-Net's pyramid levels and their places in the full mosaic, largest first."""
        self.mosaic_shape = (height, width)
        """(height, width) of the mosaic holding every pyramid level whole."""
        self.skip_black = True
        """Whether P-Net skips the windows that see only black input (letterbox borders),
        scanning a mosaic laid out for the box of the batch's other pixels; it does only where
        P-Net scores black below ``threshold_1`` (:attr:`black_score`)."""
        self.black_score = 1.0
        """P-Net's face probability for a window of black input, set by :meth:`load_model`."""
        self._tables: dict[str, Any] = {}
        self._layouts: dict[tuple[int, int, int, int], MosaicLayout] = {}
        self._lock = threading.Lock()  # guards the layouts and the threads' buffers
        self._buffers: dict[int, dict[str, tuple[Any, Any]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def load_model(self) -> None:
        """Check the weights file's sha256, build the three nets on :attr:`device` and fold the
        input normalisation into their first convolutions.

        The nets were trained on (x - 127.5) / 128 for uint8 x. They are fed here x / 127.5
        (the stage's -1..1 plus 1, so that black is 0 and the zero padding of crops reads as
        black): scaling each first convolution's weights by 127.5 / 128 and subtracting their
        sum from its bias makes that exactly the trained input (the convolutions have no
        padding).

        Raises
        ------
        PluginError
            If the weights file is missing, unreadable or not the vendored one.
        """
        import torch  # noqa: PLC0415

        try:
            digest = file_sha256(WEIGHTS_FILE)
        except OSError as err:
            raise PluginError(f"mtcnn: cannot read the weights file {WEIGHTS_FILE}: "
                              f"{err}") from err
        if digest != self.weights_sha256:
            raise PluginError(f"mtcnn: the weights file {WEIGHTS_FILE} has sha256 {digest}, "
                              f"expected {self.weights_sha256}: reinstall faceinfer or rerun "
                              f"tools/convert_mtcnn.py")
        with np.load(WEIGHTS_FILE, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        nets = build_nets(arrays)
        with torch.no_grad():
            for net in nets.values():
                conv = net.get_submodule("conv1")
                assert isinstance(conv, torch.nn.Conv2d)
                assert conv.bias is not None
                conv.weight.mul_(INPUT_SCALE)
                conv.bias.sub_(conv.weight.sum(dim=(1, 2, 3)))
        device = torch.device(self.device)
        # Channels-last convolutions are about twice as fast on the CPU (oneDNN).
        self.model = {name: net.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                      for name, net in nets.items()}
        size = self.input_size
        corners = np.concatenate([np.arange(level.size + 1) * (size / level.size)
                                  for level in self.levels])
        index = np.minimum(np.floor(corners), size - 1)
        self._tables = {
            "corner_index": torch.from_numpy(index.astype(np.int64)).to(device),
            "corner_frac": torch.from_numpy((corners - index).astype(np.float32)).to(device)}
        self._layouts = {}
        with torch.inference_mode():
            black = torch.zeros((1, 3, PNET_CELL, PNET_CELL), device=device)
            self.black_score = float(self.model["pnet"](
                black.contiguous(memory_format=torch.channels_last))[0].max())

    def layout(self, box: tuple[int, int, int, int] | None) -> MosaicLayout:
        """The mosaic for inputs black outside ``box`` (top, bottom, left, right; input
        pixels, exclusive ends), made on first use and kept: the whole pyramid when ``box`` is
        None or black windows are not to be skipped (see :attr:`skip_black`), and once P-Net
        is compiled: its graph is for one shape, the whole pyramid's, compiled in the warm-up,
        and a mosaic shape per letterbox would compile again (dynamic height and width were
        tried once and recompiled, but with another change in, so not measured apart)."""
        import torch  # noqa: PLC0415

        size = self.input_size
        model = getattr(self, "model", None)
        if (box is None or not self.skip_black or self.black_score >= self.settings.threshold_1
                or (isinstance(model, dict) and is_compiled(model["pnet"]))):
            box = (0, size, 0, size)
        with self._lock:  # the worker threads share the layouts
            layout = self._layouts.get(box)
            if layout is None:
                levels, height, width = pack_levels(level_parts(self._sizes, size, box))
                level_of, windows = pyramid_cells(levels, height, width, size)
                valid = torch.from_numpy(level_of >= 0).to(torch.device(self.device))
                layout = MosaicLayout(levels, (height, width), level_of, windows, valid)
                if len(self._layouts) >= KEPT_LAYOUTS:  # the oldest goes
                    self._layouts.pop(next(iter(self._layouts)))
                self._layouts[box] = layout
        return layout

    def _pnet_chunk(self) -> int:
        """How many frames P-Net takes per call. On the CPU one frame's mosaic keeps both cores
        busy and bigger calls only spill the caches (measured: about 1.3x slower per frame at
        8); a GPU takes the whole batch."""
        return 1 if self.device == "cpu" else self.batch_size

    def _buffer(self, name: str, shape: tuple[int, ...], tag: Any = None) -> torch.Tensor:
        """A float32 work tensor on :attr:`device`, zeroed when first made and kept for the
        next batch of the same shape and ``tag`` (the mosaic's layout): big fresh tensors cost
        a page fault per 4 KiB on the CPU, and the mosaic's gaps must stay black.

        Each thread has its own; a thread's first call drops those of threads that have ended
        (the profiler's and the stage's come and go)."""
        import torch  # noqa: PLC0415

        thread = threading.get_ident()
        buffers = self._buffers.get(thread)
        if buffers is None:
            alive = {item.ident for item in threading.enumerate()}
            with self._lock:
                for ended in [key for key in self._buffers if key not in alive]:
                    del self._buffers[ended]
                buffers = self._buffers.setdefault(thread, {})
        buffer, made_for = buffers.get(name, (None, None))
        if buffer is None or tuple(buffer.shape) != shape or made_for is not tag:
            buffer = torch.zeros(shape, dtype=torch.float32, device=torch.device(self.device))
            buffers[name] = (buffer, tag)
        assert isinstance(buffer, torch.Tensor)
        return buffer

    def _workers(self, count: int) -> int:
        """How many threads share a batch of ``count`` frames."""
        if self.device != "cpu":
            return 1
        return max(1, min(self.settings.cpu_workers, count))

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Run the cascade on a batch of frames.

        Parameters
        ----------
        batch:
            (N, S, S, 3) float32 RGB frames scaled to -1..1.

        Returns
        -------
        (N, M, 15) float32: for each frame up to M faces as (score, left, top, right, bottom,
        then five keypoint (x, y) pairs), in input pixels, by falling score; rows past a frame's
        last face are NaN. Not yet filtered by ``score_threshold`` nor clipped.
        """
        count, size = len(batch), self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"mtcnn: expected (N, {size}, {size}, 3) frames, "
                             f"got {batch.shape}")
        if count == 0 or not self.levels:
            return np.full((count, 0, 15), np.nan, dtype=np.float32)
        workers = self._workers(count)
        if workers == 1:
            return self._cascade(batch)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.cpu_workers,
                                            thread_name_prefix="mtcnn-worker")
        parts = list(self._pool.map(self._cascade, np.array_split(batch, workers)))
        width = max(part.shape[1] for part in parts)
        return np.concatenate([np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)),
                                      constant_values=np.nan) for part in parts])

    def _cascade(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """:meth:`process` for some frames, in this thread."""
        import torch  # noqa: PLC0415

        count, size = len(batch), self.input_size
        device = torch.device(self.device)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        layout = self.layout(content_box(batch))
        height, width = layout.shape
        with torch.inference_mode():
            frames = torch.from_numpy(batch).to(device)
            # Both sources get MOSAIC_GAP black rows below each frame, so that stacked into
            # one tall image, crops near a frame's bottom edge read black, not the next frame.
            canvas = self._buffer("canvas", (count, size + MOSAIC_GAP, size, 3))
            torch.add(frames, 1.0, out=canvas[:, :size])  # black is 0: see load_model
            mosaic = self._buffer("mosaic", (count, height + MOSAIC_GAP, width, 3), layout)
            sources = Sources(canvas, mosaic, layout)
            boxes, frame_ids = self._propose(batch, frames, sources)
            if len(boxes):
                boxes, frame_ids = self._refine(sources, boxes, frame_ids)
            rows = np.zeros((0, 15), dtype=np.float64)
            if len(boxes):
                rows, frame_ids = self._finish(sources, boxes, frame_ids)
        return self._pack(rows, frame_ids, count)

    def _fill_mosaic_cpu(self, frames: npt.NDArray[np.float32], mosaic: torch.Tensor,
                         layout: MosaicLayout) -> None:
        """Write the level parts of the layout for the frames (N, S, S, 3), -1..1, into the
        mosaic (N, H, W, 3), 0..2, on the CPU: each level is OpenCV's INTER_AREA resize (exact
        pixel area averages), 26 ms a whole 640 frame on one core, against 46 ms for
        :meth:`_fill_mosaic_torch` and about 60 ms for ``F.interpolate(mode="area")`` (which
        averages whole-pixel bins, not exact areas). Only the input under a part is resized
        where the level's pixel grid meets the input's often enough (see
        :func:`resized_span`)."""
        import cv2  # noqa: PLC0415

        target = mosaic.numpy()
        size = self.input_size
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

    def _fill_mosaic_torch(self, frames: torch.Tensor, mosaic: torch.Tensor,
                           layout: MosaicLayout) -> None:
        """Write the level parts of the layout for the frames (N, S, S, 3), -1..1, into the
        mosaic (N, H, W, 3), 0..2, with torch ops (for GPUs).

        Each level pixel is the exact area average of the input under it (as OpenCV's
        INTER_AREA), computed separably from running sums: down the columns for all levels at
        once, then along the rows of each level. (Running sums along one axis stay small
        enough for float32; a 2D summed-area table would not.)
        """
        import torch  # noqa: PLC0415

        count, size = frames.shape[0], frames.shape[1]
        index, frac = self._tables["corner_index"], self._tables["corner_frac"]
        corners = len(index)
        running = self._buffer("running", (count, size + 1, size, 3))
        torch.cumsum(frames, dim=1, out=running[:, 1:])
        low = self._buffer("low", (count, corners, size, 3))
        high = self._buffer("high", (count, corners, size, 3))
        torch.index_select(running, 1, index, out=low)
        torch.index_select(running, 1, index + 1, out=high)
        torch.lerp(low, high, frac[None, :, None, None], out=low)
        # Row sums of every level's pixel rows (those between two levels mean nothing).
        rows = high[:, :-1]
        torch.sub(low[:, 1:], low[:, :-1], out=rows)
        running = self._buffer("running_rows", (count, size + 1, corners - 1, 3))
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

    def _propose(self, batch: np.ndarray, frames: torch.Tensor, sources: Sources
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """P-Net on the mosaic of each frame (filled here from the batch, or its copy on the
        device): candidate squares (K, 4) and their frames (K,), after NMS within each level
        and across levels, box regression and squaring."""
        import torch  # noqa: PLC0415

        mosaic, layout = sources.mosaic, sources.layout
        found: list[tuple[torch.Tensor, ...]] = []
        chunk = self._pnet_chunk()
        for first in range(0, len(frames), chunk):
            part = mosaic[first:first + chunk]
            if mosaic.device.type == "cpu":
                self._fill_mosaic_cpu(batch[first:first + chunk], part, layout)
            else:
                self._fill_mosaic_torch(frames[first:first + chunk], part, layout)
            prob, regression = self._call_pnet(part[:, :layout.shape[0]])
            frame, row, col = torch.nonzero((prob >= self.settings.threshold_1) & layout.valid,
                                            as_tuple=True)
            found.append((frame + first, row, col, prob[frame, row, col],
                          regression[frame, :, row, col]))
        frame_ids, rows, cols, scores, offsets = (torch.cat(parts).cpu().numpy()
                                                  for parts in zip(*found, strict=True))
        scores, offsets = scores.astype(np.float64), offsets.astype(np.float64)
        boxes, levels = layout.windows[rows, cols], layout.level_of[rows, cols]
        keep = nms(boxes, scores, frame_ids * len(self.levels) + levels, PNET_SCALE_NMS_IOU)
        keep = keep[nms(boxes[keep], scores[keep], frame_ids[keep], PNET_MERGED_NMS_IOU)]
        return self._squares(regress(boxes[keep], offsets[keep]), frame_ids[keep])

    @staticmethod
    def _squares(boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64]
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """The boxes squared, without any under a pixel wide (a regression can flip one)."""
        boxes = square(boxes)
        keep = boxes[:, 2] - boxes[:, 0] >= 1.0
        return boxes[keep], frames[keep]

    def _crops(self, sources: Sources, boxes: npt.NDArray[np.float64],
               frames: npt.NDArray[np.int64], size: int
               ) -> tuple[torch.Tensor, npt.NDArray[np.intp]]:
        """(K, 3, size, size) crops of the square boxes (K, 4) of frames (K,), 0..2, black
        outside the input, in the order given by the returned (K,) box indices (those cut from
        the input, then those cut from the mosaic).

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

        table = crop_sources(sources.layout, self.input_size)
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

    def _run_net(self, name: str, sources: Sources,
                 boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64], size: int
                 ) -> list[npt.NDArray[np.float64]]:
        """Run R-Net or O-Net on ``size`` x ``size`` crops of the (at least one) boxes, in
        chunks of :data:`CROP_CHUNK`.

        Returns
        -------
        The net's outputs (probability, regression[, keypoints]) for every box, float64.
        """
        net = self.model[name]
        outputs: list[list[npt.NDArray[np.float64]]] = []
        for first in range(0, len(boxes), CROP_CHUNK):
            crops, order = self._crops(sources, boxes[first:first + CROP_CHUNK],
                                       frames[first:first + CROP_CHUNK], size)
            results = []
            for result in self._call_net(net, crops):
                array = result[:len(order)].cpu().numpy().astype(np.float64)
                results.append(np.empty_like(array))
                results[-1][order] = array
            outputs.append(results)
        return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]

    def _call_pnet(self, mosaic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net on mosaics (N, H, W, 3): face probabilities (N, H', W') and box regressions
        (N, 4, H', W')."""
        prob, offsets = self.model["pnet"](mosaic.permute(0, 3, 1, 2))
        return prob, offsets

    @staticmethod
    def _call_net(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """R-Net or O-Net on crops (K, 3, S, S). A compiled net gets at least
        :data:`COMPILED_CROP_FLOOR` crops (zero crops appended) with the count marked dynamic,
        so no count compiles again; its outputs may then hold more rows than K."""
        import torch  # noqa: PLC0415

        if is_compiled(net):
            missing = COMPILED_CROP_FLOOR - len(crops)
            if missing > 0:
                crops = torch.cat([crops, crops.new_zeros((missing, *crops.shape[1:]))]
                                  ).contiguous(memory_format=torch.channels_last)
            torch._dynamo.maybe_mark_dynamic(crops, 0)
        return tuple(net(crops))

    def warmup_compiled(self) -> None:
        """Run each compiled net once, in this thread, before any frame arrives: P-Net on a
        black mosaic view shaped as :meth:`_propose` gives it (compiled, P-Net always scans the
        whole pyramid: see :meth:`layout`), R-Net and O-Net on zero crops (two counts, to
        check that their one dynamic graph holds). Otherwise the worker threads of the first
        batch would each compile the same graph."""
        import torch  # noqa: PLC0415

        device = torch.device(self.device)
        height, width = self.layout(None).shape
        with torch.inference_mode():
            mosaic = torch.zeros((self._pnet_chunk(), height + MOSAIC_GAP, width, 3),
                                 device=device)
            self._call_pnet(mosaic[:, :height])
            for name, size in (("rnet", RNET_SIZE), ("onet", ONET_SIZE)):
                for count in (COMPILED_CROP_FLOOR, COMPILED_CROP_FLOOR + 1):
                    crops = torch.zeros((count, 3, size, size), device=device)
                    self._call_net(self.model[name],
                                   crops.contiguous(memory_format=torch.channels_last))

    def _refine(self, sources: Sources,
                boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64]
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """R-Net: keep the candidates it scores at least ``threshold_2``, NMS per frame, then
        its box regression and squaring."""
        prob, offsets = self._run_net("rnet", sources, boxes, frames, RNET_SIZE)
        keep = np.flatnonzero(prob >= self.settings.threshold_2)
        keep = keep[nms(boxes[keep], prob[keep], frames[keep], RNET_NMS_IOU)]
        return self._squares(regress(boxes[keep], offsets[keep]), frames[keep])

    def _finish(self, sources: Sources,
                boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64]
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """O-Net: keep the candidates it scores at least ``threshold_3``, place the keypoints,
        regress the boxes and NMS per frame by intersection over the smaller box.

        Returns
        -------
        (K, 15) rows (score, box, keypoint x, y pairs) by frame and falling score, and their
        frames (K,).
        """
        prob, offsets, points = self._run_net("onet", sources, boxes, frames, ONET_SIZE)
        keep = np.flatnonzero(prob >= self.settings.threshold_3)
        boxes, frames, prob = boxes[keep], frames[keep], prob[keep]
        offsets, points = offsets[keep], points[keep]
        width = (boxes[:, 2] - boxes[:, 0])[:, None]
        height = (boxes[:, 3] - boxes[:, 1])[:, None]
        keypoints = np.stack([boxes[:, :1] + width * points[:, :5],
                              boxes[:, 1:2] + height * points[:, 5:]], axis=2)
        boxes = regress(boxes, offsets)
        order = nms(boxes, prob, frames, ONET_NMS_MIN, use_min=True)
        rows = np.concatenate([prob[:, None], boxes, keypoints.reshape(-1, 10)], axis=1)
        return rows[order], frames[order]

    @staticmethod
    def _pack(rows: npt.NDArray[np.float64], frames: npt.NDArray[np.int64], count: int
              ) -> npt.NDArray[np.float32]:
        """(count, M, 15) float32 from rows sorted by frame, NaN past each frame's last."""
        counts = np.bincount(frames, minlength=count)
        out = np.full((count, int(counts.max(initial=0)), 15), np.nan, dtype=np.float32)
        starts = np.cumsum(counts) - counts
        out[frames, np.arange(len(rows)) - starts[frames]] = rows
        return out

    def post_process(self, batch: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """One (M, 14) float32 array per frame: box (left, top, right, bottom) clipped to the
        input, then the five keypoints' (x, y), in input pixels, for every face scoring at
        least ``score_threshold``, by falling score."""
        size = float(self.input_size)
        out: list[npt.NDArray[np.float32]] = []
        for frame in np.asarray(batch, dtype=np.float32):
            rows = frame[frame[:, 0] >= self.settings.score_threshold]  # NaN compares False
            boxes = np.clip(rows[:, 1:5], 0.0, size)
            keep = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
            out.append(np.concatenate([boxes, rows[:, 5:]], axis=1)[keep].reshape(-1, 14))
        return out
