"""``--recipe auto``: choose what to quantize by measuring on this machine.

A target lists its INT8 recipe candidates (``Target.recipes``: which op groups are INT8, how activations are
quantized, the precision of what stays unquantized). Each recipe is built once, every candidate is gated on the
evaluation set with the row's own tolerance, the passing ones are timed interleaved on this machine (the
repair ladder's loop, ``runtime/repair.py``), and the fastest is kept: its files move into the bundle, its
recipe and runtime configuration go to the manifest, and the report shows every candidate and why the winner
won. When none passes, the target's default recipe is kept and the usual repair and budget steps follow.

Fidelity first: the gate alone (a cosine of 0.9 for INT8) would let a faster recipe give up much of the default's
fidelity. So the default recipe (``mixed``, NNCF's and ONNX Runtime's own defaults) is gated first, and another
candidate passes only if its worst-sample cosine on the evaluation set is within ``FIDELITY_EPS`` of the default's;
the report names what the winner traded (cosine and p50 against the default).
"""
from __future__ import annotations

import dataclasses
import os
import shutil

from exporters.targets import DEFAULT_RECIPE
from runtime.backends import open_with
from runtime.errors import UserError
from runtime.repair import run_ladder

RECIPE_RUNS = 20  # timed runs per candidate, interleaved
CALIBRATION_CACHE = ".recipes-calibration.json"  # inside the staging bundle, removed when the stage ends
# How much worst-sample cosine (against the PyTorch reference, on the evaluation set) a recipe may give up against
# the default recipe and still be chosen by auto. 0.002 is a tenth of the INT8 gate's usual headroom on the trained
# digits fixtures (cosine_min 0.998-0.9995 against the 0.9 gate) and far below the 0.04 the performance preset gave
# up on vit_b (0.956 against 0.997).
FIDELITY_EPS = 0.002


def wants_auto(job, t, precision: str) -> bool:
    """``--recipe auto``, or ``--precision auto`` without a recipe named, for a precision the target has recipes for."""
    if precision not in t.recipes:
        return False
    chosen = getattr(job.target_options[t.name], "recipe", None)
    return chosen == "auto" or (job.opts.precision == "auto" and "recipe" not in job.opts.options)


def why_won(attempts, best, floor: float | None = None) -> str:
    ok = sorted((a for a in attempts if a.passed and a.p50_ms is not None), key=lambda a: a.p50_ms)
    failed = [a.name for a in attempts if not a.passed]
    text = (f"fastest of {len(ok)} candidates that passed the gate"
            + (" and kept the default recipe's fidelity" if floor is not None else "") + f" (p50 {best.p50_ms:.2f} ms")
    if len(ok) > 1:
        text += f"; next {ok[1].name} at {ok[1].p50_ms:.2f} ms, {ok[1].p50_ms / best.p50_ms:.2f}x"
    text += ")"
    default = next((a for a in ok if a.config.get("recipe") == DEFAULT_RECIPE), None)
    if default is not None and default is not best and "cosine_min" in best.values:
        text += (f"; traded against {default.name}: cosine_min {best.values['cosine_min']:.6f} against "
                 f"{default.values['cosine_min']:.6f}, p50 {best.p50_ms:.2f} against {default.p50_ms:.2f} ms")
    return text + (f"; failed: {', '.join(failed)}" if failed else "")


def fidelity_judge(judge, floor: float | None):
    """``judge`` that also fails a candidate whose worst-sample cosine is more than ``FIDELITY_EPS`` below
    ``floor`` (the default recipe's); ``judge`` itself when there is no floor."""
    if floor is None:
        return judge

    def judged(runner):
        passed, values, failures = judge(runner)
        cos = values.get("cosine_min")
        if passed and cos is not None and cos < floor - FIDELITY_EPS:
            return False, values, [*failures, f"cosine_min {cos:.6f} is more than {FIDELITY_EPS} below the default "
                                              f"recipe's {floor:.6f}"]
        return passed, values, failures
    return judged


