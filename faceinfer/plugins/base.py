"""The plugin base classes: what every plugin declares and the batched functions it implements.

A plugin is a pure batched function with a declared input: it knows nothing of threads, queues,
files or global config. Its stage handler builds the model input from the declared spec (size,
colour order, dtype, value range), so no caller hard-codes it.

Array conventions: images are (N, H, W, C) channels last unless a plugin says otherwise; boxes are
(left, top, right, bottom) in the model input's pixels; landmarks are (x, y).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from faceinfer.errors import ConfigError
from faceinfer.geometry.constants import Centering, FaceBox, LandmarkType

REFERENCE_FACE_BOX = (-0.15 / 0.7, -0.15 / 0.7, 1.0 + 0.15 / 0.7, 1.0 + 0.15 / 0.7)
"""A detection-like box around the legacy mean face: the face in its middle 70%, as the
reference frames re-aligned faces for aligners without a known box convention."""

PluginType = Literal["detect", "align", "mask", "identity"]
PLUGIN_TYPES: tuple[PluginType, ...] = ("detect", "align", "mask", "identity")
DType = Literal["uint8", "float16", "float32"]
Resample = Literal["area", "linear"]


@dataclass(frozen=True)
class PluginConfig:
    """Settings every plugin has. Plugins subclass this with their own frozen dataclass."""

    batch_size: int = 1
    """How many items (frames for detectors, faces for the rest) go through the model at once."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            default = item.default
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ConfigError(f"{type(self).__name__}.{item.name}: expected true or false, "
                                  f"got {value!r}")
            if (isinstance(default, int) and not isinstance(default, bool)
                    and (isinstance(value, bool) or not isinstance(value, int))):
                raise ConfigError(f"{type(self).__name__}.{item.name}: expected an integer, "
                                  f"got {value!r}")
            if isinstance(default, float) and (isinstance(value, bool)
                                               or not isinstance(value, int | float)):
                raise ConfigError(f"{type(self).__name__}.{item.name}: expected a number, "
                                  f"got {value!r}")
            if isinstance(default, str) and not isinstance(value, str):
                raise ConfigError(f"{type(self).__name__}.{item.name}: expected a string, "
                                  f"got {value!r}")
        if self.batch_size < 1:
            raise ConfigError(f"{type(self).__name__}.batch_size: expected >= 1, "
                              f"got {self.batch_size}")


@dataclass(frozen=True)
class PluginSpec:
    """The frozen declaration of a plugin's model input and output."""

    input_size: int
    """The side, in pixels, of the square model input."""
    batch_size: int
    """The batch size the plugin runs at."""
    is_rgb: bool
    """True if the model takes RGB, False for BGR."""
    dtype: DType
    """The dtype of the model input."""
    scale: tuple[float, float]
    """The (low, high) range that uint8 0..255 is mapped to."""
    force_cpu: bool
    """True if the plugin always runs on the CPU."""
    resample: Resample = "area"
    """How the stage shrinks images for the plugin: ``area`` (pixel-area averaging, no
    aliasing) or ``linear`` (bilinear, several times faster, aliases fine detail)."""
    keypoints: int = 0
    """For detectors: how many (x, y) keypoints each box carries."""
    landmark_type: LandmarkType | None = None
    """For aligners: the landmark layout they output."""
    centering: Centering | None = None
    """For mask and identity plugins: the centering of the aligned crop they take."""
    storage_name: str | None = None
    """For mask and identity plugins: the name their output is stored under."""
    weights: str | None = None
    """Where the weights come from (package and file), or None for a plugin with no weights."""
    weights_sha256: str | None = None
    """The sha256 of the weights file, or None."""


