"""Backends: one runner contract for every runtime (Polygraphy's runner idea).

A runner has ``infer(dict[str, np.ndarray]) -> dict[str, np.ndarray]``, ``input_name``,
``input_shape`` (``[B, 3, H, W]``, ``B`` may be -1 when dynamic), ``last_latency`` (ms of the
last ``infer``), and ``describe() -> dict`` (device, precision hints, versions).
SDKs are imported inside each backend module, so a missing SDK is a clear error only
when that backend is asked for.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from runtime.errors import UserError


class Runner(Protocol):
    input_name: str
    input_shape: list[int]
    last_latency: float

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...


INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install 'vitdeploy[openvino]'",
    "tensorrt": "install TensorRT 10.x/11.x from NVIDIA (JetPack on a Jetson) and cuda-python",
    "coremltools": "pip install 'vitdeploy[coreml]' (execution needs macOS)",
}


def missing(module: str) -> str | None:
    """``None`` when ``module`` imports, else the one-line reason with its install hint."""
    try:
        require(module)
    except UserError as exc:
        return str(exc)
    return None


def require(module: str):
    """Import an SDK or raise a one-line ``UserError`` with its install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = INSTALL_HINTS.get(module.split(".")[0], f"pip install {module}")
        raise UserError(f"{module} is not installed ({exc.name}); install it with: {hint}")
