"""Proof at export: repair a failed row through its backend's safe runtime configurations, then record each
artefact's verdict and the bundle's golden set (what ``python -m runtime verify`` and ``runtime.open()`` check
on another machine).

- ``repair_stage``: when a row fails its gate, the backend's ladder (``runtime/repair.py``) is walked on the
  evaluation set; the fastest passing configuration is kept. When none passes, the configuration nearest to
  passing is kept for what follows (the accuracy budget, with the gate as its budget, where the target keeps).
- ``golden_stage``: the samples that agree worst with the reference for any artefact plus an even spread,
  stored as uint8 pixels with the PyTorch logits on exactly those pixels; each artefact's golden figures on
  this machine; and each artefact's ``Verification`` (gates, values, runtime configuration, fingerprint).
"""
from __future__ import annotations

import math

import numpy as np

from exporters.graph.outputs import compare_outputs, dense_classes, judge_outputs, widths
from exporters.verify.budget import worst_samples
from runtime.accuracy import class_maps
from runtime.backends import backend, open_with
from runtime.backends.base import batched_logits, runner_batch
from runtime.golden import GOLDEN, Golden, golden_count, golden_form, reduce_maps, sample_bytes, write_golden
from runtime.manifest import GoldenSpec, Verification
from runtime.preprocess import Preprocessing, normalise, pixels_from_inputs
from runtime.proof import tolerance_gates
from runtime.repair import Attempt, closest, run_ladder
from runtime.tolerances import agreement_gated, tolerance_for

SPREAD_SHARE = 0.5  # at most half the golden set is the worst samples; the rest an even spread over the set


def gate_for(job, target: str, precision: str):
    """``(tolerance, whether top-1 agreement is gated)``: random weights carry no signal in reduced precision, and
    a backbone's feature maps have no classes."""
    return tolerance_for(target, precision), agreement_gated(job.is_random, precision) and not job.spec.outputs


def gates(job, target: str, precision: str) -> dict:
    """The gate an artefact passed at build, as the deployment machine applies it to the golden set."""
    classes = dense_classes(job.spec)
    dense = None if classes is None or not agreement_gated(job.is_random, precision) else \
        (classes, math.prod(job.spec.outputs[0][1][1:]))
    return tolerance_gates(target, precision, gate_for(job, target, precision)[1], len(job.data), dense)


def eval_judge(job, ref, target: str, precision: str, run_outputs):
    """``judge(runner) -> (passed, values, failures)`` on the evaluation set, with the row's own gate."""
    tol, gate = gate_for(job, target, precision)
    ref_top1 = ref.result.accuracy.top1

    def judge_runner(runner):
        acc, checks = compare_outputs(job.spec, ref.logits, run_outputs(runner, job.data, job.opts.batch),
                                      job.data.labels)
        passed, why = judge_outputs(job.spec, acc, checks, ref_top1, tol, gate, precision, job.is_random)
        return passed, {**{k: v for k, v in acc.to_dict().items() if k != "samples"}, **checks.get("dense", {})}, why
    return judge_runner


def repair_stage(job, ctx, built: tuple, ref, reverify, run_outputs) -> tuple[tuple, dict]:
    """Walk the backend's ladder for a failed row ``built = (res, art, runner, logits)``; returns the row (re-verified
    under the kept configuration) and the runtime-configuration overrides later rebuilds must carry."""
    res, art, runner, logits = built
    if res.passed or not job.opts.repair or not art.timeable:
        return built, {}
    cands = backend(art.target).repairs(art.runtime_config)
    if not cands:
        return built, {}
    path = art.primary
    feeds = next(job.data.batches(job.opts.batch))
    with job.steps(f"{res.target} {res.precision}: failed its gate; trying {len(cands)} safe runtime configurations"):
        attempts, best = run_ladder(
            cands, lambda cfg: open_with(art.target, path, cfg, threads=job.threads),
            eval_judge(job, ref, res.target, res.precision, run_outputs), lambda r: {r.input_name: feeds})
    as_built = Attempt("as built", dict(art.runtime_config), passed=False, failures=list(res.failures),
                       values={k: v for k, v in res.accuracy.to_dict().items() if k != "samples"})
    keep = best or closest(attempts)
    if keep is not None and best is None and keep.values.get("cosine_min", -2) <= as_built.values["cosine_min"]:
        keep = None  # nothing nearer to passing than the configuration as built
    record = {"attempts": [a.to_dict() for a in [as_built, *attempts]], "kept": best.name if best else None,
              "continued_with": keep.name if keep is not None and best is None else None}
    if keep is None:
        res.checks["repair"] = record
        res.notes.append(f"repair: none of {len(cands)} safe runtime configurations passed")
        return built, {}
    overrides = {k: v for k, v in keep.config.items() if art.runtime_config.get(k) != v}
    runner.close()
    art.runtime_config = dict(keep.config)
    res, art, runner, logits = reverify(art)
    res.checks["repair"] = record
    res.notes.append(f"repaired: as built it failed its gate; runs with {keep.name} ({overrides})" if best else
                     f"repair: no safe runtime configuration passed; continuing with the nearest, {keep.name}")
    return (res, art, runner, logits), overrides


