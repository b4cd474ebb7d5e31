"""Proof of the rewrites: naive export against rewritten, same weights, measured in one run.

For each model: node counts by op type (raw torch.onnx output, after onnxslim, rewritten),
the graph contract, and ONNX Runtime / OpenVINO FP32 p50 latency. The two graphs are timed
in alternating rounds so drift on the machine hits both equally.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from exporters.graph.onnx import export_onnx
from exporters.graph.rewrites import apply_rewrites
from exporters.models.zoo import create_model
from exporters.targets.coreml import convert
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.backends.openvino import OpenVinoRunner
from runtime.errors import UserError
from runtime.latency import measure_interleaved


def _timed(runners: dict, x, runs: int, warmup: int, rounds: int) -> dict:
    """``{name: latency dict}`` for runners fed the same input, timed interleaved; closes the runners."""
    try:
        lats = measure_interleaved(runners, lambda r: {r.input_name: x}, runs, warmup, rounds)
    finally:
        for r in runners.values():
            r.close()
    return {k: v.to_dict() for k, v in lats.items()}


def compare_model(name: str, threads: int, runs: int = 60, warmup: int = 10, rounds: int = 4,
                  dynamic_batch: bool = False) -> dict:

    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    rewritten, report = apply_rewrites(model, shape)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        dyn = dict(dynamic_batch=dynamic_batch)
        raw = export_onnx(model, shape, d / "raw.onnx", enforce_contract=False, simplify=False, **dyn)
        naive = export_onnx(model, shape, d / "naive.onnx", enforce_contract=False, **dyn)
        ours = export_onnx(rewritten, shape, d / "rewritten.onnx", enforce_contract=False, **dyn)
        out = {"model": name, "dynamic_batch": dynamic_batch, "source": spec.source, "input_shape": list(shape),
               "rewrites": report.to_dict(),
               "graphs": {k: {"num_nodes": e.num_nodes, "op_counts": e.op_counts, "contract": e.contract}
                          for k, e in (("naive_raw", raw), ("naive", naive), ("rewritten", ours))}}
        ort = {"naive": OnnxRuntimeRunner(naive.path, threads=threads),
               "rewritten": OnnxRuntimeRunner(ours.path, threads=threads)}
        out["onnxruntime_fp32"] = _timed(ort, x, runs, warmup, rounds)
        try:
            ov = {"naive": OpenVinoRunner(naive.path, threads=threads),
                  "rewritten": OpenVinoRunner(ours.path, threads=threads)}
            out["openvino_fp32"] = _timed(ov, x, runs, warmup, rounds)
        except Exception as exc:  # reason: OpenVINO is an optional extra
            out["openvino_fp32"] = {"error": str(exc)}
    for k in ("onnxruntime_fp32", "openvino_fp32"):
        m = out[k]
        if "naive" in m:
            m["speedup"] = round(m["naive"]["p50"] / m["rewritten"]["p50"], 3)
    return out


def render(results: list[dict], env_line: str, command: str) -> str:
    dyn = " (dynamic batch)" if results and results[0].get("dynamic_batch") else " (static batch)"
    lines = [f"## Rewrites: naive export against rewritten{dyn}, same weights, one run", "",
             f"Command: `{command}`", "", f"Machine: {env_line}", "",
             "| model | nodes raw → slim → rewritten | contract (naive slim / rewritten) | ORT p50 naive → rewritten | "
             "OpenVINO p50 naive → rewritten |", "|---|---|---|---|---|"]
    for r in results:
        g = r["graphs"]

        def lat(k):
            m = r[k]
            return (f"{m['naive']['p50']:.2f} → {m['rewritten']['p50']:.2f} ms (**{m['speedup']:.2f}×**)"
                    if "naive" in m else m.get("error", "–"))
        contract = f"{'pass' if g['naive']['contract']['passed'] else 'FAIL'} / " \
                   f"{'pass' if g['rewritten']['contract']['passed'] else 'FAIL'}"
        if not g["naive"]["contract"]["passed"]:
            contract += f" ({len(g['naive']['contract']['violations'])}+ violations, e.g. " \
                        f"{g['naive']['contract']['violations'][0].split(':')[0]})"
        lines.append(f"| {r['model']} | {g['naive_raw']['num_nodes']} → {g['naive']['num_nodes']} → "
                     f"{g['rewritten']['num_nodes']} | {contract} | {lat('onnxruntime_fp32')} | {lat('openvino_fp32')} |")
    lines.append("")
    for r in results:
        ops = sorted(set().union(*[g["op_counts"] for g in r["graphs"].values()]))
        lines += [f"### {r['model']}: node counts by op type", "", "| op | raw | slim | rewritten |", "|---|---|---|---|"]
        for op in ops:
            c = [r["graphs"][k]["op_counts"].get(op, 0) for k in ("naive_raw", "naive", "rewritten")]
            lines.append(f"| {op} | {c[0]} | {c[1]} | {c[2]} |")
        lines.append("")
    return "\n".join(lines)


def coreml_proof(name: str) -> dict:
    """Convert the naive and the rewritten model with coremltools (TorchScript path) on this OS."""
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    rewritten, _ = apply_rewrites(model, shape)
    out = {"model": name}
    for label, m in (("naive", model), ("rewritten", rewritten)):
        t0 = time.perf_counter()
        try:
            convert(m, shape, "fp16")
            out[label] = {"converted": True, "seconds": round(time.perf_counter() - t0, 1)}
        except UserError as exc:
            out[label] = {"converted": False, "error": str(exc)[:200]}
    return out


def render_coreml(results: list[dict], command: str) -> str:
    lines = ["## Core ML conversion (coremltools, ML Program, FP16, on Linux)", "", f"Command: `{command}`", "",
             "| model | naive | rewritten |", "|---|---|---|"]
    for r in results:
        cell = lambda d: (f"converts ({d['seconds']} s)" if d["converted"] else f"fails: {d['error']}")  # noqa: E731
        lines.append(f"| {r['model']} | {cell(r['naive'])} | {cell(r['rewritten'])} |")
    return "\n".join(lines) + "\n"


def contract_all(names: list[str], dynamic_batch: bool = False) -> list[dict]:
    """Export each model with rewrites and run the graph contract; one row per model."""
    rows = []
    for name in names:
        model, spec = create_model(name)
        shape = (1, *spec.input_shape)
        rewritten, report = apply_rewrites(model, shape)
        with tempfile.TemporaryDirectory() as d:
            exp = export_onnx(rewritten, shape, Path(d) / "m.onnx", dynamic_batch=dynamic_batch, enforce_contract=False)
        rows.append({"model": name, "nodes": exp.num_nodes, "passed": exp.contract["passed"],
                     "violations": exp.contract["violations"][:3], "rewrites": report.to_dict()["replaced"]})
    return rows
