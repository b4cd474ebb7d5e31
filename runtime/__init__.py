"""Torch-free inference on vitdeploy bundles: numpy, pillow and the backend's own package.

    import runtime
    session = runtime.open("out/swin_t")
    session.predict(["cat.jpg"], topk=5)
"""
from __future__ import annotations

from pathlib import Path

from runtime.sizes import open_bundle


def open(bundle_dir: str | Path, target: str | None = None, device: str | None = None,
         precision: str | None = None, threads: int | None = None, mode: str = "latency", verify: str = "auto",
         allow_unverified: bool = False, repair: bool = True, trust: str | Path | None = None,
         size: int | tuple[int, int] | None = None):
    """Open a bundle for inference: read its manifest, choose an artefact that passed its gates, check its sha256.

    Args:
        bundle_dir: The bundle folder (``OUT/<model>``), a pack, or a bundle of several sizes (``sizes.json``).
        target: The backend to serve with (``openvino``, ``onnxruntime``, ``tensorrt``, ``tensorrt_rtx``,
            ``coreml``); default: the best that passed its gates and runs here.
        device: OpenVINO's device (``CPU``, ``GPU``, ``NPU``); refused for backends that choose their own.
        precision: ``fp32``, ``fp16`` or ``int8``; default: the export's measured choice, else the best proven.
        threads: Inference threads; default: the cores this process may use.
        mode: ``"latency"`` (one batch at a time) or ``"throughput"`` (several in flight).
        verify: ``"auto"`` runs the golden set through the artefact when this machine's fingerprint differs from
            the one it was proven on and no verdict is recorded here; ``"always"`` every time; ``"never"`` trusts
            the build verdict.
        allow_unverified: Serve a failed or unproven artefact anyway.
        repair: When the artefact fails here, try its backend's known-safe runtime configurations (the repair
            ladder) before falling back to the next proven artefact, with one warning line.
        trust: A PEM public key (default ``$VITDEPLOY_TRUST``): a bundle not signed with its private key, or with
            any file changed since, is refused before anything in it is read.
        size: Pixels or ``(h, w)``: open that size's artefact alone in a bundle of several sizes.

    Returns:
        A ``Session`` (``predict``, ``logits``, ``features``, ``segment``, ``embed``, ``infer``; a context manager),
        or for a bundle of several sizes a ``SizedSession`` that serves each input with the artefact of its size,
        or resizes an image to the nearest declared size and says so (``Prediction.served``).

    Raises:
        UserError: One line for any refusal: a missing or tampered file, an untrusted signature, no artefact that
            runs here, a bad argument.
    """
    return open_bundle(bundle_dir, size, trust, target=target, precision=precision, device=device, threads=threads,
                       mode=mode, verify=verify, allow_unverified=allow_unverified, repair=repair)


__all__ = ["open"]
