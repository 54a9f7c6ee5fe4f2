"""File formats: the alignments file and the metadata stored in extracted face PNGs."""
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
