"""What a model returns, and how an artefact's outputs are judged against the reference's, by task.

- ``classification``: logits ``[N, classes]``; cosine, top-1/top-5 agreement and dataset top-1 (runtime/accuracy.py).
- ``embedding`` (a timm model without a classifier, ``num_classes`` 0): the pooled embedding ``[N, D]``; the worst
  sample's cosine (top-1 agreement over embedding dimensions means nothing and is not gated).
- ``features`` (``--features``, exporters/models/features.py): several NCHW maps, flattened and concatenated per sample;
  each map's worst-sample cosine, and the worst map decides.
- ``segmentation`` (``export(module, task="segmentation")``): one logits map ``[N, classes, H, W]``; the cosine over
  the map, the share of pixels whose class equals the reference's and the mean IoU of the class maps
  (``runtime.accuracy.dense_values``, limits in ``runtime.tolerances.DENSE``).

Every runner returns flattened outputs (``runtime.backends.base.flat_outputs``), so the judgement is the same for
every backend and the reference.
"""
from __future__ import annotations

import math

from exporters.graph.onnx import OUTPUT_NAME
from runtime.accuracy import compare, cosine_per_output, dense_values, judge, judge_dense
from runtime.errors import UserError
from runtime.tolerances import agreement_gated, dense_tolerance_for

TASKS = ("classification", "embedding", "segmentation")  # what export() takes; "features" comes from --features


def widths(spec) -> list[int] | None:
    """Values per sample of each output map, in output order (how flattened outputs split); None for logits."""
    return [math.prod(shape) for _, shape in spec.outputs] if spec.outputs else None


def output_names(spec) -> list[str]:
    """The model's outputs by name, in graph order: its maps' names, or the one logits output."""
    return [n for n, _ in spec.outputs] if spec.outputs else [OUTPUT_NAME]


def dense_classes(spec) -> int | None:
    """A segmentation model's classes (the channels of its logits map); None for other tasks."""
    return spec.outputs[0][1][0] if spec.task == "segmentation" else None


def compare_outputs(spec, ref, out, labels):
    """``runtime.accuracy.compare`` of flattened outputs, and the task's own figures as ``checks``: a backbone's
    per-map worst-sample cosine (``cosine_min_per_output``; the worst map's is the row's ``cosine_min``), a
    segmentation model's pixel agreement and mean IoU (``dense``). Returns ``(Accuracy, checks)``."""
    import numpy as np

    nonfinite = int((~np.isfinite(out)).sum())
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0) if nonfinite else out  # counted; the gate fails
    acc = compare(ref, out, labels)
    acc.nonfinite = nonfinite
    checks: dict = {} if spec.task == "classification" else {"task": spec.task}  # the report's columns follow it
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
    _, why = judge(acc, ref_top1, tol, gate_agreement=gate_agreement)
    if "dense" in checks and agreement_gated(random, precision):
        why += judge_dense(checks["dense"], dense_tolerance_for(precision))
    return not why, why


def check_reference(logits, what: str = "evaluation samples") -> None:
    """Refuse (one ``UserError``) reference outputs holding NaN or inf: nothing can be judged against them."""
    import numpy as np

    bad = ~np.isfinite(np.asarray(logits)).reshape(len(logits), -1).all(1)
    if bad.any():
        raise UserError(f"the model's own outputs hold NaN or inf on {int(bad.sum())} of {len(bad)} {what}: nothing "
                        "can be judged against them (a checkpoint with inf or NaN parameters?)")


def dry_run(model, input_shape, what: str = "the model"):
    """One forward pass of a ``[1, *input_shape]`` batch of zeros, before any expensive stage: its output (a tensor or
    a tuple of maps), or one ``UserError`` when the model does not run or returns NaN or inf."""
    import torch

    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:  # reason: any user module may raise anything on a wrong shape
        raise UserError(f"{what} does not run on a {[1, *input_shape]} input: {type(exc).__name__}: "
                        f"{(str(exc).strip().splitlines() or [''])[0][:160]}") from None
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(t, torch.Tensor):
            check_reference(t.detach().float().numpy(), "dry-run samples (one of zeros)")
    return out


def check_dry_run(model, spec) -> None:
    """``dry_run`` against what ``spec`` says the model returns: logits ``[1, classes]``, or its maps in order."""
    import torch

    out = dry_run(model, spec.input_shape, spec.name)
    got = [list(t.shape) for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
    want = [[1, *shape] for _, shape in spec.outputs] if spec.outputs else [[1, spec.num_classes]]
    what = {"embedding": "its pooled embedding", "features": "its maps", "segmentation": "its logits map"}.get(
        spec.task, f"logits for its {spec.num_classes} classes")
    if got != want:
        raise UserError(f"{spec.name} returns {' '.join(map(str, got)) or 'no tensor'} where {want} was expected "
                        f"({what}): refused before any export")


def task_note(spec) -> str | None:
    """What a row's gate is, in words, where it is not the classifier's."""
    if spec.task == "embedding":
        return ("embedding (no classifier): gated on the worst sample's cosine to the reference's embedding; top-1 "
                "agreement over embedding dimensions means nothing and is not gated")
    if spec.task == "segmentation":
        return ("segmentation: gated on the logits map's worst-sample cosine, pixel agreement and mean IoU of the "
                "class maps against the reference's (checks.dense; runtime/tolerances.py DENSE); top-1 agreement "
                "over the flattened map means nothing and is not gated")
    if spec.outputs:
        return ("feature maps: gated on each map's worst-sample cosine (checks.cosine_min_per_output); "
                "top-1 agreement over flattened maps means nothing and is not gated")
    return None


__all__ = ["TASKS", "widths", "output_names", "dense_classes", "compare_outputs", "judge_outputs", "check_reference",
           "dry_run", "check_dry_run", "task_note"]
