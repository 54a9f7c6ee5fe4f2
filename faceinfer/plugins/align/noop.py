"""Test aligner "test-noop": the fixed 68-point pattern, without looking at the crops."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.plugins.align.testing import LandmarksAligner, pattern_68
from faceinfer.plugins.base import AlignPlugin, PluginConfig


@dataclass(frozen=True)
class NoopAlignConfig(PluginConfig):
    """Settings of the test-noop aligner."""

    batch_size: int = 64
    """Faces per batch."""
    input_size: int = 32
    """Side of the square aligner input."""


@register_plugin("align", "test-noop")
class NoopAligner(AlignPlugin):
    """Returns the fixed 68-point pattern in each face's square; its model does nothing."""

    description = "Test aligner: a fixed 68-point pattern, no compute (for engine benchmarks)"
    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    config_class = NoopAlignConfig

    def __init__(self, config: NoopAlignConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)
        self._pattern = pattern_68()

    roi = LandmarksAligner.roi

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Return the input unchanged."""
        return batch

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, 68, 2) the fixed pattern for each face."""
        return np.broadcast_to(self._pattern, (len(batch), 68, 2))
