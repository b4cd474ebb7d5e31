"""The end-to-end job as named stages: prepare -> export -> reference -> build + verify -> time -> write.

``run(RunOptions) -> report dict`` (the report.json form). Data moves one way; the PyTorch
reference is one more runner, and every runner gets the same inputs, batch size and thread count.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from calibration import CalibrationSet, load_set
from exporters.graph.onnx import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from exporters.graph.outputs import check_dry_run, check_reference, compare_outputs, judge_outputs, output_names, task_note
from exporters.graph.rewrites import apply_rewrites
from exporters.models.features import backbone
from exporters.models.memory import check_batch
from exporters.models.roofline import attained, gemm_peak_gflops, model_flops
from exporters.models.sizes import model_at_size
from exporters.models.zoo import create_model
from exporters.pipeline.multisize import SingleSize, run_sizes
from exporters.pipeline.options import ResolvedOptions, RunOptions, plan, validate
from exporters.pipeline.result import Result
from exporters.report.render import write_report
from exporters.targets import Artifact, BuildContext, target
from exporters.verify import budget
from exporters.verify.dense import drift_stage
from exporters.verify.proof import eval_judge, gate_for, golden_spec, golden_stage, repair_stage
from exporters.verify.recipes import recipe_stage, wants_auto
from exporters.verify.reference import TorchRunner, evaluation_batch, gpu_name
from runtime import signing
from runtime.backends import Runner
from runtime.backends.base import flat_outputs
from runtime.environment import environment
from runtime.errors import UserError
from runtime.latency import measure_interleaved, measure_throughput_interleaved, throughput
from runtime.manifest import Manifest, TensorSpec, file_hashes
from runtime.pack import keep_only, kept
from runtime.staging import check_replaceable, check_writable, staged_bundle
from runtime.tolerances import agreement_gated

BIG_MODEL_EVAL_SIZE = 64  # default evaluation samples for models above 64 px (digits models use all)
OUTPUT_BYTES = 512 << 20  # a backbone's default evaluation set keeps each runner's feature maps within this
UNCAPPED = 100_000  # a cap above this many samples (an embedding's few values) leaves "all of the set" as it is


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


@dataclass
class Job:
    """What ``prepare`` resolved: the model, its evaluation set and the run's fixed facts."""

    opts: RunOptions
    model: object  # torch.nn.Module, the reference
    spec: object  # exporters.models.zoo.ModelSpec
    data: CalibrationSet
    threads: int
    target_options: dict
    steps: Steps
    report: dict  # the report being assembled (report.json form)
    calib: Callable[[], CalibrationSet]
    calib_cache: dict  # {"set": CalibrationSet} once a target asked for calibration
    superseded: list = field(default_factory=list)  # files of builds the accuracy budget replaced
    logits: dict = field(default_factory=dict)  # (target, precision) -> its evaluation logits, last verified
    rows: dict = field(default_factory=dict)  # (target, precision) -> its Result, last verified

    @property
    def ref_logits(self) -> np.ndarray:
        return self.logits[("pytorch", "fp32")]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.opts.batch, *self.spec.input_shape)

    @property
    def is_random(self) -> bool:
        return self.spec.weights == "random"


@dataclass
class Reference:
    runner: Runner
    logits: np.ndarray
    result: Result


def label_index(spec) -> dict[str, int]:
    idx = {name: i for i, name in enumerate(spec.labels or [])}
    if spec.num_classes == 1000:
        try:
            from timm.data import ImageNetInfo
            idx.update({syn: i for i, syn in enumerate(ImageNetInfo().label_names())})
        except Exception:  # reason: synset names are a convenience; descriptions still match
            pass
    return idx


def run_outputs(runner: Runner, data: CalibrationSet, batch: int) -> np.ndarray:
    """Logits ``[N, classes]`` of ``runner`` over the whole set, in static batches (a backbone's maps flattened and
    concatenated per sample, ``runtime.backends.base.flat_outputs``)."""
    outs = [flat_outputs(runner.infer({runner.input_name: chunk})) for chunk in data.batches(batch)]
    return np.concatenate(outs)[:len(data)]


