"""The dictionary layouts of one face in an alignments file and in a face PNG's header.

The keys and value types follow faceswap's alignments format version 2.4 so that files can be
exchanged with faceswap's tools (``../shared/reference/faceswap-behaviour.md`` section 5).
"""
from __future__ import annotations

from typing import TypedDict


class MaskAlignments(TypedDict):
    """One stored mask of one face."""

    mask: bytes
    """The uint8 mask, ``stored_size`` x ``stored_size``, row-major, zlib-compressed."""
    affine_matrix: list[list[float]]
    """3x3 matrix taking frame pixel (x, y) to stored-mask pixel (x, y)."""
    interpolator: int
    """The OpenCV interpolation flag to use when warping the mask back to the frame."""
    stored_size: int
    """The mask's side in pixels."""
    stored_centering: str
    """The centering of the aligned crop the mask was made in: legacy, face or head."""


class PNGAlignments(TypedDict):
    """One face: its box, landmarks, masks and identity embeddings, all in frame pixels."""

    x: int
    """Left edge of the face box."""
    y: int
    """Top edge of the face box."""
    w: int
    """Width of the face box."""
    h: int
    """Height of the face box."""
    landmarks_xy: list[list[float]]
    """The (x, y) landmarks in frame pixels."""
    mask: dict[str, MaskAlignments]
    """The stored masks by name."""
    identity: dict[str, list[float]]
    """The identity embeddings by plugin storage name."""


class PNGSource(TypedDict):
    """Where an extracted face came from, stored in the face PNG's header."""

    alignments_version: float
    """The alignments format version the face was written with."""
    original_filename: str
    """The face's own file name when it was written: ``<frame stem>_<face index>.png``."""
    face_index: int
    """The face's index within its frame."""
    source_filename: str
    """The frame's file name (for video: the frame key)."""
    source_is_video: bool
    """True if the frame came from a video."""
    source_frame_dims: tuple[int, int] | None
    """The frame's (height, width)."""
