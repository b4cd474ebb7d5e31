"""Pass/fail tolerances, keyed by (target, precision). The one documented place for them.

Every result is compared with the PyTorch FP32 reference on the same inputs.
- ``cosine_min``: lowest per-sample cosine similarity of the logits must be at least this;
- ``top1_agreement``: share of samples whose arg-max equals the reference's, at least this;
- ``top1_drop``: dataset top-1 (when labels exist) may fall at most this many points.

FP32 must be numerically equivalent to the reference. FP16 keeps the ranking. INT8 is judged
on the task: the label accuracy drop and agreement, with a looser cosine. When the model has
random weights, the logits carry no signal, so agreement is not gated for INT8/FP16 and the
note says so.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    cosine_min: float
    top1_agreement: float
    top1_drop: float  # points (0-100)


DEFAULT = {
    "fp32": Tolerance(cosine_min=0.9999, top1_agreement=0.99, top1_drop=0.2),
    "fp16": Tolerance(cosine_min=0.999, top1_agreement=0.98, top1_drop=0.5),
    "int8": Tolerance(cosine_min=0.90, top1_agreement=0.97, top1_drop=1.0),
}
# Per-target overrides, where a target's documented goal is tighter or looser.
OVERRIDES: dict[tuple[str, str], Tolerance] = {
    ("openvino", "int8"): Tolerance(cosine_min=0.90, top1_agreement=0.99, top1_drop=0.5),
    ("onnxruntime", "int8"): Tolerance(cosine_min=0.90, top1_agreement=0.99, top1_drop=0.5),
}


@dataclass(frozen=True)
class DenseTolerance:
    """A segmentation model's gates beyond the logits map's cosine: the share of pixels whose class (arg-max)
    equals the reference's, over the evaluation set, and the mean IoU of the class maps against the reference's."""

    pixel_agreement: float
    mean_iou: float


# The reference is the PyTorch model's own masks, not a labelled dataset: these bound how far an artefact's masks
# move from them. INT8 moves boundary pixels first, so its pixel agreement stays high while a small class's IoU
# falls; mean IoU weighs every class alike and catches that.
DENSE = {
    "fp32": DenseTolerance(pixel_agreement=0.999, mean_iou=0.99),
    "fp16": DenseTolerance(pixel_agreement=0.995, mean_iou=0.97),
    "int8": DenseTolerance(pixel_agreement=0.97, mean_iou=0.90),
}


def dense_tolerance_for(precision: str) -> DenseTolerance:
    return DENSE[precision]


def agreement_gated(random: bool, precision: str) -> bool:
    """Whether agreement-type gates (top-1 agreement, a segmentation model's pixel agreement and mean IoU) hold:
    not in reduced precision when the weights are random, whose logits and class maps are near-ties with no signal.
    The one rule for the export, the golden check and the benchmarks."""
    return not (random and precision != "fp32")


def tolerance_for(target: str, precision: str) -> Tolerance:
    return OVERRIDES.get((target, precision), DEFAULT[precision])
