"""What an alignments file stores for one frame: :class:`FrameRecord` and :class:`StoredMasks`.

Both are plain containers of arrays, validated and converted on construction, with the
conversions to and from the pipeline's objects (:class:`~faceinfer.objects.FrameFaces`,
:class:`~faceinfer.objects.DetectedFace`) and to the face PNG header layout. The files that hold
them are :mod:`faceinfer.formats.alignments` (faceinfer's own) and
:mod:`faceinfer.formats.faceswap` (faceswap's ``.fsa``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.formats.types import MaskAlignments, PNGAlignments
from faceinfer.geometry.constants import CenteringType
from faceinfer.objects import DetectedFace, ExtractBatchMask, FrameFaces

__all__ = ["CENTERINGS", "FrameRecord", "StoredMasks"]

CENTERINGS = ("legacy", "face", "head")
"""The centerings a stored mask may have been made in."""


def _array(value: npt.ArrayLike, dtype: type[np.generic], shape: tuple[int | None, ...],
           what: str) -> npt.NDArray[Any]:
    """``value`` as a C-contiguous array of ``dtype``, checked against ``shape`` (None: any)."""
    out = np.ascontiguousarray(value, dtype=dtype)
    if out.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, out.shape,
                                                                                 strict=True)):
        wanted = ", ".join("*" if n is None else str(n) for n in shape)
        raise ValueError(f"expected {what} of shape ({wanted}), got {out.shape}")
    return out


@dataclass
class StoredMasks:
    """One mask plugin's stored masks for the faces of one frame.

    ``affine_matrices[i]`` maps frame pixel (x, y) to stored-mask pixel (x, y) for face i;
    ``data[i]`` is the zlib-compressed ``stored_size`` x ``stored_size`` uint8 mask (row-major),
    or ``b""`` when face i has no such mask (possible only in imported faceswap files).
    """

    centering: str
    """The centering of the aligned crop the masks were made in: legacy, face or head."""
    stored_size: int
    """The side of each stored mask in pixels."""
    affine_matrices: npt.NDArray[np.float32]
    """(N, 3, 3) frame pixels -> stored-mask pixels."""
    data: list[bytes] = field(repr=False)
    """Per face: zlib of the (S, S) uint8 mask, row-major; ``b""``: none."""
    interpolator: int = cv2.INTER_LINEAR
    """The OpenCV interpolation flag to warp the masks back to the frame with."""

    def __post_init__(self) -> None:
        if self.centering not in CENTERINGS:
            raise ValueError(f"expected a centering in {CENTERINGS}, got {self.centering!r}")
        if self.stored_size < 0:
            raise ValueError(f"expected a stored size >= 0, got {self.stored_size}")
        self.data = [bytes(item) for item in self.data]
        self.affine_matrices = _array(self.affine_matrices, np.float32, (len(self.data), 3, 3),
                                      "mask matrices")

    def alignment(self, index: int) -> MaskAlignments | None:
        """Face ``index``'s mask in the alignments layout, or None if it has none."""
        if not self.data[index]:
            return None
        return {"mask": self.data[index],
                "affine_matrix": self.affine_matrices[index].astype(np.float64).tolist(),
                "interpolator": int(self.interpolator), "stored_size": int(self.stored_size),
                "stored_centering": self.centering}


