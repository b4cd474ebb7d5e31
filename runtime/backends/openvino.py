"""OpenVINO runner: compiles an IR (or ONNX) on a device with pinned, recorded precision hints."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.backends import Backend, require
from runtime.backends.base import Runner, check_mode
from runtime.errors import UserError

INSTALL = "pip install 'vitdeploy[openvino]'"
# a folder for OpenVINO's compiled-model cache (its CACHE_DIR): the first start compiles and stores the compiled
# model there, and a later process imports it instead of compiling again (keyed by the model, device, configuration
# and OpenVINO version, so a changed one compiles anew). Unset: no cache, nothing written outside the bundle.
CACHE_ENV = "VITDEPLOY_CACHE_DIR"


def cache_dir() -> str | None:
    """The compiled-model cache folder ``$VITDEPLOY_CACHE_DIR`` (created if missing), or None when unset."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return None
    if not value.strip():
        raise UserError(f"{CACHE_ENV} is set but empty (or --cache-dir was given an empty path): unset it, or name a "
                        "folder for the compiled-model cache")
    path = Path(value).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{CACHE_ENV}={value}: cannot create the cache folder ({exc.strerror})") from None
    return str(path)


def available_devices() -> list[str]:
    ov = require("openvino", INSTALL)
    return list(ov.Core().available_devices)


def check_device(device: str, devices: list[str] | None = None) -> None:
    """Refuse a device OpenVINO does not see here, listing the ones it does."""
    devices = available_devices() if devices is None else devices
    if device.split(".")[0] not in [d.split(".")[0] for d in devices]:
        raise UserError(f"OpenVINO device '{device}' is not present; available: {', '.join(devices)}")


def cpu_capabilities() -> list[str]:
    ov = require("openvino", INSTALL)
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


