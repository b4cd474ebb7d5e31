"""OpenVINO runner: compiles an IR (or ONNX) on a device with pinned, recorded precision hints."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from runtime.backends import require
from runtime.errors import UserError


def available_devices() -> list[str]:
    ov = require("openvino")
    return list(ov.Core().available_devices)


def check_device(device: str, devices: list[str] | None = None) -> None:
    """Refuse a device OpenVINO does not see here, listing the ones it does."""
    devices = available_devices() if devices is None else devices
    if device.split(".")[0] not in [d.split(".")[0] for d in devices]:
        raise UserError(f"OpenVINO device '{device}' is not present; available: {', '.join(devices)}")


def cpu_capabilities() -> list[str]:
    ov = require("openvino")
    try:
        return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # reason: some plugins don't expose the property
        return []


def half_hint(device: str = "CPU") -> str:
    """Fastest 16-bit inference precision the device has: bf16 on AMX/AVX512-BF16 CPUs, else f16, else f32."""
    caps = cpu_capabilities() if device == "CPU" else ["FP16"]
    if device == "CPU":
        if "BF16" in caps:
            return "bf16"
        if "FP16" in caps:
            return "f16"
        return "f32"
    return "f16"


class OpenVinoRunner:
    """``infer({'input': ...}) -> {'logits': ...}`` through a compiled OpenVINO model."""

    def __init__(self, path: str | Path, device: str = "CPU", threads: int | None = None,
                 inference_precision: str = "f32"):
        ov = require("openvino")
        core = ov.Core()
        check_device(device, list(core.available_devices))
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision}
        if device == "CPU":
            config["NUM_STREAMS"] = "1"
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(threads)
        try:
            self.compiled = core.compile_model(str(path), device, config)
        except Exception as exc:  # reason: OpenVINO raises RuntimeError with multi-line text
            raise UserError(f"OpenVINO cannot compile {path} on {device}: {str(exc).strip().splitlines()[0][:200]}")
        self.request = self.compiled.create_infer_request()
        inp = self.compiled.inputs[0]
        self.input_name = inp.get_any_name()
        ps = inp.get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else -1 for d in ps]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.device, self.threads = device, threads
        self.config = config
        self.last_latency = 0.0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        t0 = time.perf_counter()
        res = self.request.infer(feeds)
        self.last_latency = (time.perf_counter() - t0) * 1000.0
        return {o.get_any_name(): np.array(v, dtype=np.float32) for o, v in res.items()}

    def describe(self) -> dict:
        ov = require("openvino")
        actual = {}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"):
            try:
                actual[key] = str(self.compiled.get_property(key))
            except Exception:  # reason: not every device reports every property
                pass
        return {"device": self.device, "threads": self.threads, "requested": self.config, "compiled": actual,
                "openvino": ov.__version__}
