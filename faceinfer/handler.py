"""Stage handlers: the type-specific work around a plugin, run by a runner's threads.

A handler owns one plugin. Its ``pre_process``, ``process`` and ``post_process`` each take an
:class:`~faceinfer.objects.ExtractBatch` and update it in place; the runner calls each on its own
thread. Handlers are built by name through :class:`PluginLoader` and started by calling them.
"""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer._registry import get_plugin, list_plugins, register_plugin
from faceinfer.config import resolve_config
from faceinfer.device import resolve_device
from faceinfer.errors import OOM_MESSAGE, FaceswapError, OutOfMemoryError, PluginError
from faceinfer.geometry.aligned import aligned_matrices, warp_aligned
from faceinfer.geometry.constants import EXTRACT_RATIOS, Centering, LandmarkType
from faceinfer.geometry.crop import box_crop_matrices
from faceinfer.objects import ExtractBatch
from faceinfer.plugin_utils import (
    CompiledWarmup,
    compile_models,
    get_torch_modules,
    pad_batch,
    trim_output,
    warmup_plugin,
)
from faceinfer.plugins.base import (
    ExtractPlugin,
    FacePlugin,
    PluginConfig,
    PluginType,
)

if TYPE_CHECKING:
    from faceinfer.runner import ExtractRunner

logger = logging.getLogger(__name__)

ProcessorName = Literal["pre_process", "process", "post_process"]
HandlerType = Literal["detect", "align", "mask", "identity", "file"]

__all__ = ["EXTRACT_RATIOS", "OOM_MESSAGE", "ExtractHandler", "ExtractHandlerFace",
           "ExtractPlugin", "FaceswapError", "FileHandler", "LandmarkType", "OutOfMemoryError",
           "PluginLoader", "format_images", "list_plugins", "register_plugin"]


class PluginLoader:
    """Find plugins by type and name, list them, and build them with their resolved config."""

    @staticmethod
    def get_available_extractors(extractor_type: PluginType, include_test: bool = False
                                 ) -> list[str]:
        """The names of the registered plugins of a type, sorted. Test plugins on request."""
        return list_plugins(extractor_type, include_test=include_test)

    @staticmethod
    def get_detector(name: str) -> type[ExtractPlugin]:
        """The detector plugin class registered under ``name``."""
        return get_plugin("detect", name)

    @staticmethod
    def get_aligner(name: str) -> type[ExtractPlugin]:
        """The aligner plugin class registered under ``name``."""
        return get_plugin("align", name)

    @staticmethod
    def get_masker(name: str) -> type[ExtractPlugin]:
        """The mask plugin class registered under ``name``."""
        return get_plugin("mask", name)

    @staticmethod
    def get_recognition(name: str) -> type[ExtractPlugin]:
        """The identity plugin class registered under ``name``."""
        return get_plugin("identity", name)

    @staticmethod
    def load(plugin_type: PluginType, name: str, config_file: str | None = None,
             overrides: Mapping[str, Any] | None = None) -> ExtractPlugin:
        """Build a plugin with its config resolved from defaults, the config file and
        ``overrides``."""
        cls = get_plugin(plugin_type, name)
        config = resolve_config(cls.config_class, plugin_type, name, config_file, overrides)
        # Concrete plugins take their resolved config as their only argument.
        plugin = cls(config)  # type: ignore[arg-type]
        if plugin.batch_size != config.batch_size:
            raise PluginError(f"{plugin_type} plugin '{name}' ignores its configured batch size")
        return plugin


def format_images(images: npt.NDArray[np.uint8], plugin: ExtractPlugin) -> np.ndarray:
    """Turn (N, H, W, 3) uint8 BGR images into the plugin's declared input: colour order, dtype
    and value range (0..255 mapped linearly onto the plugin's ``scale``)."""
    if plugin.is_rgb:
        images = images[..., ::-1]
    if plugin.dtype == "uint8":
        return np.ascontiguousarray(images)
    low, high = plugin.scale
    out = images.astype(plugin.dtype)
    if (low, high) != (0.0, 255.0):
        out *= out.dtype.type((high - low) / 255.0)
        if low:
            out += out.dtype.type(low)
    return out


