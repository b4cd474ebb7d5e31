"""Torch-free inference on vitdeploy bundles: numpy, pillow and the backend's own package.

    import runtime
    session = runtime.open("out/swin_t")
    session.predict(["cat.jpg"], topk=5)
"""
from __future__ import annotations

from pathlib import Path


def open(bundle_dir: str | Path, target: str | None = None, device: str | None = None,
         precision: str | None = None, threads: int | None = None):
    """Read ``manifest.json``, verify the artefact's sha256, pick a backend; return a ``Session``."""
    from runtime.session import Session
    return Session(bundle_dir, target=target, precision=precision, device=device, threads=threads)


__all__ = ["open"]
