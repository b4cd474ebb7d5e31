"""The end-to-end job: model -> rewrites -> ONNX (+contract) -> targets -> verified, timed bundle.

``run(RunOptions) -> report dict``. Data moves one way; the PyTorch reference is one more
runner, and every runner gets the same inputs, batch size and thread count.
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.accuracy import compare, judge
from benchmarks.environment import environment
from benchmarks.latency import DEFAULT_RUNS, DEFAULT_WARMUP, throughput
from benchmarks.report import write_report
from benchmarks.tolerances import tolerance_for
from calibration import DEFAULT_CALIB_SIZE, CalibrationSet, load_set
from exporters.bundle import check_writable, staged_bundle
from exporters.targets import Artifact, BuildContext, target_module
from runtime.errors import UserError
from runtime.manifest import MANIFEST, file_hashes

BIG_MODEL_EVAL_SIZE = 64  # default evaluation samples for models above 64 px (digits models use all)


@dataclass
class RunOptions:
    model: str
    targets: list[str] = field(default_factory=lambda: ["onnxruntime"])
    precision: str | None = None  # None: fp32 for one target, every precision for "all"
    precisions: list[str] | None = None  # restricts the multi-target plan (benchmarks matrix)
    data: str = "digits"
    calib: str | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    eval_size: int | None = None
    weights: str | None = None
    pretrained: bool = False
    out: Path = Path("out")
    batch: int = 1
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    threads: int | None = None
    rewrites: bool = True
    dynamic_batch: bool = False
    device: str = "CPU"
    options: dict = field(default_factory=dict)
    quiet: bool = False


class Steps:
    """One line per step on stderr, with its duration."""

    def __init__(self, quiet: bool):
        from rich.console import Console
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.times: dict[str, float] = {}

    def __call__(self, label: str):
        steps = self

        class _Step:
            def __enter__(self):
                self.t0 = time.perf_counter()
                self.status = steps.console.status(f"{label}…")
                self.status.__enter__()
                return self

            def __exit__(self, exc_type, *a):
                self.status.__exit__(exc_type, *a)
                dt = time.perf_counter() - self.t0
                steps.times[label] = round(dt, 3)
                if exc_type is None:
                    steps.console.print(f"[green]✓[/] {label} [dim]({dt:.1f} s)[/]")
        return _Step()


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan(targets: list[str], precision: str | None, precisions: list[str] | None = None) -> list[tuple[str, str]]:
    """(target, precision) pairs to build, in order, from each target module's ``PRECISIONS``."""
    offered = {t: target_module(t).PRECISIONS for t in targets}
    if precisions:
        return [(t, p) for t in targets for p in offered[t] if p in precisions]
    out = []
    for t in targets:
        if precision:
            out.append((t, precision))
        elif len(targets) > 1:
            out += [(t, p) for p in offered[t]]
        else:  # one target, no precision flag: FP32 where the target builds it, else its first precision
            out.append((t, "fp32" if "fp32" in offered[t] else offered[t][0]))
    return out


def label_index(spec) -> dict[str, int]:
    idx = {name: i for i, name in enumerate(spec.labels or [])}
    if spec.num_classes == 1000:
        try:
            from timm.data import ImageNetInfo
            idx.update({syn: i for i, syn in enumerate(ImageNetInfo().label_names())})
        except Exception:  # reason: synset names are a convenience; descriptions still match
            pass
    return idx


def run_outputs(runner, data: CalibrationSet, batch: int) -> np.ndarray:
    """Logits ``[N, classes]`` of ``runner`` over the whole set, in static batches."""
    outs = []
    for chunk in data.batches(batch):
        outs.append(next(iter(runner.infer({runner.input_name: chunk}).values())))
    return np.concatenate(outs)[:len(data)]


