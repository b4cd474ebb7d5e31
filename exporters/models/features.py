"""Backbones for dense prediction: a timm Swin's stages or a ViT's blocks as named NCHW feature maps.

``--features [INDICES]`` wraps the classifier (weights loaded, re-laid for the size) so that it returns the maps a
detection or segmentation head consumes, through timm's own ``forward_intermediates`` (Swin: the four stages at
strides 4-32; ViT: chosen blocks, their patch tokens reshaped to a map, prefix tokens dropped). The rewrites then
apply inside as for a classifier, and the ONNX has one output per map.

Detection inputs are rarely a multiple of a Swin's window grid (800x1344 is not one of 224 px), so the input is
padded at the bottom and right with zeros (the mean colour, after normalisation) up to the grid the trained
windows tile, and each map is cropped back to ``ceil(size / stride)``: the windows the model was trained with,
at every stage, as MMDetection pads. A ViT pads to its patch.
"""
from __future__ import annotations

import dataclasses
import math

import torch.nn.functional as F
from torch import nn

from exporters.models.sizes import Size, arch_of, model_at_size, pair, size_label
from runtime.errors import UserError


class FeatureMaps(nn.Module):
    """``[B, 3, H, W]`` -> a tuple of ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]`` maps, one per index."""

    def __init__(self, model: nn.Module, indices: list[int], pad: tuple[int, int], crops: list[Size]):
        super().__init__()
        self.model, self.indices, self.pad, self.crops = model, list(indices), pad, crops

    def forward(self, x):
        if any(self.pad):
            x = F.pad(x, (0, self.pad[1], 0, self.pad[0]))
        maps = self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True, output_fmt="NCHW")
        return tuple(m[:, :, :h, :w] for m, (h, w) in zip(maps, self.crops))


def _arch(model) -> str:
    arch = arch_of(model)
    if arch is None:
        raise UserError(f"--features applies to timm Swin and ViT models; this one is a {type(model).__name__}")
    return arch


def default_indices(model) -> list[int]:
    """Swin: every stage. ViT: four blocks evenly spaced, the last included (as ViTDet-style heads take them)."""
    if _arch(model) == "swin":
        return list(range(len(model.layers)))
    depth = len(model.blocks)
    return sorted({max(0, depth * k // 4 - 1) for k in range(1, 5)})


def output_names(model, indices: list[int]) -> list[str]:
    return [f"{'stage' if _arch(model) == 'swin' else 'block'}{i}" for i in indices]


def _grid(model) -> tuple[int, int]:
    """The input multiple the trained model tiles without padding: Swin's last stride times its window; a ViT's patch."""
    ph, pw = pair(model.patch_embed.patch_size)
    if _arch(model) == "vit":
        return ph, pw
    stride = 2 ** (len(model.layers) - 1)
    wh, ww = pair(model._ref_window_sizes[-1])
    return ph * stride * wh, pw * stride * ww


def strides(model, indices: list[int]) -> list[int]:
    p = pair(model.patch_embed.patch_size)[0]
    return [p * 2 ** i for i in indices] if _arch(model) == "swin" else [p] * len(indices)


def check_indices(model, indices: list[int] | None, name: str) -> list[int]:
    """The maps asked for (``None``: ``default_indices``), each a stage or block ``model`` has, each once; else one
    ``UserError``."""
    indices = default_indices(model) if indices is None else list(indices)
    limit = len(model.layers) if _arch(model) == "swin" else len(model.blocks)
    bad = [i for i in indices if not 0 <= i < limit]
    if bad or not indices or len(set(indices)) != len(indices):
        raise UserError(f"--features {','.join(map(str, indices))}: {name} has {limit} "
                        f"{'stages' if _arch(model) == 'swin' else 'blocks'}, indices 0 to {limit - 1}, each once")
    return indices


def backbone(model, spec, indices: list[int] | None, hw: Size, name: str):
    """``model`` (a timm Swin or ViT classifier, weights loaded) as ``FeatureMaps`` for ``hw`` inputs, and its spec
    (``outputs``: each map's name and ``[C, h, w]``)."""
    import torch
    indices = check_indices(model, indices, name)
    gh, gw = _grid(model)
    padded = (math.ceil(hw[0] / gh) * gh, math.ceil(hw[1] / gw) * gw)
    inner, spec = model_at_size(model, spec, padded, name) if padded != tuple(spec.input_shape[1:]) else (model, spec)
    crops = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in strides(model, indices)]
    wrapped = FeatureMaps(inner, indices, (padded[0] - hw[0], padded[1] - hw[1]), crops).eval()
    with torch.no_grad():
        shapes = [list(m.shape[1:]) for m in wrapped(torch.zeros(1, 3, *hw))]
    spec = dataclasses.replace(spec, notes=list(spec.notes), input_shape=(3, *hw), labels=None,
                               preprocessing=dataclasses.replace(spec.preprocessing, input_size=hw, resize_size=None),
                               outputs=list(zip(output_names(model, indices), shapes)), task="features")
    spec.notes.append(f"backbone: {', '.join(f'{n} {s}' for n, s in spec.outputs)} for {size_label(hw)} inputs"
                      + (f", padded with zeros to {size_label(padded)} (the grid its trained windows tile) and each "
                         "map cropped back" if padded != hw else ""))
    return wrapped, spec


def check_options(opts, what: str = "--features") -> None:
    """Output maps with what they can't go with yet: one line, before any work. ``what``: how the user asked."""
    if opts.max_drop is not None:
        raise UserError(f"{what}: --max-drop is a drop of top-1 on labelled images, which output maps do not have; "
                        "use --min-cosine (the worst map's cosine)")


__all__ = ["FeatureMaps", "backbone", "check_indices", "default_indices", "check_options"]
