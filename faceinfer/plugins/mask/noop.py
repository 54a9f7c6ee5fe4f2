"""Test mask "test-noop": the whole crop, without looking at it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.geometry.constants import Centering
from faceinfer.plugins.base import MaskPlugin, PluginConfig


@dataclass(frozen=True)
class NoopMaskConfig(PluginConfig):
    """Settings of the test-noop mask."""

    batch_size: int = 64
    """Faces per batch."""
    input_size: int = 32
    """Side of the square face crop."""


@register_plugin("mask", "test-noop")
class NoopMask(MaskPlugin):
    """Masks every pixel of the crop; its model does nothing."""

    description = "Test mask: the whole crop, no compute (for engine benchmarks)"
    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    # Legacy centering needs no pose: the engine benchmark measures the engine, and
    # bench/geometry.py the pose that face and head centering add.
    centering = Centering.LEGACY
    config_class = NoopMaskConfig

    def __init__(self, config: NoopMaskConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Return the input unchanged."""
        return batch

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, S, S) ones."""
        return np.ones(batch.shape[:3], dtype=np.float32)
