"""One engine code path for TensorRT (libnvinfer, 10.x/11.x) and TensorRT for RTX (``tensorrt_rtx``).

Both libraries share the network definition, the ONNX parser, strongly typed builds (the precision
comes from the ONNX: FP16 tensors with FP32 islands, or Q/DQ INT8), optimisation profiles and
serialisation. Where they differ, the difference is one named branch here:
- compute capabilities: only TensorRT-RTX builds for a chosen set of GPUs ahead of time (on a
  machine with no GPU); full TensorRT builds for the GPU it runs on;
- timing cache: full TensorRT keeps one per device; TensorRT-RTX does not use one.
  # reason: TensorRT-RTX 1.1+ documents that a timing cache forces its AOT build to query for a
  # GPU (no CPU-only build) and has no effect on the engine;
- runtime cache and validity check: only TensorRT-RTX JIT-specialises kernels on first load (kept
  in a runtime cache file next to the engine) and has ``IRuntime.get_engine_validity``.
Nothing here needs a GPU except ``EngineRunner`` (and ``device_info``).
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.backends import require
from runtime.backends.base import Runner
from runtime.errors import UserError

LIBRARIES = {"tensorrt": "install TensorRT 10.x/11.x from NVIDIA (JetPack on a Jetson) and cuda-python",
             "tensorrt_rtx": "pip install 'vitdeploy[tensorrt-rtx]' (module tensorrt_rtx)"}
# layer types that only move or hold data: left out of the precision counts
_DATA_LAYERS = ("CONSTANT", "SHUFFLE", "SLICE", "CONCATENATION", "GATHER", "SHAPE", "IDENTITY")


def library(name: str):
    """The Python module of ``name`` ("tensorrt" or "tensorrt_rtx"), or a one-line UserError."""
    return require(name, LIBRARIES[name])


def is_rtx(trt) -> bool:
    return trt.__name__.split(".")[0] == "tensorrt_rtx"


@dataclass
class ParseReport:
    """What NVIDIA's ONNX parser made of a graph: the evidence a TensorRT row carries."""

    library: str
    version: str
    ok: bool
    layers: int = 0
    compute_layers_by_precision: dict[str, int] = field(default_factory=dict)  # output dtype of compute layers
    layers_by_type: dict[str, int] = field(default_factory=dict)
    qdq_layers: int = 0
    build_s: float | None = None
    engine_bytes: int | None = None
    compute_capabilities: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _name(enum_value) -> str:
    return str(enum_value).split(".")[-1]


def walk_network(network) -> dict:
    """Layer counts by type, and by output precision for layers that compute (not data movement)."""
    by_type, by_prec, qdq = collections.Counter(), collections.Counter(), 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = _name(layer.type)
        by_type[kind] += 1
        if kind in ("QUANTIZE", "DEQUANTIZE"):
            qdq += 1
        if kind in _DATA_LAYERS or not layer.num_outputs:
            continue
        dtype = _name(layer.get_output_type(0))
        if dtype in ("INT64", "INT32", "BOOL"):
            continue  # shape and index arithmetic
        by_prec[dtype] += 1
    return {"layers": network.num_layers, "layers_by_type": dict(by_type.most_common()),
            "compute_layers_by_precision": dict(by_prec.most_common()), "qdq_layers": qdq}


def quiet_logger(trt):
    """A TensorRT logger that keeps messages instead of printing them (errors reach the user as one line)."""

    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(str(msg))
    logger = Collect()
    _LOGGERS.append(logger)  # reason: TensorRT keeps a raw pointer to its logger; Python must keep it alive
    return logger


_LOGGERS: list = []


def parse_onnx(trt, onnx_path: Path):
    """Parse ``onnx_path`` into a strongly typed network: ``(builder, network, parser, ParseReport)``.

    A rejection raises ``UserError`` with the parser's own message, naming the node.
    """
    logger = quiet_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errs[0] if errs else None
        where = f" at node '{first.node_name()}' ({first.node_operator()})" if first and first.node_name() else ""
        desc = first.desc().strip().splitlines()[0][:240] if first else "no message"
        raise UserError(f"TensorRT's ONNX parser ({trt.__name__} {trt.__version__}) rejected "
                        f"{Path(onnx_path).name}{where}: {desc}")
    report = ParseReport(library=trt.__name__, version=trt.__version__, ok=True, **walk_network(network))
    return builder, network, parser, report


