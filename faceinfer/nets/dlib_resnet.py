"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``) in PyTorch, built
from the layers that :func:`faceinfer.formats.dlib_dat.read_network` reads from dlib's file.

The network (dlib's ``anet_type`` in ``dnn_face_recognition_ex.cpp``), input -> output:

* input: a 150 x 150 RGB chip, normalised as ``(pixel - mean) / 256`` per channel (no std);
* stem: conv 7 x 7 / 2 pad 0 -> affine -> relu -> max pool 3 x 3 / 2 pad 0 (150 -> 72 -> 35);
* 14 residual blocks, each conv 3 x 3 -> affine -> relu -> conv 3 x 3 -> affine, plus the
  block's input, then relu: 3 at 32 channels; 4 at 64, 3 at 128 and 3 at 256, the first of each
  a down block; then one last 256-channel down block. A down block's first conv has stride 2 and
  no padding, and its shortcut is a 2 x 2 / 2 average pool of the block's input; the other convs
  have stride 1 and padding 1;
* head: the average over all positions, then a 256 -> 128 linear layer without bias. The output
  is not L2-normalised (norms about 1.4).

dlib adds a block to its shortcut as its ``add_prev`` layer does (:func:`ragged_add`): when the
two differ in size the output takes the larger size on every axis and the smaller operand is
zero-padded, channels at the end, rows at the bottom, columns at the right. That happens at every
down block (64 channels onto 32; the block at 3 x 3 onto a 4 x 4 shortcut at 256 channels, and 1 x
1 onto 2 x 2 in the last block), and a port must do the same to give dlib's descriptors.

Each affine layer (dlib's frozen batch norm) is folded into the conv before it, and the input
normalisation into the stem conv (exact: the stem has no padding), so :class:`DlibResnet` takes
plain 0..255 RGB pixel values.

This module imports torch: import it when a model is built.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from faceinfer.formats.dlib_dat import DatFormatError, DatLayer, DatNetwork
from faceinfer.nets._folding import conv2d, folded_weights, parameter

INPUT_SCALE = 256.0
"""dlib's input layer divides each pixel, less its channel's mean, by this (not 255, no std)."""
DOWN = (2, 2)
"""The stride of a down block's first conv and of its shortcut's average pool."""
SAME = (1, 1)
"""The stride and the padding of the other 3 x 3 convs."""
NO_PADDING = (0, 0)
"""dlib's default padding for a layer with stride other than 1."""
WHOLE_INPUT = (0, 0)
"""A pool window of 0 x 0: dlib's ``avg_pool_everything``."""


def ragged_add(block: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum of two (N, C, H, W) tensors that may differ in C, H and W.

    The result takes the larger size on each axis; the smaller operand counts as zero where it
    has no values: channels past its own at the end, rows at the bottom, columns at the right.
    """
    if block.shape == shortcut.shape:
        return block + shortcut
    size = [max(a, b) for a, b in zip(block.shape[1:], shortcut.shape[1:], strict=True)]
    return _zero_pad_to(block, size).add_(_zero_pad_to(shortcut, size))


def _zero_pad_to(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """(N, C, H, W) zero-padded at the end of the channels, the bottom and the right to
    ``size`` (C, H, W)."""
    channels, rows, cols = size
    return functional.pad(x, (0, cols - x.shape[3], 0, rows - x.shape[2],
                              0, channels - x.shape[1]))


class ResidualBlock(nn.Module):
    """conv -> relu -> conv (each with its affine folded in), plus the shortcut, then relu.

    Parameters
    ----------
    first, second:
        The two convolutions.
    down:
        True for a down block: the first conv has stride 2 and the shortcut is the input's
        2 x 2 / 2 average pool; else the shortcut is the input.
    """

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d, down: bool) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C', H', W'): C' the larger of C and the second conv's filters;
        H' = H // 2 and W' = W // 2 for a down block, else H and W (see :func:`ragged_add`)."""
        # In place where the tensor is this block's own: a fresh activation tensor costs an
        # allocation and page faults on the CPU (measured gain small: 0 to 20%, within noise).
        out = self.second(functional.relu_(self.first(x)))
        shortcut = functional.avg_pool2d(x, DOWN, DOWN) if self.down else x
        summed = out.add_(shortcut) if out.shape == shortcut.shape else ragged_add(out, shortcut)
        return functional.relu_(summed)


class DlibResnet(nn.Module):
    """dlib's face descriptor network, built from its model file's layers.

    ``forward`` maps (N, 3, 150, 150) float32 RGB pixel values (0..255; any memory format) to
    (N, 128) raw descriptors, dlib's ``compute_face_descriptor`` of each chip. The module is in
    eval mode with gradients off.

    Parameters
    ----------
    network:
        The model file as read by :func:`~faceinfer.formats.dlib_dat.read_network`.

    Raises
    ------
    DatFormatError
        If the file's layers are not this network's: the message names the file, the layer's
        byte offset and what was expected there.
    """

    def __init__(self, network: DatNetwork) -> None:
        super().__init__()
        layers = _LayerCursor(network)
        mean = layers.check_input()
        self.stem = _folded_conv(layers, 3, DOWN, NO_PADDING, mean)
        layers.take("relu", disabled=False)
        layers.take("max_pool", size=(3, 3), stride=DOWN, padding=NO_PADDING)
        blocks: list[ResidualBlock] = []
        channels = self.stem.out_channels
        while layers.next_kind() == "con":
            blocks.append(_residual_block(layers, channels))
            channels = max(channels, blocks[-1].second.out_channels)
        self.blocks = nn.ModuleList(blocks)
        layers.take("avg_pool", size=WHOLE_INPUT)
        self.head = _linear(layers, channels)
        layers.finish()
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 150, 150) RGB pixel values -> (N, 128) raw descriptors."""
        x = functional.max_pool2d(functional.relu_(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


class _LayerCursor:
    """The layers of a network, taken in order and checked as they are taken."""

    def __init__(self, network: DatNetwork) -> None:
        self.network = network
        self.index = 0

    def fail(self, expected: str, found: str, index: int | None = None) -> DatFormatError:
        """An error naming the file, the mismatch and where it is: the layer at ``index``
        (default: the next one) and its byte offset."""
        index = self.index if index is None else index
        where = "after the last layer"
        if index < len(self.network.layers):
            where = f"in layer {index} at byte {self.network.layers[index].offset}"
        return self.error(f"expected {expected}, got {found} {where}")

    def error(self, message: str) -> DatFormatError:
        """An error naming the file."""
        return DatFormatError(f"{self.network.path}: not dlib's ResNet face descriptor: "
                              f"{message}")

    def check_input(self) -> npt.NDArray[np.float64]:
        """The input layer's means (R, G, B), once its kind is checked."""
        settings = self.network.input
        if settings.get("tag") != "input_rgb_image_sized":
            raise self.error(f"expected the input 'input_rgb_image_sized', got "
                             f"{settings.get('tag')!r}")
        return np.asarray(settings["mean"], dtype=np.float64)

    def peek(self) -> DatLayer | None:
        """The next layer, not taken; None at the end."""
        if self.index < len(self.network.layers):
            return self.network.layers[self.index]
        return None

    def next_kind(self) -> str | None:
        """The kind of the next layer, or None at the end."""
        following = self.peek()
        return None if following is None else following.kind

    def take(self, kind: str, **expected: Any) -> DatLayer:
        """The next layer, which must be of ``kind`` with these field values."""
        found = self.next_kind()
        if found != kind:
            raise self.fail(f"layer {kind!r}", "the end" if found is None else f"layer {found!r}")
        layer = self.network.layers[self.index]
        for name, value in expected.items():
            if layer.fields.get(name) != value:
                raise self.fail(f"{kind} {name} {value}", repr(layer.fields.get(name)))
        self.index += 1
        return layer

    def check(self, ok: bool, expected: str, found: str) -> None:
        """Fail at the layer just taken unless ``ok``."""
        if not ok:
            raise self.fail(expected, found, self.index - 1)

    def finish(self) -> None:
        """Fail unless every layer was taken."""
        found = self.next_kind()
        if found is not None:
            raise self.fail("the end of the network", f"layer {found!r}")


def _residual_block(layers: _LayerCursor, channels: int) -> ResidualBlock:
    """Take one block's layers: con, affine, relu, con, affine, [avg_pool,] add_prev, relu."""
    following = layers.peek()
    down = following is not None and following.fields.get("stride") == DOWN
    first = _folded_conv(layers, channels, DOWN if down else SAME,
                         NO_PADDING if down else SAME)
    layers.take("relu", disabled=False)
    second = _folded_conv(layers, first.out_channels, SAME, SAME)
    if down:
        layers.take("avg_pool", size=DOWN, stride=DOWN, padding=NO_PADDING)
    layers.take("add_prev")
    layers.take("relu", disabled=False)
    return ResidualBlock(first, second, down)


def _folded_conv(layers: _LayerCursor, channels: int, stride: tuple[int, int],
                 padding: tuple[int, int], mean: npt.NDArray[np.float64] | None = None
                 ) -> nn.Conv2d:
    """Take a con layer on ``channels`` input channels and the affine after it, as one conv
    with the affine folded in (``gamma * conv(x) + beta``); with ``mean``, also the input
    normalisation ``(x - mean) / 256`` (exact only for a conv without padding)."""
    con = layers.take("con", stride=stride, padding=padding, relu=False)
    shape = con.fields["weight"].shape
    layers.check(shape[1] == channels, f"con on {channels} channels", f"filters {shape}")
    affine = layers.take("affine", mode="conv")
    size = np.asarray(affine.fields["gamma"]).size
    layers.check(size == shape[0], f"affine on {shape[0]} channels", f"{size}")
    weight, bias = folded_weights(con, affine)
    if mean is not None:
        bias -= np.einsum("oikl,i->o", weight, mean) / INPUT_SCALE
        weight /= INPUT_SCALE
    return conv2d(weight, bias, stride, padding)


def _linear(layers: _LayerCursor, inputs: int) -> nn.Linear:
    """Take the fc layer on ``inputs`` values (stored (inputs, outputs), as dlib computes
    ``x @ weight``) as a linear layer."""
    fc = layers.take("fc")
    weight, bias = fc.fields["weight"], fc.fields["bias"]
    layers.check(weight.shape[0] == inputs, f"fc on {inputs} inputs", f"weights {weight.shape}")
    linear = nn.Linear(inputs, weight.shape[1], bias=bias is not None)
    linear.weight = parameter(weight.T)
    if bias is not None:
        linear.bias = parameter(bias)
    return linear
