"""Swin rewrites for timm ``SwinTransformer`` and torchvision ``swin_t/s/b``.

- ``torch.roll`` becomes a static slice + concat;
- the relative position bias is gathered once and stored as ``[heads, N, N]``, shared over windows; the
  shifted-window mask is stored as its window-region labels ``[nW, N]`` (shared over heads; none for unshifted
  blocks). The graph builds the ``[1, nW*heads, N, N]`` bias from them with constant-only ops (compare, scale, add by
  broadcast, reshape) that every backend folds when it loads the model, so attention keeps one Add per block while
  the file carries kilobytes instead of ``nW*heads*N*N`` floats (44 MB a stage-0 block at 800x1344);
- attention runs on 4-D ``[B, nW*heads, N, hd]`` tensors (windows folded into heads), the form
  OpenVINO's CPU plugin fuses into one MHA kernel (5-D attention, or a reshape between the
  matmul and the softmax as in timm's shifted blocks, is left as separate ops);
- padding exists only where the resolution does not divide by the window;
- window partition and reverse use static shapes (batch as -1, so dynamic batch stays shape-free);
- patch merging becomes one reshape/permute with no Pad when the resolution is even.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporters.graph.rewrites._rules import Rule, Shapes, scaled_qkv


def static_roll(x: torch.Tensor, shift_h: int, shift_w: int, h: int, w: int) -> torch.Tensor:
    """``torch.roll(x, (shift_h, shift_w), dims=(1, 2))`` on ``[B, h, w, C]`` with static slices.

    The sizes are passed in, never read from ``x.shape``: a traced ``size`` becomes an ``int`` op
    that coremltools cannot convert.
    """
    for dim, shift, size in ((1, shift_h, h), (2, shift_w, w)):
        k = shift % size
        if k:
            x = torch.cat([x.narrow(dim, size - k, k), x.narrow(dim, 0, size - k)], dim=dim)
    return x


MASKED = -100.0  # reason: Swin (timm, torchvision, SwinV2) masks cross-region pairs with -100, not -inf


def window_labels(hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """The region (0..8) of every token of every window of a padded ``hp x wp`` map after the cyclic shift:
    ``[nW, N]``. Two tokens of one window attend to each other only when their regions match."""
    img = np.zeros((hp, wp), np.float32)
    cnt = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            img[hs[0]:hs[1], ws[0]:ws[1]] = cnt
            cnt += 1
    win = img.reshape(hp // window[0], window[0], wp // window[1], window[1]).transpose(0, 2, 1, 3)
    return win.reshape(-1, window[0] * window[1])


def mask_from_labels(labels):
    """``[nW, N]`` region labels -> Swin's SW-MSA mask ``[nW, N, N]`` of 0 / -100 (numpy or torch alike)."""
    return (labels[:, None, :] != labels[:, :, None]) * MASKED


