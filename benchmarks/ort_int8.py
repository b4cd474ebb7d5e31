"""ONNX Runtime INT8 options, measured in one run: activation type and weight range against FP32.

Latency on a full-size model (random weights are fine for speed) and accuracy on digits_swin
(trained), for U8S8, U8S8 with reduce_range (7-bit weights) and S8S8, all per-channel QDQ.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from calibration import load_set
from exporters.graph.onnx import export_onnx
from exporters.graph.rewrites import apply_rewrites
from exporters.models.zoo import create_model
from exporters.pipeline.stages import run_outputs
from exporters.targets.onnxruntime import DEFAULT_INT8, quantize_qdq
from runtime.accuracy import compare
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.latency import measure_interleaved

VARIANTS = {"u8s8": {"activation": "uint8", "reduce_range": False},
            "u8s8-reduce-range": {"activation": "uint8", "reduce_range": True},
            "s8s8": {"activation": "int8", "reduce_range": False}}


def _build(name: str, workdir: Path, calib_size: int):
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    rewritten, _ = apply_rewrites(model, shape)
    src = export_onnx(rewritten, shape, workdir / f"{name}.onnx").path
    calib = load_set("digits", spec.preprocessing, size=calib_size, part="train", progress=False)
    return model, spec, src, calib


def measure_options(speed_model: str = "swin_t", accuracy_model: str = "digits_swin", threads: int = 2,
                    runs: int = 40) -> dict:
    import torch

    out = {"speed_model": speed_model, "accuracy_model": accuracy_model, "latency_ms": {}, "accuracy": {}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        _, spec, src, calib = _build(speed_model, d, 16)
        paths = {"fp32": src}
        for k, v in VARIANTS.items():
            paths[k] = d / f"{speed_model}-{k}.onnx"
            quantize_qdq(src, paths[k], calib, 1, {**DEFAULT_INT8, **v})
        runners = {k: OnnxRuntimeRunner(p, threads=threads) for k, p in paths.items()}
        x = np.random.default_rng(0).standard_normal((1, *spec.input_shape), dtype=np.float32)
        lat = measure_interleaved(runners, lambda r: {r.input_name: x}, runs, 5, rounds=4)
        for r in runners.values():
            r.close()
        out["latency_ms"] = {k: round(v.p50, 2) for k, v in lat.items()}
        model, spec, src, calib = _build(accuracy_model, d, 128)
        ev = load_set("digits", spec.preprocessing, size=None, part="holdout", progress=False)
        with torch.no_grad():
            ref = model(torch.from_numpy(ev.inputs)).numpy()
        for k, v in {"fp32": None, **VARIANTS}.items():
            p = src
            if v is not None:
                p = d / f"{accuracy_model}-{k}.onnx"
                quantize_qdq(src, p, calib, 1, {**DEFAULT_INT8, **v})
            with OnnxRuntimeRunner(p, threads=threads) as r:
                logits = run_outputs(r, ev, 1)
            a = compare(ref, logits, ev.labels)
            out["accuracy"][k] = {"top1": round(a.top1 * 100, 2), "top1_agreement": round(a.top1_agreement * 100, 2),
                                  "cosine_min": round(a.cosine_min, 4)}
    return out


def render(res: dict, env_line: str, command: str) -> str:
    lines = ["## ONNX Runtime INT8 options (one run)", "", f"Command: `{command}`", "", f"Machine: {env_line}", "",
             f"| variant | {res['speed_model']} p50 ms | {res['accuracy_model']} top-1 % | agreement % | cosine min |",
             "|---|---|---|---|---|"]
    for k in ("fp32", *VARIANTS):
        a = res["accuracy"].get(k, {})
        lines.append(f"| {k} | {res['latency_ms'].get(k, '–')} | {a.get('top1', '–')} | {a.get('top1_agreement', '–')} "
                     f"| {a.get('cosine_min', '–')} |")
    return "\n".join(lines) + "\n"
