"""Landmarks of a batch of faces and the alignment derived from them, computed lazily.

Conventions: landmarks are (x, y) in frame pixels. ``matrices`` map frame pixels to normalized
legacy space (the mean face in [0, 1] x [0, 1]); ``matrices_face`` and ``matrices_head`` map
frame pixels to the same space shifted by each face's centering offset. See
:mod:`faceinfer.geometry.aligned` for sizes and padding.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import LandmarkType
from faceinfer.geometry.crop import map_points
from faceinfer.geometry.landmarks import landmarks_68

logger = logging.getLogger(__name__)

_POSE_TYPES = (LandmarkType.LM_2D_68, LandmarkType.LM_2D_98)
Index = slice | npt.NDArray[np.bool_] | npt.NDArray[np.intp]


def as_boolean(mask: npt.NDArray[np.bool_], size: int, what: str) -> npt.NDArray[np.bool_]:
    """Check that ``mask`` is a boolean array of shape (size,) and return it."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (size,):
        raise ValueError(f"expected a boolean mask of shape ({size},) for {what}, "
                         f"got {mask.dtype} {mask.shape}")
    return mask


@dataclass
class ExtractBatchAligned:
    """The landmarks of a batch of faces and, computed once on first use, what is derived from
    them: normalized landmarks, alignment matrices, pose and centering offsets.

    Parameters
    ----------
    landmarks:
        (N, P, D) float32 landmarks in frame pixels, or None until an aligner fills them.
    landmark_type:
        The layout of the landmarks, or None to infer it from their shape.
    """

    landmarks: npt.NDArray[np.float32] | None = None
    landmark_type: LandmarkType | None = None
    _cache: dict[str, npt.NDArray[np.float32]] = field(
        init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.landmarks is None:
            return
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if self.landmarks.ndim != 3:
            raise ValueError(f"expected landmarks of shape (N, points, dims), "
                             f"got {self.landmarks.shape}")
        if self.landmark_type is None:
            self.landmark_type = LandmarkType.from_shape(self.landmarks.shape)

    def __len__(self) -> int:
        return 0 if self.landmarks is None else len(self.landmarks)

    def select(self, index: Index) -> ExtractBatchAligned:
        """A new object holding the faces at the given index, with what was already derived."""
        out = object.__new__(ExtractBatchAligned)  # a part of valid data is valid: skip the checks
        out.landmarks = None if self.landmarks is None else self.landmarks[index]
        out.landmark_type = self.landmark_type
        out._cache = {key: value[index] for key, value in self._cache.items()}
        return out

    def append(self, batch: ExtractBatchAligned) -> None:
        """Append the landmarks of another batch with the same landmark type. Derived values
        known for both batches are kept; the others are derived again when asked for."""
        if batch.landmarks is None and self.landmarks is None:
            return
        if batch.landmarks is None or self.landmarks is None:
            raise ValueError("expected both batches to hold landmarks, or neither")
        if batch.landmark_type != self.landmark_type:
            raise ValueError(f"expected landmarks of type {self.landmark_type}, "
                             f"got {batch.landmark_type}")
        self.landmarks = np.concatenate([self.landmarks, batch.landmarks])
        self._cache = {key: np.concatenate([value, batch._cache[key]])
                       for key, value in self._cache.items() if key in batch._cache}

    def apply_mask(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep the faces where ``mask`` is True. ``mask`` has shape (num_landmarks,)."""
        if self.landmarks is None:
            return
        mask = as_boolean(mask, len(self.landmarks), "landmarks")
        self.landmarks = self.landmarks[mask]
        self._cache = {key: value[mask] for key, value in self._cache.items()}

    # ------------------------------------------------------------------------------- derived
    def _points(self) -> npt.NDArray[np.float32]:
        if self.landmarks is None:
            raise ValueError("expected landmarks to be populated, got None")
        return self.landmarks

    def _cached(self, key: str, make: Any) -> npt.NDArray[np.float32]:
        found = self._cache.get(key)
        if found is None:
            found = np.asarray(make(), dtype=np.float32)
            self._cache[key] = found
        return found

    @property
    def landmarks_68(self) -> npt.NDArray[np.float32]:
        """The landmarks as (N, 68, 2): 68-point and 4-point (ROI) landmarks unchanged, 98-point
        (WFLW) landmarks mapped to the 68-point layout.

        Raises
        ------
        ValueError
            If no landmarks are held, or their type has no 68-point equivalent.
        """
        return landmarks_68(self._points())

    @property
    def matrices(self) -> npt.NDArray[np.float32]:
        """(N, 3, 3) ``frame_to_legacy``: frame pixels to normalized legacy space. NaN for a face
        whose landmarks all coincide."""
        from faceinfer.geometry.umeyama import legacy_matrices  # noqa: PLC0415

        return self._cached("matrices", lambda: legacy_matrices(self._points()))

    @property
    def landmarks_normalized(self) -> npt.NDArray[np.float32]:
        """(N, 68, 2) the 68-point landmarks (4 points for ROI landmarks) in normalized legacy
        space."""
        def make() -> npt.NDArray[np.float64]:
            return map_points(self.matrices, self.landmarks_68)
        return self._cached("landmarks_normalized", make)

    def _has_pose(self) -> bool:
        if self.landmark_type in _POSE_TYPES:
            return True
        if len(self):
            logger.debug("No pose for %s landmarks: rotation, translation and offsets are zero",
                         self.landmark_type)
        return False

    def _pose(self) -> None:
        if "rotation" in self._cache and "translation" in self._cache:
            return
        if not self._has_pose():
            self._cache["rotation"] = np.zeros((len(self), 3, 1), dtype=np.float32)
            self._cache["translation"] = np.zeros((len(self), 3, 1), dtype=np.float32)
            return
        from faceinfer.geometry.pose import solve_pose  # noqa: PLC0415

        rotation, translation = solve_pose(self.landmarks_normalized)
        self._cache["rotation"] = np.asarray(rotation, dtype=np.float32)
        self._cache["translation"] = np.asarray(translation, dtype=np.float32)

    @property
    def rotation(self) -> npt.NDArray[np.float32]:
        """(N, 3, 1) rotation vectors of the faces' poses (zero without 68/98 landmarks)."""
        self._pose()
        return self._cache["rotation"]

    @property
    def translation(self) -> npt.NDArray[np.float32]:
        """(N, 3, 1) translation vectors of the faces' poses (zero without 68/98 landmarks)."""
        self._pose()
        return self._cache["translation"]

    def _offsets(self, centering: str) -> npt.NDArray[np.float32]:
        def make() -> npt.NDArray[np.float32]:
            if not self._has_pose():
                return np.zeros((len(self), 2), dtype=np.float32)
            from faceinfer.geometry.pose import centering_offsets  # noqa: PLC0415

            return centering_offsets(self.rotation, self.translation, centering)
        return self._cached(f"offsets_{centering}", make)

    @property
    def offsets_face(self) -> npt.NDArray[np.float32]:
        """(N, 2) the (x, y) offsets, in normalized units, from legacy to face centering."""
        return self._offsets("face")

    @property
    def offsets_head(self) -> npt.NDArray[np.float32]:
        """(N, 2) the (x, y) offsets, in normalized units, from legacy to head centering."""
        return self._offsets("head")

    @property
    def offsets_legacy(self) -> npt.NDArray[np.float32]:
        """(N, 2) offsets from legacy to legacy centering: always zero."""
        return np.zeros((len(self), 2), dtype=np.float32)

    def offsets(self, centering: str) -> npt.NDArray[np.float32]:
        """(N, 2) the offsets for ``centering``: legacy, face or head."""
        if centering == "legacy":
            return self.offsets_legacy
        if centering not in ("face", "head"):
            raise ValueError(f"expected a centering of legacy, face or head, got {centering!r}")
        return self._offsets(centering)

    def matrices_for(self, centering: str) -> npt.NDArray[np.float32]:
        """(N, 3, 3) frame pixels to normalized space at ``centering``."""
        if centering == "legacy":
            return self.matrices
        from faceinfer.geometry.aligned import centered_matrices  # noqa: PLC0415

        return self._cached(f"matrices_{centering}", lambda: centered_matrices(
            self.matrices, self.offsets(centering)))

    @property
    def matrices_face(self) -> npt.NDArray[np.float32]:
        """(N, 3, 3) frame pixels to normalized face-centred space."""
        return self.matrices_for("face")

    @property
    def matrices_head(self) -> npt.NDArray[np.float32]:
        """(N, 3, 3) frame pixels to normalized head-centred space."""
        return self.matrices_for("head")
