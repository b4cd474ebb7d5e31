"""ViT rewrites for timm ``VisionTransformer`` and torchvision ``vit_b_16``.

- attention becomes explicit MatMul-Softmax-MatMul with a static qkv split and the query
  scale folded into the qkv weights (measured against the SDPA export in docs/BENCHMARKS.md);
- the position embedding is resolved for the export resolution (DINOv2's and the register ViTs' interpolated
  there once) and merged with the class (and register) tokens into one constant, so the graph has one Pad and one
  Add and no interpolation, Expand or Concat on the batch dimension; a hybrid ViT's CNN stem runs first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporters.graph.rewrites._rules import Rule, Shapes, scaled_qkv


class StaticAttention(nn.Module):
    """Multi-head self-attention ``[B, N, C]`` -> ``[B, N, C]`` with static slicing of qkv."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, seq_len: int):
        super().__init__()
        self.qkv, self.proj, self.num_heads, self.seq_len = qkv, proj, num_heads, seq_len
        self.attn_dim = qkv.out_features // 3

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("StaticAttention is for unmasked encoder attention")
        n, a, h = self.seq_len, self.attn_dim, self.num_heads
        hd = a // h
        qkv = self.qkv(x)  # [B, N, 3A], query rows pre-scaled
        q = qkv[..., :a].reshape(-1, n, h, hd).transpose(1, 2)  # [B, h, N, hd]
        k = qkv[..., a:2 * a].reshape(-1, n, h, hd).permute(0, 2, 3, 1)  # [B, h, hd, N]
        v = qkv[..., 2 * a:].reshape(-1, n, h, hd).transpose(1, 2)  # [B, h, N, hd]
        attn = torch.softmax(q @ k, dim=-1)  # [B, h, N, N]
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, a))


