"""``python -m benchmarks``: the models × targets × precisions matrix, and the rewrite proof.

    python -m benchmarks swin_t vit_b [--targets onnxruntime,openvino] [--precisions fp32,int8]
    python -m benchmarks rewrites swin_t vit_b
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from benchmarks import compare, device_cost, drift, evaluate, families, op_profile, ort_int8, rewrites, scale, vs_naive
from exporters.models.zoo import create_model, known_names
from exporters.pipeline.options import RunOptions, plan
from exporters.pipeline.stages import run
from exporters.report.render import write_matrix
from exporters.targets import RECIPE_NAMES, target
from runtime import values
from runtime.cli import GATE_FAILED, OK, run_cli
from runtime.environment import environment, one_line
from runtime.errors import UserError
from runtime.values import usable_cores

RATIO = values.real(0.0, 1000.0, name="ratio")
WORKERS = values.integer(1, 4096, "workers")

WEIGHTS_HELP = "the PyTorch reference's checkpoint, when the bundle's weights cannot be rebuilt from its manifest"


def _emit(out: Path, stem: str, md: str, data: dict | None = None) -> None:
    """Write ``stem.md`` (and ``stem.json``) under ``out`` and print the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md)
    if data is not None:
        (out / f"{stem}.json").write_text(json.dumps(data, indent=2))
    print(md)


def _matrix(argv) -> int:
    p = values.Parser(prog="python -m benchmarks", description="Build (or rebuild), verify and time every "
                                "model × target × precision; write one report for the matrix.")
    p.add_argument("models", nargs="+", help="zoo names, e.g. swin_t vit_b digits_vit")
    p.add_argument("--targets", default="onnxruntime,openvino", help="comma list (default onnxruntime,openvino)")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="comma list (default fp32,fp16,int8)")
    p.add_argument("--batch", type=values.BATCH, default=1)
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--data", default="digits")
    p.add_argument("--calib", default=None)
    p.add_argument("--calib-size", type=values.SAMPLES, default=128)
    p.add_argument("--eval-size", type=values.SAMPLES, default=None, help="evaluation samples (default: all for models "
                                                                "<= 64 px, else 64)")
    p.add_argument("--runs", type=values.RUNS, default=50)
    p.add_argument("--throughput", action="store_true", help="also measure images/s in throughput mode "
                   "(several inferences in flight)")
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    import time

    targets = [t for t in a.targets.split(",") if t]
    precisions = [x for x in a.precisions.split(",") if x]
    for t in targets:
        target(t)  # an unknown target is one line, exit 2
    bad = sorted(set(precisions) - {"fp32", "fp16", "int8"})
    if bad or not precisions:
        raise UserError(f"unknown precision(s) {', '.join(bad) or '(none given)'}; choose from fp32, fp16, int8")
    threads = a.threads or usable_cores()
    reports = []
    combos = len(plan(targets, None, precisions)) + 1  # + the PyTorch reference
    total, done, t_start = combos * len(a.models), 0, time.perf_counter()
    for i, model in enumerate(a.models):
        eta = ""
        if done:
            left = (time.perf_counter() - t_start) / done * (total - done)
            eta = f", about {left / 60:.1f} min left (from {done} combinations so far)"
        print(f"[model {i + 1}/{len(a.models)}] {model}: {combos} combinations{eta}", file=sys.stderr)
        reports.append(run(RunOptions(model=model, targets=targets, precisions=precisions, data=a.data,
                                      calib=a.calib, calib_size=a.calib_size, eval_size=a.eval_size,
                                      out=Path(a.out) / "bundles",
                                      batch=a.batch, runs=a.runs, threads=threads, throughput=a.throughput)))
        done += combos
    command = "python -m benchmarks " + " ".join(shlex.quote(x) for x in argv)
    paths = write_matrix(reports, Path(a.out), command)
    print("\n".join(f"wrote {p}" for p in paths))
    failed = [r for rep in reports for r in rep["results"] if r.get("passed") is False]
    return GATE_FAILED if failed else OK


def _rewrites(argv) -> int:
    p = values.Parser(prog="python -m benchmarks rewrites",
                                description="Naive export against rewritten: node counts and FP32 latency, one run.")
    p.add_argument("models", nargs="+")
    p.add_argument("--runs", type=values.RUNS, default=80)
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--dynamic-batch", action="store_true", help="export both graphs with a dynamic batch")
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)

    threads = a.threads or usable_cores()
    results = [rewrites.compare_model(m, threads, runs=a.runs, dynamic_batch=a.dynamic_batch) for m in a.models]
    env = environment(threads)
    md = rewrites.render(results, one_line(env), "python -m benchmarks rewrites " + " ".join(argv))
    _emit(Path(a.out), "rewrites-dynamic" if a.dynamic_batch else "rewrites", md,
          {"environment": env, "results": results})
    return 0