def default_first(named, open_runner, judge):
    """Open and judge the default recipe's first candidate before the others: its worst-sample cosine is the
    fidelity floor (``None`` when it does not open or fails its gate). Returns ``(floor, open_runner, judge)`` for
    the ladder, which takes that runner and its verdict as they are instead of opening and judging it again."""
    cfg = next((c for _, c in named if c.get("recipe") == DEFAULT_RECIPE), None)
    if cfg is None:
        return None, open_runner, judge
    try:
        runner = open_runner(cfg)
    except UserError:
        return None, open_runner, judge
    try:
        verdict = judge(runner)
    except UserError:
        runner.close()
        return None, open_runner, judge
    waiting = [runner]

    def reopen(c: dict):
        return waiting.pop() if waiting and c == cfg else open_runner(c)

    def rejudge(r):
        return verdict if r is runner else judge(r)
    passed, values, _ = verdict
    return (values.get("cosine_min") if passed else None), reopen, rejudge


def recipe_stage(job, ctx, t, precision: str, judge, open_and_verify) -> tuple[tuple, str | None]:
    """Build every recipe of ``t`` at ``precision``, gate and time the candidates, keep the fastest that passes.

    Returns the verified row ``(res, art, runner, logits)`` of the winner (or of the default recipe when none
    passes) and the recipe later rebuilds (the accuracy budget) must use."""
    options = job.target_options[t.name]
    cands = t.recipes[precision](options)
    arts = {}
    try:
        for recipe in dict.fromkeys(r for r, _ in cands):
            sub = ctx.workdir / f".recipe-{recipe}"
            sub.mkdir()
            art = t.build(dataclasses.replace(ctx, workdir=sub, calibration_cache=ctx.workdir / CALIBRATION_CACHE),
                          precision, dataclasses.replace(options, recipe=recipe))
            art.runtime_config.update(ctx.runtime_config)
            arts[recipe] = art
        feeds = next(job.data.batches(job.opts.batch))
        named = [(r + (f", rest at {cfg['inference_precision']}" if "inference_precision" in cfg else ""),
                  {**arts[r].runtime_config, **cfg}) for r, cfg in cands]
        def open_runner(cfg):
            return open_with(t.backend, arts[cfg["recipe"]].primary, cfg, threads=job.threads)
        with job.steps(f"{t.name} {precision}: {len(arts)} recipes, {len(named)} candidates gated and timed"):
            floor, opener, judged = default_first(named, open_runner, judge)
            attempts, best = run_ladder(named, opener, fidelity_judge(judged, floor),
                                        lambda r: {r.input_name: feeds}, runs=RECIPE_RUNS)
        chosen = best.config["recipe"] if best else DEFAULT_RECIPE
        art = arts[chosen]
        moved = [ctx.workdir / f.name for f in art.files]
        for src, dst in zip(art.files, moved):
            os.replace(src, dst)
        art.primary = ctx.workdir / art.primary.name
        art.files = moved
        if best:
            art.runtime_config = dict(best.config)
        env = job.report["environment"]["cpu"]
        art.checks["recipes"] = {
            "attempts": [a.to_dict() for a in attempts], "kept": best.name if best else None,
            "why": why_won(attempts, best, floor) if best else f"no candidate passed: the default recipe {chosen} is kept",
            "fidelity_floor": floor, "fidelity_eps": FIDELITY_EPS,
            "tuned_on": f"{env.get('model')} ({' '.join(env.get('flags', []))}), {job.threads} threads"}
        art.notes.append(f"recipe auto: {best.name if best else chosen} kept; " + art.checks["recipes"]["why"])
    finally:
        for p in ctx.workdir.glob(".recipe-*"):
            shutil.rmtree(p, ignore_errors=True)
        (ctx.workdir / CALIBRATION_CACHE).unlink(missing_ok=True)
    return open_and_verify(art), chosen
