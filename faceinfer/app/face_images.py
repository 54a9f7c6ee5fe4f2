"""The images an extraction writes for each face: the aligned face at the output size and
centering, its 96 px thumbnail for the alignments file, the optional debug overlay, and the
face's size in its frame (for the minimum-scale rule).

Conventions: points are (x, y) in pixels with pixel centres at integer coordinates; a
``frame_to_aligned`` matrix (N, 3, 3) maps frame pixels to the pixels of an aligned image (see
:mod:`faceinfer.geometry.aligned`). Faces whose alignment is undefined (all landmarks at one
point: a NaN matrix) get black images and an empty thumbnail.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.aligned_batch import ExtractBatchAligned
from faceinfer.geometry.aligned import aligned_matrices, warp_aligned
from faceinfer.geometry.constants import EXTRACT_RATIOS, Centering
from faceinfer.geometry.pose import CENTERING_POINTS_3D, euler_angles, project_points
from faceinfer.objects import FrameFaces

__all__ = ["THUMBNAIL_QUALITY", "THUMBNAIL_SIZE", "aligned_faces", "draw_debug",
           "source_sides", "thumbnails", "write_atomic"]

THUMBNAIL_SIZE = 96
"""Side of the head-centred thumbnail stored per face in the alignments file."""
THUMBNAIL_QUALITY = 60
"""JPEG quality of the thumbnails."""

_AXIS_LENGTH = 6.0  # pose axes drawn by the debug overlay, in mean-head model units
_GREEN, _BLUE, _RED, _YELLOW = (0, 255, 0), (255, 0, 0), (0, 0, 255), (0, 255, 255)


def _finite(matrices: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
    return np.asarray(np.isfinite(matrices).all(axis=(1, 2)), dtype=np.bool_)


def output_matrices(aligned: ExtractBatchAligned, size: int, centering: Centering | str
                    ) -> npt.NDArray[np.float64]:
    """(N, 3, 3) ``frame_to_aligned`` for aligned images of side ``size`` at ``centering``."""
    center = Centering(centering)
    return aligned_matrices(aligned.matrices, size, center, aligned.offsets(center))


def aligned_faces(media: FrameFaces, size: int, centering: Centering | str
                  ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """The frame's faces warped out at ``size`` and ``centering``, (N, size, size, 3) uint8 BGR,
    and their (N, 3, 3) ``frame_to_aligned`` matrices.

    Raises
    ------
    ValueError
        If the frame's image was dropped, or its faces have no landmarks.
    """
    if media.image is None:
        raise ValueError(f"{media.filename}: the frame's image was dropped: cannot cut faces")
    matrices = output_matrices(media.aligned, size, centering)
    out = np.zeros((len(matrices), size, size, 3), dtype=np.uint8)
    good = _finite(matrices)
    if good.any():
        out[good] = warp_aligned([media.image], np.zeros(int(good.sum()), np.int64),
                                 matrices[good], size)
    return out, matrices


def source_sides(aligned: ExtractBatchAligned) -> npt.NDArray[np.float64]:
    """(N,) the side, in frame pixels, of each face's face-centred crop (the figure faceswap's
    ``-u/--min-scale`` compares with the output size). NaN where the alignment is undefined."""
    matrices = np.asarray(aligned.matrices, dtype=np.float64)
    scales = np.sqrt(np.abs(np.linalg.det(matrices[:, :2, :2])))  # normalized units per pixel
    with np.errstate(divide="ignore", invalid="ignore"):
        sides = 1.0 / (scales * (1.0 - EXTRACT_RATIOS[Centering.FACE]))
    return np.asarray(np.where(np.isfinite(sides), sides, np.nan), dtype=np.float64)


def thumbnails(media: FrameFaces) -> list[bytes]:
    """Per face, a JPEG (quality 60) of the head-centred face at 96 px; ``b""`` where the face
    has no defined alignment."""
    if not len(media.bboxes):
        return []
    images, matrices = aligned_faces(media, THUMBNAIL_SIZE, Centering.HEAD)
    out: list[bytes] = []
    for image, good in zip(images, _finite(matrices), strict=True):
        done, encoded = (cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY,
                                                      THUMBNAIL_QUALITY]) if good else (False, b""))
        out.append(bytes(encoded) if done else b"")
    return out


def _to_image(points: npt.NDArray[np.floating], matrix: npt.NDArray[np.floating]
              ) -> npt.NDArray[np.int32]:
    """(P, 2) points moved by a (3, 3) matrix and rounded to whole pixels."""
    moved = np.asarray(points, np.float64) @ matrix[:2, :2].T + matrix[:2, 2]
    return np.asarray(np.rint(moved), dtype=np.int32)


def _crop_outline(frame_to_crop: npt.NDArray[np.float64], frame_to_out: npt.NDArray[np.float64],
                  size: int) -> npt.NDArray[np.int32]:
    """The four corners of a crop of side ``size`` (given by its frame matrix) in the output."""
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float64)
    return _to_image(corners, frame_to_out @ np.linalg.inv(frame_to_crop))


def draw_debug(images: npt.NDArray[np.uint8], aligned: ExtractBatchAligned,
               frame_to_out: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """Copies of the aligned faces with faceswap's debug overlay (``-B``): the landmarks
    (green), the face-centred crop (blue) with its side in frame pixels, the legacy crop (red),
    the pose axes (x red, y green, z blue) and the pitch, yaw and roll in degrees.

    Parameters
    ----------
    images:
        (N, S, S, 3) the aligned faces.
    aligned:
        The faces' alignment (landmarks in frame pixels).
    frame_to_out:
        (N, 3, 3) the images' ``frame_to_aligned`` matrices.
    """
    out = images.copy()
    landmarks = aligned.landmarks
    if landmarks is None or not len(out):
        return out
    size = out.shape[1]
    face = output_matrices(aligned, size, Centering.FACE)
    legacy = output_matrices(aligned, size, Centering.LEGACY)
    sides = source_sides(aligned)
    angles = euler_angles(aligned.rotation)
    origin = CENTERING_POINTS_3D[Centering.HEAD]
    axes = np.vstack([origin, origin + np.eye(3) * _AXIS_LENGTH])
    projected = project_points(axes, aligned.rotation, aligned.translation)  # normalized space
    scale = max(1, size // 256)
    for index, image in enumerate(out):
        matrix = frame_to_out[index]
        if not np.isfinite(matrix).all():
            continue
        for x, y in _to_image(landmarks[index], matrix).tolist():
            cv2.circle(image, (x, y), scale, _GREEN, -1, cv2.LINE_AA)
        cv2.polylines(image, [_crop_outline(legacy[index], matrix, size)], True, _RED, scale)
        outline = _crop_outline(face[index], matrix, size)
        cv2.polylines(image, [outline], True, _BLUE, scale)
        font = 0.4 * scale
        cv2.putText(image, f"{sides[index]:.0f}px", (int(outline[0, 0]) + 2 * scale,
                    int(outline[0, 1]) + 14 * scale), cv2.FONT_HERSHEY_SIMPLEX, font, _BLUE,
                    scale, cv2.LINE_AA)
        normalized_to_out = matrix @ np.linalg.inv(aligned.matrices[index].astype(np.float64))
        ends = _to_image(projected[index], normalized_to_out)
        if np.all(np.abs(ends) < 8 * size):  # a pose far off the crop draws nothing useful
            for end, colour in zip(ends[1:], (_RED, _GREEN, _BLUE), strict=True):
                cv2.line(image, tuple(ends[0].tolist()), tuple(end.tolist()), colour, scale,
                         cv2.LINE_AA)
        pitch, yaw, roll = angles[index].tolist()
        cv2.putText(image, f"pitch {pitch:.0f} yaw {yaw:.0f} roll {roll:.0f}",
                    (4 * scale, size - 6 * scale), cv2.FONT_HERSHEY_SIMPLEX, font, _YELLOW,
                    scale, cv2.LINE_AA)
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``.<name>.<pid>.tmp`` beside it, renamed over it, so
    a crash leaves the old file or the new one, never half of one (a leftover temporary file
    matches ``.*.tmp``)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
