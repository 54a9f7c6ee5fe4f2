"""Box arithmetic of the "mtcnn" detector (:mod:`faceinfer.plugins.detect.mtcnn`): the NMS
settings of the reference implementation, exact greedy NMS (vectorised), box regression and
squaring. numpy only.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

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
