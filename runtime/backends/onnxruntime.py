"""ONNX Runtime runner (CPU by default; CUDA or TensorRT execution providers where present)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime.backends import Backend, require
from runtime.backends.base import Runner, check_mode
from runtime.errors import UserError

INSTALL = "pip install onnxruntime"

OPTIMIZATION_LEVELS = {"ALL": "ORT_ENABLE_ALL", "EXTENDED": "ORT_ENABLE_EXTENDED", "BASIC": "ORT_ENABLE_BASIC",
                       "DISABLE": "ORT_DISABLE_ALL"}
_ORT_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def installed_distributions() -> list[str]:
    """Which ONNX Runtime distributions are installed: more than one means they shadow each other."""
    found = []
    for d in _ORT_DISTS:
        try:
            found.append(f"{d}=={metadata.version(d)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def ort_info() -> dict:
    ort = require("onnxruntime", INSTALL)
    dists = installed_distributions()
    info = {"version": ort.__version__, "module": str(Path(ort.__file__).parent),
            "providers": ort.get_available_providers(), "distributions": dists}
    if len(dists) > 1:
        # reason: nvidia-modelopt[onnx] pulls onnxruntime-gpu beside onnxruntime; both ship the same module
        info["warning"] = f"several ONNX Runtime distributions installed ({', '.join(dists)}); one shadows the other"
    return info


class OnnxRuntimeRunner(Runner):
    """``infer({'input': [B,3,H,W] float32}) -> {'logits': [B, classes]}`` through an ORT session."""

    def __init__(self, path: str | Path | bytes, threads: int | None = None, providers: list[str] | None = None,
                 mode: str = "latency", optimization: str = "ALL"):
        """``path``: an ONNX file, or a serialised model; ``mode="throughput"``: ``threads`` (default: every core)
        concurrent runs of one single-threaded session."""
        super().__init__()
        ort = require("onnxruntime", INSTALL)
        so = ort.SessionOptions()
        if optimization not in OPTIMIZATION_LEVELS:
            raise UserError(f"unknown ONNX Runtime graph optimisation level '{optimization}'; "
                            f"choose from {', '.join(OPTIMIZATION_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
        self.optimization = optimization
        self.mode = check_mode(mode)
        if mode == "throughput":
            self.streams = threads or os.cpu_count() or 1
            # reason: ORT's inter-op pool only runs independent graph branches in parallel, which a
            # transformer barely has; concurrent run() calls (thread-safe, GIL released) are its throughput mode
            so.intra_op_num_threads = so.inter_op_num_threads = 1
        elif threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        source, path = (path, "the model in memory") if isinstance(path, bytes) else (str(path), path)
        try:
            self.session = ort.InferenceSession(source, so, providers=self.providers)
        except Exception as exc:  # reason: ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise UserError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}")
        if len(self.session.get_inputs()) != 1:
            raise UserError(f"{path} takes {len(self.session.get_inputs())} inputs; an artefact takes one image batch")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else -1 for d in inp.shape]
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.pool = None

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: x})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs)}

    def infer_stream(self, x: np.ndarray, count: int) -> None:
        """``count`` runs spread over ``streams`` threads."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.streams, thread_name_prefix="ort-stream")
        feeds = {self.input_name: x}
        list(self.pool.map(lambda _: self.session.run(self.output_names, feeds), range(count)))

    def describe(self) -> dict:
        return {"device": "CPU" if self.providers == ["CPUExecutionProvider"] else ",".join(self.session.get_providers()),
                "threads": self.threads, "mode": self.mode, "streams": self.streams,
                "graph_optimization_level": self.optimization,
                "providers": self.session.get_providers(), "onnxruntime": ort_info()}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.session = self.pool = None
        super().close()


def open_artifact(path: Path, config: dict, device: str | None, threads: int | None,
                  mode: str = "latency") -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner(path, threads=threads, providers=config.get("providers"), mode=mode,
                             optimization=config.get("graph_optimization_level", "ALL"))


def tapped(path: Path, config: dict, tensors: list[str], threads: int | None,
           weights: Path | None = None) -> tuple[OnnxRuntimeRunner, dict[str, str]]:
    """The ONNX with those of ``tensors`` it produces added as graph outputs, in a session on the CPU (``Backend.tap``).

    Editing the graph needs the ``onnx`` package (the export side has it; a device install need not)."""
    onnx = require("onnx", "pip install onnx")
    from onnx.external_data_helper import load_external_data_for_model
    proto = onnx.load(str(path), load_external_data=False)
    load_external_data_for_model(proto, str(path.parent))  # external data is named relative to the model
    produced = {o for n in proto.graph.node for o in n.output}
    have = [t for t in tensors if t in produced]
    existing = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in have if t not in existing)
    runner = OnnxRuntimeRunner(proto.SerializeToString(), threads=threads,
                               optimization=config.get("graph_optimization_level", "ALL"))
    return runner, {t: t for t in have}


def alternatives(config: dict) -> list[tuple[str, dict]]:
    """Fewer graph rewrites, one level at a time, for an artefact that fails its gate as configured.

    # reason: ORT's fusions (attention, GELU, LayerNorm, QDQ into integer kernels) are where its numerics
    # differ from the graph's; each level below ALL applies fewer of them (ORT's graph optimisation docs).
    """
    order = list(OPTIMIZATION_LEVELS)[:3]
    level = config.get("graph_optimization_level", "ALL")
    below = order[order.index(level) + 1:] if level in order else []
    return [(f"graph optimisation {lv}", {**config, "graph_optimization_level": lv}) for lv in below]


BACKEND = Backend(name="onnxruntime", sdk="onnxruntime", install=INSTALL, rank=30, open=open_artifact,
                  alternatives=alternatives, tap=tapped)
