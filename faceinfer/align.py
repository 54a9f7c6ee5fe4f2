"""The Align stage: crops each face's square region for a landmark plugin and maps the
landmarks back to frame pixels."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import cv2
import numpy as np

from faceinfer.errors import ConfigError, PluginError
from faceinfer.handler import ExtractHandler, HandlerType, format_images, shrink_interpolation
from faceinfer.objects import ExtractBatch, ExtractBatchAligned
from faceinfer.plugins.base import AlignPlugin

logger = logging.getLogger(__name__)

NormalizationType = Literal["none", "clahe", "hist", "mean"]


class Align(ExtractHandler):
    """Runs a landmark plugin on batches of faces.

    Parameters
    ----------
    plugin:
        The registered name of the aligner.
    re_feeds:
        Extra passes with jittered boxes, averaged. Default: 0.
    re_align:
        True to align a second time from the first pass's landmarks.
    normalization:
        Input normalization: none, clahe, hist or mean. Default: None (none).
    filters:
        True to drop faces whose landmarks fail the aligner filters.
    compile_model:
        True to compile the plugin's torch modules.
    config_file:
        A TOML config file with per-plugin settings, or None.
    config:
        Settings overriding the config file.
    device:
        Where torch plugins run: auto, cpu, cuda or cuda:N.
    """

    plugin_type: HandlerType = "align"
    plugin: AlignPlugin

    def __init__(self, plugin: str, re_feeds: int = 0, re_align: bool = False,
                 normalization: NormalizationType | None = None, filters: bool = False,
                 compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, AlignPlugin):
            raise PluginError(f"expected an aligner for '{plugin}', "
                              f"got {type(self.plugin).__name__}")
        if re_feeds or re_align or filters or normalization not in (None, "none"):
            raise ConfigError("re-feed, re-align, normalization and aligner filters are not "
                              "available yet (planned with the real aligners)")
        self.re_feeds = re_feeds
        """Extra jittered passes per face."""
        self.re_align = re_align
        """True to align twice."""
        self.filters = filters
        """True to apply the aligner filters."""

    def pre_process(self, batch: ExtractBatch) -> None:
        """Get each face's square region from the plugin and crop it into the plugin's input:
        the part of the region inside the frame is resized into place, the rest stays black.
        ``batch.matrices`` takes normalized crop (x, y) in [0, 1] to frame pixels."""
        size = self.plugin.input_size
        roi = np.asarray(self.plugin.roi(batch.bboxes), dtype=np.int32).reshape(-1, 4)
        sides = roi[:, 2:] - roi[:, :2]
        if len(roi) != batch.num_faces or np.any(sides[:, 0] != sides[:, 1]) or np.any(
                sides <= 0):
            raise PluginError(f"aligner '{self.plugin_name}' must return one non-empty square "
                              f"region per face, got {roi.tolist()}")
        feed = np.zeros((batch.num_faces, size, size, 3), dtype=np.uint8)
        shrink = shrink_interpolation(self.plugin)
        frame_sizes = np.array([i.shape[1::-1] for i in batch.images], dtype=np.int64
                               ).reshape(-1, 2)[batch.frame_ids]  # (N, 2) width, height
        # The part of each region inside its frame, and where it lands in the crop.
        source = np.concatenate([np.maximum(roi[:, :2], 0),
                                 np.minimum(roi[:, 2:], frame_sizes)], axis=1)
        scale = size / sides[:, :1].astype(np.float64)
        target = np.rint((source - np.tile(roi[:, :2], 2)) * scale).astype(np.int64)
        usable = np.all((source[:, 2:] > source[:, :2]) & (target[:, 2:] > target[:, :2]), axis=1)
        for index in np.flatnonzero(usable).tolist():
            x0, y0, x1, y1 = source[index].tolist()
            dx0, dy0, dx1, dy1 = target[index].tolist()
            interp = cv2.INTER_CUBIC if size > sides[index, 0] else shrink
            cv2.resize(batch.images[batch.frame_ids[index]][y0:y1, x0:x1],
                       (dx1 - dx0, dy1 - dy0), dst=feed[index, dy0:dy1, dx0:dx1],
                       interpolation=interp)
        matrices = np.zeros((batch.num_faces, 3, 3), dtype=np.float32)
        matrices[:, 0, 0] = matrices[:, 1, 1] = sides[:, 0]
        matrices[:, :2, 2] = roi[:, :2]
        matrices[:, 2, 2] = 1.0
        batch.matrices = matrices
        batch.data = self.plugin.pre_process(format_images(feed, self.plugin))

    def process(self, batch: ExtractBatch) -> None:
        """Run the aligner on the prepared crops."""
        batch.data = self.predict(batch.data)

    def post_process(self, batch: ExtractBatch) -> None:
        """Map the plugin's normalized landmarks to frame pixels and store them."""
        points = np.asarray(self.plugin.post_process(batch.data), dtype=np.float32)
        if points.ndim != 3 or len(points) != batch.num_faces or points.shape[2] != 2:
            raise PluginError(f"aligner '{self.plugin_name}' must return (N, P, 2) landmarks "
                              f"for {batch.num_faces} faces, got {points.shape}")
        scale = batch.matrices[:, 0, 0][:, None, None]
        shift = batch.matrices[:, None, :2, 2]
        batch.aligned = ExtractBatchAligned(points * scale + shift, self.plugin.landmark_type)
