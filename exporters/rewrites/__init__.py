"""Export-friendly rewrites: pure ``module -> module`` passes that swap submodules.

Each pass is registered under a name in ``PASSES`` and has the signature
``pass_fn(model, shapes) -> (model, replaced)``, where ``shapes`` maps every submodule's
qualified name to the shape of its first input in a dry run at the export resolution.
``apply_rewrites`` deep-copies the model first, so the original stays the reference.
No pass monkeypatches a library or flips a global flag.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

Shapes = dict[str, tuple[int, ...]]
PassFn = Callable[[nn.Module, Shapes], "tuple[nn.Module, int]"]
PASSES: dict[str, PassFn] = {}


def register(name: str):
    def deco(fn: PassFn) -> PassFn:
        PASSES[name] = fn
        return fn
    return deco


@dataclass
class RewriteReport:
    """Which passes fired and how many modules each replaced."""

    replaced: dict[str, int] = field(default_factory=dict)

    @property
    def fired(self) -> list[str]:
        return [k for k, v in self.replaced.items() if v > 0]

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def to_dict(self) -> dict:
        return {"replaced": dict(self.replaced), "fired": self.fired}


def record_input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> Shapes:
    """Dry-run ``model`` on zeros of ``input_shape`` ([B, 3, H, W]) and record each module's input shape."""
    shapes: Shapes = {}
    hooks = []
    for name, mod in model.named_modules():
        def hook(m, args, _name=name):
            if args and isinstance(args[0], torch.Tensor) and _name not in shapes:
                shapes[_name] = tuple(args[0].shape)
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path ``name`` for ``new``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def apply_rewrites(model: nn.Module, input_shape: tuple[int, ...],
                   passes: list[str] | None = None) -> tuple[nn.Module, RewriteReport]:
    """Run the registered passes (all by default) on a deep copy of ``model``.

    ``input_shape`` is ``[B, 3, H, W]`` or ``[3, H, W]``: the export resolution the constants are baked for.
    """
    from exporters.rewrites import common, swin, vit  # noqa: F401  (registers the passes)

    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    input_shape = (1, *input_shape[1:])
    model = copy.deepcopy(model).eval()
    shapes = record_input_shapes(model, input_shape)
    report = RewriteReport()
    for name in passes if passes is not None else list(PASSES):
        model, n = PASSES[name](model, shapes)
        report.replaced[name] = n
    return model.eval(), report


def scaled_qkv(qkv: nn.Linear, attn_dim: int, scale: float) -> nn.Linear:
    """A copy of ``qkv`` whose query rows are pre-multiplied by ``scale`` (removes one Mul per block)."""
    new = nn.Linear(qkv.in_features, qkv.out_features, bias=qkv.bias is not None)
    with torch.no_grad():
        w = qkv.weight.detach().clone()
        w[:attn_dim] *= scale
        new.weight.copy_(w)
        if qkv.bias is not None:
            b = qkv.bias.detach().clone()
            b[:attn_dim] *= scale
            new.bias.copy_(b)
    return new