def evaluate(job: Job, runner: Runner) -> np.ndarray:
    """``run_outputs`` over the evaluation set at the export's batch; an eager PyTorch runner (the reference, Core ML's
    proxy: ``eager``) in chunks of ``exporters.verify.reference.evaluation_batch`` instead, or at the export's batch for a
    module that takes no other."""
    batch = job.opts.batch
    if getattr(runner, "eager", False):
        chunk = evaluation_batch(batch, job.report.get("memory", {}).get("activation_bytes_per_sample"))
        try:
            return run_outputs(runner, job.data, chunk)
        except Exception:  # noqa: BLE001 - a module that takes only its export batch: evaluate at that batch
            if chunk == batch:
                raise
    return run_outputs(runner, job.data, batch)


def prepare(resolved: ResolvedOptions) -> Job:
    """Load the model and the evaluation set for options ``validate`` passed; nothing is written yet."""
    opts, sizes, threads = resolved.opts, resolved.sizes, resolved.threads
    check_writable(Path(opts.out))
    steps = Steps(opts.quiet)
    with steps("model"):
        if opts.module is not None:
            model, spec = opts.module.eval(), opts.spec
            if sizes and tuple(spec.input_shape[1:]) != sizes[0] and not opts.backbone:
                model, spec = model_at_size(model, spec, sizes[0], spec.name)
        else:  # a backbone takes its size below: padded to the window grid, not re-laid
            model, spec = create_model(opts.model, weights=opts.weights, pretrained=opts.pretrained,
                                       num_classes=opts.num_classes, labels=opts.labels,
                                       img_size=sizes[0] if sizes and not opts.backbone else None)
        if opts.backbone:
            model, spec = backbone(model, spec, opts.feature_indices,
                                   sizes[0] if sizes else tuple(spec.input_shape[1:]), opts.model)
    check_replaceable(Path(opts.out), spec.slug)  # before any work: never replace what is not ours
    if spec.task == "embedding" and opts.max_drop is not None:
        raise UserError(f"--max-drop is a drop of top-1 on labelled images; {spec.name} has no classifier (an "
                        "embedding model): use --min-cosine")
    eval_size = opts.eval_size if opts.eval_size is not None else (
        None if max(spec.input_shape[1:]) <= 64 else BIG_MODEL_EVAL_SIZE)
    if spec.outputs and opts.eval_size is None:  # a backbone's maps are large: every runner keeps them for the set
        cap = max(4, OUTPUT_BYTES // (4 * sum(int(np.prod(s)) for _, s in spec.outputs)))
        if eval_size is not None or cap < UNCAPPED:
            eval_size = min(eval_size or cap, cap)
    calibrates = any(p == "int8" for _, p in resolved.plan)
    with steps("memory estimate and dry run"):  # what cannot fit or does not run: one line, now
        memory = check_batch(model, spec.input_shape, opts.batch,
                             samples=(eval_size or 0) + (opts.calib_size if calibrates else 0))
        check_dry_run(model, spec)
    with steps(f"evaluation set ({opts.data})"):
        data = load_set(opts.data, spec.preprocessing, size=eval_size, part="holdout",
                        label_index=label_index(spec), progress=not opts.quiet)
    if spec.task != "classification" and data.labels is not None:
        data.labels = None  # image labels are classes of images, not of feature maps or pixels
    if str(opts.data) == "digits" and not spec.source.startswith("digits:") and data.labels is not None:
        data.labels = None  # digit labels 0-9 are not this model's classes
        data.notes.append("digits labels do not match this model's classes: dataset top-1 not computed")
    budget.validate(opts.max_drop, opts.min_cosine, data.labels is not None)
    cache: dict = {}

    def calib() -> CalibrationSet:
        if "set" not in cache:
            src = opts.calib or opts.data
            with steps(f"calibration set ({src})"):
                cache["set"] = load_set(src, spec.preprocessing, size=opts.calib_size, part="train",
                                        label_index=label_index(spec), progress=not opts.quiet)
        return cache["set"]

    report = {"model": spec.name, "source": spec.source, "weights": spec.weights,
              "input_shape": [opts.batch, *spec.input_shape],
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "environment": environment(threads, gpu=gpu_name()), "notes": list(spec.notes) + (
                  [task_note(spec)] if task_note(spec) else []),
              "data": data.describe(), "memory": memory,
              "roofline": {"flops_per_image": model_flops(model, (1, *spec.input_shape)),
                           "gemm_peak_gflops": round(gemm_peak_gflops(threads), 1)}}
    return Job(opts=opts, model=model, spec=spec, data=data, threads=threads, target_options=resolved.target_options,
               steps=steps, report=report, calib=calib, calib_cache=cache)


def export_stage(job: Job, work: Path):
    """Rewrites (unless disabled) and the contract-checked ONNX; returns (export model, OnnxExport)."""
    if job.opts.rewrites:
        with job.steps("rewrites"):
            export_model, rw = apply_rewrites(job.model, job.input_shape)
        job.report["rewrites"] = rw.to_dict()
    else:
        export_model, job.report["rewrites"] = job.model, {"replaced": {}, "fired": [], "disabled": True}
    with job.steps("ONNX export"):
        exp = export_onnx(export_model, job.input_shape, work / "model.onnx", dynamic_batch=job.opts.dynamic_batch,
                          enforce_contract=job.opts.rewrites,
                          output_names=output_names(job.spec))
    job.report["graph"] = {"num_nodes": exp.num_nodes, "op_counts": exp.op_counts, "contract": exp.contract,
                           "opset": OPSET, "dynamic_batch": job.opts.dynamic_batch}
    return export_model, exp


def verify(job: Job, result: Result, runner: Runner, ref: Reference | None, art: Artifact | None) -> np.ndarray:
    """Run ``runner`` over the evaluation set, judge it against the reference's logits; return its logits."""
    logits = evaluate(job, runner)
    if ref is None:
        check_reference(logits)
    ref_logits = logits if ref is None else ref.logits
    acc, checks = compare_outputs(job.spec, ref_logits, logits, job.data.labels)
    result.checks.update(checks)
    tol, gate = gate_for(job, result.target, result.precision)
    ref_top1 = None if ref is None else ref.result.accuracy.top1
    passed, why = judge_outputs(job.spec, acc, checks, ref_top1, tol, gate, result.precision, job.is_random)
    if "dense" in checks and not agreement_gated(job.is_random, result.precision):
        result.notes.append("random weights: pixel agreement and mean IoU are reported but not gated for reduced "
                            "precision")
    if not gate and not task_note(job.spec):
        result.notes.append("random weights: top-1 agreement is reported but not gated for reduced precision")
    result.accuracy_kind = "direct"
    if art is not None and art.proxy:
        result.notes.append(f"PROXY accuracy: {art.proxy}")
        result.accuracy_kind = "proxy"
    result.runtime = runner.describe()
    result.device = result.runtime.get("device")
    if art is not None and not art.timeable:
        result.device = f"proxy: {result.device}"
    result.accuracy, result.tolerance, result.passed, result.failures = acc, tol, passed, why
    result.notes += [f"FAILED: {w}" for w in why]
    job.logits[(result.target, result.precision)] = logits
    job.rows[(result.target, result.precision)] = result
    return logits


def reference_stage(job: Job) -> Reference:
    runner = TorchRunner(job.model, list(job.input_shape), threads=job.threads)
    res = Result(target="pytorch", precision="fp32", status="built")
    with job.steps(f"PyTorch reference ({runner.device})"):
        logits = verify(job, res, runner, None, None)
    return Reference(runner=runner, logits=logits, result=res)


def build_stage(job: Job, ctx: BuildContext, name: str, precision: str,
                ref: Reference) -> tuple[Result, Artifact | None, Runner | None]:
    """Build one (target, precision), open it and verify it (then hold it to the accuracy budget, if any).
    A missing SDK is a skipped row."""
    t = target(name)
    why = t.available()
    if why:
        return Result.not_built(name, precision, "skipped", why), None, None
    t.check_precision(precision)

    options = {"chosen": job.target_options[name]}  # --recipe auto: rebuilds use the recipe it kept

    def build_once(c: BuildContext) -> tuple[Result, Artifact, Runner, np.ndarray]:
        art = t.build(c, precision, options["chosen"])
        art.runtime_config.update(c.runtime_config)
        return open_and_verify(c, art)

    def open_and_verify(c: BuildContext, art: Artifact) -> tuple[Result, Artifact, Runner, np.ndarray]:
        t0 = time.perf_counter()
        runner = t.runner(c, art, job.threads)
        art.build_s["open"] = time.perf_counter() - t0
        res = Result(target=name, precision=precision, status=art.status, notes=list(art.notes),
                     artifact=art.primary.relative_to(c.workdir).as_posix() if art.primary else None,
                     size_mb=round(art.size_mb, 3), build_s={k: round(v, 3) for k, v in art.build_s.items()},
                     checks=art.checks)
        logits = verify(job, res, runner, ref, art)
        return res, art, runner, logits
    if wants_auto(job, t, precision):
        built, recipe = recipe_stage(job, ctx, t, precision, eval_judge(job, ref, name, precision, run_outputs),
                                     lambda art: open_and_verify(ctx, art))
        options["chosen"] = dataclasses.replace(options["chosen"], recipe=recipe)
    else:
        with job.steps(f"{name} {precision}"):
            built = build_once(ctx)
    built, overrides = repair_stage(job, ctx, built, ref, lambda art: open_and_verify(ctx, art), run_outputs)
    ctx = dataclasses.replace(ctx, runtime_config={**ctx.runtime_config, **overrides})
    if job.opts.max_drop is None and job.opts.min_cosine is None and built[0].passed is False and job.opts.repair \
            and precision in t.keeps and job.spec.task != "segmentation":  # its pixel gates are no cosine budget
        return budget.enforce(job, ctx, name, precision, ref, built, build_once, budget.gate_as_budget(job, built[0]))
    return budget.enforce(job, ctx, name, precision, ref, built, build_once)


def build_all(job: Job, ctx: BuildContext, ref: Reference) -> tuple[list[Result], list[Artifact], list]:
    """Every planned (target, precision); under several targets one failure does not sink the others."""
    results, artifacts, timed = [], [], []
    for name, precision in plan(job.opts.targets, job.opts.precision, job.opts.precisions):
        try:
            res, art, runner = build_stage(job, ctx, name, precision, ref)
        except Exception as exc:  # reason: under --target all one target's failure must not sink the others
            if len(job.opts.targets) == 1:
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            msg = str(exc) if isinstance(exc, UserError) else f"internal error: {type(exc).__name__}: {first}"
            results.append(Result.not_built(name, precision, "failed", msg))
            continue
        results.append(res)
        if art is None:
            continue
        artifacts.append(art)
        if art.timeable:
            timed.append((res, runner, art))
        else:
            runner.close()
    drop_superseded(job, artifacts)
    return results, artifacts, timed


def drop_superseded(job: Job, artifacts: list[Artifact]) -> None:
    """Remove from the staging bundle the files of budget steps that no final artefact uses."""
    final = {Path(f).resolve() for a in artifacts for f in a.files}
    for f in dict.fromkeys(job.superseded):
        if Path(f).resolve() not in final and Path(f).is_file():
            Path(f).unlink()


def time_stage(job: Job, timed: list[tuple[Result, Runner, Artifact | None]]) -> None:
    """Time every runner in interleaved rounds (the reference first) and fill latency and speedups."""
    feeds = next(job.data.batches(job.opts.batch))
    runners = {i: runner for i, (_, runner, _) in enumerate(timed)}
    with job.steps(f"latency ({len(timed)} runners, interleaved)"):
        lats = measure_interleaved(runners, lambda r: {r.input_name: feeds}, runs=job.opts.runs,
                                   warmup=job.opts.warmup)
    ref_p50 = lats[0].p50
    flops = job.report["roofline"]["flops_per_image"]
    for i, (res, _, _) in enumerate(timed):
        lat = lats[i]
        res.latency_ms = {k: round(v, 4) for k, v in lat.to_dict().items() if k != "runs"}
        res.runs = lat.runs
        res.throughput_ips = round(throughput(lat, job.opts.batch), 3)
        res.speedup_vs_reference = round(ref_p50 / lat.p50, 3)
        if flops:
            res.gflops = round(attained(flops, job.opts.batch, lat.p50), 2)


def throughput_stage(job: Job, ctx: BuildContext, timed: list[tuple[Result, Runner, Artifact | None]]) -> None:
    """``--throughput``: reopen every timed artefact in throughput mode and measure images per second,
    interleaved like the latency. The PyTorch reference runs one batch at a time (its mode: latency)."""
    feeds = next(job.data.batches(job.opts.batch))
    runners = {}
    try:
        for i, (res, runner, art) in enumerate(timed):
            runners[i] = runner if art is None else target(res.target).runner(ctx, art, job.threads, mode="throughput")
        with job.steps(f"throughput ({len(timed)} runners, interleaved)"):
            tps = measure_throughput_interleaved(runners, lambda r: {r.input_name: feeds},
                                                 job.opts.throughput_seconds)
        for i, (res, _, _) in enumerate(timed):
            res.throughput_mode = tps[i].to_dict()
    finally:
        for i, (_, _, art) in enumerate(timed):
            if art is not None and i in runners:
                runners[i].close()


def select_fastest(job: Job, results: list[Result]) -> dict | None:
    """``--precision auto``: the fastest artefact of this run that passed its gate, with the timing it was chosen on."""
    timed = [r for r in results if r.target != "pytorch" and r.passed and r.latency_ms and r.status == "built"]
    if not timed:
        return None
    best = min(timed, key=lambda r: r.latency_ms["p50"])
    cpu = job.report["environment"]["cpu"]
    return {"target": best.target, "precision": best.precision, "p50_ms": best.latency_ms["p50"],
            "candidates": {f"{r.target} {r.precision}": r.latency_ms["p50"] for r in timed},
            "chosen_on": f"p50 latency, batch {job.opts.batch}, interleaved in this run, on {cpu.get('model')} "
                         f"({' '.join(cpu.get('flags', []))}), {job.threads} threads"}


def manifest_for(job: Job, work: Path, artifacts: list[Artifact], exp) -> Manifest:
    files = list(exp.files) + [f for a in artifacts for f in a.files] + ([work / job.report["golden"]["file"]]
                                                                         if job.report.get("golden") else [])
    rep, shape = job.report, job.report["input_shape"]
    return Manifest(
        model=job.spec.name, source=job.spec.source, weights=job.spec.weights,
        input=TensorSpec(name=INPUT_NAME, shape=shape, dtype="float32", dynamic_batch=job.opts.dynamic_batch,
                         layout="NCHW"),
        output=TensorSpec(name=OUTPUT_NAME, shape=[shape[0], job.spec.num_classes], dtype="float32")
        if not job.spec.outputs else TensorSpec(name=job.spec.outputs[0][0], shape=[shape[0], *job.spec.outputs[0][1]],
                                                dtype="float32", layout="NCHW" if len(job.spec.outputs[0][1]) == 3
                                                else None),
        outputs=[TensorSpec(name=n, shape=[shape[0], *s], dtype="float32", layout="NCHW" if len(s) == 3 else None)
                 for n, s in job.spec.outputs] if job.spec.outputs else None,
        task=job.spec.task, preprocessing=job.spec.preprocessing.to_dict(), labels=job.spec.labels,
        onnx=exp.path.relative_to(work).as_posix(), artifacts=[a.entry(work) for a in artifacts],
        rewrites=rep.get("rewrites"), graph=rep.get("graph"), calibration=rep.get("calibration"),
        evaluation=rep.get("data"), versions=rep["environment"]["versions"], created=rep["created"],
        sha256=file_hashes(work, files), selection=rep.get("selection"), golden=golden_spec(job))


def keep_stage(job: Job, work: Path, manifest: Manifest) -> Manifest:
    """``--keep selected``: only the artefact the runtime would serve stays (its files, the golden set, the reports);
    every row stays in the report, which says what was left out. With none passing there is nothing to select."""
    if job.opts.keep != "selected":
        return manifest
    try:
        arts = kept(manifest)
    except UserError as exc:
        job.report["notes"].append(f"--keep selected: every artefact kept ({exc})")
        return manifest
    manifest = keep_only(work, manifest, arts)
    job.report["kept"] = manifest.packed
    job.report["notes"].append(f"--keep selected: the bundle holds {', '.join(manifest.packed['kept'])} only; left "
                               f"out: {', '.join(manifest.packed['left_out']) or 'nothing'}")
    return manifest


def write_stage(job: Job, work: Path, results: list[Result], artifacts: list[Artifact], exp) -> None:
    job.report["results"] = [r.to_dict() for r in results]
    if job.opts.precision == "auto":
        job.report["selection"] = select_fastest(job, results)
    job.report["step_seconds"] = job.steps.times
    if "set" in job.calib_cache:
        job.report["calibration"] = job.calib_cache["set"].describe()
    manifest = keep_stage(job, work, manifest_for(job, work, artifacts, exp))
    if job.opts.sign_key is not None:
        manifest.signed_by = job.report["signed_by"] = signing.key_id(signing.signing_key(job.opts.sign_key).public_key())
    write_report(job.report, work)
    manifest.write(work)
    if job.opts.sign_key is not None:
        with job.steps("signature (model-signing)"):
            signing.sign_bundle(work, job.opts.sign_key)  # last: it covers every file written above


def run_into(job: Job, work: Path) -> None:
    """Export, build, verify, time and write one bundle's files into ``work`` (a staging folder)."""
    timed: list[tuple[Result, Runner, Artifact | None]] = []
    try:
        export_model, exp = export_stage(job, work)
        ref = reference_stage(job)
        timed.append((ref.result, ref.runner, None))
        ctx = BuildContext(spec=job.spec, model=export_model, onnx_path=exp.path, workdir=work,
                           batch=job.opts.batch, threads=job.threads, calib=job.calib,
                           dynamic_batch=job.opts.dynamic_batch, shares_weights=job.opts.shares_weights)
        results, artifacts, built = build_all(job, ctx, ref)
        timed += built
        if job.spec.task == "segmentation":
            drift_stage(job, ctx, ref, artifacts)
        time_stage(job, timed)
        if job.opts.throughput:
            throughput_stage(job, ctx, timed)
        with job.steps("golden set and verdicts"):
            golden_stage(job, work, ref, artifacts, {(r.target, r.precision): rn for r, rn, a in built})
        write_stage(job, work, [ref.result, *results], artifacts, exp)
    finally:
        for _, runner, _ in timed:
            runner.close()


def run(opts: RunOptions) -> dict:
    """Build, verify and time every requested (target, precision); write the bundle; return the report.
    Every option is checked first (``options.validate``), before any model is built. Several ``img_size`` values
    make one bundle with a single-size bundle per size (exporters/pipeline/multisize.py)."""
    resolved = validate(opts)
    if resolved.sizes is not None and len(resolved.sizes) > 1:
        return run_sizes(resolved, SingleSize(prepare=prepare, run_into=run_into))
    job = prepare(resolved)
    with staged_bundle(Path(opts.out), job.spec.slug) as work:
        run_into(job, work)
    job.report["bundle"] = str(Path(opts.out) / job.spec.slug)
    return job.report


__all__ = ["RunOptions", "run", "run_into", "prepare", "plan", "run_outputs"]  # RunOptions, plan: from options
