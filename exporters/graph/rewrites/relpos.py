"""Relative-position ViTs: timm ``beit`` (BEiT, BEiT v2) and ``vision_transformer_relpos``.

Their attention gathers a bias from a learnt table (BEiT, ``RelPosBias``) or computes it with an MLP over log-spaced
coordinates (``RelPosMlp``) at every inference, then hands it to ``scaled_dot_product_attention`` as a mask. The
bias depends only on the weights and the token grid, so:

- each block's bias is computed once and baked as a ``[1, heads, N, N]`` constant, added after ``q @ k``;
- attention becomes explicit MatMul-Softmax-MatMul with a static qkv split, BEiT's separate query and value biases
  folded into the qkv Linear and the query scale into its weights (as ``vit_attention`` does);
- a bias shared by every block (``use_shared_rel_pos_bias``, ``shared_rel_pos``) becomes one constant module.

This also removes BEiT's export failure: torch.onnx's decomposition of SDPA with a float mask leaves a strided
output that its next reshape cannot view ("Failed to decompose the FX graph").
"""
from __future__ import annotations

import torch
from torch import nn

from exporters.graph.rewrites._rules import Rule, Shapes, folded_qkv, scaled_qkv


class StaticBiasAttention(nn.Module):
    """Encoder self-attention ``[B, N, C]`` -> ``[B, N, C]`` with a baked additive bias ``[1, heads, N, N]`` (or
    none) and a shared one passed by the caller (``shared_rel_pos_bias``: BEiT's name; ``shared_rel_pos``:
    ``vision_transformer_relpos``'s). ``scale``: the query scale still to apply, where a q/k norm prevents folding
    it into the weights (else 1)."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, seq_len: int, bias: torch.Tensor | None,
                 q_norm: nn.Module, k_norm: nn.Module, scale: float = 1.0):
        super().__init__()
        self.qkv, self.proj, self.num_heads, self.seq_len = qkv, proj, num_heads, seq_len
        self.q_norm, self.k_norm, self.scale = q_norm, k_norm, scale
        self.attn_dim = qkv.out_features // 3
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone().contiguous())

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None,
                shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        n, a, h = self.seq_len, self.attn_dim, self.num_heads
        hd = a // h
        qkv = self.qkv(x)  # [B, N, 3A]
        q = self.q_norm(qkv[..., :a].reshape(-1, n, h, hd).transpose(1, 2))  # [B, h, N, hd]
        k = self.k_norm(qkv[..., a:2 * a].reshape(-1, n, h, hd).transpose(1, 2))
        v = qkv[..., 2 * a:].reshape(-1, n, h, hd).transpose(1, 2)
        if self.scale != 1.0:
            q = q * self.scale
        attn = q @ k.transpose(-2, -1)  # [B, h, N, N]
        if self.bias is not None:
            attn = attn + self.bias
        shared = shared_rel_pos_bias if shared_rel_pos_bias is not None else shared_rel_pos
        if shared is not None:
            attn = attn + shared
        attn = torch.softmax(attn, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, a))


class ConstantBias(nn.Module):
    """A bias module replaced by its value: ``forward()`` (BEiT's ``RelativePositionBias``) and ``get_bias()``
    (``RelPosBias``/``RelPosMlp``) both return the baked tensor."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value.detach().float().clone().contiguous())

    def forward(self) -> torch.Tensor:
        return self.value

    def get_bias(self) -> torch.Tensor:
        return self.value


def _attention_types() -> tuple[type, type]:
    from timm.models.beit import Attention as BeitAttention
    from timm.models.vision_transformer_relpos import RelPosAttention
    return BeitAttention, RelPosAttention


def _own_bias(attn: nn.Module) -> torch.Tensor | None:
    if isinstance(attn, _attention_types()[0]):
        return attn._get_rel_pos_bias() if attn.relative_position_bias_table is not None else None
    return attn.rel_pos.get_bias() if attn.rel_pos is not None else None


def _attention_check(name: str, attn: nn.Module, shapes: Shapes) -> bool:
    return len(shapes[name]) == 3  # tokens [B, N, C] (BEiT's qkv_bias_separate adds the same bias: folded alike)


def _attention_replace(name: str, attn: nn.Module, shapes: Shapes) -> nn.Module:
    n = shapes[name][1]
    qkv = folded_qkv(attn)
    a = qkv.out_features // 3
    norms = [getattr(attn, k, None) or nn.Identity() for k in ("q_norm", "k_norm")]
    plain = all(isinstance(m, nn.Identity) for m in norms)
    with torch.no_grad():
        bias = _own_bias(attn)
    return StaticBiasAttention(scaled_qkv(qkv, a, attn.scale) if plain else qkv, attn.proj, attn.num_heads, n, bias,
                               *norms, scale=1.0 if plain else attn.scale)


# BEiT ``Attention`` and ``RelPosAttention`` -> ``StaticBiasAttention`` (bias baked, SDPA gone).
RELPOS_ATTENTION = Rule(name="relpos_attention", order=50, match=lambda m: type(m) in _attention_types(),
                        check=_attention_check, replace=_attention_replace)


def _model_types() -> tuple[type, type]:
    from timm.models.beit import Beit
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos
    return Beit, VisionTransformerRelPos


def _shared_attr(model: nn.Module) -> str | None:
    for attr in ("rel_pos_bias", "shared_rel_pos"):
        if getattr(model, attr, None) is not None and not isinstance(getattr(model, attr), ConstantBias):
            return attr
    return None


def _shared_replace(name: str, model: nn.Module, shapes: Shapes) -> nn.Module:
    attr = _shared_attr(model)
    module = getattr(model, attr)
    with torch.no_grad():
        value = module() if attr == "rel_pos_bias" else module.get_bias()
    setattr(model, attr, ConstantBias(value))
    return model


# A bias shared by every block (BEiT ``use_shared_rel_pos_bias``, relpos ``shared_rel_pos``) -> ``ConstantBias``.
RELPOS_SHARED_BIAS = Rule(name="relpos_shared_bias", order=51, match=lambda m: type(m) in _model_types(),
                          check=lambda name, m, shapes: name == "" and _shared_attr(m) is not None,
                          replace=_shared_replace)

RULES = (RELPOS_ATTENTION, RELPOS_SHARED_BIAS)