@dataclass
class FrameRecord:
    """Everything stored for one frame. Arrays are validated and converted on construction.

    Boxes, keypoints and landmarks are in frame pixels, (x, y) order. Frames without faces are
    records too (N = 0), so a resumed run knows they were done.
    """

    name: str
    """The frame's key: the image file name, or ``<video stem>_<frame number, 6 digits>``."""
    source: str
    """The source's name: the video's stem or the image folder's name."""
    frame_size: tuple[int, int]
    """The frame's (height, width); (0, 0) when unknown (frames imported from faceswap)."""
    bboxes: npt.NDArray[np.int32]
    """(N, 4) left, top, right, bottom (right and bottom exclusive)."""
    keypoints: npt.NDArray[np.float32]
    """(N, K, 2) the detector's keypoints; K = 0 when it reports none."""
    landmarks: npt.NDArray[np.float32] | None
    """(N, P, 2) landmarks, or None when no aligner ran."""
    align_scores: npt.NDArray[np.float32]
    """(N,) the aligner's error estimates; NaN: unknown."""
    masks: dict[str, StoredMasks] = field(default_factory=dict)
    """Stored masks by mask plugin storage name."""
    identities: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    """(N, D) embeddings by identity plugin storage name; a row of NaN: that face has none."""
    thumbnails: list[bytes] = field(default_factory=list)
    """Per face: a 96 px JPEG (quality 60) of the head-centred face; ``b""`` if none."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"expected a non-empty frame name, got {self.name!r}")
        height, width = (int(side) for side in self.frame_size)
        if height < 0 or width < 0:
            raise ValueError(f"expected a (height, width) frame size, got {self.frame_size}")
        self.frame_size = (height, width)
        self.bboxes = _array(self.bboxes, np.int32, (None, 4), "boxes").reshape(-1, 4)
        count = len(self.bboxes)
        self.keypoints = _array(self.keypoints, np.float32, (count, None, 2), "keypoints")
        if self.landmarks is not None:
            self.landmarks = _array(self.landmarks, np.float32, (count, None, 2), "landmarks")
        self.align_scores = _array(self.align_scores, np.float32, (count,), "align scores")
        for key, masks in self.masks.items():
            if len(masks.data) != count:
                raise ValueError(f"expected {count} '{key}' masks, got {len(masks.data)}")
        self.identities = {key: _array(value, np.float32, (count, None), f"'{key}' identities")
                           for key, value in self.identities.items()}
        self.thumbnails = [bytes(thumb) for thumb in self.thumbnails]
        if len(self.thumbnails) != count:
            raise ValueError(f"expected {count} thumbnails, got {len(self.thumbnails)}")

    def __len__(self) -> int:
        """The number of faces."""
        return len(self.bboxes)

    def __repr__(self) -> str:
        return (f"FrameRecord(name={self.name!r}, source={self.source!r}, "
                f"frame_size={self.frame_size}, faces={len(self)}, "
                f"landmarks={None if self.landmarks is None else self.landmarks.shape[1]}, "
                f"masks={list(self.masks)}, identities={list(self.identities)})")

    @classmethod
    def from_frame_faces(cls, media: FrameFaces, name: str, source: str,
                         thumbnails: list[bytes]) -> FrameRecord:
        """The record of a frame that came out of a pipeline.

        Masks are stored with :meth:`ExtractBatchMask.to_alignment` (resized to the plugin's
        storage size, zlib-compressed); a mask plugin that kept no mask pixels is left out.
        ``frame_size`` is ``media.frame_size`` when set (aligned-face input), else the image's.
        """
        count = len(media.bboxes)
        masks: dict[str, StoredMasks] = {}
        for key, mask in media.masks.items():
            if not mask.masks.size:
                continue
            stored = [mask.to_alignment(index) for index in range(count)]
            masks[key] = StoredMasks(
                centering=mask.centering, stored_size=stored[0]["stored_size"],
                affine_matrices=np.array([item["affine_matrix"] for item in stored],
                                         dtype=np.float32).reshape(count, 3, 3),
                data=[item["mask"] for item in stored], interpolator=stored[0]["interpolator"])
        return cls(name=name, source=source,
                   frame_size=media.frame_size if media.frame_size is not None
                   else media.image_size,
                   bboxes=media.bboxes.copy(), keypoints=media.keypoints.copy(),
                   landmarks=None if media.landmarks is None else media.landmarks.copy(),
                   align_scores=media.align_scores.copy(), masks=masks,
                   identities={key: np.array(value, dtype=np.float32)
                               for key, value in media.identities.items()},
                   thumbnails=list(thumbnails))

    def _identity(self, index: int) -> dict[str, npt.NDArray[np.float32]]:
        return {key: value[index] for key, value in self.identities.items()
                if not np.isnan(value[index]).all()}

    def detected_faces(self) -> list[DetectedFace]:
        """One :class:`DetectedFace` per face, to feed the faces back into a pipeline: box,
        landmarks, keypoints, align score, identities and decoded masks (each an
        :class:`ExtractBatchMask` of one face with its frame -> normalised-mask matrix)."""
        out: list[DetectedFace] = []
        for index, (left, top, right, bottom) in enumerate(self.bboxes.tolist()):
            masks: dict[str, ExtractBatchMask] = {}
            for key, stored in self.masks.items():
                alignment = stored.alignment(index)
                if alignment is None:
                    continue
                side = float(stored.stored_size)
                to_normalized = np.diag([1.0 / side, 1.0 / side, 1.0])
                masks[key] = ExtractBatchMask(
                    centering=cast(CenteringType, stored.centering),
                    matrices=(to_normalized @ stored.affine_matrices[index])[None],
                    storage_size=stored.stored_size,
                    masks=ExtractBatchMask.decode(alignment)[None])
            score = float(self.align_scores[index])
            out.append(DetectedFace(
                left, top, right - left, bottom - top,
                landmarks_xy=None if self.landmarks is None else self.landmarks[index],
                keypoints=self.keypoints[index] if self.keypoints.shape[1] else None,
                align_score=None if np.isnan(score) else score,
                identity=self._identity(index), mask=masks))
        return out

    def png_alignments(self, index: int) -> PNGAlignments:
        """Face ``index`` in the layout of a face PNG's header (faceswap's ``alignments``)."""
        left, top, right, bottom = self.bboxes[index].tolist()
        masks = {key: stored.alignment(index) for key, stored in self.masks.items()}
        return {"x": left, "y": top, "w": right - left, "h": bottom - top,
                "landmarks_xy": [] if self.landmarks is None else self.landmarks[index].tolist(),
                "mask": {key: value for key, value in masks.items() if value is not None},
                "identity": {key: value.tolist()
                             for key, value in self._identity(index).items()}}