class OpenVinoRunner(Runner):
    """``infer({'input': [B,3,H,W]}) -> {'logits': [B, classes]}`` through a compiled OpenVINO model."""

    def __init__(self, model, device: str = "CPU", threads: int | None = None,
                 inference_precision: str = "f32", mode: str = "latency", config: dict | None = None,
                 plugin: dict | None = None, weights: Path | None = None):
        """``model``: an IR/ONNX path or an ``ov.Model``; ``config``: used verbatim instead of ours when given;
        ``plugin``: further plugin properties on top of ours (the repair ladder's switches, ``PLUGIN_KEYS``);
        ``weights``: the IR's ``.bin`` when it is not beside the ``.xml`` (a bundle of several sizes shares one)."""
        super().__init__()
        ov = require("openvino", INSTALL)
        core = ov.Core()
        check_device(device, list(core.available_devices))
        self.mode = check_mode(mode)
        if config is None:
            config = {"PERFORMANCE_HINT": mode.upper(), "INFERENCE_PRECISION_HINT": inference_precision}
            if device == "CPU":
                if mode == "latency":
                    config["NUM_STREAMS"] = "1"
                if threads:
                    config["INFERENCE_NUM_THREADS"] = str(threads)
            config.update(plugin or {})
            cache = cache_dir()
            if cache:
                config["CACHE_DIR"] = cache
        source = model
        try:
            if weights is not None:
                model = core.read_model(str(model), str(weights))
            self.compiled = core.compile_model(model if isinstance(model, ov.Model) else str(model), device, config)
        except Exception as exc:  # reason: OpenVINO raises RuntimeError with multi-line text
            raise UserError(f"OpenVINO cannot compile {source} on {device}: {str(exc).strip().splitlines()[0][:200]}")
        self.request = self.compiled.create_infer_request()
        self.streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if mode == "throughput" else 1
        self.queue = None
        inp = self.compiled.inputs[0]
        self.input_name = inp.get_any_name()
        ps = inp.get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else -1 for d in ps]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.device, self.threads = device, threads
        self.config = config

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer({self.input_name: x})
        return {o.get_any_name(): np.array(v, dtype=np.float32) for o, v in res.items()}

    def infer_stream(self, x: np.ndarray, count: int) -> None:
        """``count`` inferences through an ``AsyncInferQueue`` of ``streams`` requests."""
        if self.queue is None:
            ov = require("openvino", INSTALL)
            self.queue = ov.AsyncInferQueue(self.compiled, self.streams)
        for _ in range(count):
            self.queue.start_async({self.input_name: x})
        self.queue.wait_all()

    def describe(self) -> dict:
        ov = require("openvino", INSTALL)
        actual = {}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"):
            try:
                value = self.compiled.get_property(key)
            except Exception:  # reason: not every device reports every property
                continue
            # an element type reads as "bf16"/"f32", as the hint is written, not as "<Type: 'bfloat16'>"
            actual[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        return {"device": self.device, "threads": self.threads, "mode": self.mode, "streams": self.streams,
                "requested": self.config, "compiled": actual, "openvino": ov.__version__}

    def close(self) -> None:
        self.request = self.compiled = self.queue = None
        super().close()


# runtime_config keys that become plugin properties (the repair ladder's switches)
PLUGIN_KEYS = {"snippets_mode": "SNIPPETS_MODE", "execution_mode": "EXECUTION_MODE_HINT"}


def open_artifact(path: Path, config: dict, device: str | None, threads: int | None,
                  mode: str = "latency", weights: Path | None = None) -> OpenVinoRunner:
    plugin = {prop: str(config[key]) for key, prop in PLUGIN_KEYS.items() if config.get(key)}
    return OpenVinoRunner(path, device=device or config.get("device", "CPU"), threads=threads,
                          inference_precision=config.get("inference_precision", "f32"), mode=mode, plugin=plugin,
                          weights=weights)


def tapped(path: Path, config: dict, tensors: list[str], threads: int | None,
           weights: Path | None = None) -> tuple[OpenVinoRunner, dict[str, str]]:
    """The IR with those of ``tensors`` it has added as outputs, compiled for the CPU as the artefact's runtime
    configuration says (``Backend.tap``)."""
    ov = require("openvino", INSTALL)
    model = ov.Core().read_model(str(path), str(weights) if weights else None)
    names = {n for op in model.get_ops() for o in op.outputs() for n in o.get_names()}
    have = [t for t in tensors if t in names]
    if have:
        model.add_outputs(have)
    runner = open_artifact(model, config, "CPU", threads)
    carried = {t: next(o.get_any_name() for o in runner.compiled.outputs if t in o.get_names()) for t in have}
    return runner, carried


def alternatives(config: dict) -> list[tuple[str, dict]]:
    """Known-safe CPU configurations, cheapest first, for an artefact that fails its gate as configured.

    # reason: OpenVINO's CPU plugin has shipped low-precision corruption on some ISAs (INT8 + bf16 on AMX Xeons:
    # digits_swin cosine -0.26 under the bf16 hint, 0.9998 under f32; bf16 GEMMs on Zen 5, openvino#38256).
    # Measured there (docs/BENCHMARKS.md section 13): the bf16 hint with the generated fused-subgraph kernels
    # off (SNIPPETS_MODE=DISABLE), the f16 hint (CPUs with AVX512-FP16/AMX-FP16), the f32 hint and
    # EXECUTION_MODE_HINT=ACCURACY each repaired it; which is fastest depends on the model and the CPU, so
    # every one is gated and timed (runtime/repair.py). A candidate that fails to compile is a failed candidate.
    """
    hint = config.get("inference_precision", "f32")
    out = []
    if hint in ("bf16", "f16"):
        out.append((f"{hint} hint, snippets off", {**config, "snippets_mode": "DISABLE"}))
    if hint == "bf16" and (config.get("device") or "CPU") == "CPU" and "FP16" in cpu_capabilities():
        out.append(("f16 hint", {**config, "inference_precision": "f16"}))
    if hint != "f32":
        out.append(("f32 hint", {**config, "inference_precision": "f32"}))
    elif not config.get("snippets_mode"):
        out.append(("f32 hint, snippets off", {**config, "snippets_mode": "DISABLE"}))
    if config.get("execution_mode") != "ACCURACY":
        out.append(("accuracy mode", {**config, "inference_precision": "f32", "execution_mode": "ACCURACY"}))
    return [(n, c) for n, c in out if c != config]


BACKEND = Backend(name="openvino", sdk="openvino", install=INSTALL, rank=20, open=open_artifact,
                  alternatives=alternatives, takes_device=True, tap=tapped)
