"""Test detector "test-blobs": finds bright blobs in the frame. Deterministic, numpy only."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.plugins._testing import FailureCounter, TestPluginConfig
from faceinfer.plugins.base import DetectPlugin, PluginConfig


@dataclass(frozen=True)
class BlobsConfig(TestPluginConfig, PluginConfig):
    """Settings of the test-blobs detector."""

    batch_size: int = 8
    """Frames per batch."""
    input_size: int = 128
    """Side of the square detector input."""
    threshold: int = 200
    """A pixel is bright when all three channels are at least this."""
    min_area: int = 4
    """Smallest blob kept, in input pixels."""


@register_plugin("detect", "test-blobs")
class BlobsDetector(DetectPlugin):
    """Finds connected regions of bright pixels; each region's bounding box is a 'face'."""

    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    description = "Test detector: boxes of bright blobs (for engine tests, not faces)"
    config_class = BlobsConfig

    def __init__(self, config: BlobsConfig) -> None:
        super().__init__(config.input_size, config.batch_size, dtype="uint8",
                         scale=(0.0, 255.0), force_cpu=True, config=config)
        self.settings = config
        self._fail = FailureCounter(config, self.name)

    def load_model(self) -> None:
        """Nothing to load (may fail on purpose)."""
        self._fail("load_model")

    def pre_process(self, batch: np.ndarray) -> np.ndarray:
        """Keep the letterboxed frames as they are."""
        self._fail("pre_process")
        return batch

    def process(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8: 1 where all channels reach the threshold."""
        self._fail("process")
        low = (self.settings.threshold,) * 3
        out = np.zeros(batch.shape[:3], dtype=np.uint8)
        for index, image in enumerate(batch):
            cv2.inRange(image, low, (255, 255, 255), dst=out[index])
        return out // 255

    def post_process(self, batch: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """One (M, 4) array of blob boxes (left, top, right, bottom) per frame, in raster
        order of each blob's first pixel."""
        self._fail("post_process")
        out: list[npt.NDArray[np.float32]] = []
        for mask in batch:
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            stats = stats[1:count]
            stats = stats[stats[:, cv2.CC_STAT_AREA] >= self.settings.min_area]
            boxes = np.stack([stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2],
                              stats[:, 1] + stats[:, 3]], axis=1).astype(np.float32)
            out.append(boxes.reshape(-1, 4))
        return out
