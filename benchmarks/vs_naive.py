"""vitdeploy against the path a user takes without it, timed interleaved in one process.

The naive paths, each with its library's defaults: timm -> ``torch.onnx.export`` (defaults) ->
ONNX Runtime FP32; -> OpenVINO with its default CPU config (whatever precision it picks here);
-> NNCF INT8 (``nncf.quantize``, transformer mode, defaults); -> ONNX Runtime ``quantize_static``
(defaults). vitdeploy's artefacts come from its own pipeline (rewrites, its INT8 recipes, pinned
hints). Latency: the full-size model (random weights are fine for speed); accuracy of every INT8
path: the trained digits fixtures, against PyTorch FP32 on the hold-out.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from runtime.backends import Runner

OURS = [("onnxruntime", "int8"), ("openvino", "fp16"), ("openvino", "int8")]


class OpenVinoDefault(Runner):
    """OpenVINO compiled with no configuration at all: what a user who just calls compile_model gets."""

    def __init__(self, model_or_path):
        super().__init__()
        import openvino as ov
        core = ov.Core()
        self.compiled = core.compile_model(model_or_path, "CPU")
        self.request = self.compiled.create_infer_request()
        inp = self.compiled.inputs[0]
        self.input_name = inp.get_any_name()
        self.input_shape = [d.get_length() if d.is_static else -1 for d in inp.get_partial_shape()]

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer({self.input_name: x})
        return {"logits": np.asarray(next(iter(res.values())), dtype=np.float32)}

    def describe(self) -> dict:
        return {"device": "CPU", "compiled": {k: str(self.compiled.get_property(k)) for k in
                                              ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS")}}

    def close(self) -> None:
        self.request = self.compiled = None
        super().close()


def naive_onnx(model, shape, path: Path) -> Path:
    import torch
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["input"], output_names=["logits"])
    return path


def naive_paths(model, shape, calib, work: Path) -> dict[str, Runner]:
    """The four naive paths of ``model``, as runners."""
    work.mkdir(parents=True, exist_ok=True)
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from runtime.backends.onnxruntime import OnnxRuntimeRunner
    src = naive_onnx(model, shape, work / "naive.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": b} for b in calib.batches(shape[0])])

        def get_next(self):
            return next(self.it, None)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_static(str(src), str(work / "naive-ort-int8.onnx"), Reader())
        ir = ov.convert_model(str(src))
        q = nncf.quantize(ir, nncf.Dataset(list(calib.batches(shape[0]))), model_type=nncf.ModelType.TRANSFORMER)
    return {"naive onnxruntime fp32": OnnxRuntimeRunner(src),
            "naive openvino default": OpenVinoDefault(str(src)),
            "naive openvino nncf int8": OpenVinoDefault(q),
            "naive onnxruntime quantize_static int8": OnnxRuntimeRunner(work / "naive-ort-int8.onnx")}


def our_paths(name: str, out: Path, data: str, threads: int, eval_size: int | None) -> tuple[dict, dict]:
    """vitdeploy's artefacts of ``name`` (its pipeline, its defaults) as runners, and the report."""
    import runtime
    from exporters.pipeline import RunOptions, run
    rep = run(RunOptions(model=name, targets=["onnxruntime", "openvino"], precisions=["fp16", "int8"], data=data,
                         calib=data, out=out, runs=5, warmup=1, threads=threads, eval_size=eval_size, quiet=True))
    runners = {}
    for target, precision in OURS:
        session = runtime.open(Path(rep["bundle"]), target=target, precision=precision, threads=threads)
        runners[f"vitdeploy {target} {precision}"] = session.runner
    return runners, rep