def shrink_interpolation(plugin: ExtractPlugin) -> int:
    """The OpenCV interpolation flag for shrinking images for ``plugin``, per its spec."""
    return int(cv2.INTER_AREA if plugin.resample == "area" else cv2.INTER_LINEAR)


def _is_out_of_memory(err: BaseException) -> bool:
    if type(err).__name__ == "OutOfMemoryError" and type(err).__module__.startswith("torch"):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class ExtractHandler(ABC):
    """Runs one plugin's pre-processing, inference and post-processing for its stage.

    Parameters
    ----------
    plugin:
        The registered name of the plugin to use.
    compile_model:
        True to compile the plugin's torch modules with ``torch.compile``.
    config_file:
        A TOML config file with per-plugin settings, or None for the defaults.
    config:
        Settings for this plugin that override the config file.
    device:
        Where torch plugins run: auto, cpu, cuda or cuda:N. Default: auto.
    """

    plugin_type: HandlerType
    """The type of plugin this handler manages."""
    processors: tuple[ProcessorName, ...] = ("pre_process", "process", "post_process")
    """The processors that get a thread each."""

    def __init__(self, plugin: str, compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        self.plugin_name = plugin
        """The name of the plugin being handled."""
        self.plugin: ExtractPlugin = self._load_plugin(plugin, config_file, config)
        """The plugin this handler manages."""
        self.do_compile = compile_model
        """True if the plugin's torch modules are to be compiled."""
        self.config_file = config_file
        """The config file the plugin's settings came from, or None."""
        self._device_request = device
        self._runner: ExtractRunner[Any] | None = None
        self._model_lock = threading.RLock()
        self._model_ready = False
        self._model_loaded = False
        self._compiled = False

    def _load_plugin(self, plugin: str, config_file: str | None,
                     config: Mapping[str, Any] | None) -> ExtractPlugin:
        if self.plugin_type == "file":
            raise PluginError("the file handler has no plugin to load")
        return PluginLoader.load(self.plugin_type, plugin, config_file, config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plugin_name!r})"

    def __call__(self, input_plugin: ExtractHandler | ExtractRunner[Any] | None = None,
                 profile: bool = False) -> ExtractRunner[Any]:
        """Build and start this handler's runner, fed by ``input_plugin`` (a handler or runner),
        or by its own ``put`` when None. With ``profile`` the threads are not started yet.

        Raises
        ------
        ValueError
            If this handler was called before, or the input was not called yet.
        """
        from faceinfer.runner import ExtractRunner  # noqa: PLC0415 (runner imports handlers)

        if self._runner is not None:
            raise ValueError(f"{self!r} has already been called: a handler runs in one chain")
        upstream = (input_plugin.runner if isinstance(input_plugin, ExtractHandler)
                    else input_plugin)
        runner: ExtractRunner[Any] = ExtractRunner(self)
        runner(upstream, profile)
        self._runner = runner
        return runner

    @property
    def batch_size(self) -> int:
        """The plugin's batch size: frames for detectors, faces for the rest."""
        return self.plugin.batch_size

    @property
    def runner(self) -> ExtractRunner[Any]:
        """The runner running this handler.

        Raises
        ------
        ValueError
            If the handler has not been called yet.
        """
        if self._runner is None:
            raise ValueError(f"{self!r} has not been called yet, so it has no runner")
        return self._runner

    def init_model(self) -> None:
        """Load the model (once), compile it if asked, and warm it up. Called from the main
        thread when compiling, else from the process thread."""
        with self._model_lock:
            if self._model_ready:
                return
            self.load_model()
            if self.do_compile:
                self._compile()
            self._model_ready = True

    def load_model(self) -> None:
        """Load the model (once) without compiling it. The profiler measures the plugin this
        way, before the chosen batch size is set: compiled, every batch size it tries would
        compile again. :meth:`init_model` compiles it afterwards, at the batch size set."""
        with self._model_lock:
            if self._model_loaded:
                return
            plugin = self.plugin
            plugin.device = "cpu" if plugin.force_cpu else resolve_device(self._device_request)
            logger.debug("Loading %s plugin '%s' on %s", self.plugin_type, self.plugin_name,
                         plugin.device)
            plugin.load_model()
            self._model_loaded = True

    def _compile(self) -> None:
        """Compile the plugin's torch modules and warm them up at the full batch size, so that
        no call compiles later (:meth:`predict` pads short batches). The channel order of the
        plugin's input is found first, by an uncompiled batch of one.

        Raises
        ------
        PluginError
            If the plugin takes no random input of its declared spec, compiled or not.
        """
        plugin = self.plugin
        modules = get_torch_modules(plugin.model)
        if not modules:
            logger.debug("Plugin '%s' has no torch modules to compile", self.plugin_name)
            return
        channels_last = warmup_plugin(plugin, 1)
        if channels_last is None:
            raise PluginError(f"{self.plugin_type} plugin '{self.plugin_name}' takes neither "
                              "channels-first nor channels-last input of its spec, so it "
                              "cannot be warmed up for compiling")
        logger.debug("Plugin '%s' takes channels-%s input", self.plugin_name,
                     "last" if channels_last else "first")
        for fullgraph in (True, False):
            compile_models(plugin, modules, fullgraph=fullgraph)
            if self._warmup_compiled(channels_last):
                break
            if fullgraph:
                logger.debug("Plugin '%s' does not compile as whole graphs: allowing graph "
                             "breaks", self.plugin_name)
        else:
            raise PluginError(f"{self.plugin_type} plugin '{self.plugin_name}' fails once "
                              "compiled: run without compiling (see the debug log)")
        self._compiled = True

    def _warmup_compiled(self, channels_last: bool) -> bool:
        """Warm up the compiled plugin: its own shapes first, in this thread (see
        :class:`~faceinfer.plugin_utils.CompiledWarmup`; a plugin's worker threads compiling
        the same graph at once would each compile it), then a random batch of the full batch
        size. False if either fails."""
        plugin = self.plugin
        if isinstance(plugin, CompiledWarmup):
            try:
                plugin.warmup_compiled()
            except Exception as err:  # noqa: BLE001 (a failed warm-up is an answer)
                logger.debug("Compiled warm-up of '%s' failed: %s", self.plugin_name, err)
                return False
        return warmup_plugin(plugin, self.batch_size, channels_last) is not None

    def output_info(self) -> None:  # noqa: B027 (optional hook: most stages count nothing)
        """Log what the stage counted (filters and the like). Called once, at shutdown."""

    def predict(self, feed: np.ndarray) -> np.ndarray:
        """Run the plugin's model on a prepared batch, serialised with any direct calls.

        Once the model is compiled, a batch shorter than the batch size is zero-padded to it,
        so the compiled shapes hold, and the output is trimmed back (see
        :func:`~faceinfer.plugin_utils.trim_output`).

        Raises
        ------
        OutOfMemoryError
            If the device runs out of memory, with advice naming the batch size to lower.
        """
        with self._model_lock:
            try:
                count = len(feed)
                if not self._compiled or not 0 < count < self.batch_size:
                    return self.plugin.process(feed)
                output = self.plugin.process(pad_batch(feed, self.batch_size))
                return trim_output(output, count, self.batch_size)  # type: ignore[no-any-return]
            except Exception as err:
                if not _is_out_of_memory(err):
                    raise
                device = "GPU" if self.plugin.device.startswith("cuda") else self.plugin.device
                raise OutOfMemoryError(OOM_MESSAGE.format(
                    device=device, plugin=self.plugin_name, plugin_type=self.plugin_type,
                    batch_size=self.batch_size)) from err

    @abstractmethod
    def pre_process(self, batch: ExtractBatch) -> None:
        """Prepare the batch's model input in ``batch.data``."""

    @abstractmethod
    def process(self, batch: ExtractBatch) -> None:
        """Run inference on ``batch.data`` and leave the raw output there."""

    @abstractmethod
    def post_process(self, batch: ExtractBatch) -> None:
        """Turn the raw output into the stage's results on the batch."""


