"""The PyTorch reference of a bundle, rebuilt from its manifest (model name and weights)."""
from __future__ import annotations

from pathlib import Path

from exporters.models.zoo import DIGITS, create_model
from runtime.errors import UserError
from runtime.manifest import read_manifest


def rebuild_reason(manifest) -> str | None:
    """None when the manifest names weights the reference can be rebuilt from, else why not."""
    if manifest.weights == "random":
        return "the bundle was exported with random weights, which cannot be rebuilt"
    if manifest.weights == "given module":
        return "the bundle was exported from a Python module (exporters.export); give its checkpoint with --weights"
    if manifest.weights == "pretrained":
        return "the bundle's weights were downloaded ('pretrained'); give the checkpoint with --weights"
    return None


def model_from_manifest(bundle: Path, weights: str | None = None):
    """``(nn.Module, spec)`` for the bundle's model, at its input size, with its (or the given) weights."""
    m = read_manifest(bundle)
    if weights is None:
        why = rebuild_reason(m)
        if why:
            raise UserError(f"no PyTorch reference for {bundle}: {why} (for eval: --reference onnx)")
    if m.model in DIGITS and weights is None and m.weights.startswith("exporters/data/"):
        return create_model(m.model)  # its shipped checkpoint
    kw = {} if m.model in DIGITS else {"img_size": m.input.shape[-1]}
    if m.weights.startswith(("local-dir:", "hf-hub:")) and weights is None:
        return create_model(m.weights, **kw)  # timm's saved-model folder names the model and its weights
    w = weights or m.weights
    if not Path(w).is_file():
        raise UserError(f"no PyTorch reference for {bundle}: its weights file {w} is not here (give --weights PATH, "
                        "or, for eval, --reference onnx)")
    if m.model not in DIGITS:
        kw["num_classes"] = m.output.shape[-1]
    return create_model(m.model, weights=w, **kw)


def torch_logits(bundle: Path, threads: int | None, weights: str | None = None):
    """``logits([N,3,H,W] float32) -> [N, classes]`` of the PyTorch FP32 reference (inference mode)."""
    import numpy as np
    import torch
    model, _ = model_from_manifest(bundle, weights)
    if threads:
        torch.set_num_threads(threads)

    @torch.inference_mode()
    def logits(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).float().numpy()
    return logits
