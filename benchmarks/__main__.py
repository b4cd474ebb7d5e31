"""``python -m benchmarks``: the models × targets × precisions matrix, and the rewrite proof.

    python -m benchmarks swin_t vit_b [--targets onnxruntime,openvino] [--precisions fp32,int8]
    python -m benchmarks rewrites swin_t vit_b
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from runtime.errors import UserError


def _matrix(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Build (or rebuild), verify and time every "
                                "model × target × precision; write one report for the matrix.")
    p.add_argument("models", nargs="+", help="zoo names, e.g. swin_t vit_b digits_vit")
    p.add_argument("--targets", default="onnxruntime,openvino", help="comma list (default onnxruntime,openvino)")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="comma list (default fp32,fp16,int8)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default="digits")
    p.add_argument("--calib", default=None)
    p.add_argument("--calib-size", type=int, default=128)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    from benchmarks.report import write_matrix
    from exporters.pipeline import RunOptions, default_threads, run

    targets = [t for t in a.targets.split(",") if t]
    precisions = [x for x in a.precisions.split(",") if x]
    threads = a.threads or default_threads()
    reports = []
    try:
        for i, model in enumerate(a.models):
            print(f"[{i + 1}/{len(a.models)}] {model}", file=sys.stderr)
            reports.append(run(RunOptions(model=model, targets=targets, precisions=precisions, data=a.data,
                                          calib=a.calib, calib_size=a.calib_size, out=Path(a.out) / "bundles",
                                          batch=a.batch, runs=a.runs, threads=threads)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m benchmarks " + " ".join(shlex.quote(x) for x in argv)
    paths = write_matrix(reports, Path(a.out), command)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def _rewrites(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks rewrites",
                                description="Naive export against rewritten: node counts and FP32 latency, one run.")
    p.add_argument("models", nargs="+")
    p.add_argument("--runs", type=int, default=80)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dynamic-batch", action="store_true", help="export both graphs with a dynamic batch")
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    from benchmarks.environment import environment, one_line
    from benchmarks.rewrites import compare_model, render
    from exporters.pipeline import default_threads

    threads = a.threads or default_threads()
    try:
        results = [compare_model(m, threads, runs=a.runs, dynamic_batch=a.dynamic_batch) for m in a.models]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(threads)
    stem = "rewrites-dynamic" if a.dynamic_batch else "rewrites"
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "results": results}, indent=2))
    md = render(results, one_line(env), "python -m benchmarks rewrites " + " ".join(argv))
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "rewrites":
        return _rewrites(argv[1:])
    return _matrix(argv)


if __name__ == "__main__":
    raise SystemExit(main())
