"""The machinery of the rewrite rules: what a rule is and helpers several rules share. Each rule module (``common``,
``swin``, ``swinv2``, ``relpos``, ``vit``) imports from here, never from the package, and declares its rules as
``RULES = (...)`` (``runtime.registry.declared``), so the package finds every rule module without an import list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Shapes = dict[str, tuple[int, ...]]
WRAPPER = "inner."  # vit_embed's StaticTimmViT keeps the original model under .inner (exporters/graph/rewrites/vit.py)


def display_name(name: str) -> str:
    """A rewritten model's module name as the original model names it (without ``vit_embed``'s wrapper)."""
    return name[len(WRAPPER):] if name.startswith(WRAPPER) else name

def _always(name: str, module: nn.Module, shapes: Shapes) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    match: Callable[[nn.Module], bool]
    replace: Callable[[str, nn.Module, Shapes], nn.Module]
    check: Callable[[str, nn.Module, Shapes], bool] = _always
    # where it runs among all rules, lowest first. vit_embed wraps the root model, which moves every submodule under
    # "inner." so the dry-run shapes (keyed by the original names) no longer find them: every rule that rewrites a
    # ViT's submodules has a lower order. The others are independent; their bands follow the modules.
    order: int = 500


def folded_qkv(attn: nn.Module) -> nn.Linear:
    """``attn.qkv`` with separate query and value biases (BEiT's, SwinV2's: the key's is zero) folded into one
    Linear; ``attn.qkv`` itself when it has none."""
    if getattr(attn, "q_bias", None) is None:
        return attn.qkv
    qkv = nn.Linear(attn.qkv.in_features, attn.qkv.out_features, bias=True)
    with torch.no_grad():
        qkv.weight.copy_(attn.qkv.weight)
        qkv.bias.copy_(torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias)))
    return qkv


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
