"""dlib layer records to torch layers: per-channel norms folded into the convolution before
them, computed in float64 and stored as frozen float32 parameters.

dlib's ``affine`` layer computes ``gamma * x + beta`` per channel (the identity when disabled);
its ``bn_con`` layer, when loaded into a network typed with ``affine`` (as both of dlib's face
networks are), becomes ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - scale *
running_mean``. Either folds into the convolution before it as ``weight * scale``, ``bias *
scale + shift``.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from faceinfer.formats.dlib_dat import DatLayer

F64 = npt.NDArray[np.float64]


def norm_scale_shift(layer: DatLayer) -> tuple[F64, F64]:
    """(scale, shift) per channel of an ``affine``, ``bn_con`` or ``bn_fc`` layer."""
    fields = layer.fields
    gamma = np.asarray(fields["gamma"], np.float64).reshape(-1)
    beta = np.asarray(fields["beta"], np.float64).reshape(-1)
    if layer.kind in ("bn_con", "bn_fc"):
        scale = gamma / np.sqrt(np.asarray(fields["running_var"], np.float64).reshape(-1)
                                + float(fields["eps"]))
        return scale, beta - scale * np.asarray(fields["running_mean"], np.float64).reshape(-1)
    if fields.get("disabled"):
        return np.ones_like(gamma), np.zeros_like(beta)
    return gamma, beta


def folded_weights(con: DatLayer, norm: DatLayer | None) -> tuple[F64, F64]:
    """A ``con`` layer's (out, in, kh, kw) weight and (out,) bias (zeros when it has none) in
    float64, with ``norm`` (a layer :func:`norm_scale_shift` reads, or None) folded in."""
    weight = np.asarray(con.fields["weight"], np.float64)
    bias = con.fields["bias"]
    bias = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    if norm is None:
        return weight, bias
    scale, shift = norm_scale_shift(norm)
    return weight * scale[:, None, None, None], bias * scale + shift


def conv2d(weight: F64, bias: F64, stride: tuple[int, int], padding: tuple[int, int]
           ) -> nn.Conv2d:
    """A convolution holding ``weight`` (out, in, kh, kw) and ``bias`` (out,) as frozen
    float32 parameters."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride, padding)
    conv.weight = parameter(weight)
    conv.bias = parameter(bias)
    return conv


def parameter(values: npt.NDArray[np.floating]) -> nn.Parameter:
    """A frozen float32 parameter holding a copy of ``values``."""
    data = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return nn.Parameter(data, requires_grad=False)
