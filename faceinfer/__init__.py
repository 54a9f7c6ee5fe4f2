"""faceinfer: extract faces from images and video with a parallel, batched pipeline.

Build a chain by calling stage handlers in order; the last runner is the pipeline::

    from faceinfer import Align, Detect
    pipeline = Align("test-landmarks")(Detect("test-blobs")())
"""
from faceinfer._registry import list_plugins, register_plugin
from faceinfer.align import Align
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

__version__ = "0.1.0"

__all__ = [
    "Align",
    "Detect",
    "DetectedFace",
    "ExtractBatch",
    "ExtractRunner",
    "ExtractSignal",
    "FaceInferError",
    "FaceswapError",
    "File",
    "FileHandler",
    "FrameFaces",
    "Identity",
    "Mask",
    "OutOfMemoryError",
    "__version__",
    "frame_faces_to_alignment",
    "get_pipeline",
    "list_plugins",
    "register_plugin",
]
