"""The networks of the "mtcnn" detector (:mod:`faceinfer.plugins.detect.mtcnn`): P-Net, R-Net
and O-Net as PyTorch modules, building them from arrays keyed as in the weights file, and the
nets' input sizes, strides and input scaling.

torch is imported when the nets are built, so importing this module (to list plugins) stays
light.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from faceinfer.errors import PluginError

if TYPE_CHECKING:
    import torch

PNET_STRIDE = 2
"""P-Net's output stride on its input, in pixels."""
PNET_CELL = 12
"""The side of the window each P-Net output cell sees, in pixels."""
RNET_SIZE = 24
"""R-Net's input side."""
ONET_SIZE = 48
"""O-Net's input side."""
INPUT_SCALE = 127.5 / 128.0
"""The nets were trained on (x - 127.5) / 128; the stage gives x / 127.5 - 1. Multiplying by
this maps one onto the other exactly (folded into each net's first convolution)."""

NET_NAMES = ("pnet", "rnet", "onet")
"""The three nets, in cascade order (also the key prefixes in the weights file)."""


@functools.cache
def _net_classes() -> dict[str, type[torch.nn.Module]]:
    """The P-Net, R-Net and O-Net module classes, defined on first use so torch is imported only
    when a model is built. Layer names match the keys of the weights file."""
    import torch  # noqa: PLC0415 (keep importing the plugin registry light)
    from torch import nn  # noqa: PLC0415
    from torch.nn import functional  # noqa: PLC0415

    def max_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
        """``max_pool2d(x, kernel, 2, ceil_mode=True)``, the same values, as maxima of strided
        views, one axis after the other. On channels-last tensors on the CPU this was measured
        1.5 to 3x faster for P-Net's 2 x 2 pool of a mosaic (1 or 2 threads), but slower for
        R-Net's and O-Net's 3 x 3 pools with 2 threads, which keep ``max_pool2d``. Shapes
        where the second tap of the last window would be missing take ``max_pool2d``."""
        height, width = x.shape[2:]
        out_height, out_width = -(-(height - kernel) // 2) + 1, -(-(width - kernel) // 2) + 1
        if height // 2 < out_height or width // 2 < out_width:
            return functional.max_pool2d(x, kernel, 2, ceil_mode=True)
        return pool_axis(pool_axis(x, 2, kernel, out_height), 3, kernel, out_width)

    def pool_axis(x: torch.Tensor, dim: int, kernel: int, out: int) -> torch.Tensor:
        """The maxima along ``dim`` of ``out`` windows of ``kernel`` at stride 2, the last one
        clipped at the end as with ``ceil_mode``."""
        size = x.shape[dim]

        def taps(offset: int) -> torch.Tensor:
            every_other = (slice(None),) * dim + (slice(None, None, 2),)
            return x.narrow(dim, offset, size - offset)[every_other]

        result = torch.maximum(taps(0).narrow(dim, 0, out), taps(1).narrow(dim, 0, out))
        for offset in range(2, kernel):
            tail = taps(offset)
            count = min(tail.shape[dim], out)
            head = result.narrow(dim, 0, count)
            torch.maximum(head, tail.narrow(dim, 0, count), out=head)
        return result

    def caffe_flatten(x: torch.Tensor) -> torch.Tensor:
        """Flatten (N, C, H, W) in Caffe's transposed (N, W, H, C) order, as the converted dense
        weights expect."""
        return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)

    class PNet(nn.Module):
        """Proposal net: fully convolutional, a 12 x 12 window per output cell at stride 2.

        ``forward`` maps (N, 3, H, W) to the face probability (N, H', W') and the box
        regression (N, 4, H', W')."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 10, 3)
            self.prelu1 = nn.PReLU(10)
            self.conv2 = nn.Conv2d(10, 16, 3)
            self.prelu2 = nn.PReLU(16)
            self.conv3 = nn.Conv2d(16, 32, 3)
            self.prelu3 = nn.PReLU(32)
            self.conv4_1 = nn.Conv2d(32, 2, 1)
            self.conv4_2 = nn.Conv2d(32, 4, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = max_pool(self.prelu1(self.conv1(x)), 2)
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            # Both 1 x 1 heads in one channels-last convolution: the same values, measured
            # 2.7 against 12 ms a 16:9 mosaic on the CPU (oneDNN's fast path).
            weight = torch.cat([self.conv4_1.weight, self.conv4_2.weight])
            bias = torch.cat([cast(torch.Tensor, self.conv4_1.bias),
                              cast(torch.Tensor, self.conv4_2.bias)])
            heads = functional.conv2d(x, weight.contiguous(memory_format=torch.channels_last),
                                      bias)
            prob = torch.softmax(heads[:, :2], dim=1)[:, 1]
            return prob, heads[:, 2:]

    class RNet(nn.Module):
        """Refinement net on 24 x 24 crops: (N, 3, 24, 24) to the face probability (N,) and the
        box regression (N, 4)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 28, 3)
            self.prelu1 = nn.PReLU(28)
            self.conv2 = nn.Conv2d(28, 48, 3)
            self.prelu2 = nn.PReLU(48)
            self.conv3 = nn.Conv2d(48, 64, 2)
            self.prelu3 = nn.PReLU(64)
            self.dense4 = nn.Linear(576, 128)
            self.prelu4 = nn.PReLU(128)
            self.dense5_1 = nn.Linear(128, 2)
            self.dense5_2 = nn.Linear(128, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
            x = functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
            x = self.prelu4(self.dense4(caffe_flatten(self.prelu3(self.conv3(x)))))
            prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
            return prob, self.dense5_2(x)

    class ONet(nn.Module):
        """Output net on 48 x 48 crops: (N, 3, 48, 48) to the face probability (N,), the box
        regression (N, 4) and the keypoints (N, 10): five x then five y, as fractions of the
        crop."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3)
            self.prelu1 = nn.PReLU(32)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.prelu2 = nn.PReLU(64)
            self.conv3 = nn.Conv2d(64, 64, 3)
            self.prelu3 = nn.PReLU(64)
            self.conv4 = nn.Conv2d(64, 128, 2)
            self.prelu4 = nn.PReLU(128)
            self.dense5 = nn.Linear(1152, 256)
            self.prelu5 = nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
            x = functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
            x = functional.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
            x = self.prelu5(self.dense5(caffe_flatten(self.prelu4(self.conv4(x)))))
            prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
            return prob, self.dense6_2(x), self.dense6_3(x)

    return {"pnet": PNet, "rnet": RNet, "onet": ONet}


def build_nets(weights: dict[str, npt.NDArray[np.float32]] | None = None
               ) -> dict[str, torch.nn.Module]:
    """The P-Net, R-Net and O-Net modules in eval mode on the CPU, with their weights.

    Parameters
    ----------
    weights:
        Arrays keyed ``<net>.<layer>.<param>`` as in the weights file, or None to leave the
        modules untrained.

    Raises
    ------
    PluginError
        If the weights lack a tensor of a net or hold one of the wrong shape.
    """
    import torch  # noqa: PLC0415

    nets: dict[str, torch.nn.Module] = {}
    for name, cls in _net_classes().items():
        net = cls().eval().requires_grad_(False)
        if weights is not None:
            prefix = f"{name}."
            state = {key[len(prefix):]: torch.from_numpy(np.array(value, dtype=np.float32))
                     for key, value in weights.items() if key.startswith(prefix)}
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise PluginError(f"mtcnn: the weights do not fit {name}: {err}") from err
        nets[name] = net
    return nets
