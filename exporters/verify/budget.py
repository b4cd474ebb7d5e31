"""The accuracy budget (``--max-drop POINTS`` / ``--min-cosine C``) for INT8 and FP16 artefacts: measure, keep, rebuild.

Every target declares the precisions whose build can keep layers in higher precision (``Target.keeps``):
ONNX Runtime INT8 (excluded nodes), OpenVINO INT8 (NNCF ignored scope), TensorRT and TensorRT-RTX INT8
(unquantized, FP16) and FP16 (FP32 islands), Core ML INT8 (per-op compression config: FP16 weights).
When such an artefact misses the budget, its block outputs are compared with PyTorch's (the mechanism
of ``exporters/verify/probes.py``) on the 32 evaluation samples that agree worst with the reference. The
candidate whose error grows the most over the worst error before it (attention, MLP, patch merging,
embedding or head; a measured growth, not a guess from names) is kept in higher precision, the
artefact is rebuilt and verified again, and so on until the budget holds or no candidate is left. The
first/last-layer rule is the loop's starting point. Each step's accuracy and latency go into
``checks["budget"]``.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from exporters.graph.onnx import first_last_compute_nodes
from exporters.targets import target, targets
from exporters.verify.probes import (
    artefact_outputs,
    block_errors,
    compute_outputs_in,
    dense_probe,
    largest_step,
    probe_label,
    probes_from_export,
    reference_outputs,
)
from runtime.accuracy import cosine_per_sample
from runtime.errors import UserError
from runtime.latency import measure

SAMPLES = 32
MAX_STEPS = 12
WHOLE_BLOCK = re.compile(r"(^|\.)blocks\.\d+$|^layers\.\d+\.blocks\.\d+$|^norm$")  # composites and norms: not candidates


def validate(max_drop: float | None, min_cosine: float | None, labelled: bool) -> None:
    if max_drop is not None and max_drop < 0:
        raise UserError(f"--max-drop must be at least 0 points (got {max_drop})")
    if min_cosine is not None and not 0 < min_cosine <= 1:
        raise UserError(f"--min-cosine must be in (0, 1] (got {min_cosine})")
    if max_drop is not None and not labelled:
        raise UserError("--max-drop needs labelled --data (class folders, labelled npz, or digits); "
                        "use --min-cosine without labels")


def misses(acc, ref_top1: float | None, max_drop: float | None, min_cosine: float | None) -> list[str]:
    """What the budget misses, with the figures; empty when it holds."""
    why = []
    if max_drop is not None and acc.top1 is not None and ref_top1 is not None:
        drop = (ref_top1 - acc.top1) * 100
        if drop > max_drop:
            why.append(f"top-1 drop {drop:.2f} points > budget {max_drop} (over by {drop - max_drop:.2f})")
    if min_cosine is not None and acc.cosine_min < min_cosine:
        why.append(f"cosine_min {acc.cosine_min:.6f} < budget {min_cosine} (short by {min_cosine - acc.cosine_min:.6f})")
    return why


def worst_step(rows: list[dict], excluded: set[str]) -> dict | None:
    """The candidate row (not a whole block or norm, not ``excluded``) whose error grows the most
    (``probes.largest_step``)."""
    return largest_step(rows, lambda r: not WHOLE_BLOCK.search(r["module"]) and r["module"] not in excluded)


def gained(before: dict, after: dict) -> bool:
    """Whether a keep bought anything: fewer top-1 points lost, more agreement, or 1% less of 1 - cosine_min."""
    drop = before["drop_points"] is not None and after["drop_points"] is not None \
        and after["drop_points"] < before["drop_points"]
    return drop or after["top1_agreement"] > before["top1_agreement"] \
        or (1 - after["cosine_min"]) < 0.99 * (1 - before["cosine_min"])


def covered_modules(onnx_path, graph, probes: list, covered_nodes: list[str]) -> set[str]:
    """Probe modules whose MatMul/Gemm/Conv are all among ``covered_nodes`` (already kept by the build's rule)."""
    if not covered_nodes:
        return set()
    compute = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    out = set()
    for p in probes:
        nodes = compute & compute_outputs_in(onnx_path, p.scope, graph)
        if nodes and nodes <= set(covered_nodes):
            out.add(p.module)
    return out


def step_record(res, kept: list[str], ref_top1: float | None, p50: float | None) -> dict:
    acc = res.accuracy
    return {"kept": list(kept), "top1": acc.top1, "drop_points": None if acc.top1 is None or ref_top1 is None
            else round((ref_top1 - acc.top1) * 100, 3), "cosine_min": acc.cosine_min,
            "top1_agreement": acc.top1_agreement, "p50_ms": p50}


def budgeted() -> list[str]:
    """``target precision`` pairs that take part in the loop, from the registry."""
    return [f"{t.name} {p}" for t in targets().values() for p in t.keeps]


def step_p50(art, runner, feeds) -> float | None:
    """A step's latency: measured on the artefact itself; none for a proxy (its speed says nothing)."""
    return measure(runner, feeds, runs=10, warmup=2).p50 if art.timeable else None


def worst_samples(ref_logits: np.ndarray, logits: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` samples whose logits agree worst with the reference (top-1 flips first, then the
    lowest cosine): the budget is judged on the worst sample, so its loss is located on the samples that
    lose it, which the first ``n`` of the set need not contain."""
    flipped = ref_logits.argmax(1) != logits.argmax(1)
    return np.lexsort((cosine_per_sample(ref_logits, logits), ~flipped))[:n]


def gate_as_budget(job, res) -> tuple[float | None, float | None]:
    """The row's own gate as a budget (top-1 drop where labels exist, and the worst cosine): what the loop holds a
    failed row to when no budget was given and the repair ladder could not fix it (exporters/verify/proof.py)."""
    tol = res.tolerance
    return (tol.top1_drop if job.data.labels is not None else None), tol.cosine_min


def enforce(job, ctx, name: str, precision: str, ref, built: tuple, rebuild,
            limits: tuple[float | None, float | None] | None = None) -> tuple:
    """Run the loop for one built artefact ``built = (res, art, runner, logits)``; ``rebuild(ctx)`` builds and
    verifies again, returning the same four. ``limits``: ``(max_drop, min_cosine)``, default the user's budget.

    Returns the final ``(res, art, runner)``; ``res.checks["budget"]`` holds every step. Files of the
    superseded builds go into ``job.superseded`` (the pipeline removes those no final artefact uses).
    """
    res, art, runner, logits = built
    max_drop, min_cosine = limits or (job.opts.max_drop, job.opts.min_cosine)
    opts = dataclasses.replace(job.opts, max_drop=max_drop, min_cosine=min_cosine)
    if (opts.max_drop is None and opts.min_cosine is None) or precision == "fp32":
        return res, art, runner
    if precision not in target(name).keeps:
        res.notes.append(f"accuracy budget not applied to {name} {precision}: only {', '.join(budgeted())} take part "
                         "(the row is still judged against its tolerances)")
        return res, art, runner
    ref_top1 = ref.result.accuracy.top1
    feeds = {runner.input_name: next(job.data.batches(job.opts.batch))}
    steps = [step_record(res, [], ref_top1, step_p50(art, runner, feeds))]
    accepted, kept, no_gain = 0, [], []  # the step kept blocks build on; what the artefact keeps; keeps that bought nothing
    probes = excluded = None
    while misses(res.accuracy, ref_top1, opts.max_drop, opts.min_cosine) and len(steps) <= MAX_STEPS:
        if probes is None:
            with job.steps(f"{name} {precision}: accuracy budget, locating blocks"):
                # output maps: the model is a wrapper (FeatureMaps, a user's dense module); its blocks are nested
                probes = list(probes_from_export(ctx.model, (1, *job.input_shape[1:]),
                                                 dense_probe(ctx.model) if job.spec.task in ("features", "segmentation")
                                                 else None))
                import onnx

                proto = onnx.load(str(ctx.onnx_path), load_external_data=False)  # read once for the whole loop
                scopes = {p.module: p.scope for p in probes}
                rule = first_last_compute_nodes(proto) if precision in target(name).first_last else []
                excluded = covered_modules(ctx.onnx_path, proto.graph, probes, rule)
        x = job.data.inputs[np.sort(worst_samples(ref.logits, logits, SAMPLES))]
        ref_out = reference_outputs(ctx.model, probes, x)
        got = artefact_outputs(art.entry(ctx.workdir), ctx.workdir, ctx.model, probes, x, job.threads)
        worst = worst_step(block_errors(probes, ref_out, got), excluded | set(steps[accepted]["kept"]) | set(no_gain))
        if worst is None:
            break
        kept = [*steps[accepted]["kept"], worst["module"]]
        keep = compute_outputs_in(ctx.onnx_path, frozenset().union(*(scopes[m] for m in kept)), proto.graph)
        runner.close()
        job.superseded.extend(art.files)
        with job.steps(f"{name} {precision}: keeping {worst['module']} in higher precision"):
            res, art, runner, logits = rebuild(dataclasses.replace(ctx, keep_tensors=keep, keep_modules=tuple(kept)))
        steps.append(step_record(res, kept, ref_top1, step_p50(art, runner, feeds)))
        if gained(steps[accepted], steps[-1]) or not misses(res.accuracy, ref_top1, opts.max_drop, opts.min_cosine):
            accepted = len(steps) - 1
        else:  # measured: this keep bought nothing; the next build goes without it
            steps[-1]["no_gain"] = True
            no_gain.append(worst["module"])
    missed = misses(res.accuracy, ref_top1, opts.max_drop, opts.min_cosine)
    res.checks["budget"] = {"max_drop": opts.max_drop, "min_cosine": opts.min_cosine, "met": not missed,
                            "kept": kept, "tried_without_gain": no_gain, "steps": steps,
                            "located_on": f"the {SAMPLES} samples that agree worst with the reference, at each step",
                            "method": "largest measured growth of 1 - cosine among attention/MLP/merging/embedding/"
                                      "head blocks",
                            "probes_from": probe_label(name),
                            "budget_from": "the row's own gate (repair: no safe runtime configuration passed)"
                            if limits else "--max-drop / --min-cosine"}
    if missed:
        res.passed = False
        res.failures.append("accuracy budget: " + "; ".join(missed) + f" after keeping {len(kept)} block(s)")
    res.notes.append(f"accuracy budget {'met' if not missed else 'NOT met'}"
                     + (f"; kept in higher precision: {', '.join(kept)}" if kept else "; nothing had to be kept"))
    return res, art, runner

