"""Test aligner "test-landmarks": a fixed 68-point pattern placed in each face's square."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.geometry.constants import MEAN_FACE_2D_51
from faceinfer.plugins._testing import FailureCounter, TestPluginConfig
from faceinfer.plugins.base import AlignPlugin, PluginConfig


def pattern_68() -> npt.NDArray[np.float32]:
    """A fixed, frontal, face-shaped (68, 2) pattern inside [0.1, 0.9]^2: the legacy mean face
    for points 17..67 and a U-shaped jaw line under it for points 0..16."""
    angles = np.linspace(np.pi, 0.0, 17)
    jaw = np.stack([0.5 + 0.5 * np.cos(angles), 0.1 + 0.95 * np.sin(angles)], axis=1)
    face = np.concatenate([jaw, MEAN_FACE_2D_51])  # x in [0, 1], y in [0.02, 1.05]
    return (0.1 + face * 0.8 / 1.05).astype(np.float32)


@dataclass(frozen=True)
class LandmarksConfig(TestPluginConfig, PluginConfig):
    """Settings of the test-landmarks aligner."""

    batch_size: int = 16
    """Faces per batch."""
    input_size: int = 32
    """Side of the square aligner input."""


@register_plugin("align", "test-landmarks")
class LandmarksAligner(AlignPlugin):
    """Returns the same 68-point pattern for every face, placed in its square region."""

    resample = "linear"  # a test plugin needs no anti-aliasing: keep the engine cheap
    description = "Test aligner: a fixed 68-point pattern (for engine tests)"
    config_class = LandmarksConfig

    def __init__(self, config: LandmarksConfig) -> None:
        super().__init__(config.input_size, config.batch_size, force_cpu=True, config=config)
        self._fail = FailureCounter(config, self.name)
        self._pattern = pattern_68()

    def load_model(self) -> None:
        """Nothing to load (may fail on purpose)."""
        self._fail("load_model")

    def roi(self, bboxes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """The square with the box's longer side, centred on the box."""
        boxes = np.asarray(bboxes, dtype=np.int64).reshape(-1, 4)
        side = np.maximum(np.max(boxes[:, 2:] - boxes[:, :2], axis=1), 1)
        left = (boxes[:, 0] + boxes[:, 2] - side) // 2
        top = (boxes[:, 1] + boxes[:, 3] - side) // 2
        return np.stack([left, top, left + side, top + side], axis=1).astype(np.int32)

    def pre_process(self, batch: np.ndarray) -> np.ndarray:
        """Keep the crops as they are."""
        self._fail("pre_process")
        return batch

    def process(self, batch: np.ndarray) -> np.ndarray:
        """(N,) the mean of each crop (the pattern does not depend on it)."""
        self._fail("process")
        return np.asarray(batch.reshape(len(batch), -1).mean(axis=1))

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, 68, 2) the fixed pattern for each face."""
        self._fail("post_process")
        return np.repeat(self._pattern[None], len(batch), axis=0)
