"""Time the LayerNorm (MVN) nodes of one INT8 model at a time: the naive export against vitdeploy's.

Per-op counters taken while two compiled models alternate (``python -m benchmarks op-profile``) showed vit_b's
MVN nodes at 3x the naive graph's time; this compiles each NNCF INT8 model alone (bf16 hint, 2 threads, 20
runs after 5 warm-up) and sums its MVN nodes' times, which did not reproduce it (docs/BENCHMARKS.md section 2).

    python docs/repro/layernorm_alone.py [MODEL]          # default vit_b; random weights, digits calibration
"""
import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import nncf
import numpy as np
import openvino as ov

from benchmarks.vs_naive import naive_onnx
from calibration import load_set
from exporters.graph.onnx import export_onnx
from exporters.graph.rewrites import apply_rewrites
from exporters.models.zoo import create_model
from exporters.targets.openvino import first_last_compute_ops


def quantized(src: Path, data: list, keep_first_last: bool, preset=None):
    m = ov.convert_model(str(src))
    keep = first_last_compute_ops(m) if keep_first_last else []
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(m, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data),
                             preset=preset, ignored_scope=nncf.IgnoredScope(names=keep, validate=False))


def mvn_ms(model, x: np.ndarray, runs: int = 20) -> tuple[float, int]:
    compiled = ov.Core().compile_model(model, "CPU", {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": "bf16",
                                                      "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "2"})
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer({0: x})
    total, nodes = 0.0, set()
    for _ in range(runs):
        request.infer({0: x})
        for p in request.profiling_info:
            if p.node_type == "MVN":
                total += p.real_time.total_seconds() * 1000 / runs
                nodes.add(p.node_name)
    return total, len(nodes)


def main(name: str = "vit_b") -> None:
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    data = list(load_set("digits", spec.preprocessing, size=16, part="train", progress=False).batches(1))
    with tempfile.TemporaryDirectory() as d:
        naive = naive_onnx(model, shape, Path(d) / "naive.onnx")
        ours = export_onnx(apply_rewrites(model, shape)[0], shape, Path(d) / "ours.onnx").path
        models = {"naive (NNCF defaults)": quantized(naive, data, False),
                  "vitdeploy symmetric": quantized(ours, data, True, nncf.QuantizationPreset.PERFORMANCE),
                  "vitdeploy mixed": quantized(ours, data, True)}
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        for label, m in models.items():
            ms, n = mvn_ms(m, x)
            print(f"{label}: {n} MVN nodes, {ms:.3f} ms per inference")


if __name__ == "__main__":
    main(*sys.argv[1:])
