"""SwinV2 rewrites for timm ``swin_transformer_v2`` and ``swin_transformer_v2_cr``.

SwinV2 computes, in every block and at every inference, a continuous relative-position bias (an MLP over a
log-spaced coordinate table, gathered per window pair; ``16 * sigmoid`` of it in ``swin_transformer_v2``), a
clamped and exponentiated per-head logit scale for its cosine attention, ``torch.roll`` and the shifted-window
mask. Each of them depends only on the weights and the input size, so:

- the bias is computed once by its MLP and stored as ``[heads, N, N]``, and the shift mask as its window-region
  labels ``[nW, N]`` (``StaticWindowAttention``, shared with Swin V1, sums them in the graph from constants);
- the logit scale is clamped and exponentiated once into a constant that multiplies the normalised queries;
- the roll becomes static slices and concatenation, the window partition static reshapes;
- the blocks keep SwinV2's post-norm residuals (``x + norm(attn(x))``), and V2's patch merging (reduction, then
  norm) is one reshape/permute.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from exporters.graph.rewrites._rules import Rule, Shapes, folded_qkv
from exporters.graph.rewrites.swin import StaticPatchMerging, StaticWindowAttention, mask_from_labels, padded_labels

MAX_LOGIT = math.log(1.0 / 0.01)  # reason: both timm SwinV2 implementations clamp the logit scale at log(100)


class StaticSwinV2Block(nn.Module):
    """A SwinV2 block without shape queries, post-norm: ``[B, H, W, C]`` -> ``[B, H, W, C]``
    (``norm3``: the main-branch norm of some ``swin_transformer_v2_cr`` blocks, else identity)."""

    def __init__(self, block: nn.Module, attn: StaticWindowAttention):
        super().__init__()
        self.attn, self.norm1, self.drop_path1 = attn, block.norm1, block.drop_path1
        self.mlp, self.norm2, self.drop_path2 = block.mlp, block.norm2, block.drop_path2
        self.norm3 = getattr(block, "norm3", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.norm1(self.attn(x)))
        x = x + self.drop_path2(self.norm2(self.mlp(x)))  # the MLP acts on the last dim: no flattening needed
        return self.norm3(x)


def _v2_bias(attn: nn.Module) -> torch.Tensor:
    """``swin_transformer_v2.WindowAttention``'s continuous bias ``[1, heads, N, N]``, computed once."""
    n = attn.window_size[0] * attn.window_size[1]
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, attn.num_heads)
    bias = table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    return (16 * torch.sigmoid(bias)).unsqueeze(0)


def _cr_bias(attn: nn.Module) -> torch.Tensor:
    """``swin_transformer_v2_cr.WindowMultiHeadAttention``'s meta-network bias ``[1, heads, N, N]``."""
    return attn._relative_positional_encodings()


def _block_types() -> tuple[type, type]:
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock
    return SwinTransformerV2Block, SwinTransformerV2CrBlock


def _block_replace(name: str, block: nn.Module, shapes: Shapes) -> nn.Module:
    _, h, w, _ = shapes[name]
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    attn = block.attn
    v2 = type(block) is _block_types()[0]
    with torch.no_grad():
        rel = (_v2_bias if v2 else _cr_bias)(attn).float()
        scale = torch.clamp(attn.logit_scale.reshape(-1), max=MAX_LOGIT).exp()
    static = StaticWindowAttention(folded_qkv(attn), attn.proj, attn.num_heads, (h, w), window, shift, rel,
                                   padded_labels((h, w), window, shift), shift_first=True, logit_scale=scale)
    return StaticSwinV2Block(block, static)


def _block_check(name: str, block: nn.Module, shapes: Shapes) -> bool:
    shape = shapes[name]
    if len(shape) != 4 or getattr(block.attn, "sequential_attn", False):
        return False
    return _same_mask(block, (shape[1], shape[2]))


def _same_mask(block: nn.Module, size: tuple[int, int]) -> bool:
    """Whether the block's own shift mask (over the padded map) is the one its region labels give: the rewrite
    stores labels, so a block masking otherwise is left as timm wrote it."""
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    labels = padded_labels(size, window, shift)
    with torch.no_grad():
        mask = block.get_attn_mask() if any(shift) else None
    if mask is None or labels is None:
        return mask is None and labels is None
    mine = mask_from_labels(torch.from_numpy(labels))
    return mine.shape == mask.shape and bool(torch.equal(mine.float(), mask.float()))


# timm SwinV2 and SwinV2-CR blocks -> ``StaticSwinV2Block`` (cosine ``StaticWindowAttention``, bias and mask labels stored).
SWINV2_WINDOW_ATTENTION = Rule(name="swinv2_window_attention", order=40, match=lambda m: type(m) in _block_types(),
                               check=_block_check, replace=_block_replace)


def _merging_type() -> type:
    from timm.models.swin_transformer_v2 import PatchMerging
    return PatchMerging


def _merging_replace(name: str, mod: nn.Module, shapes: Shapes) -> nn.Module:
    _, h, w, _ = shapes[name]
    return StaticPatchMerging(mod.norm, mod.reduction, (h, w), norm_last=True)


# timm SwinV2 ``PatchMerging`` (reduction, then norm) -> ``StaticPatchMerging(norm_last=True)``; SwinV2-CR's merges as
# Swin V1 does and is rewritten by ``swin_patch_merging``.
SWINV2_PATCH_MERGING = Rule(name="swinv2_patch_merging", order=41, match=lambda m: type(m) is _merging_type(),
                            replace=_merging_replace)

RULES = (SWINV2_WINDOW_ATTENTION, SWINV2_PATCH_MERGING)
