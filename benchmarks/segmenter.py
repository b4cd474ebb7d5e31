"""A whole segmentation model for the dense benchmarks: a timm Swin or ViT backbone under an FPN head.

The shape of UPerNet's FPN half as MMSegmentation builds it over Swin (lateral 1x1 convolutions, top-down
upsample-and-add, a 3x3 fusion with BatchNorm and ReLU, a 1x1 classifier, bilinear upsampling to the input), small
enough to train in a test (tests/fixtures/segmenter.py trains one on the digits). The module calls the backbone's
own ``forward_intermediates``, as a user's module would; vitdeploy's rewrites find the backbone's blocks inside it.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from exporters.api import spec_for_module
from exporters.models.features import default_indices
from exporters.models.zoo import create_model


class FPNSegmenter(nn.Module):
    """``[B, 3, H, W]`` -> logits ``[B, classes, H, W]`` over the maps of ``backbone`` (``widths``: their channels);
    with ``upsample=False`` at the finest map's resolution (``H/4`` for a Swin), as MMSegmentation's decode head
    returns them before the segmentor resizes."""

    def __init__(self, backbone: nn.Module, widths: list[int], classes: int, channels: int = 32,
                 indices: list[int] | None = None, upsample: bool = True):
        super().__init__()
        self.backbone, self.indices, self.upsample = backbone, indices, upsample
        self.lateral = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in widths)
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.classifier = nn.Conv2d(channels, classes, 1)

    def head(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps, finest first -> logits at the finest map's resolution."""
        top = self.lateral[-1](maps[-1])
        for lateral, m in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            top = lateral(m) + F.interpolate(top, size=m.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(top))

    def forward(self, x):
        maps = self.backbone.forward_intermediates(x, indices=self.indices, intermediates_only=True,
                                                   output_fmt="NCHW")
        logits = self.head(maps)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False) if self.upsample \
            else logits


def segmenter(name: str, img_size, classes: int = 150, channels: int = 256):
    """``(module, spec)``: the zoo's ``name`` re-laid for ``img_size`` under an FPN head (ADE20K's 150 classes and
    UPerNet's 256 channels by default) returning logits at the finest map's resolution, random head weights;
    ``spec`` as ``export(task="segmentation")`` builds it."""
    model, spec = create_model(name, img_size=img_size)
    indices = default_indices(model)
    with torch.no_grad():
        widths = [m.shape[1] for m in model.eval().forward_intermediates(
            torch.zeros(1, *spec.input_shape), indices=indices, intermediates_only=True, output_fmt="NCHW")]
    torch.manual_seed(0)
    module = FPNSegmenter(model, widths, classes, channels, indices, upsample=False).eval()
    seg = spec_for_module(module, f"{name}-fpn", spec.input_shape, spec.preprocessing, None, "segmentation")
    return module, dataclasses.replace(seg, weights="random")  # the head is random whatever the backbone


__all__ = ["FPNSegmenter", "segmenter"]
