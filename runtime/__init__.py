"""Torch-free inference on vitdeploy bundles: numpy, pillow and the backend's own package.

    import runtime
    session = runtime.open("out/swin_t")
    session.predict(["cat.jpg"], topk=5)
"""
from __future__ import annotations

from pathlib import Path


def open(bundle_dir: str | Path, target: str | None = None, device: str | None = None,
         precision: str | None = None, threads: int | None = None, mode: str = "latency", verify: str = "auto",
         allow_unverified: bool = False, repair: bool = True, trust: str | Path | None = None,
         size: int | tuple[int, int] | None = None):
    """Read ``manifest.json``, choose an artefact that passed its gates, verify its sha256; return a ``Session``.

    ``mode``: ``"latency"`` (one image batch at a time) or ``"throughput"`` (several in flight; see
    ``runtime/backends/base.py``). ``verify``: ``"auto"`` runs the bundle's golden set through the artefact
    when this machine's fingerprint differs from the one it was proven on and no verdict is recorded here;
    ``"always"`` runs it every time; ``"never"`` trusts the build verdict. An artefact that fails here is
    repaired through its backend's safe configurations (``repair``), else the next proven one runs, with one
    warning line. ``allow_unverified`` serves a failed or unproven artefact anyway. ``trust``: a PEM public key
    (default ``$VITDEPLOY_TRUST``); when set, a bundle not signed with its private key, or with any file changed
    since it was signed, is refused (``UserError``) before anything in it is read.

    A bundle of several input sizes (``sizes.json``, ``--img-size 224,384``) gives a ``SizedSession`` that serves
    each input with the artefact of its size, or resizes an image to the nearest declared size and says so
    (``Prediction.served``); ``size`` (pixels or ``(h, w)``) opens that size's artefact alone.
    """
    from runtime.sizes import open_bundle
    return open_bundle(bundle_dir, size, trust, target=target, precision=precision, device=device, threads=threads,
                       mode=mode, verify=verify, allow_unverified=allow_unverified, repair=repair)


__all__ = ["open"]