class StaticEncoderBlock(nn.Module):
    """torchvision ``EncoderBlock`` with ``StaticAttention`` in place of ``nn.MultiheadAttention``."""

    def __init__(self, block: nn.Module, attn: StaticAttention):
        super().__init__()
        self.ln_1, self.attn, self.dropout, self.ln_2, self.mlp = block.ln_1, attn, block.dropout, block.ln_2, block.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class StaticTokens(nn.Module):
    """Patch tokens ``[B, N, C]`` -> ``[B, P + N, C]``: prepend P zero rows, add one constant.

    ``tokens`` holds the class/register tokens (plus their position embedding) in its first P
    rows and the position embedding of the patches after them.
    """

    def __init__(self, tokens: torch.Tensor, num_prefix: int):
        super().__init__()
        self.num_prefix = num_prefix
        self.register_buffer("tokens", tokens.detach().clone().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_prefix:
            x = F.pad(x, (0, 0, self.num_prefix, 0))
        return x + self.tokens


class StaticTimmViT(nn.Module):
    """timm ``VisionTransformer`` forward with static patch flattening and baked tokens."""

    def __init__(self, inner: nn.Module, tokens: StaticTokens, grid: tuple[int, int]):
        super().__init__()
        self.inner, self.tokens, self.grid = inner, tokens, grid
        self.num_classes = inner.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, classes]`` (or the pooled embedding, without a classifier)."""
        m = self.inner
        backbone = getattr(m.patch_embed, "backbone", None)  # a hybrid ViT's CNN stem (timm HybridEmbed)
        if backbone is not None:
            x = backbone(x)
            x = x[-1] if isinstance(x, (list, tuple)) else x
        x = m.patch_embed.proj(x)  # [B, C, gh, gw]
        x = x.reshape(-1, m.patch_embed.proj.out_channels, self.grid[0] * self.grid[1]).transpose(1, 2)
        x = getattr(m.patch_embed, "norm", nn.Identity())(x)  # a hybrid embedding has none
        x = self.tokens(x)
        x = m.norm_pre(m.patch_drop(x))
        x = m.norm(m.blocks(x))
        return m.forward_head(x)


class StaticTvViT(nn.Module):
    """torchvision ``VisionTransformer`` forward with static patch flattening and baked tokens."""

    def __init__(self, inner: nn.Module, tokens: StaticTokens, grid: tuple[int, int]):
        super().__init__()
        self.inner, self.tokens, self.grid = inner, tokens, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        x = m.conv_proj(x)
        x = x.reshape(-1, m.hidden_dim, self.grid[0] * self.grid[1]).transpose(1, 2)
        x = m.encoder.ln(m.encoder.layers(m.encoder.dropout(self.tokens(x))))
        return m.heads(x[:, 0])


def _timm_attention_ok(mod: nn.Module) -> bool:
    return (isinstance(getattr(mod, "q_norm", None), nn.Identity) and isinstance(getattr(mod, "k_norm", None), nn.Identity)
            and isinstance(getattr(mod, "norm", nn.Identity()), nn.Identity) and getattr(mod, "gate", None) is None)


def _attention_types() -> tuple[type, type]:
    from timm.layers.attention import Attention as TimmAttention
    from torchvision.models.vision_transformer import EncoderBlock
    return TimmAttention, EncoderBlock


def _attention_check(name: str, mod: nn.Module, shapes: Shapes) -> bool:
    timm_attn, _ = _attention_types()
    if type(mod) is timm_attn:
        return _timm_attention_ok(mod)
    mha = mod.self_attention
    return bool(mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None)


def _attention_replace(name: str, mod: nn.Module, shapes: Shapes) -> nn.Module:
    timm_attn, _ = _attention_types()
    n = shapes[name][1]
    if type(mod) is timm_attn:
        return StaticAttention(scaled_qkv(mod.qkv, mod.attn_dim, mod.scale), mod.proj, mod.num_heads, n)
    mha = mod.self_attention
    e, heads = mha.embed_dim, mha.num_heads
    lin = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None)
    with torch.no_grad():
        lin.weight.copy_(mha.in_proj_weight)
        if mha.in_proj_bias is not None:
            lin.bias.copy_(mha.in_proj_bias)
    attn = StaticAttention(scaled_qkv(lin, e, (e // heads) ** -0.5), mha.out_proj, heads, n)
    return StaticEncoderBlock(mod, attn)


# timm ``Attention`` and torchvision ``EncoderBlock`` -> ``StaticAttention`` forms.
VIT_ATTENTION = Rule(name="vit_attention", order=60, match=lambda m: type(m) in _attention_types(),
                     check=_attention_check, replace=_attention_replace)


def _timm_tokens(m: nn.Module, grid: tuple[int, int]) -> StaticTokens:
    from timm.layers import resample_abs_pos_embed

    prefix = [t for t in (m.cls_token, m.reg_token) if t is not None]
    p = m.num_prefix_tokens if prefix else 0
    pos = m.pos_embed.detach()
    pos_prefix = 0 if m.no_embed_class else p
    if tuple(m.patch_embed.grid_size) != grid:
        pos = resample_abs_pos_embed(pos, new_size=grid, old_size=m.patch_embed.grid_size,
                                     num_prefix_tokens=pos_prefix)
    c = pos.shape[-1]
    tokens = torch.zeros(1, p + grid[0] * grid[1], c)
    if p:
        tokens[:, :p] = torch.cat([t.detach() for t in prefix], dim=1)
    if m.no_embed_class:
        tokens[:, p:] += pos
    else:
        tokens += pos
    return StaticTokens(tokens, p)


def _vit_types() -> tuple[type, type]:
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from torchvision.models.vision_transformer import VisionTransformer as TvViT
    return TimmViT, TvViT


def _embed_check(name: str, model: nn.Module, shapes: Shapes) -> bool:
    from timm.layers import HybridEmbed, PatchEmbed
    if name != "":
        return False  # the wrapper replaces the whole model
    if type(model) is _vit_types()[0]:
        pe = model.patch_embed
        # the wrapper runs the patch conv (after a hybrid's CNN stem) and flattens itself, so timm's flatten/NHWC
        # setting doesn't matter
        return type(pe) in (PatchEmbed, HybridEmbed) and model.pos_embed is not None \
            and not getattr(pe, "dynamic_img_pad", False) and "patch_embed.proj" in shapes
    return True


def _conv_grid(conv: nn.Conv2d, hw: tuple[int, ...]) -> tuple[int, int]:
    """The output grid of a patch convolution (kernel = stride, no padding) for an ``hw`` input."""
    return hw[0] // conv.stride[0], hw[1] // conv.stride[1]


def _embed_replace(name: str, model: nn.Module, shapes: Shapes) -> nn.Module:
    _, _, h, w = shapes[""]
    if type(model) is _vit_types()[0]:
        grid = _conv_grid(model.patch_embed.proj, shapes["patch_embed.proj"][-2:])  # a hybrid's stem runs first
        return StaticTimmViT(model, _timm_tokens(model, grid), grid)
    grid = (h // model.patch_size, w // model.patch_size)
    pos = model.encoder.pos_embedding.detach().clone()
    pos[:, :1] += model.class_token.detach()
    return StaticTvViT(model, StaticTokens(pos, 1), grid)


# A timm / torchvision ViT -> a wrapper whose tokens and position embedding are one baked constant.
VIT_EMBED = Rule(name="vit_embed", order=1000, match=lambda m: type(m) in _vit_types(), check=_embed_check,
                 replace=_embed_replace)

RULES = (VIT_ATTENTION, VIT_EMBED)
