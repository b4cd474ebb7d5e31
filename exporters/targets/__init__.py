"""Targets: one module per runtime, each exposing plain functions, registered by name.

Each target module has:
- ``PRECISIONS``: the precisions ``--target all`` and the matrix build, the default first;
- ``available() -> str | None``: ``None`` when usable here, else the reason (with install hint);
- ``build(ctx, precision) -> Artifact``: files written into ``ctx.workdir``;
- ``runner(ctx, artifact)``: a runner (see ``runtime.backends``) for verification and timing,
  or ``None`` when the artefact can't execute on this machine (a deferred TensorRT engine,
  a Core ML package on Linux).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runtime.errors import UserError

TARGET_NAMES = ("onnxruntime", "openvino", "tensorrt", "coreml")
NOT_BUILT: dict[str, str] = {}  # targets registered but not implemented yet: name -> one-line message


@dataclass
class BuildContext:
    """Everything a target may use. Targets never read images: calibration comes from ``calib()``."""

    spec: object  # exporters.zoo.ModelSpec
    model: object  # the (rewritten) torch model, for targets that convert from PyTorch
    onnx_path: Path  # the FP32 ONNX export
    workdir: Path  # the staging bundle folder
    batch: int
    threads: int | None
    calib: Callable[[], object]  # -> calibration.CalibrationSet, loaded on first use
    device: str = "CPU"
    dynamic_batch: bool = False
    options: dict = field(default_factory=dict)


@dataclass
class Artifact:
    target: str
    precision: str
    files: list[Path]
    primary: Path | None
    status: str = "built"  # built | deferred | skipped | failed
    runtime_config: dict = field(default_factory=dict)  # how to open it (precision hints, providers)
    build_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    proxy: str | None = None  # what a proxy accuracy stands for, when the real one can't run here

    @property
    def timeable(self) -> bool:
        """Only real artefacts are timed: a proxy's speed says nothing about the target."""
        return self.status == "built" and not self.proxy

    @property
    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.files if f.is_file()) / 1e6


def target_module(name: str):
    if name not in TARGET_NAMES:
        raise UserError(f"unknown target '{name}'; choose from {', '.join(TARGET_NAMES)} or all")
    if name in NOT_BUILT:
        raise UserError(NOT_BUILT[name])
    return importlib.import_module(f"exporters.targets.{name}")
