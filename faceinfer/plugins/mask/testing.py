"""Test mask "test-mask": the bright part of each face crop."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.plugins._testing import FailureCounter, TestPluginConfig
from faceinfer.plugins.base import MaskPlugin, PluginConfig


@dataclass(frozen=True)
class MaskConfig(TestPluginConfig, PluginConfig):
    """Settings of the test-mask plugin."""

    batch_size: int = 16
    """Faces per batch."""
    input_size: int = 32
    """Side of the square face crop."""


@register_plugin("mask", "test-mask")
class BrightMask(MaskPlugin):
    """Masks the pixels of the face crop brighter than half scale."""

    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    description = "Test mask: bright pixels of the crop (for engine tests)"
    config_class = MaskConfig

    def __init__(self, config: MaskConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)
        self._fail = FailureCounter(config, self.name)

    def load_model(self) -> None:
        """Nothing to load (may fail on purpose)."""
        self._fail("load_model")

    def pre_process(self, batch: np.ndarray) -> np.ndarray:
        """Keep the crops as they are."""
        self._fail("pre_process")
        return batch

    def process(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S) the mean over channels of the crop, in 0..1."""
        self._fail("process")
        return np.asarray(batch.mean(axis=-1))

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, S, S) 1.0 where the mean exceeds 0.5, else 0.0."""
        self._fail("post_process")
        return (batch > 0.5).astype(np.float32)
