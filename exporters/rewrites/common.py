"""Rewrites shared by both families: GELU in the form the runtimes fuse.

LayerNorm needs no pass: ``nn.LayerNorm`` and timm's ``LayerNorm`` export to ONNX
``LayerNormalization`` (opset 17+), which ONNX Runtime, OpenVINO and TensorRT all run fused.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from exporters.rewrites import Rule, register

_INV_SQRT2_DIV = math.sqrt(2.0)


class FusableGELU(nn.Module):
    """Exact (erf) GELU written as ``(x * (erf(x / sqrt2) + 1)) * 0.5``.

    # reason: torch.onnx's decomposition multiplies by 0.5 before x, an order ONNX Runtime's
    # GeluFusion does not match (measured: no Gelu after optimisation). This order is its
    # pattern 1, so the five ops become one Gelu kernel; OpenVINO and TensorRT fuse it too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (torch.erf(x / _INV_SQRT2_DIV) + 1.0)) * 0.5


# Every exact ``nn.GELU`` -> ``FusableGELU`` (tanh-approximate GELU is left alone).
GELU_FUSABLE = register(Rule(
    name="gelu_fusable",
    match=lambda m: type(m) is nn.GELU,
    check=lambda name, m, shapes: m.approximate == "none",
    replace=lambda name, m, shapes: FusableGELU()))
