"""The one place a torch device is chosen. The result is passed in, never looked up globally."""
from __future__ import annotations

import re

from faceinfer.errors import ConfigError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def resolve_device(spec: str | None = "auto") -> str:
    """Turn a device request into a torch device string.

    Parameters
    ----------
    spec:
        ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        None means ``auto``.

    Raises
    ------
    ConfigError
        If the request is malformed, or asks for a CUDA device that is not there.
    """
    spec = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise ConfigError(f"expected a device of auto, cpu, cuda, cuda:N or mps, got '{spec}'")
    if spec == "cpu":
        return "cpu"
    import torch  # noqa: PLC0415 (torch is only imported when a device must be probed)

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' was asked for, but torch sees no CUDA device")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' was asked for, but torch sees only "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return spec
