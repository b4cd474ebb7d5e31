"""What a model returns, and how an artefact's outputs are judged against the reference's, by task.

- ``classification``: logits ``[N, classes]``; cosine, top-1/top-5 agreement and dataset top-1 (runtime/accuracy.py).
- ``features`` (``--features``, exporters/features.py): several NCHW maps, flattened and concatenated per sample;
  each map's worst-sample cosine, and the worst map decides.
- ``segmentation`` (``export(module, task="segmentation")``): one logits map ``[N, classes, H, W]``; the cosine over
  the map, the share of pixels whose class equals the reference's and the mean IoU of the class maps
  (``runtime.accuracy.dense_values``, limits in ``runtime.tolerances.DENSE``).

Every runner returns flattened outputs (``runtime.backends.base.flat_outputs``), so the judgement is the same for
every backend and the reference.
"""
from __future__ import annotations

import math

TASKS = ("classification", "segmentation")  # what export() takes; "features" comes from --features


def widths(spec) -> list[int] | None:
    """Values per sample of each output map, in output order (how flattened outputs split); None for logits."""
    return [math.prod(shape) for _, shape in spec.outputs] if spec.outputs else None


def output_names(spec) -> list[str]:
    """The model's outputs by name, in graph order: its maps' names, or the one logits output."""
    from exporters.onnx import OUTPUT_NAME
    return [n for n, _ in spec.outputs] if spec.outputs else [OUTPUT_NAME]


def dense_classes(spec) -> int | None:
    """A segmentation model's classes (the channels of its logits map); None for other tasks."""
    return spec.outputs[0][1][0] if spec.task == "segmentation" else None


def compare_outputs(spec, ref, out, labels):
    """``runtime.accuracy.compare`` of flattened outputs, and the task's own figures as ``checks``: a backbone's
    per-map worst-sample cosine (``cosine_min_per_output``; the worst map's is the row's ``cosine_min``), a
    segmentation model's pixel agreement and mean IoU (``dense``). Returns ``(Accuracy, checks)``."""
    from runtime.accuracy import compare, cosine_per_output, dense_values
    acc = compare(ref, out, labels)
    checks: dict = {}
    if spec.task == "features":
        maps = {name: round(float(c.min()), 6)
                for (name, _), c in zip(spec.outputs, cosine_per_output(ref, out, widths(spec)))}
        acc.cosine_min = min(maps.values())
        checks["cosine_min_per_output"] = maps
    if spec.task == "segmentation":
        checks["dense"] = {k: round(v, 6) if isinstance(v, float) else v
                           for k, v in dense_values(ref, out, dense_classes(spec)).items()}
    return acc, checks


def judge_outputs(spec, acc, checks: dict, ref_top1, tol, gate_agreement: bool, precision: str,
                  random: bool = False):
    """Pass/fail of one result: ``runtime.accuracy.judge`` on the logits (or maps), plus the segmentation gates
    (``runtime.tolerances.agreement_gated``). Returns ``(passed, failures)``."""
    from runtime.accuracy import judge, judge_dense
    from runtime.tolerances import agreement_gated, dense_tolerance_for
    _, why = judge(acc, ref_top1, tol, gate_agreement=gate_agreement)
    if "dense" in checks and agreement_gated(random, precision):
        why += judge_dense(checks["dense"], dense_tolerance_for(precision))
    return not why, why


def task_note(spec) -> str | None:
    """What a row's gate is, in words, where it is not the classifier's."""
    if spec.task == "segmentation":
        return ("segmentation: gated on the logits map's worst-sample cosine, pixel agreement and mean IoU of the "
                "class maps against the reference's (checks.dense; runtime/tolerances.py DENSE); top-1 agreement "
                "over the flattened map means nothing and is not gated")
    if spec.outputs:
        return ("feature maps: gated on each map's worst-sample cosine (checks.cosine_min_per_output); "
                "top-1 agreement over flattened maps means nothing and is not gated")
    return None


__all__ = ["TASKS", "widths", "output_names", "dense_classes", "compare_outputs", "judge_outputs", "task_note"]