class ExtractHandlerFace(ExtractHandler):
    """A handler for plugins that take aligned faces (mask and identity).

    Each face is cut at the plugin's input size and centering through :meth:`face_matrices`:
    faces with 2D landmarks are aligned to the mean face (or cut by the plugin's own
    :meth:`~faceinfer.plugins.base.FacePlugin.crop_matrices`), faces without landmarks get a
    square crop around their box.

    Aligned input (``batch.is_aligned``, e.g. faces re-loaded from extracted PNGs, landmarks in
    their frames' pixels) follows faceswap's convention for extracted faces: each image is the
    aligned crop of its face's landmarks at the image's own size and head centering, or at the
    centering its frame metadata names under ``centering``. The plugin's crop is cut from it
    through ``frame_to_crop @ inverse(frame_to_image)``, so it matches the crop the frame
    itself gives.
    """

    plugin: FacePlugin

    def __init__(self, plugin: str, compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, FacePlugin):
            raise PluginError(f"expected a face plugin for '{plugin}', got "
                              f"{type(self.plugin).__name__}")
        self.storage_name = self.plugin.storage_name
        """The name the plugin's output is stored under."""

    def face_matrices(self, batch: ExtractBatch) -> npt.NDArray[np.float32]:
        """(N, 3, 3) ``frame_to_crop``: frame pixels to the normalized plugin crop, which covers
        [0, 1] x [0, 1] (crop pixel i at i / input_size).

        Plugins with their own crop convention give it through
        :meth:`~faceinfer.plugins.base.FacePlugin.crop_matrices` (68-point faces). Other faces
        with 2D landmarks are aligned to the mean face at the plugin's centering and input
        size, padding included. Faces without landmarks get a square crop around their box,
        padded by the centering's ratio."""
        aligned = batch.aligned
        if aligned.landmarks is None or aligned.landmark_type == LandmarkType.LM_3D_26:
            return box_crop_matrices(batch.bboxes.astype(np.float32),
                                     EXTRACT_RATIOS[self.plugin.centering])
        if aligned.landmark_type == LandmarkType.LM_2D_68:
            own = self.plugin.crop_matrices(aligned.landmarks)
            if own is not None:
                return np.asarray(own, dtype=np.float32)
        size = self.plugin.input_size
        centering = self.plugin.centering
        out = aligned_matrices(aligned.matrices, size, centering, aligned.offsets(centering))
        out[:, :2] /= size
        return out.astype(np.float32)

    @staticmethod
    def aligned_centering(batch: ExtractBatch, index: int) -> Centering:
        """The centering of aligned input image ``index``: the ``centering`` its frame metadata
        names, else head (faceswap's centering for extracted faces).

        Raises
        ------
        ValueError
            If the metadata names no known centering.
        """
        metadata: Mapping[str, Any] = ({} if batch.frame_metadata is None
                                       else batch.frame_metadata[index])
        value = metadata.get("centering", Centering.HEAD)
        try:
            return Centering(value)
        except ValueError:
            raise ValueError(f"{batch.filenames[index]}: expected an aligned face centering of "
                             f"legacy, face or head in its metadata, got {value!r}") from None

    def aligned_image_matrices(self, batch: ExtractBatch) -> npt.NDArray[np.float64]:
        """(N, 3, 3) ``frame_to_image`` for aligned input: each face's frame pixels to the
        pixels of its aligned image, taken to be the aligned crop of the face's landmarks at the
        image's side and centering (see :meth:`aligned_centering`).

        Raises
        ------
        ValueError
            If the faces have no landmarks or an image is not square.
        """
        if batch.landmarks is None:
            raise ValueError(f"{batch.filenames[0]}: aligned face images are cut again from the "
                             "landmarks they were aligned with; expected landmarks, got none")
        keys: list[tuple[int, Centering]] = []
        for index, image in enumerate(batch.images):
            if image.shape[0] != image.shape[1]:
                raise ValueError(f"{batch.filenames[index]}: expected a square aligned face "
                                 f"image, got {image.shape[1]}x{image.shape[0]}")
            keys.append((int(image.shape[0]), self.aligned_centering(batch, index)))
        face_keys = [keys[frame] for frame in batch.frame_ids.tolist()]
        out = np.empty((batch.num_faces, 3, 3), dtype=np.float64)
        aligned = batch.aligned
        for side, centering in set(face_keys):
            faces = np.array([key == (side, centering) for key in face_keys])
            out[faces] = aligned_matrices(aligned.matrices[faces], side, centering,
                                          aligned.offsets(centering)[faces])
        return out

    def face_images(self, batch: ExtractBatch, matrices: npt.NDArray[np.float32]
                    ) -> npt.NDArray[np.uint8]:
        """(N, S, S, 3) uint8 BGR crops of the batch's faces at the plugin's input size, cut
        through ``matrices`` (frame pixels -> normalized crop) out of the frames, or out of the
        aligned images for aligned input (see the class docstring)."""
        size = self.plugin.input_size
        frame_to_crop = np.diag([float(size), float(size), 1.0]) @ matrices
        if batch.is_aligned:
            frame_to_crop = frame_to_crop @ np.linalg.inv(self.aligned_image_matrices(batch))
        return warp_aligned(batch.images, batch.frame_ids, frame_to_crop, size,
                            shrink_interpolation(self.plugin))

    def frame_sizes(self, batch: ExtractBatch) -> npt.NDArray[np.int64]:
        """(N, 2) the (height, width) of each face's frame. For aligned input: the batch's
        ``frame_sizes``, else each frame metadata's ``source_frame_dims``.

        Raises
        ------
        ValueError
            For aligned input whose frame sizes are not known.
        """
        sizes: list[tuple[int, int]] | None = batch.frame_sizes
        if sizes is None and not batch.is_aligned:
            sizes = [(int(i.shape[0]), int(i.shape[1])) for i in batch.images]
        if sizes is None and batch.frame_metadata is not None:
            dims = [meta.get("source_frame_dims") for meta in batch.frame_metadata]
            if all(dim is not None for dim in dims):
                sizes = [(int(dim[0]), int(dim[1])) for dim in dims if dim is not None]
        if sizes is None:
            raise ValueError(f"{batch.filenames[0]}: aligned faces need the size of their frame "
                             "(frame_size, or source_frame_dims in the frame metadata)")
        return np.asarray(sizes, dtype=np.int64).reshape(-1, 2)[batch.frame_ids]

    def pre_process(self, batch: ExtractBatch) -> None:
        """Cut the aligned faces at the plugin's size and centering, in its input format."""
        batch.matrices = self.face_matrices(batch)
        feed = format_images(self.face_images(batch, batch.matrices), self.plugin)
        batch.data = self.plugin.pre_process(feed)

    def process(self, batch: ExtractBatch) -> None:
        """Run inference on the prepared faces."""
        batch.data = self.predict(batch.data)