def _result(target, precision, runner, art: Artifact | None, ref_logits, ref_top1, data, opts,
            is_random: bool, bundle: Path) -> dict:
    """Build one result row with its accuracy against the reference; latency is filled in later."""
    res = {"target": target, "precision": precision, "status": art.status if art else "built",
           "device": None, "artifact": None, "latency_ms": None, "throughput_ips": None, "accuracy": None,
           "speedup_vs_reference": None, "passed": None, "notes": list(art.notes) if art else []}
    if art is not None:
        res["artifact"] = str(art.primary.relative_to(bundle)) if art.primary else None
        res["size_mb"] = round(art.size_mb, 3)
        res["build_s"] = {k: round(v, 3) for k, v in art.build_s.items()}
    if runner is None:
        return res
    logits = run_outputs(runner, data, opts.batch)
    acc = compare(ref_logits, logits, data.labels)
    tol = tolerance_for(target, precision) if target != "pytorch" else tolerance_for("pytorch", "fp32")
    gate = not (is_random and precision != "fp32")
    passed, why = judge(acc, ref_top1, tol, gate_agreement=gate)
    if not gate:
        res["notes"].append("random weights: top-1 agreement is reported but not gated for reduced precision")
    if art is not None and art.proxy:
        res["notes"].append(f"PROXY accuracy: {art.proxy}")
        res["accuracy_kind"] = "proxy"
    d = runner.describe()
    res.update({"device": d.get("device"), "accuracy": acc.to_dict(), "passed": passed, "runtime": d,
                "tolerance": tol.__dict__})
    if art is not None and not art.timeable:
        res["device"] = f"proxy: {d.get('device')}"
    res["notes"] += [f"FAILED: {w}" for w in why]
    return res


def time_results(timed: list[tuple[dict, object]], data: CalibrationSet, opts: RunOptions, flops: int | None) -> None:
    """Time every runner in interleaved rounds (the reference first) and fill latency and speedups."""
    from benchmarks.latency import measure_interleaved
    from benchmarks.roofline import attained
    feeds = next(data.batches(opts.batch))
    runners = {i: runner for i, (_, runner) in enumerate(timed)}
    lats = measure_interleaved(runners, lambda r: {r.input_name: feeds}, runs=opts.runs, warmup=opts.warmup)
    ref_p50 = lats[0].p50
    for i, (res, _) in enumerate(timed):
        lat = lats[i]
        res.update({"latency_ms": {k: round(v, 4) for k, v in lat.to_dict().items() if k != "runs"},
                    "runs": lat.runs, "throughput_ips": round(throughput(lat, opts.batch), 3),
                    "speedup_vs_reference": round(ref_p50 / lat.p50, 3)})
        if flops:
            res["gflops"] = round(attained(flops, opts.batch, lat.p50), 2)


