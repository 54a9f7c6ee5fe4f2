"""The Detect stage: letterboxes frames for a detector plugin and maps its boxes back."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.errors import ConfigError, PluginError
from faceinfer.handler import ExtractHandler, HandlerType, format_images, shrink_interpolation
from faceinfer.objects import ExtractBatch
from faceinfer.plugins.base import DetectPlugin

__all__ = ["Detect", "Rotator"]

logger = logging.getLogger(__name__)


def _parse_rotation(rotation: str | None) -> list[int]:
    """The detection angles from a rotation argument (see the reference's ``-r``): zeros are
    ignored; one value is a step (0, N, 2N, ... below 360; a negative step goes the other way);
    several are explicit angles after 0."""
    if not rotation:
        return [0]
    try:
        values = [int(v) for v in str(rotation).replace(" ", "").split(",") if v]
    except ValueError as err:
        raise ConfigError(f"expected rotation as comma-separated whole degrees, "
                          f"got '{rotation}'") from err
    values = [v for v in values if v % 360]
    if len(values) == 1:  # a step; a negative step turns the other way
        step = abs(values[0]) % 360
        sign = 1 if values[0] > 0 else -1
        return [(sign * k * step) % 360 for k in range(-(-360 // step))]
    return [0, *(v % 360 for v in values)]


class Rotator:
    """Rotation matrices for detection at several angles: rotates square model inputs about
    their centre and maps boxes and keypoints found in a rotated input back.

    Parameters
    ----------
    angles:
        The rotation argument: one value is a step size, several are explicit angles (degrees,
        counter-clockwise, as OpenCV's ``getRotationMatrix2D``); None or "0" for none.
    image_size:
        The side of the square images to rotate.
    """

    def __init__(self, angles: str | None, image_size: int) -> None:
        self.angles = _parse_rotation(angles)
        """The angles tried, in order; the first is always 0."""
        self.enabled = len(self.angles) > 1
        """True if rotations are to be performed."""
        centre = ((image_size - 1) / 2.0, (image_size - 1) / 2.0)
        self._size = image_size
        self._matrices = np.array([cv2.getRotationMatrix2D(centre, float(a), 1.0)
                                   for a in self.angles], dtype=np.float64).reshape(-1, 2, 3)
        inverse = np.zeros_like(self._matrices)
        inverse[:, :, :2] = self._matrices[:, :, :2].transpose(0, 2, 1)
        inverse[:, :, 2] = -np.einsum("nij,nj->ni", inverse[:, :, :2], self._matrices[:, :, 2])
        self._inverse = inverse

    def rotate(self, rotation_index: int, images: np.ndarray) -> np.ndarray | None:
        """The batch of images rotated by the angle at ``rotation_index``, or None if there is
        no such angle. Channels-last (N, H, W, C) and channels-first (N, C, H, W) batches are
        both handled; edges are replicated."""
        if not 0 <= rotation_index < len(self.angles):
            return None
        if rotation_index == 0:
            return images
        channels_first = images.ndim == 4 and images.shape[1] in (1, 3, 4)
        work = images.transpose(0, 2, 3, 1) if channels_first else images
        matrix = self._matrices[rotation_index]
        out = np.stack([cv2.warpAffine(np.ascontiguousarray(image), matrix,
                                       (self._size, self._size), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE).reshape(image.shape)
                        for image in work])
        return out.transpose(0, 3, 1, 2) if channels_first else out

    def un_rotate(self, indices_angle: npt.NDArray[np.int32], roi: list[np.ndarray]) -> None:
        """Map boxes found in rotated images back to the unrotated image, in place.

        Parameters
        ----------
        indices_angle:
            (B,) the angle index each image's boxes were found at.
        roi:
            B arrays of (M, 4 + 2K): boxes (left, top, right, bottom) then keypoint (x, y)
            pairs. A box becomes the axis-aligned box around its rotated-back corners (so it
            grows for angles that are not multiples of 90); keypoints map back exactly.
        """
        for index, boxes in zip(np.asarray(indices_angle).tolist(), roi, strict=True):
            if index == 0 or not len(boxes):
                continue
            matrix = self._inverse[index]
            left, top, right, bottom = (boxes[:, i] for i in range(4))
            corners = np.stack([np.stack([left, top], 1), np.stack([right, top], 1),
                                np.stack([right, bottom], 1), np.stack([left, bottom], 1)], 1)
            back = corners @ matrix[:, :2].T + matrix[:, 2]
            boxes[:, :2] = back.min(axis=1)
            boxes[:, 2:4] = back.max(axis=1)
            points = boxes[:, 4:].reshape(len(boxes), -1, 2)
            if points.shape[1]:
                boxes[:, 4:] = (points @ matrix[:, :2].T + matrix[:, 2]).reshape(len(boxes), -1)


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
        if min_size < 0 or max_size < 0 or (max_size and min_size > max_size):
            raise ConfigError(f"expected 0 <= min_size <= max_size (0 = no limit), "
                              f"got min {min_size}, max {max_size}")
        self.rotator = Rotator(rotation, self.plugin.input_size)
        """Rotation matrices for retrying detection at other angles."""
        self.min_size = min_size
        """Smallest face kept, percent of the frame's shorter side (0: no limit)."""
        self.max_size = max_size
        """Largest face kept, percent of the frame's shorter side (0: no limit)."""
        self._filtered = 0
        self._found_at = np.zeros(len(self.rotator.angles), dtype=np.int64)
        self._columns = 4 + 2 * self.plugin.keypoints

    def pre_process(self, batch: ExtractBatch) -> None:
        """Letterbox each frame into the plugin's square input (longer side fitted, centred,
        black borders), record the frame -> input matrices in ``batch.matrices`` and format the
        input for the plugin. With rotation on, the letterboxed uint8 frames are kept as they
        are: the process thread rotates and formats them."""
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
        batch.data = feed if self.rotator.enabled else self._prepare(feed)

    def _prepare(self, feed: npt.NDArray[np.uint8]) -> np.ndarray:
        return self.plugin.pre_process(format_images(feed, self.plugin))

    def process(self, batch: ExtractBatch) -> None:
        """Run the detector on the prepared frames. With rotation on, frames where nothing was
        found are rotated to the next angle and tried again until every frame has a face or
        the angles run out; the boxes (with any keypoints) are decoded here, mapped back to the
        unrotated input, and left in ``batch.data`` as rows (frame index, box, keypoints)."""
        if not self.rotator.enabled:
            batch.data = self.predict(batch.data)
            return
        feed = batch.data
        found: list[np.ndarray] = [np.zeros((0, self._columns), np.float32)] * len(feed)
        angle_of = np.zeros(len(feed), dtype=np.int32)
        pending = np.arange(len(feed))
        for index in range(len(self.rotator.angles)):
            rotated = self.rotator.rotate(index, feed[pending])
            assert rotated is not None
            boxes = self._decode(self.predict(self._prepare(rotated)), len(pending))
            hit = np.array([len(b) > 0 for b in boxes], dtype=np.bool_)
            for frame, frame_boxes in zip(pending.tolist(), boxes, strict=True):
                if len(frame_boxes):
                    found[frame] = frame_boxes
                    angle_of[frame] = index
            self._found_at[index] += int(hit.sum())
            pending = pending[~hit]
            if not len(pending):
                break
        self.rotator.un_rotate(angle_of, found)
        frames = np.repeat(np.arange(len(feed), dtype=np.float32), [len(b) for b in found])
        batch.data = np.concatenate([frames[:, None], np.concatenate(found)], axis=1)

    def _decode(self, output: np.ndarray, frames: int) -> list[npt.NDArray[np.float64]]:
        """The plugin's boxes for each frame as (M, 4 + 2K) float64 arrays."""
        found = self.plugin.post_process(output)
        if len(found) != frames:
            raise PluginError(f"detector '{self.plugin_name}' returned boxes for {len(found)} "
                              f"frames, expected {frames}")
        out: list[npt.NDArray[np.float64]] = []
        for boxes in found:
            array = np.asarray(boxes, dtype=np.float64)
            if array.size and (array.ndim != 2 or array.shape[1] != self._columns):
                raise PluginError(f"detector '{self.plugin_name}' must return (M, "
                                  f"{self._columns}) boxes per frame, got {array.shape}")
            out.append(array.reshape(-1, self._columns))
        return out

    def post_process(self, batch: ExtractBatch) -> None:
        """Decode the boxes (and keypoints), map them back to frame pixels, drop those outside
        the size limits, and set them as the batch's faces."""
        if self.rotator.enabled:
            rows = np.asarray(batch.data, dtype=np.float64).reshape(-1, 1 + self._columns)
            frame_ids = rows[:, 0].astype(np.int32)
            found = rows[:, 1:]
        else:
            decoded = self._decode(batch.data, batch.num_frames)
            frame_ids = np.repeat(np.arange(batch.num_frames, dtype=np.int32),
                                  [len(b) for b in decoded])
            found = np.concatenate(decoded) if decoded else np.zeros((0, self._columns))
        batch.face_box = self.plugin.face_box
        if not frame_ids.size:
            batch.set_faces(np.zeros((0, 4), np.int32), frame_ids)
            return
        scale = batch.matrices[frame_ids][:, [0, 1], [0, 1]].astype(np.float64)
        shift = batch.matrices[frame_ids][:, :2, 2].astype(np.float64)
        bboxes = np.rint((found[:, :4] - np.tile(shift, 2)) / np.tile(scale, 2)).astype(np.int32)
        keypoints = ((found[:, 4:].reshape(len(found), -1, 2) - shift[:, None])
                     / scale[:, None]).astype(np.float32)
        keep = self._size_filter(batch, bboxes, frame_ids)
        batch.set_faces(bboxes[keep], frame_ids[keep], keypoints[keep])

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
        """Log how many faces the size filter dropped, and at which angles faces were found."""
        if self.min_size or self.max_size:
            logger.info("[Detect filter] Scale (min: %s%%, max: %s%%): %s", self.min_size,
                        self.max_size, self._filtered)
        if self.rotator.enabled:
            logger.info("[Detect rotation] frames with faces by angle: %s",
                        ", ".join(f"{a}: {n}" for a, n in zip(self.rotator.angles,
                                                               self._found_at.tolist(),
                                                               strict=True)))