class ExtractPlugin(ABC):
    """Base class of every plugin.

    Parameters
    ----------
    input_size:
        The side, in pixels, of the square model input.
    batch_size:
        The batch size the plugin runs at.
    is_rgb:
        True if the model takes RGB input, False for BGR.
    dtype:
        The dtype of the model input.
    scale:
        The (low, high) range that uint8 0..255 input is mapped to.
    force_cpu:
        True if the plugin must run on the CPU whatever device is chosen.
    config:
        The plugin's resolved config.
    """

    name: ClassVar[str] = ""
    """The registered name, set by the registry."""
    plugin_type: ClassVar[PluginType]
    """The stage the plugin belongs to."""
    description: ClassVar[str] = ""
    """One line saying what the plugin does, for listings."""
    speed: ClassVar[str] = "fast"
    """Speed class for listings: fast, medium or slow (on a CPU)."""
    config_class: ClassVar[type[PluginConfig]] = PluginConfig
    """The plugin's config dataclass."""
    resample: ClassVar[Resample] = "area"
    """How the stage shrinks images for this plugin (see :class:`PluginSpec`)."""
    weights: ClassVar[str | None] = None
    """Where the weights come from, or None."""
    weights_sha256: ClassVar[str | None] = None
    """The sha256 of the weights file, or None."""

    def __init__(self, input_size: int, batch_size: int = 1, is_rgb: bool = False,
                 dtype: DType = "float32", scale: tuple[float, float] = (0.0, 1.0),
                 force_cpu: bool = False, config: PluginConfig | None = None) -> None:
        if input_size < 1:
            raise ConfigError(f"{type(self).__name__}: expected input_size >= 1, "
                              f"got {input_size}")
        if batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: expected batch_size >= 1, "
                              f"got {batch_size}")
        if dtype not in ("uint8", "float16", "float32"):
            raise ConfigError(f"{type(self).__name__}: expected dtype uint8, float16 or float32, "
                              f"got {dtype!r}")
        if scale[1] <= scale[0]:
            raise ConfigError(f"{type(self).__name__}: expected a scale (low, high) with "
                              f"low < high, got {scale}")
        self.input_size = input_size
        """The side, in pixels, of the square model input."""
        self.batch_size = batch_size
        """The batch size the plugin runs at."""
        self.is_rgb = is_rgb
        """True if the model takes RGB input."""
        self.dtype: DType = dtype
        """The dtype of the model input."""
        self.scale = (float(scale[0]), float(scale[1]))
        """The (low, high) range of the model input."""
        self.force_cpu = force_cpu
        """True if the plugin always runs on the CPU."""
        self.config = config if config is not None else self.config_class(batch_size=batch_size)
        """The plugin's resolved config."""
        self.device = "cpu"
        """The torch device string the plugin runs on, set by its handler before loading."""
        self.model: Any = None
        """The loaded model: whatever the plugin needs (torch modules are found in it)."""

    @property
    def spec(self) -> PluginSpec:
        """The plugin's frozen declaration."""
        return PluginSpec(self.input_size, self.batch_size, self.is_rgb, self.dtype, self.scale,
                          self.force_cpu, self.resample, weights=self.weights,
                          weights_sha256=self.weights_sha256, **self._extra_spec())

    def _extra_spec(self) -> dict[str, Any]:
        return {}

    def load_model(self) -> None:  # noqa: B027 (optional hook: plugins without weights skip it)
        """Load the model into :attr:`model` on :attr:`device`. Called once, before any
        batch."""

    def pre_process(self, batch: np.ndarray) -> np.ndarray:
        """Plugin-specific preparation of the formatted model input. Default: unchanged.

        Parameters
        ----------
        batch:
            (N, S, S, 3) input at :attr:`input_size`, in the declared colour order, dtype and
            value range.
        """
        return batch

    @abstractmethod
    def process(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a prepared batch and return its raw output."""

    def post_process(self, batch: np.ndarray) -> Any:
        """Turn the raw model output into the stage's result (see each plugin type)."""
        return batch


class DetectPlugin(ExtractPlugin):
    """A face detector. Its batch size counts frames."""

    plugin_type: ClassVar[PluginType] = "detect"
    keypoints: ClassVar[int] = 0
    """How many (x, y) facial keypoints the detector finds with each box: 0, or 5 for the
    usual layout (eye on the image's left, eye on its right, nose tip, mouth corner on the
    image's left, mouth corner on its right)."""
    face_box: ClassVar[FaceBox | None] = None
    """Where the detector's box sits on an upright face, as (left, top, right, bottom) in the
    legacy-normalized face space of :data:`MEAN_FACE_2D_51` (measured on annotated faces), or
    None if unknown. Aligners use it to convert boxes to the convention they were trained on."""

    def _extra_spec(self) -> dict[str, Any]:
        return {"keypoints": self.keypoints}

    @abstractmethod
    def post_process(self, batch: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """Decode raw output into one (M, 4 + 2 * :attr:`keypoints`) array per frame, in model
        input pixels: each row is a box (left, top, right, bottom) followed by its keypoints'
        (x, y) pairs."""


class AlignPlugin(ExtractPlugin):
    """A landmark detector. Its batch size counts faces."""

    plugin_type: ClassVar[PluginType] = "align"
    landmark_type: ClassVar[LandmarkType] = LandmarkType.LM_2D_68
    """The landmark layout the plugin outputs."""

    face_box: ClassVar[FaceBox | None] = None
    """The box convention the aligner was trained on: where such a box sits on an upright
    face, (left, top, right, bottom) in legacy-normalized face space. Boxes from detectors that
    declare their own convention are converted to it before :meth:`roi`. None: boxes are used
    as they come."""

    def _extra_spec(self) -> dict[str, Any]:
        return {"landmark_type": self.landmark_type}

    def crop_to_legacy(self) -> npt.NDArray[np.float64]:
        """(3, 3) the aligner's canonical crop: normalized crop coordinates -> legacy-normalized
        face space. Crops built from keypoints or from earlier landmarks (re-align) frame the
        face this way.

        Default: the crop :meth:`roi` makes for a face whose box is the aligner's
        :attr:`face_box`, or, without one, the reference's re-align framing (the mean face in
        the middle 70% of the box)."""
        box = np.asarray(self.face_box if self.face_box is not None else REFERENCE_FACE_BOX,
                         dtype=np.float64)
        unit = 1000.0  # legacy units -> pixels, so the plugin's integer rounding is negligible
        roi = np.asarray(self.roi(np.rint(box * unit).astype(np.int32)[None]),
                         dtype=np.float64).reshape(4) / unit
        side = roi[2] - roi[0]
        return np.array([[side, 0.0, roi[0]], [0.0, side, roi[1]], [0.0, 0.0, 1.0]])

    @abstractmethod
    def roi(self, bboxes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """The square region (left, top, right, bottom), in frame pixels, to crop for each
        detector box (left, top, right, bottom). Both (N, 4)."""

    @abstractmethod
    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """Decode raw output into (N, P, 2) (x, y) landmarks normalized to the crop: (0, 0) is
        its top-left corner, (1, 1) its bottom-right."""


class FacePlugin(ExtractPlugin):
    """A plugin that takes aligned faces (mask and identity plugins). Its batch size counts
    faces."""

    centering: ClassVar[Centering] = Centering.FACE
    """The centering of the aligned crop the plugin takes."""

    @property
    def storage_name(self) -> str:
        """The name the plugin's output is stored under."""
        return self.name

    def _extra_spec(self) -> dict[str, Any]:
        return {"centering": self.centering, "storage_name": self.storage_name}

    def crop_matrices(self, landmarks: npt.NDArray[np.float32]
                      ) -> npt.NDArray[np.float64] | None:
        """Hook for plugins trained on their own crop convention rather than on a faceinfer
        centering. Default: None, and the stage crops at :attr:`centering`.

        Parameters
        ----------
        landmarks:
            (N, 68, 2) the faces' landmarks in frame pixels.

        Returns
        -------
        (N, 3, 3) matrices taking frame pixels to the normalized crop, which covers
        [0, 1] x [0, 1] (crop pixel i at i / input_size); or None to use the centering.
        """
        del landmarks
        return None


class MaskPlugin(FacePlugin):
    """A mask plugin."""

    plugin_type: ClassVar[PluginType] = "mask"
    uses_landmarks: ClassVar[bool] = False
    """True if the plugin draws its masks from landmarks rather than from pixels: its
    :meth:`pre_process` then receives (N, P, 2) float32 landmarks in crop pixels (x, y), not
    images."""

    @abstractmethod
    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """Decode raw output into (N, S, S) masks, 0.0 outside the face and 1.0 inside."""


class IdentityPlugin(FacePlugin):
    """An identity (face recognition) plugin."""

    plugin_type: ClassVar[PluginType] = "identity"
    threshold: ClassVar[float | None] = None
    """The cosine similarity at and above which two of the plugin's embeddings are taken to be
    the same person, as measured for its model; None if not measured."""

    @abstractmethod
    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """Decode raw output into (N, D) embeddings."""