def _ort_int8(argv) -> int:
    p = values.Parser(prog="python -m benchmarks ort-int8",
                                description="ONNX Runtime INT8 variants: latency and digits accuracy in one run.")
    p.add_argument("--speed-model", default="swin_t")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--runs", type=values.RUNS, default=40)
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    threads = a.threads or usable_cores()
    res = ort_int8.measure_options(a.speed_model, threads=threads, runs=a.runs)
    md = ort_int8.render(res, one_line(environment(threads)), "python -m benchmarks ort-int8 " + " ".join(argv))
    _emit(Path(a.out), "ort-int8", md, res)
    return 0


def _compare(argv) -> int:
    p = values.Parser(prog="python -m benchmarks compare",
                                description="Compare two report.json files; exit 1 when a regression is flagged.")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=RATIO, default=0.10, help="latency rise that counts as a regression "
                                                                 "(fraction, default 0.10)")
    p.add_argument("--acc-threshold", type=values.POINTS, default=0.5, help="top-1 agreement fall, in points (default 0.5)")
    p.add_argument("--allow-different-models", action="store_true",
                   help="compare reports whose models differ (by default that is refused, exit 2)")
    a = p.parse_args(argv)
    old, new = compare.load_results(Path(a.old)), compare.load_results(Path(a.new))
    if not a.allow_different_models:
        compare.check_same_models(old, new)
    rows = compare.compare_reports(old, new, a.threshold, a.acc_threshold)
    print(compare.render(rows))
    return 1 if any(r["regression"] for r in rows) else 0


def _render(argv) -> int:
    p = values.Parser(prog="python -m benchmarks render", description="Re-render a matrix report.json.")
    p.add_argument("report")
    a = p.parse_args(argv)
    data = json.loads(Path(a.report).read_text())
    for path in write_matrix(data["reports"], Path(a.report).parent, data["command"]):
        print(f"wrote {path}")
    return 0


def _coreml(argv) -> int:
    p = values.Parser(prog="python -m benchmarks coreml",
                      description="Convert each model to Core ML with and without the rewrites (coremltools, ML "
                                  "Program, FP16) and report which converts; the table goes to out/bench/coreml.md.")
    p.add_argument("models", nargs="+", help="zoo names, e.g. swin_t vit_s")
    a = p.parse_args(argv)
    res = [rewrites.coreml_proof(m) for m in a.models]
    _emit(Path("out/bench"), "coreml", rewrites.render_coreml(res, "python -m benchmarks coreml " + " ".join(argv)))
    return 0


def _contract(argv) -> int:
    p = values.Parser(prog="python -m benchmarks contract",
                                description="Export every zoo model (or the ones named) with rewrites; check the contract.")
    p.add_argument("models", nargs="*")
    p.add_argument("--dynamic-batch", action="store_true")
    a = p.parse_args(argv)
    rows = rewrites.contract_all(a.models or known_names(), a.dynamic_batch)
    lines = [f"## Graph contract over the zoo ({'dynamic' if a.dynamic_batch else 'static'} batch)", "",
             f"Command: `{' '.join(['python -m benchmarks contract', *argv])}`", "",
             "| model | nodes | contract | rewrites fired |", "|---|---|---|---|"]
    for r in rows:
        fired = ", ".join(f"{k} ×{v}" for k, v in r["rewrites"].items() if v)
        lines.append(f"| {r['model']} | {r['nodes']} | {'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['violations'])}"
                     f" | {fired} |")
    _emit(Path("out/bench"), "contract-dynamic" if a.dynamic_batch else "contract", "\n".join(lines) + "\n")
    return 0 if all(r["passed"] for r in rows) else 1


