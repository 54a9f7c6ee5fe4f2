"""Detector "mtcnn": the three-stage cascade of Zhang et al. (2016), "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks", written in PyTorch here.

P-Net scans an image pyramid for candidate boxes, R-Net refines them on 24 x 24 crops and O-Net
on 48 x 48 crops, which also gives five facial keypoints. The weights are the Caffe-trained ones
as converted by facenet-pytorch 2.6.0 (MIT, Timothy Esler), re-saved as a plain ``.npz`` by
``tools/convert_mtcnn.py`` (see ``weights/README.md``).

It follows the reference (facenet-pytorch's ``detect_face``: same thresholds, NMS settings and
box arithmetic), laid out for speed:

* The pyramid levels (exact pixel-area averages of the input) are packed into one mosaic per
  frame, so a single P-Net pass covers every scale (:func:`plan_pyramid`).
* Inputs letterboxed into the square (black borders, exactly -1 after scaling) are scanned
  only where a P-Net window can see a non-black pixel: the mosaic holds just those parts of
  the levels (:func:`content_box`, :func:`level_parts`, one layout kept per box, so one per
  video). A window of black alone gets P-Net's :attr:`MTCNNDetector.black_score` (0.0016),
  far below ``threshold_1``: the candidates are the same, and the mosaic is about 0.69 of the
  whole one for 16:9 frames.
* Candidate generation, NMS (:func:`nms`, exact greedy, vectorised), box regression and
  squaring run on all frames of the batch at once, in numpy.
* R-Net and O-Net each take the candidates of the whole batch in one call (in chunks of
  :data:`CROP_CHUNK`); their crops are cut in one ``grid_sample`` per source from the mosaic
  level nearest the crop's scale (see :data:`CROP_SOURCE_SCALE`), not region by region.

This module holds the config, the registered plugin with its cascade, and the weights file it
loads. The rest lives in private sibling modules: the nets, building them and their input
geometry in ``_mtcnn_nets``, the pyramid and its mosaic in ``_mtcnn_pyramid``, NMS and box
arithmetic in ``_mtcnn_boxes``, and R-Net's and O-Net's crops in ``_mtcnn_crops``.

torch is imported when the model is built, so importing this module (to list plugins) stays
light.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.errors import ConfigError
from faceinfer.geometry.constants import FACE_BOX_MTCNN, FaceBox
from faceinfer.plugin_utils import is_compiled
from faceinfer.plugins._checksum import verify_sha256
from faceinfer.plugins.base import DetectPlugin, PluginConfig
from faceinfer.plugins.detect._mtcnn_boxes import (
    ONET_NMS_MIN,
    PNET_MERGED_NMS_IOU,
    PNET_SCALE_NMS_IOU,
    RNET_NMS_IOU,
    nms,
    regress,
    square,
)
from faceinfer.plugins.detect._mtcnn_crops import Sources, cut_crops
from faceinfer.plugins.detect._mtcnn_nets import (
    INPUT_SCALE,
    ONET_SIZE,
    PNET_CELL,
    RNET_SIZE,
    build_nets,
)
from faceinfer.plugins.detect._mtcnn_pyramid import (
    MOSAIC_GAP,
    MosaicLayout,
    content_box,
    corner_tables,
    fill_mosaic_cpu,
    fill_mosaic_torch,
    level_parts,
    pack_levels,
    plan_pyramid,
    pyramid_cells,
)

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "mtcnn.npz"
"""The vendored weights: P-Net, R-Net and O-Net tensors under ``pnet.``, ``rnet.``, ``onet.``."""
WEIGHTS_SHA256 = "926fb845f6ca1a03111a8b7de44ee8e0a49bcaa1a125816e34d324b6c2ff3549"
"""The sha256 of :data:`WEIGHTS_FILE`, as printed by ``tools/convert_mtcnn.py``."""

CROP_CHUNK = 512
"""Most crops cut and run through R-Net or O-Net at once (bounds the memory of the crops)."""
COMPILED_CROP_FLOOR = 16
"""Once the nets are compiled, fewer crops than this are zero-padded up to it before R-Net or
O-Net, whose count of crops is marked dynamic: one graph per net then serves every count from
this to :data:`CROP_CHUNK` (the compiled graph guards counts of 16 and up; below, and at 0 and
1, which torch always specialises, counts would compile again). The alternative, static shapes
with counts padded to power-of-two buckets, compiles once per bucket (6 per net, 10 to 15 s
each on 2 CPU cores) and ran no faster: ``bench/compile.py --crop-nets`` measured (2 shared
cores, noisy) R-Net 4 / 8 / 21 ms a call at 20 / 100 / 300 crops against 57 / 66 / 46 ms for
buckets, O-Net 68 / 132 / 276 against 69 / 130 / 400 ms."""
KEPT_LAYOUTS = 16
"""Most mosaic layouts kept (a few MB each): a video needs one, a folder of photos one per
shape of letterbox."""


@dataclass(frozen=True)
class MTCNNConfig(PluginConfig):
    """Settings of the mtcnn detector."""

    batch_size: int = 8
    """Frames per batch. All stages of the cascade run on the whole batch at once."""
    input_size: int = 640
    """Side of the square detector input that frames are letterboxed into, in pixels."""
    min_size: int = 20
    """Smallest face searched for, in pixels of the detector input (20 to 1000). Smaller finds
    smaller faces but scans a larger pyramid: the cost grows about with (1 / min_size) ** 2."""
    scale_factor: float = 0.709
    """Ratio between neighbouring pyramid scales (0.5 to 0.95). Closer to 1 tries more scales:
    slower, and a little more sensitive."""
    threshold_1: float = 0.6
    """P-Net: face probability a pyramid window needs to become a candidate (0 to 1)."""
    threshold_2: float = 0.7
    """R-Net: face probability a candidate needs to go on to O-Net (0 to 1)."""
    threshold_3: float = 0.7
    """O-Net: face probability a candidate needs to be considered at all (0 to 1)."""
    cpu_workers: int = 2
    """On the CPU, how many threads share the frames of a batch (1 to 16), each running the
    whole cascade on its part. The nets use several cores poorly on small inputs (about 1.3x
    on 2 cores), so frames in parallel go faster: 107 against 123 ms a frame on 2 cores. A
    batch of one frame always runs in one call."""
    score_threshold: float = 0.9
    """Final O-Net score a face needs to be reported (0 to 1). On the sample video false boxes
    score 0.70 to 0.86 and the real face 0.91 and up (0.98 and up with this implementation's
    crops); the faces of the sample photos score 0.97 and up."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if not 48 <= self.input_size <= 4096:
            raise ConfigError(f"{name}.input_size: expected 48 to 4096, got {self.input_size}")
        if not 20 <= self.min_size <= 1000:
            raise ConfigError(f"{name}.min_size: expected 20 to 1000, got {self.min_size}")
        if self.min_size > self.input_size:
            raise ConfigError(f"{name}.min_size: expected at most input_size "
                              f"({self.input_size}), got {self.min_size}")
        if not 0.5 <= self.scale_factor <= 0.95:
            raise ConfigError(f"{name}.scale_factor: expected 0.5 to 0.95, "
                              f"got {self.scale_factor}")
        if not 1 <= self.cpu_workers <= 16:
            raise ConfigError(f"{name}.cpu_workers: expected 1 to 16, got {self.cpu_workers}")
        for key in ("threshold_1", "threshold_2", "threshold_3", "score_threshold"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}.{key}: expected 0 to 1, got {value}")


