"""A bundle opened for inference: verified artefact, chosen backend, manifest preprocessing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.backends import backends, runner_from_artifact
from runtime.errors import UserError
from runtime.manifest import ArtifactEntry, Manifest, read_manifest
from runtime.preprocess import Preprocessing, open_image, preprocess_batch

PRECISION_PREFERENCE = ("int8", "fp16", "fp32")  # without a measured choice: the smallest type first


@dataclass
class Prediction:
    labels: list[str]
    indices: list[int]
    scores: list[float]  # softmax probabilities

    def to_dict(self) -> dict:
        return {"labels": self.labels, "indices": self.indices, "scores": self.scores}


def choose_artifact(manifest: Manifest, target: str | None, precision: str | None) -> ArtifactEntry:
    """The artefact to run: the one asked for; else the export's measured choice (``--precision auto``,
    ``manifest.selection``) when it runs here; else by the backend registry's ranks, then ``PRECISION_PREFERENCE``.
    """
    arts = [a for a in manifest.artifacts if a.status == "built" and a.primary]
    if target:
        arts = [a for a in arts if a.target == target]
        if not arts:
            have = sorted({a.target for a in manifest.artifacts})
            raise UserError(f"the bundle has no built {target} artefact; it has: {', '.join(have) or 'none'}")
    if precision:
        arts = [a for a in arts if a.precision == precision]
        if not arts:
            raise UserError(f"the bundle has no {target or ''} {precision} artefact".replace("  ", " "))
    known = backends()
    unknown = [a.target for a in arts if a.target not in known]
    if target and unknown:
        raise UserError(f"unknown target in manifest: {unknown[0]}")
    usable = [a for a in arts if a.target in known and known[a.target].available() is None]
    if not usable:
        why = "; ".join(sorted({known[a.target].available() for a in arts if a.target in known} - {None}))
        raise UserError(f"no artefact in the bundle can run here ({why or 'none is built'})")
    chosen = manifest.selection or {}
    for a in usable:  # the export's measured choice (--precision auto) when it can run here
        if not target and not precision and (a.target, a.precision) == (chosen.get("target"), chosen.get("precision")):
            return a
    ranks = list(known)
    usable.sort(key=lambda a: (ranks.index(a.target), PRECISION_PREFERENCE.index(a.precision)))
    return usable[0]


def batched_logits(runner, inputs: np.ndarray, batch: int) -> np.ndarray:
    """``[N, 3, H, W]`` -> ``[N, classes]`` through ``runner`` in chunks of ``batch``; with a static batch the
    last chunk is padded (repeating its last image) and the padding's outputs dropped."""
    outs = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i:i + batch]
        n = len(chunk)
        if n < batch and runner.input_shape[0] != -1:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(next(iter(runner.infer({runner.input_name: chunk}).values()))[:n])
    return np.concatenate(outs)


class Session:
    """``predict(images)`` and ``infer(feeds)`` on one verified artefact of a bundle."""

    def __init__(self, bundle: str | Path, target: str | None = None, precision: str | None = None,
                 device: str | None = None, threads: int | None = None, mode: str = "latency"):
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        self.artifact = choose_artifact(self.manifest, target, precision)
        self.manifest.verify(self.bundle, self.artifact.files)
        self.runner = runner_from_artifact(self.bundle, self.artifact, device, threads, mode)
        self.preprocessing = Preprocessing.from_dict(self.manifest.preprocessing.model_dump())
        self.labels = self.manifest.labels
        self.target, self.precision = self.artifact.target, self.artifact.precision

    def close(self) -> None:
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def batch(self) -> int:
        b = self.runner.input_shape[0]
        return b if b and b > 0 else 1

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer(feeds)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` preprocessed inputs -> ``[N, classes]`` logits, in the artefact's batch size."""
        return batched_logits(self.runner, inputs, self.batch)

    def predict(self, images, topk: int = 5) -> list[Prediction]:
        """Images (paths, PIL images or uint8 ``[H, W, 3]`` arrays) -> top-k labels and scores each."""
        loaded = [open_image(im) if isinstance(im, (str, Path)) else im for im in images]
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
