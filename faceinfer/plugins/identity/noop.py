"""Test identity "test-noop": the same unit embedding for every face."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.geometry.constants import Centering
from faceinfer.plugins.base import IdentityPlugin, PluginConfig


@dataclass(frozen=True)
class NoopIdentityConfig(PluginConfig):
    """Settings of the test-noop identity plugin."""

    batch_size: int = 64
    """Faces per batch."""
    input_size: int = 16
    """Side of the square face crop."""
    dimensions: int = 16
    """Length of the embedding."""


@register_plugin("identity", "test-noop")
class NoopIdentity(IdentityPlugin):
    """Returns the same unit vector for every face; its model does nothing."""

    description = "Test identity: a constant embedding, no compute (for engine benchmarks)"
    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    # Legacy centering needs no pose: the engine benchmark measures the engine, and
    # bench/geometry.py the pose that face and head centering add.
    centering = Centering.LEGACY
    config_class = NoopIdentityConfig

    def __init__(self, config: NoopIdentityConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)
        self._vector = np.zeros(config.dimensions, dtype=np.float32)
        self._vector[0] = 1.0

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Return the input unchanged."""
        return batch

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, D) the constant embedding for each face."""
        return np.broadcast_to(self._vector, (len(batch), len(self._vector)))
