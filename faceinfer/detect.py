"""The Detect stage: letterboxes frames for a detector plugin and maps its boxes back."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from faceinfer.errors import ConfigError, PluginError
from faceinfer.handler import ExtractHandler, HandlerType, format_images, shrink_interpolation
from faceinfer.objects import ExtractBatch
from faceinfer.plugins.base import DetectPlugin

logger = logging.getLogger(__name__)


def _parse_rotation(rotation: str | None) -> list[int]:
    """The detection angles from a rotation argument (see the reference's ``-r``)."""
    if not rotation:
        return [0]
    try:
        values = [int(v) for v in str(rotation).replace(" ", "").split(",") if v]
    except ValueError as err:
        raise ConfigError(f"expected rotation as comma-separated whole degrees, "
                          f"got '{rotation}'") from err
    values = [v for v in values if v % 360]
    if len(values) == 1:
        return list(range(0, 360, abs(values[0])))
    return [0, *values]


class Detect(ExtractHandler):
    """Runs a detector plugin on batches of frames.

    Parameters
    ----------
    plugin:
        The registered name of the detector.
    rotation:
        Angles to retry detection at, as in the reference's ``-r``: one value is a step, several
        are a list. Default: None, no rotation.
    min_size:
        Smallest face to keep, as a percentage of the frame's shorter side, measured on the box's
        longer side. 0 keeps all.
    max_size:
        Largest face to keep, likewise. 0 keeps all.
    compile_model:
        True to compile the plugin's torch modules.
    config_file:
        A TOML config file with per-plugin settings, or None.
    config:
        Settings overriding the config file.
    device:
        Where torch plugins run: auto, cpu, cuda or cuda:N.
    """

    plugin_type: HandlerType = "detect"
    plugin: DetectPlugin

    def __init__(self, plugin: str, rotation: str | None = None, min_size: int = 0,
                 max_size: int = 0, compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, DetectPlugin):
            raise PluginError(f"expected a detector for '{plugin}', "
                              f"got {type(self.plugin).__name__}")
        if len(_parse_rotation(rotation)) > 1:
            raise ConfigError("detection with rotation is not available yet (planned with the "
                              "real detectors)")
        if min_size < 0 or max_size < 0 or (max_size and min_size > max_size):
            raise ConfigError(f"expected 0 <= min_size <= max_size (0 = no limit), "
                              f"got min {min_size}, max {max_size}")
        self.min_size = min_size
        """Smallest face kept, percent of the frame's shorter side (0: no limit)."""
        self.max_size = max_size
        """Largest face kept, percent of the frame's shorter side (0: no limit)."""
        self._filtered = 0

    def pre_process(self, batch: ExtractBatch) -> None:
        """Letterbox each frame into the plugin's square input (longer side fitted, centred,
        black borders), record the frame -> input matrices in ``batch.matrices`` and format the
        input for the plugin."""
        size = self.plugin.input_size
        feed = np.zeros((batch.num_frames, size, size, 3), dtype=np.uint8)
        matrices = np.zeros((batch.num_frames, 3, 3), dtype=np.float32)
        shrink = shrink_interpolation(self.plugin)
        for index, image in enumerate(batch.images):
            height, width = image.shape[:2]
            scale = size / max(height, width)
            new_w = min(size, max(1, round(width * scale)))
            new_h = min(size, max(1, round(height * scale)))
            pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
            interp = shrink if scale < 1.0 else cv2.INTER_CUBIC
            cv2.resize(image, (new_w, new_h), dst=feed[index, pad_y:pad_y + new_h,
                                                       pad_x:pad_x + new_w],
                       interpolation=interp)
            matrices[index] = [[new_w / width, 0, pad_x], [0, new_h / height, pad_y], [0, 0, 1]]
        batch.matrices = matrices
        batch.data = self.plugin.pre_process(format_images(feed, self.plugin))

    def process(self, batch: ExtractBatch) -> None:
        """Run the detector on the prepared frames."""
        batch.data = self.predict(batch.data)

    def post_process(self, batch: ExtractBatch) -> None:
        """Decode the boxes, map them back to frame pixels, drop those outside the size limits,
        and set them as the batch's faces."""
        found = self.plugin.post_process(batch.data)
        if len(found) != batch.num_frames:
            raise PluginError(f"detector '{self.plugin_name}' returned boxes for {len(found)} "
                              f"frames, expected {batch.num_frames}")
        counts = [len(boxes) for boxes in found]
        frame_ids = np.repeat(np.arange(batch.num_frames, dtype=np.int32), counts)
        if not frame_ids.size:
            batch.set_faces(np.zeros((0, 4), np.int32), frame_ids)
            return
        boxes = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in found])
        scale = batch.matrices[frame_ids][:, [0, 1], [0, 1]].astype(np.float64)
        shift = batch.matrices[frame_ids][:, :2, 2].astype(np.float64)
        boxes = (boxes - np.tile(shift, 2)) / np.tile(scale, 2)
        bboxes = np.rint(boxes).astype(np.int32)
        keep = self._size_filter(batch, bboxes, frame_ids)
        batch.set_faces(bboxes[keep], frame_ids[keep])

    def _size_filter(self, batch: ExtractBatch, bboxes: np.ndarray, frame_ids: np.ndarray
                     ) -> np.ndarray:
        if not self.min_size and not self.max_size:
            return np.ones(len(bboxes), dtype=np.bool_)
        shortest = np.array([min(i.shape[:2]) for i in batch.images], dtype=np.int64)[frame_ids]
        size = np.max(bboxes[:, 2:] - bboxes[:, :2], axis=1)
        keep = size >= (shortest * self.min_size // 100)
        if self.max_size:
            keep &= size <= (shortest * self.max_size // 100)
        self._filtered += int((~keep).sum())
        return np.asarray(keep, dtype=np.bool_)

    def output_info(self) -> None:
        """Log how many faces the size filter dropped."""
        if self.min_size or self.max_size:
            logger.info("[Detect filter] Scale (min: %s%%, max: %s%%): %s", self.min_size,
                        self.max_size, self._filtered)
