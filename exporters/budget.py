"""The accuracy budget (``--max-drop POINTS`` / ``--min-cosine C``) for INT8 and FP16 artefacts: measure, keep, rebuild.

Every target declares the precisions whose build can keep layers in higher precision (``Target.keeps``):
ONNX Runtime INT8 (excluded nodes), OpenVINO INT8 (NNCF ignored scope), TensorRT and TensorRT-RTX INT8
(unquantized, FP16) and FP16 (FP32 islands), Core ML INT8 (per-op compression config: FP16 weights).
When such an artefact misses the budget, its block outputs are compared with PyTorch's (the mechanism
of ``exporters/probes.py``, on up to 32 evaluation samples). The candidate whose error grows the most
over the worst error before it (attention, MLP, patch merging, embedding or head; a measured step, not
a guess from names) has all its MatMul/Gemm/Conv kept in higher precision, the artefact is rebuilt
and verified again, and so on until the budget holds or no candidate is left. The first/last-layer
rule is the loop's starting point. Each step's accuracy and latency go into ``checks["budget"]``.
"""
from __future__ import annotations

import dataclasses
import re

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


def worst_step(rows: list[dict], kept: set[str]) -> dict | None:
    """The candidate row (not a whole block or norm, not kept yet) whose error grows the most (``probes.largest_step``)."""
    from exporters.probes import largest_step
    return largest_step(rows, lambda r: not WHOLE_BLOCK.search(r["module"]) and r["module"] not in kept)


def step_record(res, kept: list[str], ref_top1: float | None, p50: float | None) -> dict:
    acc = res.accuracy
    return {"kept": list(kept), "top1": acc.top1, "drop_points": None if acc.top1 is None or ref_top1 is None
            else round((ref_top1 - acc.top1) * 100, 3), "cosine_min": acc.cosine_min,
            "top1_agreement": acc.top1_agreement, "p50_ms": p50}


def budgeted() -> list[str]:
    """``target precision`` pairs that take part in the loop, from the registry."""
    from exporters.targets import targets
    return [f"{t.name} {p}" for t in targets().values() for p in t.keeps]


def step_p50(art, runner, feeds) -> float | None:
    """A step's latency: measured on the artefact itself; none for a proxy (its speed says nothing)."""
    return measure(runner, feeds, runs=10, warmup=2).p50 if art.timeable else None


def enforce(job, ctx, name: str, precision: str, ref, res, art, runner, rebuild) -> tuple:
    """Run the loop for one built artefact; ``rebuild(ctx) -> (res, art, runner)`` builds and verifies again.

    Returns the final ``(res, art, runner)``; ``res.checks["budget"]`` holds every step. Files of the
    superseded builds go into ``job.superseded`` (the pipeline removes those no final artefact uses).
    """
    from exporters.targets import target
    opts = job.opts
    if (opts.max_drop is None and opts.min_cosine is None) or precision == "fp32":
        return res, art, runner
    if precision not in target(name).keeps:
        res.notes.append(f"accuracy budget not applied to {name} {precision}: only {', '.join(budgeted())} take part "
                         "(the row is still judged against its tolerances)")
        return res, art, runner
    from exporters.probes import block_errors, compute_outputs_in, probe_label, probes_from_export, reference_outputs
    ref_top1 = ref.result.accuracy.top1
    feeds = {runner.input_name: next(job.data.batches(job.opts.batch))}
    steps = [step_record(res, [], ref_top1, step_p50(art, runner, feeds))]
    kept: list[str] = []
    probes = ref_out = x = None
    while misses(res.accuracy, ref_top1, opts.max_drop, opts.min_cosine) and len(kept) < MAX_STEPS:
        if probes is None:
            with job.steps(f"{name} {precision}: accuracy budget, locating blocks"):
                shape = (1, *job.input_shape[1:])
                probes = {p.module: p for p in probes_from_export(ctx.model, shape)}
                x = job.data.inputs[:SAMPLES]
                ref_out = reference_outputs(ctx.model, list(probes.values()), x)
        got = artefact_outputs(ctx, art, list(probes.values()), x, job.threads)
        worst = worst_step(block_errors(list(probes.values()), ref_out, got), set(kept))
        if worst is None:
            break
        kept.append(worst["module"])
        keep = compute_outputs_in(ctx.onnx_path, frozenset().union(*(probes[m].scope for m in kept)))
        runner.close()
        job.superseded.extend(art.files)
        with job.steps(f"{name} {precision}: keeping {worst['module']} in higher precision"):
            res, art, runner = rebuild(dataclasses.replace(ctx, keep_tensors=keep, keep_modules=tuple(kept)))
        steps.append(step_record(res, kept, ref_top1, step_p50(art, runner, feeds)))
    missed = misses(res.accuracy, ref_top1, opts.max_drop, opts.min_cosine)
    res.checks["budget"] = {"max_drop": opts.max_drop, "min_cosine": opts.min_cosine, "met": not missed,
                            "kept": kept, "steps": steps, "samples_located_on": SAMPLES,
                            "method": "largest measured growth of 1 - cosine among attention/MLP/merging/embedding/"
                                      "head blocks",
                            "probes_from": probe_label(name)}
    if missed:
        res.passed = False
        res.failures.append("accuracy budget: " + "; ".join(missed) + f" after keeping {len(kept)} block(s)")
    res.notes.append(f"accuracy budget {'met' if not missed else 'NOT met'}"
                     + (f"; kept in higher precision: {', '.join(kept)}" if kept else "; nothing had to be kept"))
    return res, art, runner


def artefact_outputs(ctx, art, probes: list, x, threads: int | None) -> dict:
    """The probe tensors of a freshly built artefact (in the staging bundle ``ctx.workdir``)."""
    from exporters.probes import outputs_of, probe_source
    if art.target == "coreml":
        from exporters.targets.coreml import proxy_block_outputs
        return proxy_block_outputs(ctx.model, art, probes, x)
    rel = art.primary.relative_to(ctx.workdir).as_posix()
    kind, path = probe_source(art.target, rel, art.runtime_config)
    return outputs_of(kind, ctx.workdir / path, art.runtime_config, [p.tensor for p in probes], x, threads)

