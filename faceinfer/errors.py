"""The exception hierarchy of faceinfer.

Every error that faceinfer raises on purpose derives from :class:`FaceInferError`, so callers can
catch the library's own failures apart from bugs. :data:`FaceswapError` keeps the reference API's
name for the same class.
"""
from __future__ import annotations

OOM_MESSAGE = (
    "The {device} ran out of memory while running plugin '{plugin}' at a batch size of "
    "{batch_size}. Try, in order: close other programs that use the {device}; lower this plugin's "
    "batch size (set 'batch_size' under [{plugin_type}.{plugin}] in your config file, -C); "
    "choose lighter or fewer plugins; or run on the CPU with --device cpu."
)
"""Advice given when a device runs out of memory. Formatted with ``device``, ``plugin``,
``plugin_type`` and ``batch_size``."""


class FaceInferError(Exception):
    """Base class of every error that faceinfer raises on purpose, with a message for the user."""


FaceswapError = FaceInferError
"""The reference API's name for :class:`FaceInferError`."""


class OutOfMemoryError(FaceInferError):
    """A device ran out of memory. The message says which plugin and batch size to lower."""


class PluginError(FaceInferError):
    """A plugin is unknown, registered twice, or declared or configured wrongly."""


class ConfigError(FaceInferError):
    """A configuration value or config file is invalid."""


class PipelineError(FaceInferError):
    """A pipeline was built or driven wrongly: runner called twice, put after stop, and so on."""


class PipelineClosedError(PipelineError):
    """The pipeline was closed (or stopped by an error elsewhere) while a call was waiting."""
