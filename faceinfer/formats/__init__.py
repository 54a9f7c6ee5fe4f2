"""File formats: the alignments file and the metadata stored in extracted face PNGs.

Import the alignments file and faceswap interop from their modules,
:mod:`faceinfer.formats.alignments` and :mod:`faceinfer.formats.faceswap` (with
:mod:`~faceinfer.formats.records` and :mod:`~faceinfer.formats.safe_pickle`): they build on
:mod:`faceinfer.objects`, which itself imports this package for the dictionary layouts, so they
are not re-exported here.
"""
from faceinfer.formats.png import (
    FaceMetadataError,
    PNGHeader,
    encode_face_png,
    read_png_header,
    write_face_png,
)
from faceinfer.formats.types import MaskAlignments, PNGAlignments, PNGSource

__all__ = ["FaceMetadataError", "MaskAlignments", "PNGAlignments", "PNGHeader", "PNGSource",
           "encode_face_png", "read_png_header", "write_face_png"]