class FileHandler(ExtractHandler):
    """A pseudo handler for a pipeline driven entirely by existing face data: it runs no plugin
    and no thread, and frames put in come straight back out."""

    plugin_type: HandlerType = "file"
    processors: tuple[ProcessorName, ...] = ()

    class Plugin:
        """Stand-in plugin with the properties a runner reads."""

        name: ClassVar[str] = "file"
        batch_size: ClassVar[int] = 1
        input_size: ClassVar[int] = 0
        config: ClassVar[PluginConfig] = PluginConfig()

    def __init__(self) -> None:
        self.plugin_name = "file"
        self.plugin = self.Plugin()  # type: ignore[assignment]
        self.do_compile = False
        self.config_file = None
        self._device_request = "cpu"
        self._runner = None
        self._model_lock = threading.RLock()
        self._model_ready = True
        self._model_loaded = True
        self._compiled = False

    def __call__(self, input_plugin: ExtractHandler | ExtractRunner[Any] | None = None,
                 profile: bool = False) -> ExtractRunner[Any]:
        """Build the runner. The file handler is always alone: no input and no profiling.

        Raises
        ------
        ValueError
            If an input plugin or profiling is asked for.
        """
        if input_plugin is not None or profile:
            raise ValueError("the file handler takes no input plugin and cannot be profiled")
        return super().__call__(None, False)

    def pre_process(self, batch: ExtractBatch) -> None:
        """Not applicable: the file handler runs nothing."""

    def process(self, batch: ExtractBatch) -> None:
        """Not applicable: the file handler runs nothing."""

    def post_process(self, batch: ExtractBatch) -> None:
        """Not applicable: the file handler runs nothing."""
