"""faceinfer: extract faces from images and video with a parallel, batched pipeline.

Build a chain by calling stage handlers in order; the last runner is the pipeline::

    from faceinfer import Align, Detect
    pipeline = Align("test-landmarks")(Detect("test-blobs")())

The whole application (``faceinfer extract`` on the command line) is one call::

    from faceinfer import extract
    summary = extract("clip.mp4", "faces")
"""
from faceinfer._registry import list_plugins, register_plugin
from faceinfer._version import __version__
from faceinfer.align import Align
from faceinfer.app import ExtractSettings, ExtractSummary, extract
from faceinfer.detect import Detect
from faceinfer.errors import FaceInferError, FaceswapError, OutOfMemoryError
from faceinfer.handler import FileHandler
from faceinfer.identity import Identity
from faceinfer.mask import Mask
from faceinfer.objects import (
    DetectedFace,
    ExtractBatch,
    ExtractSignal,
    FrameFaces,
    frame_faces_to_alignment,
)
from faceinfer.runner import ExtractRunner, get_pipeline

File = FileHandler
"""The reference's name for the pass-through handler."""

__all__ = [
    "Align",
    "Detect",
    "DetectedFace",
    "ExtractBatch",
    "ExtractRunner",
    "ExtractSettings",
    "ExtractSignal",
    "ExtractSummary",
    "FaceInferError",
    "FaceswapError",
    "File",
    "FileHandler",
    "FrameFaces",
    "Identity",
    "Mask",
    "OutOfMemoryError",
    "__version__",
    "extract",
    "frame_faces_to_alignment",
    "get_pipeline",
    "list_plugins",
    "register_plugin",
]
