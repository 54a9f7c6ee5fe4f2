"""Test identity "test-identity": a colour layout descriptor of the face crop."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.plugins._testing import FailureCounter, TestPluginConfig
from faceinfer.plugins.base import IdentityPlugin, PluginConfig

_GRID = 4


@dataclass(frozen=True)
class IdentityConfig(TestPluginConfig, PluginConfig):
    """Settings of the test-identity plugin."""

    batch_size: int = 16
    """Faces per batch."""
    input_size: int = 16
    """Side of the square face crop (a multiple of 4)."""


@register_plugin("identity", "test-identity")
class ColourLayoutIdentity(IdentityPlugin):
    """Embeds a face as its 4x4 grid of mean colours, L2-normalised (48 values)."""

    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    description = "Test identity: 4x4 mean-colour layout (for engine tests)"
    config_class = IdentityConfig

    def __init__(self, config: IdentityConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)
        if config.input_size % _GRID:
            raise ValueError(f"input_size: expected a multiple of {_GRID}, "
                             f"got {config.input_size}")
        self._fail = FailureCounter(config, self.name)

    def load_model(self) -> None:
        """Nothing to load (may fail on purpose)."""
        self._fail("load_model")

    def pre_process(self, batch: np.ndarray) -> np.ndarray:
        """Keep the crops as they are."""
        self._fail("pre_process")
        return batch

    def process(self, batch: np.ndarray) -> np.ndarray:
        """(N, 48) the mean colour of each cell of a 4x4 grid."""
        self._fail("process")
        count, size = len(batch), batch.shape[1]
        cells = batch.reshape(count, _GRID, size // _GRID, _GRID, size // _GRID, 3)
        return np.asarray(cells.mean(axis=(2, 4)).reshape(count, -1))

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, 48) L2-normalised embeddings (zero stays zero)."""
        self._fail("post_process")
        norms = np.linalg.norm(batch, axis=1, keepdims=True)
        return np.asarray(batch / np.maximum(norms, 1e-12), dtype=np.float32)