def _vs_naive(argv) -> int:
    p = values.Parser(prog="python -m benchmarks vs-naive",
                                description="vitdeploy's artefacts against the naive export paths (timm -> "
                                            "torch.onnx.export -> ONNX Runtime / OpenVINO / NNCF / quantize_static "
                                            "with defaults), timed interleaved in one process; INT8 accuracy on "
                                            "the trained digits models.")
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--runs", type=values.RUNS, default=40)
    p.add_argument("--batch", type=values.BATCH, default=1)
    p.add_argument("--throughput", action="store_true", help="also images/s with every path in throughput mode "
                   "(OpenVINO THROUGHPUT hint and streams, ONNX Runtime concurrent runs), one path at a time")
    p.add_argument("--throughput-seconds", type=values.SECONDS, default=5.0)
    p.add_argument("--img-size", type=values.img_sizes, default=None, metavar="SIZE[,SIZE...]",
                   help="time every model at each of these input sizes (the same module on every path)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--features", action="store_const", dest="kind", const="backbone", default="classifier",
                      help="time each model's backbone (its feature maps, as --features exports them) instead of the "
                           "classifier; a detection size such as 800x1344 is padded to the window grid")
    kind.add_argument("--segmentation", action="store_const", dest="kind", const="segmentation",
                      help="time each model under an FPN segmentation head (benchmarks/segmenter.py, 150 classes, "
                           "logits at 1/4 of the input), exported by vitdeploy with task='segmentation'")
    p.add_argument("--recipe", choices=(*RECIPE_NAMES, "auto"), default="auto",
                   help="vitdeploy's INT8 recipe (default auto: each built, gated and timed, the fastest that passes "
                        "kept)")
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    for m in a.models:
        for size in a.img_size or [None]:
            vs_naive.timed_model(m, size, a.kind)  # an unknown model or a size it can't take: one line before any work
    threads = a.threads or usable_cores()
    throughput_s = a.throughput_seconds if a.throughput else None
    res = vs_naive.measure(a.models, threads, a.runs, batch=a.batch, throughput_s=throughput_s,
                           sizes=a.img_size, kind=a.kind, recipe=a.recipe)
    env = environment(threads)
    md = vs_naive.render(res, one_line(env), "python -m benchmarks vs-naive " + " ".join(argv))
    _emit(Path(a.out), "vs_naive", md, {"environment": env, **res})
    return OK


def _op_profile(argv) -> int:
    p = values.Parser(prog="python -m benchmarks op-profile",
                                description="OpenVINO's per-op counters for the best naive path (NNCF INT8, defaults) "
                                            "and vitdeploy's OpenVINO INT8, summed by node type and kernel.")
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--runs", type=values.RUNS, default=30)
    p.add_argument("--img-size", type=values.img_sizes, default=None, metavar="SIZE[,SIZE...]",
                   help="profile every model at each of these input sizes (re-laid as vs-naive --img-size does)")
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    for m in a.models:
        create_model(m)
    threads = a.threads or usable_cores()
    res = op_profile.measure(a.models, threads, a.runs, a.img_size)
    env = environment(threads)
    md = op_profile.render(res, one_line(env), "python -m benchmarks op-profile " + " ".join(argv))
    _emit(Path(a.out), "op_profile", md,
          {"environment": env, "models": res})
    return OK


def _device_cost(argv) -> int:
    p = values.Parser(prog="python -m benchmarks device-cost",
                      description="What a bundle costs on the device: bytes per artefact, and the cold start (a new "
                                  "`python -m runtime` process to its first prediction) with its peak resident memory.")
    p.add_argument("bundle")
    p.add_argument("--runs", type=values.integer(1, 100, "runs"), default=4, help="new processes (default 4)")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--out", default="out/device-cost")
    a = p.parse_args(argv)
    bundle = Path(a.bundle)
    if not bundle.is_dir():
        raise UserError(f"bundle not found: {bundle}")
    rows = device_cost.artefact_bytes(bundle)
    starts = device_cost.cold_starts(bundle, a.runs, ["--threads", str(a.threads)] if a.threads else [])
    env = environment(a.threads or usable_cores())
    command = "python -m benchmarks device-cost " + " ".join(argv)
    _emit(Path(a.out), "device_cost", device_cost.render(bundle, rows, starts, command, one_line(env)),
          {"environment": env, "artefacts": rows, "cold_starts": starts})
    return OK


