"""Torch-free inference on vitdeploy bundles: numpy, pillow and the backend's own package.

    import runtime
    session = runtime.open("out/swin_t")
    session.predict(["cat.jpg"], topk=5)
"""
from __future__ import annotations

from pathlib import Path


def open(bundle_dir: str | Path, target: str | None = None, device: str | None = None,
         precision: str | None = None, threads: int | None = None, mode: str = "latency"):
    """Read ``manifest.json``, verify the artefact's sha256, pick a backend; return a ``Session``.

    ``mode``: ``"latency"`` (one image batch at a time) or ``"throughput"`` (several in flight; see
    ``runtime/backends/base.py``).
    """
    from runtime.session import Session
    return Session(bundle_dir, target=target, precision=precision, device=device, threads=threads, mode=mode)


__all__ = ["open"]
