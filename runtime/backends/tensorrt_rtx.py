"""TensorRT for RTX engines (Ampere and later RTX GPUs, Linux and Windows), built ahead of time anywhere.

The engine in the bundle is checked with ``IRuntime.get_engine_validity`` before it is loaded (an
engine from another TensorRT-RTX version or for another GPU is refused with one line); kernels are
JIT-specialised on first load and kept in the runtime cache file named in the manifest, next to the
engine. Running needs an NVIDIA GPU and cuda-python.
"""
from __future__ import annotations

from pathlib import Path

from runtime.backends import Backend
from runtime.backends._trt import LIBRARIES, EngineRunner, gpu_present
from runtime.backends._trt import library as trt_library
from runtime.errors import UserError

INSTALL = LIBRARIES["tensorrt_rtx"]


def runtime_cache_path(engine: Path, config: dict) -> Path | None:
    """The runtime cache file: a bare file name in the manifest, kept next to the engine."""
    name = config.get("runtime_cache")
    if not name:
        return None
    if Path(name).name != name:
        raise UserError(f"runtime_cache '{name}' must be a file name next to the engine")
    return engine.with_name(name)


def open_artifact(path: Path, config: dict, device: str | None, threads: int | None,
                  mode: str = "latency") -> EngineRunner:
    # one inference at a time in either mode (no streams here)
    return EngineRunner(trt_library("tensorrt_rtx"), path, runtime_cache_path(path, config))


BACKEND = Backend(name="tensorrt_rtx", sdk="tensorrt_rtx", install=INSTALL, rank=11, open=open_artifact,
                  probe=gpu_present, gpu=True)
