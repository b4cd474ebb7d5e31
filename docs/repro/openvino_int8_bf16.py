"""Minimal reproduction: an INT8 IR whose outputs depend on the CPU plugin's inference precision hint.

OpenVINO and numpy only (no vitdeploy, no torch), for an upstream bug report. It compiles one IR on the CPU
under each inference precision hint (and with the fused-subgraph "snippets" kernels off, and in accuracy
mode), runs the same inputs through each, and compares every configuration with the f32-hint outputs:
worst per-sample cosine of the logits and top-1 agreement.

    python openvino_int8_bf16.py MODEL.xml INPUTS.npy        # INPUTS: float32 [N, C, H, W], batch 1 each

Seen on an Intel Xeon with AMX (amx_int8 amx_bf16 avx512_fp16), OpenVINO 2026.4.1, with vitdeploy's digits
Swin INT8 IR (NNCF PTQ) and 36 hold-out images: bf16 hint cosine_min 0.096, agreement 58 %; f32 hint
0.9998 / 100 % against PyTorch; bf16 with SNIPPETS_MODE=DISABLE and the f16 hint repaired it too. Other
machines print agreement near 100 % for every row (docs/BENCHMARKS.md, section 13).
"""
import sys

import numpy as np
import openvino as ov


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)).min())


def run(core: ov.Core, xml: str, x: np.ndarray, config: dict) -> np.ndarray:
    compiled = core.compile_model(xml, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", **config})
    req = compiled.create_infer_request()
    return np.concatenate([np.asarray(req.infer({0: x[i:i + 1]})[compiled.outputs[0]]) for i in range(len(x))])


def main(xml: str, inputs: str) -> None:
    core = ov.Core()
    x = np.load(inputs).astype(np.float32)
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    print(f"OpenVINO {ov.__version__}; CPU: {core.get_property('CPU', 'FULL_DEVICE_NAME')}; capabilities: {caps}")
    ref = run(core, xml, x, {"INFERENCE_PRECISION_HINT": "f32"})
    configs = {"bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
               "bf16, SNIPPETS_MODE=DISABLE": {"INFERENCE_PRECISION_HINT": "bf16", "SNIPPETS_MODE": "DISABLE"},
               "f16": {"INFERENCE_PRECISION_HINT": "f16"},
               "EXECUTION_MODE_HINT=ACCURACY": {"EXECUTION_MODE_HINT": "ACCURACY"}}
    print(f"{'configuration':32s} {'cosine_min vs f32':>18s} {'top-1 agreement':>16s}")
    for name, cfg in configs.items():
        try:
            out = run(core, xml, x, cfg)
        except RuntimeError as exc:  # the f16 hint does not compile on every model and CPU
            print(f"{name:32s} did not compile: {str(exc).splitlines()[0][:100]}")
            continue
        agree = float((out.argmax(-1) == ref.argmax(-1)).mean())
        print(f"{name:32s} {cosine_min(ref, out):18.6f} {agree * 100:15.1f}%")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
