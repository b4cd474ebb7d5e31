"""A bundle opened for inference: verified artefact, chosen backend, manifest preprocessing."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import UserError
from runtime.manifest import read_manifest, verify_files
from runtime.preprocess import Preprocessing, preprocess_batch

PREFERENCE = ("tensorrt", "openvino", "onnxruntime", "coreml")  # when no target is asked for
PRECISION_PREFERENCE = ("int8", "fp16", "fp32")


@dataclass
class Prediction:
    labels: list[str]
    indices: list[int]
    scores: list[float]  # softmax probabilities

    def to_dict(self) -> dict:
        return {"labels": self.labels, "indices": self.indices, "scores": self.scores}


def _importable(target: str) -> bool:
    import importlib.util
    mod = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "coreml": "coremltools"}[target]
    if target == "coreml" and platform.system() != "Darwin":
        return False
    return importlib.util.find_spec(mod) is not None


def choose_artifact(manifest: dict, target: str | None, precision: str | None) -> dict:
    arts = [a for a in manifest.get("artifacts", []) if a.get("status") == "built" and a.get("primary")]
    if target:
        arts = [a for a in arts if a["target"] == target]
        if not arts:
            have = sorted({a["target"] for a in manifest.get("artifacts", [])})
            raise UserError(f"the bundle has no built {target} artefact; it has: {', '.join(have) or 'none'}")
    if precision:
        arts = [a for a in arts if a["precision"] == precision]
        if not arts:
            raise UserError(f"the bundle has no {target or ''} {precision} artefact".replace("  ", " "))
    usable = [a for a in arts if _importable(a["target"])]
    if not usable:
        raise UserError("no artefact in the bundle can run here (install onnxruntime or openvino)")
    usable.sort(key=lambda a: (PREFERENCE.index(a["target"]), PRECISION_PREFERENCE.index(a["precision"])))
    return usable[0]


def runner_for(bundle: Path, art: dict, device: str | None, threads: int | None):
    path = bundle / art["primary"]
    cfg = art.get("runtime_config", {})
    if art["target"] == "onnxruntime":
        from runtime.backends.onnxruntime import OnnxRuntimeRunner
        return OnnxRuntimeRunner(path, threads=threads, providers=cfg.get("providers"))
    if art["target"] == "openvino":
        from runtime.backends.openvino import OpenVinoRunner
        return OpenVinoRunner(path, device=device or cfg.get("device", "CPU"), threads=threads,
                              inference_precision=cfg.get("inference_precision", "f32"))
    if art["target"] == "tensorrt":
        from runtime.backends.tensorrt import TensorRTRunner
        return TensorRTRunner(path)
    if art["target"] == "coreml":
        from runtime.backends.coreml import CoreMLRunner
        return CoreMLRunner(path, compute_units=cfg.get("compute_units", "ALL"))
    raise UserError(f"unknown target in manifest: {art['target']}")


class Session:
    """``predict(images)`` and ``infer(feeds)`` on one verified artefact of a bundle."""

    def __init__(self, bundle: str | Path, target: str | None = None, precision: str | None = None,
                 device: str | None = None, threads: int | None = None):
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        self.artifact = choose_artifact(self.manifest, target, precision)
        files = {f: self.manifest["sha256"][f] for f in self.artifact["files"] if f in self.manifest["sha256"]}
        if len(files) != len(self.artifact["files"]):
            raise UserError("the manifest has no sha256 for some of the artefact's files")
        verify_files(self.bundle, files)
        self.runner = runner_for(self.bundle, self.artifact, device, threads)
        self.preprocessing = Preprocessing.from_dict(self.manifest["preprocessing"])
        self.labels = self.manifest.get("labels")
        self.target, self.precision = self.artifact["target"], self.artifact["precision"]

    @property
    def batch(self) -> int:
        b = self.runner.input_shape[0]
        return b if b and b > 0 else 1

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer(feeds)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` preprocessed inputs -> ``[N, classes]`` logits, in the artefact's batch size."""
        outs, b = [], self.batch
        for i in range(0, len(inputs), b):
            chunk = inputs[i:i + b]
            n = len(chunk)
            if n < b and self.runner.input_shape[0] != -1:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
            outs.append(next(iter(self.runner.infer({self.runner.input_name: chunk}).values()))[:n])
        return np.concatenate(outs)

    def predict(self, images, topk: int = 5) -> list[Prediction]:
        """Images (paths, PIL images or uint8 ``[H, W, 3]`` arrays) -> top-k labels and scores each."""
        from PIL import Image
        loaded = []
        for im in images:
            if isinstance(im, (str, Path)):
                try:
                    with Image.open(im) as f:
                        loaded.append(f.convert("RGB"))
                except (OSError, ValueError) as exc:
                    raise UserError(f"cannot decode image {im}: {exc}")
            else:
                loaded.append(im)
        logits = self.logits(preprocess_batch(loaded, self.preprocessing))
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        k = min(topk, probs.shape[-1])
        out = []
        for p in probs:
            idx = np.argsort(-p, kind="stable")[:k].tolist()
            out.append(Prediction([self.labels[i] if self.labels else str(i) for i in idx], idx,
                                  [float(p[i]) for i in idx]))
        return out
