"""The data that flows through a pipeline: batches of frames and faces, and one frame's faces.

Conventions
-----------
* Boxes are (left, top, right, bottom) int32 in frame pixels, right and bottom exclusive.
* Landmarks are (x, y) float32 in frame pixels, pixel centres at integer coordinates.
* Faces of a batch are ordered by frame: ``frame_ids`` never decreases.
* A frame may be split over several consecutive batches when it has more faces than a stage's
  batch size. Every frame carries the pipeline's running ``frame_number`` and a ``frame_complete``
  flag that is True only in the batch holding the frame's last part, so parts are joined exactly.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.aligned_batch import ExtractBatchAligned, as_boolean
from faceinfer.formats.types import MaskAlignments, PNGAlignments, PNGSource
from faceinfer.geometry.constants import CenteringType, FaceBox, LandmarkType

__all__ = ["DetectedFace", "ExtractBatch", "ExtractBatchAligned", "ExtractBatchMask",
           "ExtractSignal", "FrameFaces", "frame_faces_to_alignment"]

_MIN_MASK_STORAGE = 64


class ExtractSignal(Enum):
    """Signals to send through the extraction pipeline."""

    FLUSH = 1
    """Release every partly filled batch and drain every stage; the pipeline keeps running."""
    SHUTDOWN = 2
    """Release and drain everything, then end iteration."""


def _empty_boxes() -> npt.NDArray[np.int32]:
    return np.zeros((0, 4), dtype=np.int32)


def _empty_ids() -> npt.NDArray[np.int32]:
    return np.zeros((0,), dtype=np.int32)


def _empty_keypoints(count: int = 0) -> npt.NDArray[np.float32]:
    return np.zeros((count, 0, 2), dtype=np.float32)


def _unknown_scores(count: int = 0) -> npt.NDArray[np.float32]:
    return np.full((count,), np.nan, dtype=np.float32)


def _as_keypoints(keypoints: npt.ArrayLike | None, count: int) -> npt.NDArray[np.float32]:
    """(count, K, 2) float32 keypoints from an array-like, or (count, 0, 2) for None."""
    if keypoints is None:
        return _empty_keypoints(count)
    points = np.asarray(keypoints, dtype=np.float32)
    if points.ndim != 3 or points.shape[0] != count or points.shape[2] != 2:
        raise ValueError(f"expected ({count}, K, 2) keypoints, got {points.shape}")
    return points


def _concat_keypoints(left: npt.NDArray[np.float32], right: npt.NDArray[np.float32]
                      ) -> npt.NDArray[np.float32]:
    """Join two (N, K, 2) keypoint arrays. Faces without keypoints where the other side has
    them (different detectors) get NaN keypoints."""
    if left.shape[1] != right.shape[1] and len(left) and len(right):
        width = max(left.shape[1], right.shape[1])
        left, right = (np.concatenate([side, np.full((len(side), width - side.shape[1], 2),
                                                     np.nan, np.float32)], axis=1)
                       for side in (left, right))
    elif not len(left):
        return right.copy()
    elif not len(right):
        return left
    return np.concatenate([left, right])


def _empty_masks() -> npt.NDArray[np.uint8]:
    return np.zeros((0, 0, 0), dtype=np.uint8)


@dataclass
class ExtractBatchMask:
    """The masks made by one mask plugin for a batch of faces.

    Parameters
    ----------
    centering:
        The centering of the aligned crop that the masks were made in.
    matrices:
        (N, 3, 3) float32: each maps frame pixel (x, y) to normalized mask space, where the mask
        covers [0, 1] x [0, 1]. Warp a mask back to its frame with ``WARP_INVERSE_MAP``.
    storage_size:
        The side, in pixels, to store the masks at in output files. 0: keep the mask's own size.
    masks:
        (N, S, S) uint8 masks, 0 outside the face and 255 inside.
    """

    centering: CenteringType
    matrices: npt.NDArray[np.float32]
    storage_size: int = 0
    masks: npt.NDArray[np.uint8] = field(default_factory=_empty_masks)

    def __post_init__(self) -> None:
        self.matrices = np.asarray(self.matrices, dtype=np.float32)
        if self.matrices.ndim != 3 or self.matrices.shape[1:] != (3, 3):
            raise ValueError(f"expected mask matrices of shape (N, 3, 3), "
                             f"got {self.matrices.shape}")
        if self.masks.size and (self.masks.ndim != 3 or len(self.masks) != len(self.matrices)):
            raise ValueError(f"expected masks of shape ({len(self.matrices)}, S, S), "
                             f"got {self.masks.shape}")
        if self.storage_size < 0:
            raise ValueError(f"expected a storage size >= 0, got {self.storage_size}")

    def __len__(self) -> int:
        return len(self.matrices)

    def select(self, index: slice | npt.NDArray[np.bool_] | npt.NDArray[np.intp]
               ) -> ExtractBatchMask:
        """A new object holding the masks at the given index (slice, boolean or integer array)."""
        out = object.__new__(ExtractBatchMask)  # a part of valid data is valid: skip the checks
        out.centering = self.centering
        out.matrices = self.matrices[index]
        out.storage_size = self.storage_size
        out.masks = self.masks[index] if self.masks.size else self.masks
        return out

    def append(self, mask_batch: ExtractBatchMask) -> None:
        """Append the masks of another batch made by the same plugin."""
        if mask_batch.centering != self.centering:
            raise ValueError(f"expected masks with centering '{self.centering}', "
                             f"got '{mask_batch.centering}'")
        self.matrices = np.concatenate([self.matrices, mask_batch.matrices])
        if not self.masks.size:
            self.masks = mask_batch.masks
        elif mask_batch.masks.size:
            self.masks = np.concatenate([self.masks, mask_batch.masks])

    def apply_mask(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep the masks where ``mask`` is True. ``mask`` has shape (num_masks,)."""
        mask = as_boolean(mask, len(self), "masks")
        self.matrices = self.matrices[mask]
        if self.masks.size:
            self.masks = self.masks[mask]

    def to_alignment(self, index: int) -> MaskAlignments:
        """The stored form of one face's mask: resized to the storage size, zlib-compressed, with
        the frame -> stored-mask pixel matrix."""
        mask = self.masks[index]
        size = mask.shape[0]
        stored = size if self.storage_size == 0 else max(self.storage_size, _MIN_MASK_STORAGE)
        if stored != size:
            interp = cv2.INTER_AREA if stored < size else cv2.INTER_LINEAR
            mask = cv2.resize(mask, (stored, stored), interpolation=interp)
        to_pixels = np.diag([stored, stored, 1.0])
        matrix = to_pixels @ self.matrices[index].astype(np.float64)
        return {"mask": zlib.compress(np.ascontiguousarray(mask).tobytes()),
                "affine_matrix": matrix.tolist(),
                "interpolator": int(cv2.INTER_LINEAR),
                "stored_size": int(stored),
                "stored_centering": str(self.centering)}

    @staticmethod
    def decode(stored: MaskAlignments) -> npt.NDArray[np.uint8]:
        """The (stored_size, stored_size) uint8 mask held in a stored mask (the inverse of
        :meth:`to_alignment`'s compression). Warp it to its frame through ``affine_matrix``
        (frame -> stored-mask pixels) with ``WARP_INVERSE_MAP``.

        Raises
        ------
        ValueError
            If the mask bytes do not decompress to ``stored_size`` squared bytes.
        """
        side = int(stored["stored_size"])
        try:
            raw = zlib.decompress(stored["mask"])
        except zlib.error as err:
            raise ValueError(f"expected zlib-compressed mask bytes, got undecodable data: "
                             f"{err}") from None
        if side < 1 or len(raw) != side * side:
            raise ValueError(f"expected {side} x {side} = {side * side} mask bytes for a stored "
                             f"size of {side}, got {len(raw)}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(side, side).copy()


def _concat_dicts(left: dict[str, Any], right: dict[str, Any], left_faces: int, right_faces: int,
                  what: str) -> dict[str, Any]:
    """Merge per-face data dicts of two batches. A side with no faces adopts the other's keys."""
    if right_faces == 0:
        return left
    if left_faces == 0:
        return dict(right)
    if left.keys() != right.keys():
        raise ValueError(f"expected the same {what} in both batches, "
                         f"got {sorted(left)} and {sorted(right)}")
    out: dict[str, Any] = {}
    for key, value in left.items():
        if isinstance(value, ExtractBatchMask):
            merged = value.select(slice(None))
            merged.append(right[key])
            out[key] = merged
        else:
            out[key] = np.concatenate([value, right[key]])
    return out


@dataclass
class ExtractBatch:
    """A batch of frames and the faces found in them, as parallel arrays.

    Detectors count their batch size in frames, later stages in faces: a frame can hold 0 or more
    faces, so batches are split and joined between stages (see the module docstring).

    Parameters
    ----------
    filenames:
        The frames' file names.
    images:
        The frames, uint8 BGR (H, W, 3); aligned face images when ``is_aligned``.
    sources:
        The folder or video each frame came from, or None. Filled with None when left empty.
    is_aligned:
        True if ``images`` are aligned faces rather than frames.
    frame_sizes:
        The (height, width) of the frames the aligned faces came from, when ``is_aligned``.
    frame_metadata:
        The metadata stored with each aligned face, when ``is_aligned``.
    passthrough:
        True to send this batch straight through the pipeline with no waiting for more data.
    """

    filenames: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)
    is_aligned: bool = False
    frame_sizes: list[tuple[int, int]] | None = None
    frame_metadata: list[PNGSource] | None = None
    passthrough: bool = False

    bboxes: npt.NDArray[np.int32] = field(init=False, default_factory=_empty_boxes)
    """(N, 4) face boxes (left, top, right, bottom) in frame pixels."""
    frame_ids: npt.NDArray[np.int32] = field(init=False, default_factory=_empty_ids)
    """(N,) the index, within this batch, of the frame each face belongs to."""
    keypoints: npt.NDArray[np.float32] = field(init=False, default_factory=_empty_keypoints)
    """(N, K, 2) the detector's facial keypoints (x, y) in frame pixels; K is 0 for detectors
    that find none, 5 for eyes, nose tip and mouth corners (see
    :attr:`~faceinfer.plugins.base.DetectPlugin.keypoints`)."""
    face_box: FaceBox | None = field(init=False, default=None)
    """The box convention of the detector that found the faces (see
    :attr:`~faceinfer.plugins.base.DetectPlugin.face_box`), or None if unknown."""
    align_scores: npt.NDArray[np.float32] = field(init=False, default_factory=_unknown_scores)
    """(N,) each face's alignment error estimate from the aligner, as a fraction of the face's
    size (lower is better; NaN before alignment): the disagreement between the two re-align
    passes, or without re-align the distance of the landmarks from the mean face."""
    aligned: ExtractBatchAligned = field(init=False, default_factory=ExtractBatchAligned)
    """The faces' landmarks and what is derived from them."""
    masks: dict[str, ExtractBatchMask] = field(init=False, default_factory=dict)
    """The faces' masks by mask plugin storage name."""
    identities: dict[str, npt.NDArray[np.float32]] = field(init=False, default_factory=dict)
    """The faces' (N, D) identity embeddings by identity plugin storage name."""
    data: np.ndarray = field(init=False, default_factory=lambda: np.zeros((0,), np.float32))
    """Transient: what one processor of a stage hands to the next. Cleared between stages."""
    matrices: npt.NDArray[np.float32] = field(
        init=False, default_factory=lambda: np.zeros((0, 3, 3), np.float32))
    """Transient: matrices taking model input space to frame space. Cleared between stages."""
    frame_numbers: npt.NDArray[np.int64] = field(init=False, default_factory=lambda: np.zeros(
        (0,), np.int64))
    """(F,) each frame's running number in its pipeline, so parts of a split frame can be joined."""
    frame_complete: npt.NDArray[np.bool_] = field(init=False, default_factory=lambda: np.zeros(
        (0,), np.bool_))
    """(F,) True where this batch holds the last part of the frame."""

    def __post_init__(self) -> None:
        count = len(self.filenames)
        if len(self.images) != count:
            raise ValueError(f"expected {count} images for {count} filenames, "
                             f"got {len(self.images)}")
        if not self.sources:
            self.sources = [None] * count
        if len(self.sources) != count:
            raise ValueError(f"expected {count} sources, got {len(self.sources)}")
        for name, values in (("frame_sizes", self.frame_sizes),
                             ("frame_metadata", self.frame_metadata)):
            if values is not None and len(values) != count:
                raise ValueError(f"expected {count} {name}, got {len(values)}")
        self.frame_numbers = np.arange(count, dtype=np.int64)
        self.frame_complete = np.ones((count,), dtype=np.bool_)

    @property
    def num_frames(self) -> int:
        """The number of frames (or frame parts) in the batch."""
        return len(self.filenames)

    @property
    def num_faces(self) -> int:
        """The number of faces in the batch."""
        return len(self.bboxes)

    @property
    def lengths(self) -> npt.NDArray[np.int32]:
        """(F,) the number of faces in each frame."""
        return np.bincount(self.frame_ids, minlength=self.num_frames).astype(np.int32)

    @property
    def landmark_type(self) -> LandmarkType | None:
        """The layout of the landmarks, or None if not populated."""
        return self.aligned.landmark_type

    @property
    def landmarks(self) -> npt.NDArray[np.float32] | None:
        """(N, P, 2) landmarks in frame pixels, or None if not populated."""
        return self.aligned.landmarks

    def set_faces(self, bboxes: npt.NDArray[np.integer[Any]],
                  frame_ids: npt.NDArray[np.integer[Any]],
                  keypoints: npt.ArrayLike | None = None) -> None:
        """Replace every face of the batch with the given boxes, dropping any face data.

        Parameters
        ----------
        bboxes:
            (N, 4) boxes (left, top, right, bottom) in frame pixels.
        frame_ids:
            (N,) the frame index within this batch of each box, non-decreasing.
        keypoints:
            (N, K, 2) the detector's keypoints in frame pixels, or None for none.
        """
        bboxes = np.asarray(bboxes, dtype=np.int32).reshape(-1, 4)
        frame_ids = np.asarray(frame_ids, dtype=np.int32).reshape(-1)
        if len(frame_ids) != len(bboxes):
            raise ValueError(f"expected {len(bboxes)} frame ids, got {len(frame_ids)}")
        if len(frame_ids) and (frame_ids.min() < 0 or frame_ids.max() >= self.num_frames
                               or np.any(np.diff(frame_ids) < 0)):
            raise ValueError(f"expected non-decreasing frame ids in [0, {self.num_frames}), "
                             f"got {frame_ids.tolist()}")
        self.bboxes, self.frame_ids = bboxes, frame_ids
        self.keypoints = _as_keypoints(keypoints, len(bboxes))
        self.align_scores = _unknown_scores(len(bboxes))
        self.aligned = ExtractBatchAligned()
        self.masks = {}
        self.identities = {}

    def from_detected_faces(self, faces: list[DetectedFace]) -> None:
        """Fill the faces of this one-frame batch from DetectedFace objects.

        Raises
        ------
        ValueError
            If the batch does not hold exactly one frame, or already holds faces.
        """
        if self.num_frames != 1:
            raise ValueError(f"expected a batch of exactly one frame, got {self.num_frames}")
        if self.num_faces:
            raise ValueError(f"expected a batch with no faces yet, got {self.num_faces}")
        if not faces:
            return
        widths = {0 if f.keypoints is None else len(f.keypoints) for f in faces}
        keypoints = None if widths == {0} else np.stack([
            np.full((max(widths), 2), np.nan, np.float32) if f.keypoints is None
            else np.asarray(f.keypoints, np.float32) for f in faces])
        self.set_faces(np.array([[f.left, f.top, f.right, f.bottom] for f in faces]),
                       np.zeros(len(faces), dtype=np.int32), keypoints)
        self.align_scores = np.array([np.nan if f.align_score is None else f.align_score
                                      for f in faces], dtype=np.float32)
        with_points = [f.landmarks_xy is not None for f in faces]
        if all(with_points):
            self.aligned = ExtractBatchAligned(
                np.stack([np.asarray(f.landmarks_xy, dtype=np.float32) for f in faces]))
        elif any(with_points):
            raise ValueError("expected landmarks for every detected face of the frame, or none")
        for key in faces[0].identity:
            self.identities[key] = np.stack([f.identity[key] for f in faces]).astype(np.float32)
        for key in faces[0].mask:
            merged = faces[0].mask[key].select(slice(None))
            for face in faces[1:]:
                merged.append(face.mask[key])
            self.masks[key] = merged

    @classmethod
    def from_frame_faces(cls, media: FrameFaces) -> ExtractBatch:
        """A new one-frame batch holding the given frame and its faces."""
        assert media.image is not None, "a frame without its image cannot be batched"
        batch = cls([media.filename], [media.image], [media.source], is_aligned=media.is_aligned,
                    frame_sizes=None if media.frame_size is None else [media.frame_size],
                    frame_metadata=None if media.frame_metadata is None
                    else [media.frame_metadata],
                    passthrough=media.passthrough)
        if len(media.bboxes):
            batch.bboxes = media.bboxes
            batch.frame_ids = np.zeros(len(media.bboxes), dtype=np.int32)
            batch.keypoints = media.keypoints
            batch.align_scores = media.align_scores
            batch.aligned = media.aligned.select(slice(None))
            batch.masks = {k: v.select(slice(None)) for k, v in media.masks.items()}
            batch.identities = dict(media.identities)
        return batch

    @classmethod
    def from_frames(cls, frames: list[FrameFaces], numbers: npt.NDArray[np.int64] | None = None
                    ) -> ExtractBatch:
        """A new batch holding the given frames (each complete) and their faces, in order.

        Parameters
        ----------
        frames:
            The frames, all aligned or all not.
        numbers:
            (F,) the frames' running numbers in the pipeline. Default: 0 .. F-1.
        """
        aligned = {media.is_aligned for media in frames}
        if len(aligned) > 1:
            raise ValueError("expected all frames of a batch to be aligned faces, or none")
        with_size = [m.frame_size for m in frames if m.frame_size is not None]
        with_meta = [m.frame_metadata for m in frames if m.frame_metadata is not None]
        images: list[np.ndarray] = []
        for media in frames:
            assert media.image is not None, "a frame without its image cannot be batched"
            images.append(media.image)
        batch = cls([m.filename for m in frames], images,
                    [m.source for m in frames], is_aligned=aligned == {True},
                    frame_sizes=with_size if len(with_size) == len(frames) else None,
                    frame_metadata=with_meta if len(with_meta) == len(frames) else None,
                    passthrough=any(m.passthrough for m in frames))
        if numbers is not None:
            batch.frame_numbers = np.asarray(numbers, dtype=np.int64)
        counts = np.array([len(m.bboxes) for m in frames], dtype=np.int64)
        if counts.sum():
            with_faces = [m for m in frames if len(m.bboxes)]
            first = ExtractBatch.from_frame_faces(with_faces[0])
            for media in with_faces[1:]:
                nxt = ExtractBatch.from_frame_faces(media)
                nxt.frame_numbers = first.frame_numbers[-1:] + 1  # distinct frames, never joined
                first.append(nxt)
            batch.bboxes = first.bboxes
            batch.frame_ids = np.repeat(np.arange(len(frames), dtype=np.int32), counts)
            batch.keypoints = first.keypoints
            batch.align_scores = first.align_scores
            batch.aligned = first.aligned
            batch.masks = first.masks
            batch.identities = first.identities
        return batch

    def _subset(self, frames: slice, faces: slice) -> ExtractBatch:
        """A new batch of the given frame range and face range. The faces must lie in the
        frames."""
        out = ExtractBatch(self.filenames[frames], self.images[frames], self.sources[frames],
                           is_aligned=self.is_aligned,
                           frame_sizes=None if self.frame_sizes is None
                           else self.frame_sizes[frames],
                           frame_metadata=None if self.frame_metadata is None
                           else self.frame_metadata[frames],
                           passthrough=self.passthrough)
        out.frame_numbers = self.frame_numbers[frames]
        out.frame_complete = self.frame_complete[frames].copy()
        start = frames.start or 0
        out.bboxes = self.bboxes[faces]
        out.frame_ids = self.frame_ids[faces] - np.int32(start)
        out.face_box = self.face_box
        out.keypoints = self.keypoints[faces]
        out.align_scores = self.align_scores[faces]
        out.aligned = self.aligned.select(faces)
        out.masks = {k: v.select(faces) for k, v in self.masks.items()}
        out.identities = {k: v[faces] for k, v in self.identities.items()}
        return out

    def split_frames(self, size: int) -> list[ExtractBatch]:
        """Split into batches of at most ``size`` frames each, faces following their frames."""
        if self.num_frames <= size:
            return [self]
        starts = np.concatenate([[0], np.cumsum(self.lengths)])
        return [self._subset(slice(f, min(f + size, self.num_frames)),
                             slice(int(starts[f]), int(starts[min(f + size, self.num_frames)])))
                for f in range(0, self.num_frames, size)]

    def split(self, first_capacity: int, capacity: int) -> list[ExtractBatch]:
        """Split into batches by face count: the first takes up to ``first_capacity`` faces, each
        later one up to ``capacity``.

        A frame whose faces straddle a cut appears in both batches, marked incomplete in the
        first. A frame with no faces goes with the batch holding the face before it (the first
        batch if there is none), so it leaves as early as possible.
        """
        total = self.num_faces
        if total <= first_capacity or self.num_frames == 0:
            return [self]
        if first_capacity < 1 or capacity < 1:
            raise ValueError(f"expected capacities >= 1, got {first_capacity}, {capacity}")
        lengths = self.lengths.astype(np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths

        def chunk_of(face: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
            later = np.maximum(face - first_capacity, 0) // capacity + 1
            return np.where(face < first_capacity, 0, later)

        has = lengths > 0
        low = np.where(has, chunk_of(starts), chunk_of(np.maximum(starts - 1, 0)))
        high = np.where(has, chunk_of(np.maximum(ends - 1, 0)), low)
        count = int(chunk_of(np.array([total - 1]))[0]) + 1
        out: list[ExtractBatch] = []
        for chunk in range(count):
            frame_start = int(np.searchsorted(high, chunk, side="left"))
            frame_stop = int(np.searchsorted(low, chunk, side="right"))
            face_start = 0 if chunk == 0 else first_capacity + (chunk - 1) * capacity
            face_stop = min(first_capacity + chunk * capacity, total)
            part = self._subset(slice(frame_start, frame_stop), slice(face_start, face_stop))
            part.frame_complete &= high[frame_start:frame_stop] == chunk
            out.append(part)
        return out

    def append(self, batch: ExtractBatch) -> None:
        """Append another batch's frames and faces to this one. When the other batch starts with
        the rest of this batch's last frame (same frame number), the two parts are joined."""
        if self.num_frames and batch.num_frames and self.is_aligned != batch.is_aligned:
            raise ValueError("expected both batches to hold aligned faces, or neither")
        join = bool(self.num_frames and batch.num_frames
                    and self.frame_numbers[-1] == batch.frame_numbers[0])
        skip = 1 if join else 0
        offset = self.num_frames - skip
        mine, theirs = self.num_faces, batch.num_faces
        self.aligned = (batch.aligned.select(slice(None)) if mine == 0
                        else self.aligned if theirs == 0 else self._append_aligned(batch))
        self.masks = _concat_dicts(self.masks, batch.masks, mine, theirs, "masks")
        self.identities = _concat_dicts(self.identities, batch.identities, mine, theirs,
                                        "identities")
        self.bboxes = np.concatenate([self.bboxes, batch.bboxes])
        self.frame_ids = np.concatenate([self.frame_ids, batch.frame_ids + np.int32(offset)])
        self.keypoints = _concat_keypoints(self.keypoints, batch.keypoints)
        self.align_scores = np.concatenate([self.align_scores, batch.align_scores])
        if mine == 0:
            self.face_box = batch.face_box
        elif theirs and self.face_box != batch.face_box:
            self.face_box = None
        if not self.num_frames:
            self.is_aligned = batch.is_aligned
        if join:
            self.frame_complete[-1] = batch.frame_complete[0]
        self.filenames.extend(batch.filenames[skip:])
        self.images.extend(batch.images[skip:])
        self.sources.extend(batch.sources[skip:])
        self.frame_sizes = self._join_lists(self.frame_sizes, batch.frame_sizes, skip, offset)
        self.frame_metadata = self._join_lists(self.frame_metadata, batch.frame_metadata, skip,
                                               offset)
        self.frame_numbers = np.concatenate([self.frame_numbers, batch.frame_numbers[skip:]])
        self.frame_complete = np.concatenate([self.frame_complete, batch.frame_complete[skip:]])
        self.passthrough = self.passthrough or batch.passthrough

    def _append_aligned(self, batch: ExtractBatch) -> ExtractBatchAligned:
        out = self.aligned.select(slice(None))
        out.append(batch.aligned)
        return out

    @staticmethod
    def _join_lists(mine: list[Any] | None, theirs: list[Any] | None, skip: int,
                    count: int) -> list[Any] | None:
        if mine is None and theirs is None:
            return None
        if mine is None or theirs is None:
            if count == 0:
                return None if theirs is None else list(theirs)
            raise ValueError("expected frame sizes and metadata in both batches, or neither")
        return mine + theirs[skip:]

    def apply_mask(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep the faces where ``mask`` is True, dropping the others and all their data. Frames
        stay, with or without faces. ``mask`` has shape (num_boxes,)."""
        mask = as_boolean(mask, self.num_faces, "faces")
        self.bboxes = self.bboxes[mask]
        self.frame_ids = self.frame_ids[mask]
        self.keypoints = self.keypoints[mask]
        self.align_scores = self.align_scores[mask]
        self.aligned.apply_mask(mask)
        for value in self.masks.values():
            value.apply_mask(mask)
        self.identities = {k: v[mask] for k, v in self.identities.items()}

    def clear_transient(self) -> None:
        """Drop ``data`` and ``matrices``, which only pass between one stage's processors."""
        self.data = np.zeros((0,), np.float32)
        self.matrices = np.zeros((0, 3, 3), np.float32)

    def to_frame_faces(self) -> list[FrameFaces]:
        """One :class:`FrameFaces` per frame (or frame part) of the batch, in order."""
        ends = np.cumsum(self.lengths)
        out: list[FrameFaces] = []
        start = 0
        for index, end in enumerate(ends.tolist()):
            faces = slice(start, end)
            media = FrameFaces(
                self.filenames[index], self.images[index],
                bboxes=self.bboxes[faces],
                keypoints=self.keypoints[faces],
                align_scores=self.align_scores[faces],
                identities={k: v[faces] for k, v in self.identities.items()},
                masks={k: v.select(faces) for k, v in self.masks.items()},
                source=self.sources[index], is_aligned=self.is_aligned,
                frame_metadata=None if self.frame_metadata is None
                else self.frame_metadata[index],
                passthrough=self.passthrough,
                frame_size=None if self.frame_sizes is None else self.frame_sizes[index])
            media.aligned = self.aligned.select(faces)
            out.append(media)
            start = end
        return out


@dataclass
class DetectedFace:
    """One face in one frame: its box and whatever later stages found for it.

    ``left``, ``top``, ``width`` and ``height`` are in frame pixels; ``landmarks_xy`` is (P, 2)
    (x, y) in frame pixels; ``keypoints`` is the detector's (K, 2) keypoints in frame pixels
    (None if it found none); ``align_score`` is the aligner's error estimate (see
    :attr:`ExtractBatch.align_scores`; None if unknown); ``identity`` maps a storage name to
    a (D,) embedding; ``mask`` maps a storage name to an :class:`ExtractBatchMask` holding this
    one face's mask.
    """

    left: int
    top: int
    width: int
    height: int
    landmarks_xy: npt.NDArray[np.float32] | None = None
    keypoints: npt.NDArray[np.float32] | None = None
    align_score: float | None = None
    identity: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    mask: dict[str, ExtractBatchMask] = field(default_factory=dict)
    _aligned: ExtractBatchAligned | None = field(default=None, repr=False, compare=False)

    @property
    def aligned(self) -> ExtractBatchAligned:
        """This face's alignment as a batch of one: ``matrices``, ``landmarks_normalized``,
        ``rotation``, offsets and so on, each with a leading axis of 1. Shared with the frame's
        when the face came from :attr:`FrameFaces.detected_faces`.

        Raises
        ------
        ValueError
            If the face has no landmarks.
        """
        if self._aligned is None:
            if self.landmarks_xy is None:
                raise ValueError("expected a face with landmarks, got none")
            self._aligned = ExtractBatchAligned(np.asarray(self.landmarks_xy)[None])
        return self._aligned

    @property
    def right(self) -> int:
        """The right edge of the box (exclusive)."""
        return self.left + self.width

    @property
    def bottom(self) -> int:
        """The bottom edge of the box (exclusive)."""
        return self.top + self.height


class FrameFaces:
    """One frame and the faces found in it.

    Parameters
    ----------
    filename:
        The frame's file name (for video, its frame key).
    image:
        The frame, uint8 BGR (H, W, 3), or an aligned face image.
    bboxes:
        (N, 4) boxes (left, top, right, bottom) in frame pixels. Default: no faces.
    landmarks:
        (N, P, 2) landmarks in frame pixels. Default: not populated.
    keypoints:
        (N, K, 2) the detector's keypoints in frame pixels. Default: none (K = 0).
    align_scores:
        (N,) the aligner's error estimates (NaN: unknown). Default: unknown.
    identities:
        (N, D) embeddings by identity plugin storage name.
    masks:
        Mask objects by mask plugin storage name.
    source:
        The folder or video the frame came from.
    is_aligned:
        True if the image is an aligned face rather than a frame.
    frame_metadata:
        The metadata stored with an aligned face image.
    passthrough:
        True to send this frame straight through the pipeline and return it at once.
    frame_size:
        The (height, width) of the frame an aligned face came from.
    """

    def __init__(self, filename: str, image: npt.NDArray[np.uint8],
                 bboxes: npt.NDArray[np.int32] | None = None,
                 landmarks: npt.NDArray[np.float32] | None = None,
                 identities: dict[str, npt.NDArray[np.float32]] | None = None,
                 masks: dict[str, ExtractBatchMask] | None = None,
                 source: str | None = None, is_aligned: bool = False,
                 frame_metadata: PNGSource | None = None, passthrough: bool = False,
                 frame_size: tuple[int, int] | None = None,
                 keypoints: npt.ArrayLike | None = None,
                 align_scores: npt.ArrayLike | None = None) -> None:
        self.filename = filename
        """The frame's file name."""
        self.image: npt.NDArray[np.uint8] | None = image
        """The frame or aligned face image; None after :meth:`remove_image`."""
        self.image_shape: tuple[int, ...] = tuple(image.shape)
        """The shape of the image as given."""
        self.bboxes = (_empty_boxes() if bboxes is None
                       else np.asarray(bboxes, dtype=np.int32).reshape(-1, 4))
        """(N, 4) boxes (left, top, right, bottom) in frame pixels."""
        count = len(self.bboxes)
        self.keypoints = _as_keypoints(keypoints, count)
        """(N, K, 2) the detector's keypoints in frame pixels (K = 0: none)."""
        self.align_scores = (_unknown_scores(count) if align_scores is None
                             else np.asarray(align_scores, dtype=np.float32).reshape(count))
        """(N,) the aligner's error estimates (NaN: unknown)."""
        self.aligned = ExtractBatchAligned(landmarks)
        """The faces' landmarks and what is derived from them."""
        self.identities = {} if identities is None else identities
        """(N, D) identity embeddings by storage name."""
        self.masks = {} if masks is None else masks
        """Mask objects by storage name."""
        self.source = source
        """The folder or video the frame came from, or None."""
        self.is_aligned = is_aligned
        """True if the image is an aligned face."""
        self.frame_metadata: PNGSource | None = frame_metadata
        """Metadata of an aligned face image, or None."""
        self.passthrough = passthrough
        """True if this frame goes straight through the pipeline."""
        self.frame_size = frame_size
        """The (height, width) of the frame an aligned face came from, or None."""
        if self.aligned.landmarks is not None and len(self.aligned) != count:
            raise ValueError(f"expected landmarks for {count} faces, got {len(self.aligned)}")
        for key, value in self.identities.items():
            if len(value) != count:
                raise ValueError(f"expected {count} '{key}' identities, got {len(value)}")
        for key, mask in self.masks.items():
            if len(mask) != count:
                raise ValueError(f"expected {count} '{key}' masks, got {len(mask)}")

    def __repr__(self) -> str:
        return (f"FrameFaces(filename={self.filename!r}, image_shape={self.image_shape}, "
                f"faces={len(self.bboxes)})")

    @property
    def landmarks(self) -> npt.NDArray[np.float32] | None:
        """(N, P, 2) landmarks in frame pixels, or None if not populated."""
        return self.aligned.landmarks

    @property
    def image_size(self) -> tuple[int, int]:
        """The (height, width) of the image."""
        return int(self.image_shape[0]), int(self.image_shape[1])

    @property
    def detected_faces(self) -> list[DetectedFace]:
        """One :class:`DetectedFace` per face."""
        points = self.aligned.landmarks
        return [DetectedFace(int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1]),
                             landmarks_xy=None if points is None else points[index],
                             keypoints=(self.keypoints[index] if self.keypoints.shape[1]
                                        else None),
                             align_score=(None if np.isnan(self.align_scores[index])
                                          else float(self.align_scores[index])),
                             identity={k: v[index] for k, v in self.identities.items()},
                             mask={k: v.select(slice(index, index + 1))
                                   for k, v in self.masks.items()},
                             _aligned=None if points is None
                             else self.aligned.select(slice(index, index + 1)))
                for index, box in enumerate(self.bboxes)]

    def append(self, batch: FrameFaces) -> None:
        """Append the faces of another part of the same frame."""
        if batch.filename != self.filename:
            raise ValueError(f"expected a part of frame '{self.filename}', "
                             f"got '{batch.filename}'")
        mine, theirs = len(self.bboxes), len(batch.bboxes)
        if mine == 0:
            self.aligned = batch.aligned.select(slice(None))
        elif theirs:
            self.aligned.append(batch.aligned)
        self.masks = _concat_dicts(self.masks, batch.masks, mine, theirs, "masks")
        self.identities = _concat_dicts(self.identities, batch.identities, mine, theirs,
                                        "identities")
        self.bboxes = np.concatenate([self.bboxes, batch.bboxes])
        self.keypoints = _concat_keypoints(self.keypoints, batch.keypoints)
        self.align_scores = np.concatenate([self.align_scores, batch.align_scores])

    def remove_image(self) -> None:
        """Drop the image to free memory. ``image_shape`` still tells its shape."""
        self.image = None


def frame_faces_to_alignment(media: FrameFaces) -> list[PNGAlignments]:
    """One alignments dictionary per face of the frame, ready for an alignments file or a face
    PNG's header: box, landmarks, stored masks and identity embeddings."""
    points = media.aligned.landmarks
    out: list[PNGAlignments] = []
    for index, box in enumerate(media.bboxes.tolist()):
        out.append({
            "x": int(box[0]), "y": int(box[1]),
            "w": int(box[2] - box[0]), "h": int(box[3] - box[1]),
            "landmarks_xy": [] if points is None else points[index].tolist(),
            "mask": {name: mask.to_alignment(index) for name, mask in media.masks.items()
                     if mask.masks.size},
            "identity": {name: value[index].tolist() for name, value in media.identities.items()},
        })
    return out