def _eval(argv) -> int:
    p = values.Parser(prog="python -m benchmarks eval",
                                description="Evaluate a bundle's artefacts and its PyTorch reference on a whole labelled "
                                            "image folder (class sub-folders), streaming, resumable, optionally "
                                            "sharded on Ray; writes eval.json / eval.md.")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="image folder; the first sub-folder level is the class (named as "
                                                 "the model's labels, or its index)")
    p.add_argument("--targets", default=None, help="comma list (default: every built artefact that runs here)")
    p.add_argument("--precisions", default=None, help="comma list (default: all)")
    p.add_argument("--reference", choices=("auto", "torch", "onnx", "none"), default="auto",
                   help="torch: PyTorch rebuilt from the manifest; onnx: the bundle's FP32 ONNX in ONNX Runtime; "
                        "auto: torch unless the weights cannot be rebuilt (random or downloaded)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=WORKERS, default=1, help="N > 1: start a local Ray with N workers")
    where.add_argument("--ray", default=None, metavar="ADDRESS", help="join a running Ray cluster (e.g. auto, "
                                                                      "ray://head:10001)")
    p.add_argument("--limit", type=values.SAMPLES, default=None, help="only the first N images (sorted order)")
    p.add_argument("--shard-size", type=values.integer(1, 1_000_000, "shard_size"), default=256)
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--threads", type=values.threads, default=None, help="threads per worker (default: all cores in one "
                                                             "process, 1 per Ray worker)")
    p.add_argument("--out", default="out/eval")
    a = p.parse_args(argv)
    sharded = a.workers > 1 or a.ray
    threads = a.threads or (1 if sharded else usable_cores())
    def split(s):
        return ([x for x in s.split(",") if x] if s else None)
    plan = scale.make_plan(Path(a.bundle), Path(a.data), split(a.targets), split(a.precisions), a.reference, a.limit,
                           a.shard_size, threads, a.weights)
    res = scale.evaluate(plan, Path(a.out), workers=a.workers, address=a.ray)
    env = environment(threads)
    res["environment"] = env
    _emit(Path(a.out), "eval", evaluate.render(res, "python -m benchmarks eval " + " ".join(argv), one_line(env)), res)
    return OK


def _drift(argv) -> int:
    p = values.Parser(prog="python -m benchmarks drift",
                                description="Compare one artefact of a bundle with PyTorch block by block (embedding, "
                                            "every block's attention and MLP, patch merging, head), under the PyTorch "
                                            "module names; writes drift.json / drift.md / drift.png.")
    p.add_argument("bundle")
    p.add_argument("--target", default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--data", default="digits", help="image folder, array file or digits (default digits: hold-out)")
    p.add_argument("--size", type=values.SAMPLES, default=32, help="samples (default 32)")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--out", default="out/drift")
    a = p.parse_args(argv)
    res = drift.drift(Path(a.bundle), a.target, a.precision, a.data, a.size, a.threads, a.weights)
    env = environment(a.threads)
    res["environment"] = env
    out = Path(a.out)
    _emit(out, "drift", drift.render(res, "python -m benchmarks drift " + " ".join(argv), one_line(env)), res)
    print(f"wrote {drift.plot(res, out / 'drift.png')}")
    return OK


def _families(argv) -> int:
    p = values.Parser(prog="python -m benchmarks families",
                      description="Every ViT and Swin family timm registers (its registry's model modules): the "
                                  "smallest model of each through the naive export and vitdeploy's pipeline (ONNX "
                                  "Runtime and OpenVINO FP32 + INT8, TensorRT-RTX INT8 parse and build); rules fired, "
                                  "node counts, gates, cosines, latency.")
    p.add_argument("--quick", action="store_true", help="a narrow, shallow config of each (timm's own kwargs), "
                                                        "small inputs: minutes instead of an hour")
    p.add_argument("--family", action="append", default=None, metavar="MODULE",
                   help="only this timm module (repeatable; default every family)")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--runs", type=values.RUNS, default=20)
    p.add_argument("--eval-size", type=values.SAMPLES, default=32)
    p.add_argument("--calib-size", type=values.SAMPLES, default=32)
    p.add_argument("--write-readme", default=None, metavar="README.md",
                   help="replace the supported-families table between its markers in this file")
    p.add_argument("--out", default="out/families")
    a = p.parse_args(argv)
    known = families.families()
    bad = [f for f in a.family or [] if f not in known]
    if bad:
        raise UserError(f"unknown family {bad[0]!r}; timm's ViT and Swin families: {', '.join(known)}")
    if a.write_readme and not Path(a.write_readme).is_file():
        raise UserError(f"{a.write_readme} is not a file")
    threads = a.threads or usable_cores()
    out = Path(a.out)
    rows = families.measure(a.family or known, a.quick, threads, a.runs, a.eval_size, a.calib_size, out / "bundles")
    env = environment(threads)
    command = "python -m benchmarks families " + " ".join(argv)
    _emit(out, "families", families.render(rows, command, one_line(env)), {"environment": env, "families": rows})
    if a.write_readme:
        table = families.readme_table(rows, command.replace(f" --write-readme {a.write_readme}", ""), one_line(env))
        families.write_readme(Path(a.write_readme), table)
        print(f"wrote the families table into {a.write_readme}")
    return OK if families.passed(rows) else GATE_FAILED


SUBCOMMANDS = {"rewrites": _rewrites, "families": _families, "ort-int8": _ort_int8, "compare": _compare, "render": _render,
               "coreml": _coreml, "contract": _contract,
               "vs-naive": _vs_naive, "op-profile": _op_profile, "device-cost": _device_cost, "eval": _eval, "drift": _drift}


def main(argv: list[str] | None = None) -> int:
    """Exit codes (runtime/cli.py): 0 ok, 1 a regression or failed gate, 2 bad input, 3 internal error."""
    return run_cli("python -m benchmarks", _dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return _matrix(argv)


if __name__ == "__main__":
    raise SystemExit(main())