def latency(name: str, threads: int, runs: int, work: Path) -> dict:
    """p50/p90 of eager PyTorch, the naive paths and vitdeploy's artefacts of ``name``, interleaved."""
    from calibration import load_set
    from exporters.reference import TorchRunner
    from exporters.zoo import create_model
    from runtime.latency import measure_interleaved
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    calib = load_set("digits", spec.preprocessing, size=32, part="train", progress=False)
    runners = {"pytorch eager fp32": TorchRunner(model, list(shape), threads=threads)}
    runners.update(naive_paths(model, shape, calib, work))
    ours, _ = our_paths(name, work / "bundles", "digits", threads, eval_size=8)
    runners.update(ours)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    try:
        lats = measure_interleaved(runners, lambda r: {r.input_name: x}, runs=runs, warmup=5, rounds=5)
        described = {k: r.describe() for k, r in runners.items()}
    finally:
        for r in runners.values():
            r.close()
    return {k: {"p50": round(v.p50, 2), "p90": round(v.p90, 2),
                "hint": (described[k].get("compiled") or {}).get("INFERENCE_PRECISION_HINT")} for k, v in lats.items()}


def accuracy(name: str, threads: int, work: Path) -> dict:
    """Top-1, agreement and cosine_min of every INT8 path of a trained digits model, against PyTorch FP32."""
    import torch

    from calibration import load_set
    from exporters.pipeline import run_outputs
    from exporters.zoo import create_model
    from runtime.accuracy import compare
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    calib = load_set("digits", spec.preprocessing, size=128, part="train", progress=False)
    ev = load_set("digits", spec.preprocessing, size=None, part="holdout", progress=False)
    with torch.no_grad():
        ref = model(torch.from_numpy(ev.inputs)).numpy()
    runners = {k: v for k, v in naive_paths(model, shape, calib, work).items() if "int8" in k}
    ours, _ = our_paths(name, work / "bundles", "digits", threads, eval_size=None)
    runners.update({k: v for k, v in ours.items() if "int8" in k})
    out = {"reference_top1": round(float((ref.argmax(-1) == ev.labels).mean()) * 100, 2)}
    for k, r in runners.items():
        a = compare(ref, run_outputs(r, ev, 1), ev.labels)
        r.close()
        out[k] = {"top1": round(a.top1 * 100, 2), "agreement": round(a.top1_agreement * 100, 2),
                  "cosine_min": round(a.cosine_min, 4)}
    return out


def measure(models: list[str], threads: int, runs: int, accuracy_models=("digits_swin", "digits_vit")) -> dict:
    with tempfile.TemporaryDirectory() as d:
        lat = {m: latency(m, threads, runs, Path(d) / m) for m in models}
        acc = {m: accuracy(m, threads, Path(d) / f"acc-{m}") for m in accuracy_models}
    return {"latency_ms": lat, "accuracy": acc}


def render(res: dict, env_line: str, command: str) -> str:
    lines = ["## vitdeploy against the naive path (one process, interleaved)", "", f"Command: `{command}`", "",
             f"Machine: {env_line}", ""]
    for model, rows in res["latency_ms"].items():
        naive = {k: v for k, v in rows.items() if k.startswith("naive")}
        best_k = min(naive, key=lambda k: naive[k]["p50"])
        best = naive[best_k]["p50"]
        eager = rows["pytorch eager fp32"]["p50"]
        lines += [f"### {model} (batch 1, random weights): best naive path = {best_k}", "",
                  "| path | p50 ms | p90 ms | × eager | best naive p50 / this p50 | OpenVINO precision hint |",
                  "|---|---|---|---|---|---|"]
        for k, v in rows.items():
            lines.append(f"| {k} | {v['p50']:.2f} | {v['p90']:.2f} | {eager / v['p50']:.2f}× | "
                         f"{best / v['p50']:.2f}× | {v['hint'] or '–'} |")
        lines.append("")
    for model, rows in res["accuracy"].items():
        lines += [f"### INT8 accuracy on {model} (hold-out, reference top-1 {rows['reference_top1']:.2f} %)", "",
                  "| path | top-1 % | top-1 agreement % | cosine min |", "|---|---|---|---|"]
        for k, v in rows.items():
            if k != "reference_top1":
                lines.append(f"| {k} | {v['top1']:.2f} | {v['agreement']:.2f} | {v['cosine_min']:.4f} |")
        lines.append("")
    return "\n".join(lines)
