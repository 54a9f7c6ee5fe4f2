"""The Mask stage: runs a mask plugin on aligned faces and stores its masks."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from faceinfer.errors import ConfigError, PluginError
from faceinfer.geometry.crop import inside_frame
from faceinfer.handler import ExtractHandlerFace, HandlerType
from faceinfer.objects import ExtractBatch, ExtractBatchMask
from faceinfer.plugins.base import MaskPlugin


class Mask(ExtractHandlerFace):
    """Runs a mask plugin on batches of aligned faces.

    Parameters
    ----------
    plugin:
        The registered name of the mask plugin.
    compile_model:
        True to compile the plugin's torch modules.
    config_file:
        A TOML config file with per-plugin settings, or None.
    config:
        Settings overriding the config file.
    device:
        Where torch plugins run: auto, cpu, cuda or cuda:N.
    storage_size:
        The side, in pixels, masks are stored at in output files (0: the plugin's size).
    """

    plugin_type: HandlerType = "mask"
    plugin: MaskPlugin

    def __init__(self, plugin: str, compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None,
                 storage_size: int = 128) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, MaskPlugin):
            raise PluginError(f"expected a mask plugin for '{plugin}', "
                              f"got {type(self.plugin).__name__}")
        if storage_size < 0:
            raise ConfigError(f"expected a mask storage size >= 0, got {storage_size}")
        self.storage_size = storage_size
        """The side masks are stored at in output files."""

    def post_process(self, batch: ExtractBatch) -> None:
        """Store the plugin's masks as uint8, zero wherever the crop lies outside its frame."""
        masks = np.asarray(self.plugin.post_process(batch.data), dtype=np.float32)
        if masks.ndim != 3 or len(masks) != batch.num_faces or masks.shape[1] != masks.shape[2]:
            raise PluginError(f"mask plugin '{self.plugin_name}' must return (N, S, S) masks for "
                              f"{batch.num_faces} faces, got {masks.shape}")
        size = masks.shape[1]
        # Scale to 0..255 with rounding and saturation in one pass (OpenCV takes 2D arrays).
        stored = np.asarray(cv2.convertScaleAbs(np.maximum(masks, 0.0).reshape(-1, size),
                                                alpha=255.0), dtype=np.uint8).reshape(masks.shape)
        if not batch.is_aligned:
            outside = ~inside_frame(batch.matrices, size, self.frame_sizes(batch))
            if outside.any():
                stored[outside] = 0
        batch.masks[self.storage_name] = ExtractBatchMask(
            self.plugin.centering.value, batch.matrices.copy(),
            self.storage_size, stored)
