"""Rewrites shared by both families: GELU in the form the runtimes fuse.

LayerNorm needs no pass: ``nn.LayerNorm`` and timm's ``LayerNorm`` export to ONNX
``LayerNormalization`` (opset 17+), which ONNX Runtime, OpenVINO and TensorRT all run fused.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from exporters.rewrites import Shapes, register, replace_module

_INV_SQRT2_DIV = math.sqrt(2.0)


class FusableGELU(nn.Module):
    """Exact (erf) GELU written as ``(x * (erf(x / sqrt2) + 1)) * 0.5``.

    # reason: torch.onnx's decomposition multiplies by 0.5 before x, an order ONNX Runtime's
    # GeluFusion does not match (measured: no Gelu after optimisation). This order is its
    # pattern 1, so the five ops become one Gelu kernel; OpenVINO and TensorRT fuse it too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (torch.erf(x / _INV_SQRT2_DIV) + 1.0)) * 0.5


@register("gelu_fusable")
def gelu_fusable(model: nn.Module, shapes: Shapes) -> tuple[nn.Module, int]:
    """Every exact ``nn.GELU`` -> ``FusableGELU`` (tanh-approximate GELU is left alone)."""
    todo = [name for name, mod in model.named_modules()
            if type(mod) is nn.GELU and mod.approximate == "none" and name in shapes]
    for name in todo:
        replace_module(model, name, FusableGELU())
    return model, len(todo)