def shifted_window_mask(hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """Swin's SW-MSA mask over a padded ``hp x wp`` map: ``[nW, N, N]`` of 0 / -100."""
    return mask_from_labels(window_labels(hp, wp, window, shift)).astype(np.float32)


class StaticWindowAttention(nn.Module):
    """(Shifted-)window attention on ``[B, H, W, C]`` with every shape and constant fixed.

    ``rel_bias`` is the relative position bias ``[heads, N, N]`` (any leading 1s), ``labels`` the shifted blocks'
    window-region labels ``[nW, N]`` (``window_labels``; ``None`` for an unshifted block). Both are stored as they
    are; ``attn_bias()`` builds the ``[1, nW*heads, N, N]`` sum in the graph from constants alone, so attention
    stays 4-D (the form OpenVINO fuses), the batch broadcasts, and backends fold the sum when they load the model.
    ``shift_first`` selects timm's order (roll, then pad) or torchvision's (pad, then roll).
    ``logit_scale`` (``[heads]``, already clamped and exponentiated) makes it SwinV2's cosine attention; its qkv
    then carries no query scale.
    """

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int, size: tuple[int, int],
                 window: tuple[int, int], shift: tuple[int, int], rel_bias: torch.Tensor,
                 labels: torch.Tensor | np.ndarray | None, shift_first: bool, logit_scale: torch.Tensor | None = None):
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.dim = proj.out_features  # C, static
        self.num_heads = num_heads
        self.attn_dim = qkv.out_features // 3
        self.size, self.window, self.shift, self.shift_first = size, window, shift, shift_first
        h, w = size
        self.pad = ((window[0] - h % window[0]) % window[0], (window[1] - w % window[1]) % window[1])
        self.padded = (h + self.pad[0], w + self.pad[1])
        self.num_windows = (self.padded[0] // window[0]) * (self.padded[1] // window[1])
        n = window[0] * window[1]
        self.register_buffer("rel_bias", rel_bias.detach().float().reshape(1, num_heads, n, n).clone())
        self.register_buffer("labels", None if labels is None else
                             torch.as_tensor(labels, dtype=torch.float32).reshape(self.num_windows, n).clone())
        # SwinV2's cosine attention: q and k L2-normalised, q times the per-head scale (clamped, exponentiated once)
        self.cosine = logit_scale is not None
        if self.cosine:
            scale = logit_scale.detach().float().reshape(1, 1, num_heads).expand(1, self.num_windows, num_heads)
            self.register_buffer("logit_scale", scale.reshape(1, self.num_windows * num_heads, 1, 1).clone())

    def attn_bias(self) -> torch.Tensor:
        """Relative bias plus shift mask, ``[1, nW*heads, N, N]``, from the ``[1, heads, N, N]`` and ``[nW, N]``
        constants (a broadcast add, then a reshape)."""
        nw, heads, n = self.num_windows, self.num_heads, self.window[0] * self.window[1]
        if self.labels is None:
            bias = self.rel_bias.expand(nw, heads, n, n)
        else:
            bias = self.rel_bias + mask_from_labels(self.labels).to(self.rel_bias.dtype).unsqueeze(1)  # [nW, h, N, N]
        return bias.reshape(1, nw * heads, n, n)

    def _pad(self, x):
        if any(self.pad):
            x = F.pad(x, (0, 0, 0, self.pad[1], 0, self.pad[0]))
        return x

    def _crop(self, x):
        if any(self.pad):
            x = x[:, :self.size[0], :self.size[1], :]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        (wh, ww), (sh, sw), (hp, wp), (h, w) = self.window, self.shift, self.padded, self.size
        c = self.dim
        n, nw, heads = wh * ww, self.num_windows, self.num_heads
        hd = self.attn_dim // heads
        if self.shift_first:
            x = self._pad(static_roll(x, -sh, -sw, h, w))
        else:
            x = static_roll(self._pad(x), -sh, -sw, hp, wp)
        # partition: [B, Hp, Wp, C] -> [B, nW, N, C]
        x = x.reshape(-1, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, nw, n, c)
        a = self.attn_dim
        # [B, nW, N, 3A] -> [3, B, nW*h, N, hd] (query rows pre-scaled)
        qkv = self.qkv(x).reshape(-1, nw, n, 3, heads, hd).permute(3, 0, 1, 4, 2, 5).reshape(3, -1, nw * heads, n, hd)
        q, k, v = qkv.unbind(0)
        if self.cosine:
            q, k = F.normalize(q, dim=-1) * self.logit_scale, F.normalize(k, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) + self.attn_bias(), dim=-1)  # [B, nW*h, N, N]
        x = (attn @ v).reshape(-1, nw, heads, n, hd).transpose(2, 3).reshape(-1, nw, n, a)
        x = self.proj(x)  # [B, nW, N, C]
        # reverse: [B, nW, N, C] -> [B, Hp, Wp, C]
        x = x.reshape(-1, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
        if self.shift_first:
            return static_roll(self._crop(x), sh, sw, h, w)
        return self._crop(static_roll(x, sh, sw, hp, wp))


class StaticSwinBlock(nn.Module):
    """timm ``SwinTransformerBlock`` without shape queries: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""

    def __init__(self, block: nn.Module, attn: StaticWindowAttention):
        super().__init__()
        self.norm1, self.attn, self.drop_path1 = block.norm1, attn, block.drop_path1
        self.norm2, self.mlp, self.drop_path2 = block.norm2, block.mlp, block.drop_path2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class StaticPatchMerging(nn.Module):
    """2x2 patch merging ``[B, H, W, C]`` -> ``[B, H/2, W/2, out]`` as one reshape/permute.

    The channel order (w-offset major) matches both timm's and torchvision's implementations. ``norm_last``: SwinV2's
    order, the reduction before the norm.
    """

    def __init__(self, norm: nn.Module, reduction: nn.Linear, size: tuple[int, int], norm_last: bool = False):
        super().__init__()
        self.norm, self.reduction, self.size, self.norm_last = norm, reduction, size, norm_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        c = self.reduction.in_features // 4
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        x = x.reshape(-1, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(-1, h // 2, w // 2, 4 * c)
        return self.norm(self.reduction(x)) if self.norm_last else self.reduction(self.norm(x))


def padded_labels(size: tuple[int, int], window, shift) -> np.ndarray | None:
    """``window_labels`` over ``size`` padded to whole windows; ``None`` without a shift."""
    hp, wp = (-(-size[i] // window[i]) * window[i] for i in range(2))
    return window_labels(hp, wp, window, shift) if any(shift) else None


def _timm_block(block: nn.Module, shape: tuple[int, ...]) -> StaticSwinBlock:
    _, h, w, _ = shape
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    attn = block.attn
    qkv = scaled_qkv(attn.qkv, attn.qkv.out_features // 3, attn.scale)
    static = StaticWindowAttention(qkv, attn.proj, attn.num_heads, (h, w), window, shift, attn._get_rel_pos_bias(),
                                   padded_labels((h, w), window, shift), shift_first=True)
    return StaticSwinBlock(block, static)


def _tv_attention(attn: nn.Module, shape: tuple[int, ...]) -> StaticWindowAttention:
    _, h, w, c = shape
    window = tuple(attn.window_size)
    hp = h + (window[0] - h % window[0]) % window[0]
    wp = w + (window[1] - w % window[1]) % window[1]
    # reason: torchvision drops the shift when the window covers the padded map
    shift = tuple(0 if window[i] >= (hp, wp)[i] else attn.shift_size[i] for i in range(2))
    attn_dim = attn.qkv.out_features // 3
    qkv = scaled_qkv(attn.qkv, attn_dim, (c // attn.num_heads) ** -0.5)
    return StaticWindowAttention(qkv, attn.proj, attn.num_heads, (h, w), window, shift,
                                 attn.get_relative_position_bias(), padded_labels((h, w), window, shift),
                                 shift_first=False)


def _attention_types() -> tuple[type, type]:
    from timm.models.swin_transformer import SwinTransformerBlock as TimmBlock
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    return TimmBlock, ShiftedWindowAttention


def _attention_replace(name: str, mod: nn.Module, shapes: Shapes) -> nn.Module:
    if type(mod) is _attention_types()[0]:
        return _timm_block(mod, shapes[name])
    return _tv_attention(mod, shapes[name])


# timm ``SwinTransformerBlock`` -> ``StaticSwinBlock``; torchvision (v1) ``ShiftedWindowAttention`` -> static.
# ``type(m) is``: torchvision's V2 attention subclasses V1 and is not matched.
SWIN_WINDOW_ATTENTION = Rule(name="swin_window_attention", order=30, match=lambda m: type(m) in _attention_types(),
                             replace=_attention_replace)


def _merging_types() -> tuple[type, type, type]:
    from timm.models.swin_transformer import PatchMerging as TimmMerge
    from timm.models.swin_transformer_v2_cr import PatchMerging as CrMerge
    from torchvision.models.swin_transformer import PatchMerging as TvMerge
    return TimmMerge, TvMerge, CrMerge


def _merging_replace(name: str, mod: nn.Module, shapes: Shapes) -> nn.Module:
    _, h, w, _ = shapes[name]
    return StaticPatchMerging(mod.norm, mod.reduction, (h, w))


# timm and torchvision (v1) ``PatchMerging``, and timm SwinV2-CR's (the same norm-then-reduction) ->
# ``StaticPatchMerging``.
SWIN_PATCH_MERGING = Rule(name="swin_patch_merging", order=31, match=lambda m: type(m) in _merging_types(),
                          replace=_merging_replace)

RULES = (SWIN_WINDOW_ATTENTION, SWIN_PATCH_MERGING)