def choose_golden(job, logits_by_row: dict) -> np.ndarray:
    """Indices into the evaluation set: the samples that agree worst with the reference for any artefact (top-1
    flips first, then the lowest cosine), up to half the set, then an even spread over the rest."""
    n_all = len(job.data)
    h, w = job.spec.input_shape[1:]
    maps = output_maps(job.spec)
    dense = math.prod(job.spec.outputs[0][1][1:]) if job.spec.task == "segmentation" else 0
    n = golden_count(n_all, sample_bytes(h * w * 3, maps, job.ref_logits.shape[1], dense))
    chosen: list[int] = []
    rank = []
    for logits in logits_by_row.values():
        rank.append(list(worst_samples(job.ref_logits, logits, n_all)))
    worst_cap = max(1, int(n * SPREAD_SHARE)) if rank else 0
    for depth in range(n_all):  # round-robin over the artefacts' worst lists
        for r in rank:
            if len(chosen) >= worst_cap:
                break
            if r[depth] not in chosen:
                chosen.append(int(r[depth]))
        if len(chosen) >= worst_cap:
            break
    rest = [i for i in range(n_all) if i not in set(chosen)]
    take = n - len(chosen)
    if take > 0 and rest:
        chosen += [rest[int(i)] for i in np.linspace(0, len(rest) - 1, min(take, len(rest))).round().astype(int)]
    return np.array(sorted(set(chosen)))


def golden_stage(job, work, ref, artifacts: list, runners: dict) -> Golden:
    """Write the golden set into the staging bundle, and each artefact's verification (golden figures included)."""
    pp: Preprocessing = job.spec.preprocessing
    idx = choose_golden(job, {k: v for k, v in job.logits.items() if k != ("pytorch", "fp32")})
    pixels = pixels_from_inputs(job.data.inputs[idx], pp)
    x = normalise(pixels, pp)
    golden = reference_golden(job, pixels, batched_logits(ref.runner, x, runner_batch(ref.runner)))
    size = write_golden(work / GOLDEN, golden)
    job.report["golden"] = {"file": GOLDEN, "samples": int(len(idx)), "bytes": int(size), "form": golden.form,
                            "chosen": f"the samples of the {len(job.data)}-sample evaluation set that agree worst with "
                                      "the reference for any artefact (top-1 flips first, then the lowest cosine), "
                                      "then an even spread",
                            "reference": f"PyTorch FP32 ({ref.runner.device}) on the stored pixels"}
    for art in artifacts:
        res = job.rows[(art.target, art.precision)]
        runner = runners.get((art.target, art.precision))
        g = gates(job, art.target, art.precision)
        golden_values = None
        if runner is not None and art.timeable:
            ok, vals, why = golden.judge(batched_logits(runner, x, runner_batch(runner)), g, widths(job.spec))
            golden_values = {**vals, "passed": ok, "failures": why}
            if res.passed and not ok:
                res.notes.append(f"the golden set fails on this machine although the evaluation set passed: {why}")
        art.verification = Verification(
            passed=bool(res.passed), kind="direct" if art.timeable else "proxy", gates=g,
            values={**res.accuracy.to_dict(), **res.checks.get("dense", {})} if res.accuracy else {},
            failures=list(res.failures), runtime_config=dict(art.runtime_config),
            proven_on=backend(art.target).fingerprint(art.runtime_config), golden=golden_values,
            repaired=bool((res.checks.get("repair") or {}).get("kept")))
    return golden


def output_maps(spec) -> list[tuple[int, int, int]] | None:
    """Each output map's ``(C, h, w)`` (a backbone's, a segmentation model's); None for logits and embeddings."""
    if spec.outputs and all(len(shape) == 3 for _, shape in spec.outputs):
        return [tuple(shape) for _, shape in spec.outputs]
    return None


def reference_golden(job, pixels: np.ndarray, reference: np.ndarray) -> Golden:
    """The golden set of ``pixels`` and the reference outputs on them: whole, or, for output maps above
    ``runtime.golden.REDUCE_ABOVE`` bytes a sample, reduced (with a segmentation model's reference classes)."""
    maps = output_maps(job.spec)
    if golden_form(maps) == "full":
        return Golden(pixels=pixels, reference=reference)
    classes = dense_classes(job.spec)
    return Golden(pixels=pixels, reference=reduce_maps(reference, maps), maps=maps,
                  classes=class_maps(reference, classes) if classes else None)


def golden_spec(job) -> GoldenSpec | None:
    g = job.report.get("golden")
    return GoldenSpec(**g) if g else None
