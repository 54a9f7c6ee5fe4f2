"""Test detector "test-noop": a fixed layout of boxes per frame, whatever the frame holds, so
benchmarks measure the engine rather than a model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.plugins.base import DetectPlugin, PluginConfig


@dataclass(frozen=True)
class NoopDetectConfig(PluginConfig):
    """Settings of the test-noop detector."""

    batch_size: int = 16
    """Frames per batch."""
    input_size: int = 128
    """Side of the square detector input."""
    faces_per_frame: int = 2
    """How many boxes every frame gets: squares of a quarter of the input side, side by side
    across the middle of the input."""


@register_plugin("detect", "test-noop")
class NoopDetector(DetectPlugin):
    """Returns the same boxes for every frame; its model does nothing."""

    description = "Test detector: a fixed layout of boxes (for engine benchmarks)"
    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    config_class = NoopDetectConfig

    def __init__(self, config: NoopDetectConfig) -> None:
        super().__init__(config.input_size, config.batch_size, dtype="uint8",
                         scale=(0.0, 255.0), force_cpu=True, config=config)
        count, size = config.faces_per_frame, config.input_size
        if count < 0:
            raise ValueError(f"faces_per_frame: expected >= 0, got {count}")
        side = size / 4.0
        centres = (np.arange(count) + 0.5) * size / max(count, 1)
        self._boxes = np.stack([centres - side / 2, np.full(count, (size - side) / 2),
                                centres + side / 2, np.full(count, (size + side) / 2)],
                               axis=1).astype(np.float32).reshape(-1, 4)

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Return the input unchanged."""
        return batch

    def post_process(self, batch: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """The fixed boxes, once per frame."""
        return [self._boxes] * len(batch)