@register_plugin("detect", "mtcnn")
class MTCNNDetector(DetectPlugin):
    """MTCNN: P-Net over an image pyramid, then R-Net and O-Net on crops of the candidates.

    Each box comes with five keypoints: eye on the image's left, eye on its right, nose tip,
    mouth corner on the image's left, mouth corner on its right. Boxes are O-Net's regressed
    boxes (not squared), clipped to the input; keypoints are not clipped.
    """

    description = "MTCNN (P/R/O-Net cascade, PyTorch): face boxes with 5 keypoints"
    speed = "medium"
    keypoints = 5
    face_box: ClassVar[FaceBox | None] = FACE_BOX_MTCNN
    config_class = MTCNNConfig
    weights: ClassVar[str | None] = ("faceinfer.plugins.detect: weights/mtcnn.npz "
                                     "(facenet-pytorch 2.6.0, MIT)")
    weights_sha256: ClassVar[str | None] = WEIGHTS_SHA256

    def __init__(self, config: MTCNNConfig) -> None:
        super().__init__(config.input_size, config.batch_size, is_rgb=True, dtype="float32",
                         scale=(-1.0, 1.0), force_cpu=False, config=config)
        self.settings = config
        """The plugin's resolved config."""
        levels, height, width = plan_pyramid(config.input_size, config.min_size,
                                             config.scale_factor)
        self._sizes = [level.size for level in levels]
        self.levels = levels
        """P-Net's pyramid levels and their places in the full mosaic, largest first."""
        self.mosaic_shape = (height, width)
        """(height, width) of the mosaic holding every pyramid level whole."""
        self.skip_black = True
        """Whether P-Net skips the windows that see only black input (letterbox borders),
        scanning a mosaic laid out for the box of the batch's other pixels; it does only where
        P-Net scores black below ``threshold_1`` (:attr:`black_score`)."""
        self.black_score = 1.0
        """P-Net's face probability for a window of black input, set by :meth:`load_model`."""
        self._tables: dict[str, Any] = {}
        self._layouts: dict[tuple[int, int, int, int], MosaicLayout] = {}
        self._lock = threading.Lock()  # guards the layouts and the threads' buffers
        self._buffers: dict[int, dict[str, tuple[Any, Any]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def load_model(self) -> None:
        """Check the weights file's sha256, build the three nets on :attr:`device` and fold the
        input normalisation into their first convolutions.

        The nets were trained on (x - 127.5) / 128 for uint8 x. They are fed here x / 127.5
        (the stage's -1..1 plus 1, so that black is 0 and the zero padding of crops reads as
        black): scaling each first convolution's weights by 127.5 / 128 and subtracting their
        sum from its bias makes that exactly the trained input (the convolutions have no
        padding).

        Raises
        ------
        PluginError
            If the weights file is missing, unreadable or not the vendored one.
        """
        import torch  # noqa: PLC0415

        verify_sha256(WEIGHTS_FILE, WEIGHTS_SHA256, "mtcnn's weights file",
                      "reinstall faceinfer or rerun tools/convert_mtcnn.py")
        with np.load(WEIGHTS_FILE, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        nets = build_nets(arrays)
        with torch.no_grad():
            for net in nets.values():
                conv = net.get_submodule("conv1")
                assert isinstance(conv, torch.nn.Conv2d)
                assert conv.bias is not None
                conv.weight.mul_(INPUT_SCALE)
                conv.bias.sub_(conv.weight.sum(dim=(1, 2, 3)))
        device = torch.device(self.device)
        # Channels-last convolutions are about twice as fast on the CPU (oneDNN).
        self.model = {name: net.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                      for name, net in nets.items()}
        self._tables = corner_tables(self.levels, self.input_size, device)
        self._layouts = {}
        with torch.inference_mode():
            black = torch.zeros((1, 3, PNET_CELL, PNET_CELL), device=device)
            self.black_score = float(self.model["pnet"](
                black.contiguous(memory_format=torch.channels_last))[0].max())

    def layout(self, box: tuple[int, int, int, int] | None) -> MosaicLayout:
        """The mosaic for inputs black outside ``box`` (top, bottom, left, right; input
        pixels, exclusive ends), made on first use and kept: the whole pyramid when ``box`` is
        None or black windows are not to be skipped (see :attr:`skip_black`), and once P-Net
        is compiled: its graph is for one shape, the whole pyramid's, compiled in the warm-up,
        and a mosaic shape per letterbox would compile again (dynamic height and width were
        tried once and recompiled, but with another change in, so not measured apart)."""
        import torch  # noqa: PLC0415

        size = self.input_size
        model = getattr(self, "model", None)
        if (box is None or not self.skip_black or self.black_score >= self.settings.threshold_1
                or (isinstance(model, dict) and is_compiled(model["pnet"]))):
            box = (0, size, 0, size)
        with self._lock:  # the worker threads share the layouts
            layout = self._layouts.get(box)
            if layout is None:
                levels, height, width = pack_levels(level_parts(self._sizes, size, box))
                level_of, windows = pyramid_cells(levels, height, width, size)
                valid = torch.from_numpy(level_of >= 0).to(torch.device(self.device))
                layout = MosaicLayout(levels, (height, width), level_of, windows, valid)
                if len(self._layouts) >= KEPT_LAYOUTS:  # the oldest goes
                    self._layouts.pop(next(iter(self._layouts)))
                self._layouts[box] = layout
        return layout

    def _pnet_chunk(self) -> int:
        """How many frames P-Net takes per call. On the CPU one frame's mosaic keeps both cores
        busy and bigger calls only spill the caches (measured: about 1.3x slower per frame at
        8); a GPU takes the whole batch."""
        return 1 if self.device == "cpu" else self.batch_size

    def _buffer(self, name: str, shape: tuple[int, ...], tag: Any = None) -> torch.Tensor:
        """A float32 work tensor on :attr:`device`, zeroed when first made and kept for the
        next batch of the same shape and ``tag`` (the mosaic's layout): big fresh tensors cost
        a page fault per 4 KiB on the CPU, and the mosaic's gaps must stay black.

        Each thread has its own; a thread's first call drops those of threads that have ended
        (the profiler's and the stage's come and go)."""
        import torch  # noqa: PLC0415

        thread = threading.get_ident()
        buffers = self._buffers.get(thread)
        if buffers is None:
            alive = {item.ident for item in threading.enumerate()}
            with self._lock:
                for ended in [key for key in self._buffers if key not in alive]:
                    del self._buffers[ended]
                buffers = self._buffers.setdefault(thread, {})
        buffer, made_for = buffers.get(name, (None, None))
        if buffer is None or tuple(buffer.shape) != shape or made_for is not tag:
            buffer = torch.zeros(shape, dtype=torch.float32, device=torch.device(self.device))
            buffers[name] = (buffer, tag)
        assert isinstance(buffer, torch.Tensor)
        return buffer

    def _workers(self, count: int) -> int:
        """How many threads share a batch of ``count`` frames."""
        if self.device != "cpu":
            return 1
        return max(1, min(self.settings.cpu_workers, count))

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Run the cascade on a batch of frames.

        Parameters
        ----------
        batch:
            (N, S, S, 3) float32 RGB frames scaled to -1..1.

        Returns
        -------
        (N, M, 15) float32: for each frame up to M faces as (score, left, top, right, bottom,
        then five keypoint (x, y) pairs), in input pixels, by falling score; rows past a frame's
        last face are NaN. Not yet filtered by ``score_threshold`` nor clipped.
        """
        count, size = len(batch), self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"mtcnn: expected (N, {size}, {size}, 3) frames, "
                             f"got {batch.shape}")
        if count == 0 or not self.levels:
            return np.full((count, 0, 15), np.nan, dtype=np.float32)
        workers = self._workers(count)
        if workers == 1:
            return self._cascade(batch)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.cpu_workers,
                                            thread_name_prefix="mtcnn-worker")
        parts = list(self._pool.map(self._cascade, np.array_split(batch, workers)))
        width = max(part.shape[1] for part in parts)
        return np.concatenate([np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)),
                                      constant_values=np.nan) for part in parts])

    def _cascade(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """:meth:`process` for some frames, in this thread."""
        import torch  # noqa: PLC0415

        count, size = len(batch), self.input_size
        device = torch.device(self.device)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        layout = self.layout(content_box(batch))
        height, width = layout.shape
        with torch.inference_mode():
            frames = torch.from_numpy(batch).to(device)
            # Both sources get MOSAIC_GAP black rows below each frame, so that stacked into
            # one tall image, crops near a frame's bottom edge read black, not the next frame.
            canvas = self._buffer("canvas", (count, size + MOSAIC_GAP, size, 3))
            torch.add(frames, 1.0, out=canvas[:, :size])  # black is 0: see load_model
            mosaic = self._buffer("mosaic", (count, height + MOSAIC_GAP, width, 3), layout)
            sources = Sources(canvas, mosaic, layout)
            boxes, frame_ids = self._propose(batch, frames, sources)
            if len(boxes):
                boxes, frame_ids = self._refine(sources, boxes, frame_ids)
            rows = np.zeros((0, 15), dtype=np.float64)
            if len(boxes):
                rows, frame_ids = self._finish(sources, boxes, frame_ids)
        return self._pack(rows, frame_ids, count)

    def _propose(self, batch: np.ndarray, frames: torch.Tensor, sources: Sources
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """P-Net on the mosaic of each frame (filled here from the batch, or its copy on the
        device): candidate squares (K, 4) and their frames (K,), after NMS within each level
        and across levels, box regression and squaring."""
        import torch  # noqa: PLC0415

        mosaic, layout = sources.mosaic, sources.layout
        found: list[tuple[torch.Tensor, ...]] = []
        chunk = self._pnet_chunk()
        for first in range(0, len(frames), chunk):
            part = mosaic[first:first + chunk]
            if mosaic.device.type == "cpu":
                fill_mosaic_cpu(batch[first:first + chunk], part, layout, self.input_size)
            else:
                fill_mosaic_torch(frames[first:first + chunk], part, layout, self._tables,
                                  self._buffer)
            prob, regression = self._call_pnet(part[:, :layout.shape[0]])
            frame, row, col = torch.nonzero((prob >= self.settings.threshold_1) & layout.valid,
                                            as_tuple=True)
            found.append((frame + first, row, col, prob[frame, row, col],
                          regression[frame, :, row, col]))
        frame_ids, rows, cols, scores, offsets = (torch.cat(parts).cpu().numpy()
                                                  for parts in zip(*found, strict=True))
        scores, offsets = scores.astype(np.float64), offsets.astype(np.float64)
        boxes, levels = layout.windows[rows, cols], layout.level_of[rows, cols]
        keep = nms(boxes, scores, frame_ids * len(self.levels) + levels, PNET_SCALE_NMS_IOU)
        keep = keep[nms(boxes[keep], scores[keep], frame_ids[keep], PNET_MERGED_NMS_IOU)]
        return self._squares(regress(boxes[keep], offsets[keep]), frame_ids[keep])

    @staticmethod
    def _squares(boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64]
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """The boxes squared, without any under a pixel wide (a regression can flip one)."""
        boxes = square(boxes)
        keep = boxes[:, 2] - boxes[:, 0] >= 1.0
        return boxes[keep], frames[keep]

    def _run_net(self, name: str, sources: Sources,
                 boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64], size: int
                 ) -> list[npt.NDArray[np.float64]]:
        """Run R-Net or O-Net on ``size`` x ``size`` crops of the (at least one) boxes, in
        chunks of :data:`CROP_CHUNK`.

        Returns
        -------
        The net's outputs (probability, regression[, keypoints]) for every box, float64.
        """
        net = self.model[name]
        outputs: list[list[npt.NDArray[np.float64]]] = []
        for first in range(0, len(boxes), CROP_CHUNK):
            crops, order = cut_crops(sources, boxes[first:first + CROP_CHUNK],
                                     frames[first:first + CROP_CHUNK], size, self.input_size)
            results = []
            for result in self._call_net(net, crops):
                array = result[:len(order)].cpu().numpy().astype(np.float64)
                results.append(np.empty_like(array))
                results[-1][order] = array
            outputs.append(results)
        return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]

    def _call_pnet(self, mosaic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net on mosaics (N, H, W, 3): face probabilities (N, H', W') and box regressions
        (N, 4, H', W')."""
        prob, offsets = self.model["pnet"](mosaic.permute(0, 3, 1, 2))
        return prob, offsets

    @staticmethod
    def _call_net(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """R-Net or O-Net on crops (K, 3, S, S). A compiled net gets at least
        :data:`COMPILED_CROP_FLOOR` crops (zero crops appended) with the count marked dynamic,
        so no count compiles again; its outputs may then hold more rows than K."""
        import torch  # noqa: PLC0415

        if is_compiled(net):
            missing = COMPILED_CROP_FLOOR - len(crops)
            if missing > 0:
                crops = torch.cat([crops, crops.new_zeros((missing, *crops.shape[1:]))]
                                  ).contiguous(memory_format=torch.channels_last)
            torch._dynamo.maybe_mark_dynamic(crops, 0)
        return tuple(net(crops))

    def warmup_compiled(self) -> None:
        """Run each compiled net once, in this thread, before any frame arrives: P-Net on a
        black mosaic view shaped as :meth:`_propose` gives it (compiled, P-Net always scans the
        whole pyramid: see :meth:`layout`), R-Net and O-Net on zero crops (two counts, to
        check that their one dynamic graph holds). Otherwise the worker threads of the first
        batch would each compile the same graph."""
        import torch  # noqa: PLC0415

        device = torch.device(self.device)
        height, width = self.layout(None).shape
        with torch.inference_mode():
            mosaic = torch.zeros((self._pnet_chunk(), height + MOSAIC_GAP, width, 3),
                                 device=device)
            self._call_pnet(mosaic[:, :height])
            for name, size in (("rnet", RNET_SIZE), ("onet", ONET_SIZE)):
                for count in (COMPILED_CROP_FLOOR, COMPILED_CROP_FLOOR + 1):
                    crops = torch.zeros((count, 3, size, size), device=device)
                    self._call_net(self.model[name],
                                   crops.contiguous(memory_format=torch.channels_last))

    def _refine(self, sources: Sources,
                boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64]
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """R-Net: keep the candidates it scores at least ``threshold_2``, NMS per frame, then
        its box regression and squaring."""
        prob, offsets = self._run_net("rnet", sources, boxes, frames, RNET_SIZE)
        keep = np.flatnonzero(prob >= self.settings.threshold_2)
        keep = keep[nms(boxes[keep], prob[keep], frames[keep], RNET_NMS_IOU)]
        return self._squares(regress(boxes[keep], offsets[keep]), frames[keep])

    def _finish(self, sources: Sources,
                boxes: npt.NDArray[np.float64], frames: npt.NDArray[np.int64]
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """O-Net: keep the candidates it scores at least ``threshold_3``, place the keypoints,
        regress the boxes and NMS per frame by intersection over the smaller box.

        Returns
        -------
        (K, 15) rows (score, box, keypoint x, y pairs) by frame and falling score, and their
        frames (K,).
        """
        prob, offsets, points = self._run_net("onet", sources, boxes, frames, ONET_SIZE)
        keep = np.flatnonzero(prob >= self.settings.threshold_3)
        boxes, frames, prob = boxes[keep], frames[keep], prob[keep]
        offsets, points = offsets[keep], points[keep]
        width = (boxes[:, 2] - boxes[:, 0])[:, None]
        height = (boxes[:, 3] - boxes[:, 1])[:, None]
        keypoints = np.stack([boxes[:, :1] + width * points[:, :5],
                              boxes[:, 1:2] + height * points[:, 5:]], axis=2)
        boxes = regress(boxes, offsets)
        order = nms(boxes, prob, frames, ONET_NMS_MIN, use_min=True)
        rows = np.concatenate([prob[:, None], boxes, keypoints.reshape(-1, 10)], axis=1)
        return rows[order], frames[order]

    @staticmethod
    def _pack(rows: npt.NDArray[np.float64], frames: npt.NDArray[np.int64], count: int
              ) -> npt.NDArray[np.float32]:
        """(count, M, 15) float32 from rows sorted by frame, NaN past each frame's last."""
        counts = np.bincount(frames, minlength=count)
        out = np.full((count, int(counts.max(initial=0)), 15), np.nan, dtype=np.float32)
        starts = np.cumsum(counts) - counts
        out[frames, np.arange(len(rows)) - starts[frames]] = rows
        return out

    def post_process(self, batch: np.ndarray) -> list[npt.NDArray[np.float32]]:
        """One (M, 14) float32 array per frame: box (left, top, right, bottom) clipped to the
        input, then the five keypoints' (x, y), in input pixels, for every face scoring at
        least ``score_threshold``, by falling score."""
        size = float(self.input_size)
        out: list[npt.NDArray[np.float32]] = []
        for frame in np.asarray(batch, dtype=np.float32):
            rows = frame[frame[:, 0] >= self.settings.score_threshold]  # NaN compares False
            boxes = np.clip(rows[:, 1:5], 0.0, size)
            keep = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
            out.append(np.concatenate([boxes, rows[:, 5:]], axis=1)[keep].reshape(-1, 14))
        return out