def compute_capabilities(trt, wanted: list[str] | None) -> list:
    """``["8.6", "12.0"]`` (or ``None``: the library's portable default) -> ComputeCapability values."""
    if not wanted:
        return []
    out = []
    for cc in wanted:
        member = "SM" + cc.replace(".", "")
        if not hasattr(trt.ComputeCapability, member):
            known = [m[2:-1] + "." + m[-1] for m in dir(trt.ComputeCapability) if m.startswith("SM")]
            raise UserError(f"--compute-capability {cc} is not one {trt.__name__} builds for; choose from "
                            f"{', '.join(known)}")
        out.append(getattr(trt.ComputeCapability, member))
    return out


def build_serialized(trt, builder, network, *, profile: dict | None = None, timing_cache: Path | None = None,
                     ccs: list[str] | None = None, workspace_gb: float = 4.0) -> tuple[bytes, dict]:
    """Build the parsed network into a serialised engine; returns ``(engine bytes, facts)``."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    facts: dict = {"library": trt.__name__, "version": trt.__version__}
    if is_rtx(trt):
        chosen = compute_capabilities(trt, ccs)
        if chosen:
            config.num_compute_capabilities = len(chosen)
            for i, cc in enumerate(chosen):
                config.set_compute_capability(cc, i)
        facts["compute_capabilities"] = list(ccs) if ccs else ["library default (portable: Ampere and later)"]
    elif timing_cache is not None:
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
        facts["timing_cache_reused"] = bool(cache_bytes)
    if profile:
        p = builder.create_optimization_profile()
        p.set_shape(profile["input"], profile["min"], profile["opt"], profile["max"])
        config.add_optimization_profile(p)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        logged = [m for m in getattr(builder.logger, "messages", []) if "Error" in m or "error" in m]
        why = logged[-1].splitlines()[0][:240] if logged else "no message"
        raise UserError(f"{trt.__name__} {trt.__version__} failed to build an engine: {why}")
    facts["build_s"] = round(time.perf_counter() - t0, 3)
    data = bytes(serialized)
    facts["engine_bytes"] = len(data)
    if timing_cache is not None and not is_rtx(trt):
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return data, facts


def engine_from_onnx(trt, onnx_path: Path, engine_path: Path | None, **build) -> ParseReport:
    """Parse, walk and build; write the engine to ``engine_path`` (or only measure it when None)."""
    builder, network, _parser, report = parse_onnx(trt, onnx_path)
    data, facts = build_serialized(trt, builder, network, **build)
    if engine_path is not None:
        engine_path.write_bytes(data)
    report.build_s, report.engine_bytes = facts["build_s"], facts["engine_bytes"]
    report.compute_capabilities = facts.get("compute_capabilities")
    return report


def engine_key(onnx_sha256: str, precision: str, profile: dict | None, lib: str, version: str, gpu: str) -> str:
    """The engine cache key: ONNX sha256, library and version, GPU / compute capability, precision, profile."""
    blob = json.dumps({"onnx": onnx_sha256, "lib": lib, "version": version, "gpu": gpu, "precision": precision,
                       "profile": profile}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def gpu_present() -> str | None:
    """``None`` when the NVIDIA driver reports at least one GPU, else why not (no cuda-python needed)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA GPU driver here (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "no NVIDIA GPU visible to the CUDA driver"
    return None


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise UserError("cuda-python is not installed; install it with: pip install cuda-python") from None
    return cudart


def _check(result):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise UserError(f"CUDA error {int(err)}: {err}")
    return vals[0] if len(vals) == 1 else vals


def device_info(trt) -> dict:
    """Library version, GPU name and compute capability, or a UserError naming what is missing."""
    why = gpu_present()
    if why:
        raise UserError(why)
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"library": trt.__name__, "version": trt.__version__, "gpu": name.strip("\x00"),
            "compute_capability": f"{props.major}.{props.minor}"}


