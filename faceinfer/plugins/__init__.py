"""Built-in plugins, one per file under ``plugins/<stage>/<name>.py``.

Importing :func:`load_builtin` registers them. Test plugins (names starting ``test-``) are
built in too, so the engine can be exercised anywhere, but they are hidden from listings.
"""
from __future__ import annotations

import importlib

_BUILTIN = (
    "faceinfer.plugins.detect.mtcnn",
    "faceinfer.plugins.detect.dlib_detectors",
    "faceinfer.plugins.align.dlib_68",
    "faceinfer.plugins.identity.dlib_resnet",
    "faceinfer.plugins.mask.landmarks",
    "faceinfer.plugins.detect.testing",
    "faceinfer.plugins.detect.noop",
    "faceinfer.plugins.align.testing",
    "faceinfer.plugins.align.noop",
    "faceinfer.plugins.mask.testing",
    "faceinfer.plugins.mask.noop",
    "faceinfer.plugins.identity.testing",
    "faceinfer.plugins.identity.noop",
)


def load_builtin() -> None:
    """Import every built-in plugin module, which registers its plugins."""
    for module in _BUILTIN:
        importlib.import_module(module)
