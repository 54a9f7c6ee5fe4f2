"""File formats: the alignments file and the metadata stored in extracted face PNGs."""
from faceinfer.formats.types import MaskAlignments, PNGAlignments, PNGSource

__all__ = ["MaskAlignments", "PNGAlignments", "PNGSource"]