def check_engine_valid(trt, data: bytes, path: Path) -> None:
    """TensorRT-RTX only: refuse an engine for another version or GPU before loading it."""
    runtime = trt.Runtime(quiet_logger(trt))
    validity, diagnostics = runtime.get_engine_validity(data)
    if _name(validity) == "INVALID":
        flags = [m for m in dir(trt.EngineInvalidityDiagnostics) if m.isupper()
                 and int(diagnostics) & int(getattr(trt.EngineInvalidityDiagnostics, m))]
        raise UserError(f"{path.name} cannot run here ({', '.join(flags) or 'no GPU or driver'}): rebuild it with "
                        f"this {trt.__name__} {trt.__version__} (python -m exporters ... --target tensorrt_rtx)")


class EngineRunner(Runner):
    """``infer({'input': [B,3,H,W]}) -> {'logits': [B, classes]}`` on a serialised engine of either library.

    Buffers are managed with cuda-python, not torch; I/O goes by tensor name. TensorRT-RTX engines are
    checked for validity first and keep their JIT kernels in ``runtime_cache`` (next to the engine).
    """

    def __init__(self, trt, engine_path: Path, runtime_cache: Path | None = None):
        super().__init__()
        self.trt, self.path, self.runtime_cache = trt, Path(engine_path), runtime_cache
        self.cudart = _cudart()
        data = self.path.read_bytes()
        if is_rtx(trt):
            check_engine_valid(trt, data, self.path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(data)
        if self.engine is None:
            raise UserError(f"{self.path.name} was built for another GPU or {trt.__name__} version; rebuild it")
        self.context = self._context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.input_name = self.inputs[0]
        self.input_shape = list(self.engine.get_tensor_shape(self.input_name))
        self.input_dtype = self.dtypes[self.input_name]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _context(self):
        if not is_rtx(self.trt):
            return self.engine.create_execution_context()
        cfg = self.engine.create_runtime_config()
        cache = cfg.create_runtime_cache()
        if self.runtime_cache is not None and self.runtime_cache.is_file():
            cache.deserialize(self.runtime_cache.read_bytes())
        cfg.set_runtime_cache(cache)
        self._cache, self._runtime_config = cache, cfg
        return self.engine.create_execution_context(cfg)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return self._buffers[name][0]

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cu = self.cudart
        h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        name = self.input_name
        self.context.set_input_shape(name, x.shape)
        ptr = self._device_buffer(name, x.nbytes)
        _check(cu.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
        self.context.set_tensor_address(name, ptr)
        host = {}
        for out in self.outputs:
            host[out] = np.empty(tuple(self.context.get_tensor_shape(out)), dtype=self.dtypes[out])
            self.context.set_tensor_address(out, self._device_buffer(out, host[out].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise UserError(f"{self.trt.__name__} execution failed")
        for out, arr in host.items():
            _check(cu.cudaMemcpyAsync(arr.ctypes.data, self._buffers[out][0], arr.nbytes, d2h, self.stream))
        _check(cu.cudaStreamSynchronize(self.stream))  # reason: CUDA is asynchronous; time finished work
        return {n: a.astype(np.float32) for n, a in host.items()}

    def describe(self) -> dict:
        return {"device": "cuda:0", **device_info(self.trt), "io": {"inputs": self.inputs, "outputs": self.outputs}}

    def close(self) -> None:
        """Save the runtime cache (TensorRT-RTX), free the device buffers and the stream."""
        if not self.closed:
            if is_rtx(self.trt) and self.runtime_cache is not None:
                self.runtime_cache.write_bytes(bytes(self._cache.serialize()))
            for ptr, _ in self._buffers.values():
                _check(self.cudart.cudaFree(ptr))
            self._buffers.clear()
            _check(self.cudart.cudaStreamDestroy(self.stream))
            self.context = self.engine = None
        super().close()
