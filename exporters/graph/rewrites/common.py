"""Rewrites shared by every family: GELU in the form the runtimes fuse, and weight-standardised convolutions
(the hybrid ViT's ResNet stem) folded into plain ones.

LayerNorm needs no pass: ``nn.LayerNorm`` and timm's ``LayerNorm`` export to ONNX
``LayerNormalization`` (opset 17+), which ONNX Runtime, OpenVINO and TensorRT all run fused.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from exporters.graph.rewrites._rules import Rule, Shapes

_INV_SQRT2_DIV = math.sqrt(2.0)


class FusableGELU(nn.Module):
    """Exact (erf) GELU written as ``(x * (erf(x / sqrt2) + 1)) * 0.5``.

    # reason: torch.onnx's decomposition multiplies by 0.5 before x, an order ONNX Runtime's
    # GeluFusion does not match (measured: no Gelu after optimisation). This order is its
    # pattern 1, so the five ops become one Gelu kernel; OpenVINO and TensorRT fuse it too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (torch.erf(x / _INV_SQRT2_DIV) + 1.0)) * 0.5


def _gelu_types() -> tuple[type, type]:
    from timm.layers.activations import GELU as TimmGELU  # what act_layer="gelu" gives (SwinV2, BEiT)
    return nn.GELU, TimmGELU


# Every exact ``nn.GELU`` or timm ``GELU`` -> ``FusableGELU`` (tanh-approximate GELU is left alone).
GELU_FUSABLE = Rule(
    name="gelu_fusable", order=10,
    match=lambda m: type(m) in _gelu_types(),
    check=lambda name, m, shapes: getattr(m, "approximate", "none") == "none",
    replace=lambda name, m, shapes: FusableGELU())


class PaddedConv(nn.Module):
    """A convolution whose "SAME" padding, asymmetric where the stride leaves it so, is a static Pad before it."""

    def __init__(self, pad: tuple[int, int, int, int], conv: nn.Conv2d):
        super().__init__()
        self.pad, self.conv = pad, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad) if any(self.pad) else x)


def _std_conv_types() -> tuple[type, type]:
    from timm.layers import StdConv2d, StdConv2dSame
    return StdConv2d, StdConv2dSame


def _standardised(conv: nn.Conv2d) -> torch.Tensor:
    """timm's weight standardisation, computed once: each output filter to zero mean and unit variance."""
    w = conv.weight.detach().float()
    flat = w.reshape(w.shape[0], -1)
    mean, var = flat.mean(1, keepdim=True), flat.var(1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + conv.eps)).reshape_as(w)


def _std_conv_replace(name: str, conv: nn.Conv2d, shapes: Shapes) -> nn.Module:
    from timm.layers.padding import pad_same_arg
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding if isinstance(conv.padding, (int, tuple)) else 0, conv.dilation, conv.groups,
                      bias=conv.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(_standardised(conv))
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    if not getattr(conv, "same_pad", False):
        return plain
    pad = pad_same_arg(list(shapes[name][-2:]), list(conv.kernel_size), list(conv.stride), list(conv.dilation))
    return PaddedConv(tuple(int(p) for p in pad), plain)


# timm ``StdConv2d``/``StdConv2dSame`` (BiT and the hybrid ViT's ResNet) -> a plain Conv2d with the standardised
# weights baked (and "SAME" padding as a static Pad): no weight statistics computed at every inference.
STD_CONV_FOLDED = Rule(name="std_conv_folded", order=20, match=lambda m: type(m) in _std_conv_types(),
                       check=lambda name, m, shapes: len(shapes[name]) == 4, replace=_std_conv_replace)

RULES = (GELU_FUSABLE, STD_CONV_FOLDED)
