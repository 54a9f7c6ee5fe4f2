"""Square crops of faces out of frames.

Conventions: points are (x, y) in pixels with pixel centres at integer coordinates; a matrix
named ``a_to_b`` is 3x3 and maps homogeneous (x, y, 1) column vectors from space a to space b.
Normalized crop coordinates are crop pixels divided by the crop's side: the centre of crop pixel
i lies at i / size, so a crop of any size covers [0, 1) of the same face.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt


def map_points(matrices: npt.NDArray[np.floating], points: npt.NDArray[np.floating]
               ) -> npt.NDArray[np.float64]:
    """(N, P, 2) points (x, y) mapped by (N, 3, 3) affine matrices, one matrix per row of
    points: ``matrices[n] @ (x, y, 1)`` for each point of ``points[n]``. Only the first two
    coordinates of each point are read."""
    mats = np.asarray(matrices, dtype=np.float64)
    xy = np.asarray(points, dtype=np.float64)[..., :2]
    return np.asarray(np.matmul(xy, mats[:, :2, :2].transpose(0, 2, 1)) + mats[:, None, :2, 2],
                      dtype=np.float64)


def box_crop_matrices(bboxes: npt.NDArray[np.floating | np.integer], padding: float
                      ) -> npt.NDArray[np.float32]:
    """Frame -> normalized crop matrices for square crops centred on boxes.

    The crop's side is the box's longer side divided by ``1 - padding``, so that ``padding`` is
    the fraction of the crop (both sides together) around the box.

    Parameters
    ----------
    bboxes:
        (N, 4) boxes (left, top, right, bottom) in frame pixels.
    padding:
        In [0, 1): the padding fraction, e.g. an ``EXTRACT_RATIOS`` value.

    Returns
    -------
    (N, 3, 3) float32 ``frame_to_normalized``: the crop covers [0, 1] x [0, 1].
    """
    if not 0.0 <= padding < 1.0:
        raise ValueError(f"expected padding in [0, 1), got {padding}")
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    side = np.maximum(np.max(boxes[:, 2:] - boxes[:, :2], axis=1), 1.0) / (1.0 - padding)
    out = np.zeros((len(boxes), 3, 3), dtype=np.float64)
    out[:, 0, 0] = out[:, 1, 1] = 1.0 / side
    out[:, :2, 2] = 0.5 - centre / side[:, None]
    out[:, 2, 2] = 1.0
    return out.astype(np.float32)


def inside_frame(frame_to_normalized: npt.NDArray[np.float32], size: int,
                 frame_sizes: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """(N, size, size) True where a crop pixel's centre lies inside its frame.

    Parameters
    ----------
    frame_to_normalized:
        (N, 3, 3) matrices from frame pixels to the normalized crop.
    size:
        The side of the crops in pixels.
    frame_sizes:
        (N, 2) the (height, width) of each face's frame.
    """
    count = len(frame_to_normalized)
    out = np.ones((count, size, size), dtype=np.bool_)
    if count == 0:
        return out
    to_frame = np.linalg.inv(frame_to_normalized.astype(np.float64))  # (N, 3, 3)
    heights = np.asarray(frame_sizes, dtype=np.float64)[:, 0:1]
    widths = np.asarray(frame_sizes, dtype=np.float64)[:, 1:2]
    corners = to_frame @ np.array([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0] * 4])
    crossing = ~np.all((corners[:, 0] >= -0.5) & (corners[:, 0] < widths - 0.5)
                       & (corners[:, 1] >= -0.5) & (corners[:, 1] < heights - 0.5), axis=1)
    if not crossing.any():  # every crop lies inside its frame (the usual case)
        return out
    to_frame, heights, widths = to_frame[crossing], heights[crossing], widths[crossing]
    grid = np.arange(size, dtype=np.float64) / size  # crop pixel centres (pixel i at i / size)
    xs, ys = np.meshgrid(grid, grid)
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)])  # (3, S*S)
    frame_points = to_frame @ points  # (M, 3, S*S)
    inside = ((frame_points[:, 0] >= -0.5) & (frame_points[:, 0] < widths - 0.5)
              & (frame_points[:, 1] >= -0.5) & (frame_points[:, 1] < heights - 0.5))
    out[crossing] = inside.reshape(-1, size, size)
    return out
