"""TensorRT engines from explicit-precision ONNX, and a torch-free runner (TensorRT 10.x and 11.x).

One code path for JetPack 6 (TensorRT 10.3) and TensorRT 11: the network is *strongly typed*
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so the precision comes from the ONNX itself
(FP16 tensors with FP32 islands, or Q/DQ INT8). No FP16/INT8 builder flags and no calibrators:
TensorRT 10.1 deprecated the calibrators, 10.12 the precision flags, and 11 removed both.

Engines are specific to a GPU and a TensorRT version, so they are cached under a key of
ONNX sha256, TensorRT version, compute capability, precision and shape profile, with one
persistent timing cache per device. Buffers are managed with cuda-python, not torch, and I/O
goes by tensor name (``set_tensor_address`` / ``execute_async_v3``), never binding indices.

NOT VERIFIED ON HARDWARE in this repository's CI: no GPU and no TensorRT there.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from runtime.backends import Backend, require
from runtime.backends.base import Runner
from runtime.errors import UserError

INSTALL = "install TensorRT 10.x/11.x from NVIDIA (JetPack on a Jetson) and cuda-python"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise UserError("cuda-python is not installed; install it with: pip install cuda-python")
    return cudart


def _check(result):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise UserError(f"CUDA error {int(err)}: {err}")
    return vals[0] if len(vals) == 1 else vals


def device_info() -> dict:
    """TensorRT version and the GPU's compute capability, or a UserError naming what is missing."""
    trt = require("tensorrt", INSTALL)
    cudart = _cudart()
    count = _check(cudart.cudaGetDeviceCount())
    if count < 1:
        raise UserError("no NVIDIA GPU found (cudaGetDeviceCount = 0)")
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"tensorrt": trt.__version__, "gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


def engine_key(onnx_sha256: str, precision: str, profile: dict | None, info: dict) -> str:
    blob = json.dumps({"onnx": onnx_sha256, "trt": info["tensorrt"], "cc": info["compute_capability"],
                       "precision": precision, "profile": profile}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def build_engine(onnx_path: Path, engine_path: Path, timing_cache: Path, profile: dict | None = None,
                 workspace_gb: float = 4.0) -> dict:
    """Parse ``onnx_path`` into a strongly typed network and serialise an engine to ``engine_path``.

    ``profile`` is ``{"input": name, "min": [...], "opt": [...], "max": [...]}`` for a dynamic batch.
    The timing cache is read from and written back to ``timing_cache``. Returns build facts.
    """
    trt = require("tensorrt", INSTALL)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if profile:
        p = builder.create_optimization_profile()
        p.set_shape(profile["input"], profile["min"], profile["opt"], profile["max"])
        config.add_optimization_profile(p)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"build_s": build_s, "timing_cache_reused": bool(cache_bytes), "engine": str(engine_path)}


class TensorRTRunner(Runner):
    """``infer({'input': [B,3,H,W]}) -> {'logits': [B, classes]}`` on a serialised engine, buffers by cuda-python."""

    def __init__(self, engine_path: str | Path):
        super().__init__()
        trt = require("tensorrt", INSTALL)
        self.cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"{engine_path} was built for another GPU or TensorRT version; rebuild it with "
                            f"python -m runtime build BUNDLE")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.input_name = self.inputs[0]
        self.input_shape = list(self.engine.get_tensor_shape(self.input_name))
        self.input_dtype = self.dtypes[self.input_name]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

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
        H2D, D2H = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:  # one input: the image batch
            self.context.set_input_shape(name, x.shape)
            ptr = self._device_buffer(name, x.nbytes)
            _check(cu.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, H2D, self.stream))
            self.context.set_tensor_address(name, ptr)
        host = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host[name] = np.empty(shape, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, host[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise UserError("TensorRT execution failed")
        for name, arr in host.items():
            _check(cu.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes, D2H, self.stream))
        _check(cu.cudaStreamSynchronize(self.stream))  # reason: CUDA is asynchronous; time finished work
        return {n: a.astype(np.float32) for n, a in host.items()}

    def describe(self) -> dict:
        return {"device": "cuda:0", **device_info(), "io": {"inputs": self.inputs, "outputs": self.outputs}}

    def close(self) -> None:
        """Free the device buffers and the stream; the runner can't infer afterwards."""
        if not self.closed:
            for ptr, _ in self._buffers.values():
                _check(self.cudart.cudaFree(ptr))
            self._buffers.clear()
            _check(self.cudart.cudaStreamDestroy(self.stream))
            self.context = self.engine = None
        super().close()


def build_bundle_engine(bundle: str | Path, precision: str | None = None, workspace_gb: float = 4.0) -> Path:
    """``python -m runtime build``: build (or reuse) the engine for a deferred TensorRT artefact of a bundle."""
    from runtime.manifest import read_manifest, sha256_file
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    arts = [a for a in manifest.artifacts if a.target == "tensorrt" and (precision is None or a.precision == precision)]
    if not arts:
        raise UserError(f"the bundle has no TensorRT-ready ONNX{' for ' + precision if precision else ''}")
    art = arts[0]
    onnx_rel = art.runtime_config["onnx"]
    manifest.verify(bundle, [onnx_rel])
    info = device_info()
    profile = art.runtime_config.get("profile")
    key = engine_key(manifest.sha256[onnx_rel], art.precision, profile, info)
    cache_dir = bundle / "engines"
    cache_dir.mkdir(exist_ok=True)
    engine = cache_dir / f"{art.precision}-{key}.engine"
    if not engine.is_file():
        facts = build_engine(bundle / onnx_rel, engine, cache_dir / f"timing-{info['compute_capability']}.cache",
                             profile=profile, workspace_gb=workspace_gb)
    else:
        facts = {"build_s": 0.0, "engine_cache_hit": True}
    rel = engine.relative_to(bundle).as_posix()
    art.status, art.primary, art.files, art.engine = "built", rel, [rel], {**info, **facts, "key": key}
    manifest.sha256[rel] = sha256_file(engine)
    manifest.write(bundle)
    return engine


def open_artifact(path: Path, config: dict, device: str | None, threads: int | None) -> TensorRTRunner:
    return TensorRTRunner(path)


BACKEND = Backend(name="tensorrt", sdk="tensorrt", install=INSTALL, rank=10, open=open_artifact)
