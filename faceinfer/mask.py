"""The Mask stage: runs a mask plugin on aligned faces and stores its masks."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from faceinfer.errors import ConfigError, PluginError
from faceinfer.geometry.crop import inside_frame, map_points
from faceinfer.handler import ExtractHandlerFace, HandlerType
from faceinfer.objects import ExtractBatch, ExtractBatchMask
from faceinfer.plugins.base import MaskPlugin


class Mask(ExtractHandlerFace):
    """Runs a mask plugin on batches of aligned faces.

    Plugins that look at pixels get each face's crop at their size and centering; plugins that
    draw from landmarks (:attr:`~faceinfer.plugins.base.MaskPlugin.uses_landmarks`) get the
    faces' landmarks in that crop's pixels instead. Masks are stored as
    :class:`~faceinfer.objects.ExtractBatchMask` under the plugin's storage name (so several mask
    stages can run in one chain), uint8, zero where the crop lies outside the frame, with their
    frame -> mask matrices; they are resized to ``storage_size`` and compressed for output.

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

    def pre_process(self, batch: ExtractBatch) -> None:
        """Cut the aligned faces at the plugin's size and centering, in its input format; for a
        plugin that draws from landmarks, hand it the faces' landmarks in crop pixels instead.

        Raises
        ------
        PluginError
            If a landmark plugin gets faces without landmarks.
        """
        if not self.plugin.uses_landmarks:
            super().pre_process(batch)
            return
        landmarks = batch.landmarks
        if landmarks is None and batch.num_faces:
            raise PluginError(f"mask plugin '{self.plugin_name}' draws from landmarks: expected "
                              f"faces with landmarks (run an aligner before it), got "
                              f"{batch.num_faces} faces without")
        batch.matrices = self.face_matrices(batch)
        points = (np.zeros((0, 68, 2), np.float32) if landmarks is None
                  else crop_landmarks(batch.matrices, landmarks, self.plugin.input_size))
        batch.data = self.plugin.pre_process(points)

    def post_process(self, batch: ExtractBatch) -> None:
        """Store the plugin's masks as uint8, zero wherever the crop lies outside its frame.

        Values saturate: above 1 to 255, below 0 (and NaN) to 0, whatever the plugin's input
        value range.

        Raises
        ------
        PluginError
            If the plugin's masks are not (N, S, S) for the batch's N faces.
        ValueError
            For aligned input whose frames' sizes are not known.
        """
        masks = np.asarray(self.plugin.post_process(batch.data), dtype=np.float32)
        if masks.ndim != 3 or len(masks) != batch.num_faces or masks.shape[1] != masks.shape[2]:
            raise PluginError(f"mask plugin '{self.plugin_name}' must return (N, S, S) masks for "
                              f"{batch.num_faces} faces, got {masks.shape}")
        size = masks.shape[1]
        scaled = np.nan_to_num(masks, nan=0.0, posinf=1.0, neginf=0.0)  # a copy
        np.clip(scaled, 0.0, 1.0, out=scaled)
        scaled *= np.float32(255.0)
        stored = np.rint(scaled, out=scaled).astype(np.uint8)
        outside = ~inside_frame(batch.matrices, size, self.frame_sizes(batch))
        if outside.any():
            stored[outside] = 0
        batch.masks[self.storage_name] = ExtractBatchMask(
            self.plugin.centering.value, batch.matrices.copy(),
            self.storage_size, stored)


def crop_landmarks(frame_to_crop: npt.NDArray[np.floating], landmarks: npt.NDArray[np.floating],
                   size: int) -> npt.NDArray[np.float32]:
    """(N, P, 2) float32 landmarks (x, y) in the pixels of crops of side ``size``.

    Parameters
    ----------
    frame_to_crop:
        (N, 3, 3) frame pixels to the normalized crop (crop pixel i at i / size).
    landmarks:
        (N, P, D) landmarks in frame pixels; their first two coordinates (x, y) are used.
    size:
        The crops' side in pixels.
    """
    to_pixels = np.asarray(frame_to_crop, dtype=np.float64) * np.array([[size], [size], [1.0]])
    return map_points(to_pixels, landmarks).astype(np.float32)
