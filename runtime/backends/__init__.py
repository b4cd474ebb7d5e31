"""Backends: one module per runtime, each declaring a ``BACKEND``; the registry is derived from them.

A backend module (``runtime/backends/<name>.py``) defines ``BACKEND = Backend(...)``: its name
(the manifest's ``target``), the SDK module it needs and the install hint, its rank in the
runtime's default choice, and ``open(path, runtime_config, device, threads, mode) -> Runner``.
The runtime's ``--target`` choices, its preference order and its availability checks all come
from here: adding a backend is one module. SDKs are imported inside each module's functions, so
a missing SDK is a one-line ``UserError`` only when that backend is asked for.
"""
from __future__ import annotations

import functools
import importlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.backends.base import Runner, injected_fault
from runtime.environment import fingerprint
from runtime.errors import UserError
from runtime.manifest import resolve_inside
from runtime.registry import declared

__all__ = ["Backend", "Runner", "backend", "backends", "missing", "open_tapped", "open_with", "require",
           "runner_from_artifact"]


@dataclass(frozen=True)
class Backend:
    name: str  # the manifest's "target" for artefacts this backend opens
    sdk: str  # module that must import for the backend to run here
    install: str  # one-line install hint
    rank: int  # the runtime's default choice: lower first
    open: Callable[..., Runner]  # (path, runtime_config, device, threads, mode) -> Runner
    systems: tuple[str, ...] = ()  # platform.system() values it runs on; empty: any
    probe: Callable[[], str | None] | None = None  # further check (a GPU present); None when fine
    # known-safe runtime configurations to try, cheapest first, when an artefact fails its gate as configured:
    # (runtime_config) -> [(name, runtime_config), ...], the configuration itself not among them (runtime/repair.py)
    alternatives: Callable[[dict], list[tuple[str, dict]]] | None = None
    gpu: bool = False  # numerics depend on the GPU (its name and compute capability are in the fingerprint)
    takes_device: bool = False  # honours a device name (OpenVINO's CPU, GPU, NPU); others choose their own
    # a diagnostic (drift localisation): (path, runtime_config, tensors, threads, weights) -> (runner, {tensor: output
    # name}), the artefact opened on the CPU with those of its internal tensors it has as further outputs; None: the
    # backend cannot show its internals
    tap: Callable[..., tuple[Runner, dict[str, str]]] | None = None

    def available(self) -> str | None:
        """``None`` when artefacts of this backend can run here, else why not (with the install hint)."""
        if self.systems and platform.system() not in self.systems:
            return f"{self.name} runs only on {', '.join(self.systems)} (this is {platform.system()})"
        return missing(self.sdk, self.install) or (self.probe() if self.probe else None)

    def fingerprint(self, config: dict | None = None) -> dict:
        """This machine's fingerprint for artefacts of this backend (``runtime.environment.fingerprint``)."""
        config = config or {}
        on_gpu = self.gpu or any("CUDA" in p or "Tensorrt" in p for p in config.get("providers") or [])
        return fingerprint(self.sdk, gpu=on_gpu, device=config.get("device"))

    def repairs(self, config: dict) -> list[tuple[str, dict]]:
        return self.alternatives(dict(config)) if self.alternatives else []


@functools.lru_cache(maxsize=None)
def backends() -> dict[str, Backend]:
    """Every backend module's ``BACKEND``, by name, in preference order (``base``: the Runner contract)."""
    return {b.name: b for b in declared(__name__, __path__, "BACKEND", key=lambda b: b.rank, skip=("base",))}


def backend(name: str) -> Backend:
    try:
        return backends()[name]
    except KeyError:
        raise UserError(f"unknown backend '{name}'; known: {', '.join(backends())}") from None


def require(module: str, install: str | None = None):
    """Import an SDK or raise a one-line ``UserError`` with its install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = install or _hint(module)
        raise UserError(f"{module} is not installed ({exc.name}); install it with: {hint}") from None


def missing(module: str, install: str | None = None) -> str | None:
    """``None`` when ``module`` imports, else the one-line reason with its install hint."""
    try:
        require(module, install)
    except UserError as exc:
        return str(exc)
    return None


def _hint(module: str) -> str:
    top = module.split(".")[0]
    for b in backends().values():
        if b.sdk.split(".")[0] == top:
            return b.install
    return f"pip install {top}"


def runner_from_artifact(bundle: Path, art, device: str | None = None, threads: int | None = None,
                         mode: str = "latency") -> Runner:
    """Open a manifest artefact entry (``runtime.manifest.ArtifactEntry``) of ``bundle`` as a runner.

    The one way from a bundle artefact to a runner: the export pipeline and ``runtime`` both use it.
    The path is resolved inside the bundle; hashes are checked by the caller (``Manifest.verify``).
    """
    if not art.primary:
        raise UserError(f"the {art.target} {art.precision} artefact has no file to open (status {art.status})")
    return open_with(art.target, resolve_inside(Path(bundle), art.primary), art.runtime_config, device, threads, mode,
                     weights=weights_of(bundle, art))


def weights_of(bundle: Path, art) -> Path | None:
    """The artefact's weights file when it is not beside its primary (a bundle of several sizes shares them)."""
    return resolve_inside(Path(bundle), art.weights_file) if art.weights_file else None


def open_with(name: str, path: Path, config: dict, device: str | None = None, threads: int | None = None,
              mode: str = "latency", weights: Path | None = None) -> Runner:
    """Open ``path`` with backend ``name`` under ``config`` (a runtime configuration): the one place runners are
    made, so the test-only fault injection (``runtime.backends.base.FAULT_ENV``) sees every one. ``weights``: the
    weights file when it is not the one the backend finds beside ``path`` (OpenVINO's IR only)."""
    b = backend(name)
    why = b.available()
    if why:
        raise UserError(why)
    runner = b.open(path, dict(config), device, threads, mode, **({"weights": weights} if weights else {}))
    runner.fault = injected_fault(name, config)
    return runner


def open_tapped(name: str, path: Path, config: dict, tensors: list[str], threads: int | None = None,
                weights: Path | None = None) -> tuple[Runner, dict[str, str]]:
    """Open ``path`` with backend ``name`` and ``tensors`` (names of its internal tensors) as further outputs; returns
    the runner and, for each tensor it has, the output that carries it. A diagnostic: export-side drift localisation
    reads the blocks of an artefact through it (``exporters/verify/probes.py``)."""
    b = backend(name)
    why = b.available()
    if why:
        raise UserError(why)
    if b.tap is None:
        raise UserError(f"the {name} backend cannot show the tensors inside an artefact")
    return b.tap(Path(path), config, list(tensors), threads, weights)