def run(opts: RunOptions) -> dict:
    """Build, verify and time every requested (target, precision); write the bundle; return the report."""
    from exporters.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
    from exporters.reference import TorchRunner
    from exporters.rewrites import apply_rewrites
    from exporters.zoo import create_model

    if len(opts.targets) == 1:
        target_module(opts.targets[0])  # an unknown or not-built target fails here, before any work
    if opts.calib_size is not None and opts.calib_size < 1:
        raise UserError(f"--calib-size must be at least 1 (got {opts.calib_size})")
    if opts.batch < 1 or opts.runs < 1:
        raise UserError("--batch and --runs must be at least 1")
    threads = opts.threads or default_threads()
    opts.threads = threads
    check_writable(Path(opts.out))
    steps = Steps(opts.quiet)
    with steps("model"):
        model, spec = create_model(opts.model, weights=opts.weights, pretrained=opts.pretrained)
    eval_size = opts.eval_size if opts.eval_size is not None else (
        None if max(spec.input_shape[1:]) <= 64 else BIG_MODEL_EVAL_SIZE)
    with steps(f"evaluation set ({opts.data})"):
        data = load_set(opts.data, spec.preprocessing, size=eval_size, part="holdout",
                        label_index=label_index(spec), progress=not opts.quiet)
    if str(opts.data) == "digits" and not spec.source.startswith("digits:") and data.labels is not None:
        data.labels = None  # digit labels 0-9 are not this model's classes
        data.notes.append("digits labels do not match this model's classes: dataset top-1 not computed")
    input_shape = (opts.batch, *spec.input_shape)
    calib_cache: dict = {}

    def calib() -> CalibrationSet:
        if "set" not in calib_cache:
            src = opts.calib or opts.data
            with steps(f"calibration set ({src})"):
                calib_cache["set"] = load_set(src, spec.preprocessing, size=opts.calib_size,
                                              part="train", label_index=label_index(spec), progress=not opts.quiet)
        return calib_cache["set"]

    report = {"model": spec.name, "source": spec.source, "weights": spec.weights, "input_shape": list(input_shape),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "environment": environment(threads), "notes": list(spec.notes), "data": data.describe()}
    is_random = spec.weights == "random"
    from benchmarks.roofline import gemm_peak_gflops, model_flops
    report["roofline"] = {"flops_per_image": model_flops(model, (1, *spec.input_shape)),
                          "gemm_peak_gflops": round(gemm_peak_gflops(threads), 1)}
    with staged_bundle(Path(opts.out), spec.slug) as work:
        if opts.rewrites:
            with steps("rewrites"):
                export_model, rw = apply_rewrites(model, input_shape)
            report["rewrites"] = rw.to_dict()
        else:
            export_model, report["rewrites"] = model, {"replaced": {}, "fired": [], "disabled": True}
        with steps("ONNX export"):
            onnx_export = export_onnx(export_model, input_shape, work / "model.onnx",
                                      dynamic_batch=opts.dynamic_batch, enforce_contract=opts.rewrites)
        report["graph"] = {"num_nodes": onnx_export.num_nodes, "op_counts": onnx_export.op_counts,
                           "contract": onnx_export.contract, "opset": 18, "dynamic_batch": opts.dynamic_batch}
        ref = TorchRunner(model, list(input_shape), threads=threads)
        with steps(f"PyTorch reference ({ref.device})"):
            ref_logits = run_outputs(ref, data, opts.batch)
            ref_res = _result("pytorch", "fp32", ref, None, ref_logits, None, data, opts, is_random, work)
        ref_top1 = ref_res["accuracy"]["top1"]
        results = [ref_res]
        timed = [(ref_res, ref)]
        ctx = BuildContext(spec=spec, model=export_model, onnx_path=onnx_export.path, workdir=work,
                           batch=opts.batch, threads=threads, calib=calib, device=opts.device,
                           dynamic_batch=opts.dynamic_batch, options=opts.options)
        artifacts: list[Artifact] = []
        for target, precision in plan(opts.targets, opts.precision, opts.precisions):
            try:
                mod = target_module(target)
                reason = mod.available()
            except UserError as exc:  # a target not built yet, under --target all
                mod, reason = None, str(exc)
            if reason:
                results.append({"target": target, "precision": precision, "status": "skipped", "passed": None,
                                "latency_ms": None, "accuracy": None, "notes": [reason]})
                continue
            try:
                with steps(f"{target} {precision}"):
                    art = mod.build(ctx, precision)
                    runner = mod.runner(ctx, art)
                    res = _result(target, precision, runner, art, ref_logits, ref_top1, data, opts, is_random, work)
            except Exception as exc:  # reason: under --target all one target's failure must not sink the others
                if len(opts.targets) == 1:
                    raise
                msg = str(exc) if isinstance(exc, UserError) else \
                    f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                results.append({"target": target, "precision": precision, "status": "failed", "passed": False,
                                "latency_ms": None, "accuracy": None, "notes": [msg]})
                continue
            artifacts.append(art)
            results.append(res)
            if art.timeable:
                timed.append((res, runner))
        with steps(f"latency ({len(timed)} runners, interleaved)"):
            time_results(timed, data, opts, report["roofline"]["flops_per_image"])
        del timed
        report["results"] = results
        report["step_seconds"] = steps.times
        if "set" in calib_cache:
            report["calibration"] = calib_cache["set"].describe()
        manifest = _manifest(spec, report, artifacts, onnx_export, work, INPUT_NAME, OUTPUT_NAME, opts)
        write_report(report, work)
        (work / MANIFEST).write_text(__import__("json").dumps(manifest, indent=2))
    report["bundle"] = str(Path(opts.out) / spec.slug)
    return report


def _manifest(spec, report, artifacts, onnx_export, work, input_name, output_name, opts) -> dict:
    files = list(onnx_export.files) + [f for a in artifacts for f in a.files]
    return {
        "format": "vitdeploy-bundle/1", "model": spec.name, "source": spec.source, "weights": spec.weights,
        "input": {"name": input_name, "shape": report["input_shape"], "dtype": "float32",
                  "dynamic_batch": opts.dynamic_batch, "layout": "NCHW"},
        "output": {"name": output_name, "shape": [report["input_shape"][0], spec.num_classes], "dtype": "float32"},
        "preprocessing": spec.preprocessing.to_dict(), "labels": spec.labels,
        "onnx": str(onnx_export.path.relative_to(work)),
        "artifacts": [{"target": a.target, "precision": a.precision, "status": a.status,
                       "primary": str(a.primary.relative_to(work)) if a.primary else None,
                       "files": [str(f.relative_to(work)) for f in a.files], "runtime_config": a.runtime_config}
                      for a in artifacts],
        "rewrites": report.get("rewrites"), "graph": report.get("graph"),
        "calibration": report.get("calibration"), "evaluation": report.get("data"),
        "versions": report["environment"]["versions"], "created": report["created"],
        "sha256": file_hashes(work, files),
    }
