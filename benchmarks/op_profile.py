"""Per-op profile of the best naive path (NNCF INT8 with defaults) against vitdeploy's OpenVINO INT8.

OpenVINO's own counters (``PERF_COUNT``): the time of every executed node of the compiled model,
summed by (node type, kernel), averaged over the timed runs, the two models alternating run by run.
Both are compiled the way their paths compile them (naive: no configuration; ours: the runner's
pinned config), plus PERF_COUNT.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.vs_naive import naive_artefacts, our_bundle, row_key
from calibration import load_set
from exporters.models.zoo import create_model
from runtime.manifest import read_manifest


def op_times(compiled: dict, x: np.ndarray, runs: int, warmup: int = 5) -> dict:
    """Per model: ``{"ops": {"node type · kernel": [ms per inference, nodes]}, "p50_ms": wall median}``.

    The models run alternately, one inference each per round, so the machine's drift falls on both.
    """
    import time
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    for r in requests.values():
        for _ in range(warmup):
            r.infer({0: x})
    totals = {k: defaultdict(float) for k in requests}
    nodes, walls = {k: {} for k in requests}, {k: [] for k in requests}
    for _ in range(runs):
        for k, r in requests.items():
            t0 = time.perf_counter()
            r.infer({0: x})
            walls[k].append((time.perf_counter() - t0) * 1000)
            executed = [p for p in r.profiling_info if p.status == p.Status.EXECUTED]
            for p in executed:
                key = f"{p.node_type} · {p.exec_type}"
                totals[k][key] += p.real_time.total_seconds() * 1000
            for key in {f"{p.node_type} · {p.exec_type}" for p in executed}:
                nodes[k][key] = sum(1 for p in executed if f"{p.node_type} · {p.exec_type}" == key)
    return {k: {"p50_ms": round(float(np.median(walls[k])), 2),
                "ops": {op: [round(ms / runs, 3), nodes[k][op]] for op, ms in totals[k].items()}} for k in requests}


def profile(name: str, threads: int, runs: int, work: Path, img_size: tuple[int, int] | None = None) -> dict:
    """Both INT8 models of ``name`` (re-laid for ``img_size``, as ``vs-naive --img-size`` times it), profiled."""
    import openvino as ov

    model, spec = create_model(name, img_size=img_size)
    shape = (1, *spec.input_shape)
    calib = load_set("digits", spec.preprocessing, size=32, part="train", progress=False)
    naive = naive_artefacts(model, shape, calib, work, which=("naive openvino nncf int8",))["naive openvino nncf int8"][1]
    bundle = our_bundle(name, work / "bundles", "digits", threads, eval_size=8, model=model, spec=spec,
                        targets=("openvino",), precisions=("int8",))  # only what is profiled
    art = next(a for a in read_manifest(bundle).artifacts if a.target == "openvino" and a.precision == "int8")
    ours_config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
                   "INFERENCE_PRECISION_HINT": art.runtime_config.get("inference_precision", "f32")}
    core = ov.Core()
    compiled = {"naive openvino nncf int8": core.compile_model(naive, "CPU", {"PERF_COUNT": "YES"}),
                "vitdeploy openvino int8": core.compile_model(str(bundle / art.primary), "CPU",
                                                              {**ours_config, "PERF_COUNT": "YES"})}
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return op_times(compiled, x, runs)


def measure(models: list[str], threads: int, runs: int, sizes: list[tuple[int, int]] | None = None) -> dict:
    """Every model at every size of ``sizes`` (each keyed ``"swin_t 384x384"``), or at its own size."""
    with tempfile.TemporaryDirectory() as d:
        out = {}
        for m in models:
            for size in sizes or [None]:
                key = row_key(m, size)
                out[key] = profile(m, threads, runs, Path(d) / key.replace(" ", "-"), size)
        return out


def render(res: dict, env_line: str, command: str, top: int = 14) -> str:
    lines = ["## Per-op profile: naive NNCF INT8 against vitdeploy OpenVINO INT8 (OpenVINO PERF_COUNT)", "",
             f"Command: `{command}`", "", f"Machine: {env_line}", ""]
    for model, paths in res.items():
        (na, nv), (oa, ov_) = paths.items()
        keys = sorted(set(nv["ops"]) | set(ov_["ops"]),
                      key=lambda k: -max(nv["ops"].get(k, [0])[0], ov_["ops"].get(k, [0])[0]))
        lines += [f"### {model} (batch 1): wall p50 {na} {nv['p50_ms']:.2f} ms, {oa} {ov_['p50_ms']:.2f} ms", "",
                  "| node type · kernel | naive ms (nodes) | vitdeploy ms (nodes) |", "|---|---|---|"]
        for k in keys[:top]:
            cell = [f"{p['ops'][k][0]:.2f} ({p['ops'][k][1]})" if k in p["ops"] else "–" for p in (nv, ov_)]
            lines.append(f"| {k} | {cell[0]} | {cell[1]} |")
        rest = [sum(ms for kk, (ms, _) in p["ops"].items() if kk not in keys[:top]) for p in (nv, ov_)]
        total = [sum(ms for ms, _ in p["ops"].values()) for p in (nv, ov_)]
        lines += [f"| everything else | {rest[0]:.2f} | {rest[1]:.2f} |",
                  f"| **sum of node times** | **{total[0]:.2f}** | **{total[1]:.2f}** |", ""]
    return "\n".join(lines)
