"""A bundle opened for inference: verified artefact, chosen backend, manifest preprocessing."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import values
from runtime.backends import backends, runner_from_artifact
from runtime.backends.base import batched_logits, check_mode, runner_batch
from runtime.errors import UserError
from runtime.golden import read_golden
from runtime.manifest import ArtifactEntry, Manifest
from runtime.preprocess import Preprocessing, open_image, preprocess_batch
from runtime.proof import VERIFY_MODES, Verdict, prove, proven_here, record, recorded, run_options
from runtime.signing import read_trusted

PRECISION_PREFERENCE = ("int8", "fp16", "fp32")  # without a measured choice: the smallest type first


@dataclass
class Prediction:
    labels: list[str]
    indices: list[int]
    scores: list[float]  # softmax probabilities
    served: str | None = None  # a multi-size bundle: which size's artefact served the image, and why

    def to_dict(self) -> dict:
        return {"labels": self.labels, "indices": self.indices, "scores": self.scores,
                **({"served": self.served} if self.served else {})}


def check_open(target: str | None = None, precision: str | None = None, device: str | None = None,
               threads: int | None = None, mode: str = "latency", verify: str = "auto") -> None:
    """Every argument of ``runtime.open`` that needs no bundle, checked once, before anything is opened: one
    ``UserError`` naming the argument."""
    known = backends()
    if target is not None and target not in known:
        raise UserError(f"unknown target {target!r}; known: {', '.join(known)}")
    if precision is not None and precision not in PRECISION_PREFERENCE:
        raise UserError(f"precision must be one of {', '.join(PRECISION_PREFERENCE)} (got {precision!r})")
    if device is not None:
        takers = [n for n, b in known.items() if b.takes_device]
        if not isinstance(device, str) or not device.strip():
            raise UserError(f"device must be a device name such as CPU, GPU or NPU (got {device!r})")
        if target is not None and target not in takers:
            raise UserError(f"--device is for {', '.join(takers)}; {target} chooses its own device (it would "
                            f"run on its default whatever --device says)")
    values.check("threads", threads, values.threads)
    check_mode(mode)
    if verify not in VERIFY_MODES:
        raise UserError(f"verify must be one of {', '.join(VERIFY_MODES)} (got {verify!r})")


def ranked(manifest: Manifest, target: str | None, precision: str | None,
           device: str | None = None) -> list[ArtifactEntry]:
    """Built artefacts that can run here, best first: the one asked for; else the export's measured choice
    (``--precision auto``, ``manifest.selection``); then by the backend registry's ranks and ``PRECISION_PREFERENCE``.
    With a ``device``, only backends that honour one. Whether each passed its gates is for the caller (``Session``
    serves only proven ones)."""
    arts = [a for a in manifest.artifacts if a.status == "built" and a.primary]
    if device is not None:
        arts = [a for a in arts if a.target in backends() and backends()[a.target].takes_device]
        if not arts:
            raise UserError(f"--device {device}: no artefact of the bundle is for a backend that takes a device "
                            f"({', '.join(n for n, b in backends().items() if b.takes_device)})")
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
    return preferred(manifest, usable, asked=bool(target or precision))


def preferred(manifest: Manifest, arts: list[ArtifactEntry], asked: bool = False) -> list[ArtifactEntry]:
    """``arts`` best first: the export's measured choice (``manifest.selection``, unless a target or precision was
    ``asked`` for), then the backend registry's ranks and ``PRECISION_PREFERENCE``."""
    chosen = manifest.selection or {}
    ranks = list(backends())
    return sorted(arts, key=lambda a: (asked or (a.target, a.precision) != (chosen.get("target"), chosen.get("precision")),
                                       ranks.index(a.target) if a.target in ranks else len(ranks),
                                       PRECISION_PREFERENCE.index(a.precision)))


def choose_artifact(manifest: Manifest, target: str | None, precision: str | None) -> ArtifactEntry:
    """The first of ``ranked``: the artefact a tool inspects (drift), whatever its verdict."""
    return ranked(manifest, target, precision)[0]


def standing(art: ArtifactEntry) -> str:
    """``passed`` / ``failed`` at build, or ``unproven`` (no build verdict: an engine built on the device)."""
    if art.verification is None:
        return "unproven"
    return "passed" if art.verification.passed else "failed"


def as_images(images) -> list:
    """``predict``'s argument as a list of PIL images or uint8 ``[H, W, 3]``/``[H, W]`` arrays; anything else is one
    ``UserError`` naming the item (a single path is one image, not a sequence of letters)."""
    from PIL import Image
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    try:
        images = list(images)
    except TypeError:
        raise UserError(f"images must be a list of paths, PIL images or uint8 arrays (got {type(images).__name__})")
    if not images:
        raise UserError("no images given")
    out = []
    for i, im in enumerate(images):
        if isinstance(im, (str, Path)):
            out.append(open_image(im))
        elif isinstance(im, Image.Image):
            out.append(im)
        elif isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or not (im.ndim == 2 or (im.ndim == 3 and im.shape[-1] in (3, 4))):
                raise UserError(f"image {i}: arrays must be uint8 [H, W, 3] (got {im.dtype} {list(im.shape)}"
                                + ("; channels first? transpose to [H, W, 3]" if im.ndim == 3 and im.shape[0] in (3, 4)
                                   else "") + ")")
            out.append(im)
        else:
            raise UserError(f"image {i} is {type(im).__name__}: give a path, a PIL image or a uint8 [H, W, 3] array")
    return out


def name_of(art: ArtifactEntry) -> str:
    return f"{art.target} {art.precision}"


def finite(out: np.ndarray, what: str) -> None:
    """Refuse outputs holding NaN or inf: they are no prediction (one ``UserError``)."""
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).reshape(len(out), -1).any(1).sum())
        raise UserError(f"the {what} artefact returned NaN or inf for {bad} of {len(out)} inputs: refused "
                        "(run python -m runtime verify on this bundle)")


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


class Session:
    """``predict(images)`` and ``infer(feeds)`` on one verified artefact of a bundle."""

    def __init__(self, bundle: str | Path, target: str | None = None, precision: str | None = None,
                 device: str | None = None, threads: int | None = None, mode: str = "latency",
                 verify: str = "auto", allow_unverified: bool = False, repair: bool = True,
                 trust: str | Path | None = None):
        check_open(target, precision, device, threads, mode, verify)
        self.bundle = Path(bundle)
        self.manifest, self.signed_by = read_trusted(self.bundle, trust)
        self.device, self.threads = device, threads
        self._verify, self._allow, self._repair = verify, allow_unverified, repair
        self._golden = None
        self.notes: list[str] = []  # what was refused or repaired on the way, one line each
        self.artifact, self.verdict = self._choose(ranked(self.manifest, target, precision, device))  # hashed first
        self.runner = runner_from_artifact(self.bundle, self.artifact.model_copy(update={
            "runtime_config": self.verdict.config}), device, threads, mode)
        self.preprocessing = Preprocessing.from_dict(self.manifest.preprocessing.model_dump())
        self.labels = self.manifest.labels
        self.target, self.precision = self.artifact.target, self.artifact.precision

    def _choose(self, arts: list[ArtifactEntry]) -> tuple[ArtifactEntry, Verdict]:
        """The first artefact that passed its gates and holds on this machine (proven here, recorded here, or
        golden-checked now, repaired if need be); each one passed over is a note and one warning line. With
        ``allow_unverified`` and none proven, the first one asked for runs anyway, with a warning."""
        refused, fallback = [], None
        for art in arts:
            if standing(art) == "failed":
                refused.append(f"{name_of(art)} failed at build ({(art.verification.failures or ['its gates'])[0]})")
                fallback = fallback or art
                continue
            verdict = self._settle(art)
            if verdict.passed:
                if verdict.repaired:
                    first = verdict.attempts[0].get("failures") or [verdict.attempts[0].get("error") or "?"]
                    refused.append(f"{name_of(art)} as built failed its golden check here ({'; '.join(first)[:200]})"
                                   f"; repaired: runs with {self._attempt_name(verdict)}")
                self._warn(refused)
                if refused and not verdict.repaired:
                    warn(f"running {name_of(art)} instead")
                return art, verdict
            refused.append(f"{name_of(art)} failed its golden check here: {'; '.join(verdict.failures)[:300]}")
            fallback = fallback or art
        if self._allow and fallback is not None:
            self.manifest.verify(self.bundle, fallback.files)
            self._warn(refused)
            warn(f"running {name_of(fallback)}, which is not proven here, because unverified artefacts were allowed")
            return fallback, Verdict(fallback.target, fallback.precision, True, dict(fallback.runtime_config),
                                     "not checked (--allow-unverified)")
        raise UserError("no artefact of the bundle is proven to run correctly here: " + " · ".join(refused)
                        + " (--allow-unverified runs one anyway)")

    def _warn(self, lines: list[str]) -> None:
        for line in lines:
            self.notes.append(line)
            warn(line)

    @staticmethod
    def _attempt_name(verdict: Verdict) -> str:
        return next((a["name"] for a in verdict.attempts if a.get("kept")), "another configuration")

    def _settle(self, art: ArtifactEntry) -> Verdict:
        """Whether ``art`` may run here, and under which configuration."""
        b = backends()[art.target]
        self.manifest.verify(self.bundle, art.files)  # hash before judging, and before any recorded verdict is used
        here = b.fingerprint(art.runtime_config)
        options = run_options(self._repair, self.device)
        as_built = Verdict(art.target, art.precision, True, dict(art.runtime_config), "not checked", fingerprint=here)
        if self._verify == "never" and standing(art) == "passed":
            as_built.source = "not checked (verify='never')"
            return as_built
        if self._verify == "auto":
            if proven_here(art, here):
                as_built.source = "build"
                return as_built
            rec = recorded(self.bundle, art, here, options)
            if rec is not None:
                return rec
        try:
            golden = self.golden()
            verdict = prove(self.bundle, self.manifest, art, golden, self.device, self.threads, repair=self._repair)
        except UserError as exc:
            return Verdict(art.target, art.precision, False, dict(art.runtime_config), "golden check",
                           failures=[str(exc)], fingerprint=here)
        record(self.bundle, art, verdict, options)
        return verdict

    def golden(self):
        if self._golden is None:
            self._golden = read_golden(self.bundle, self.manifest)
        return self._golden

    def close(self) -> None:
        """Release the runtime's session (also on leaving a ``with`` block)."""
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def batch(self) -> int:
        return runner_batch(self.runner)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The artefact's raw outputs.

        Args:
            feeds: ``{input_name: [B, 3, H, W] preprocessed batch}``, at the artefact's batch size.

        Returns:
            Each output by name, float32.
        """
        return self.runner.infer(feeds)

    def _task(self, wanted: str, method: str) -> None:
        """Refuse a method of another kind of bundle, naming the one that fits."""
        task = self.manifest.task
        if task != wanted:
            fits = {"classification": "predict() or logits()", "embedding": "embed()", "features": "features()",
                    "segmentation": "segment()"}
            raise UserError(f"{method} is for {wanted} bundles; this one's task is {task}: use {fits.get(task, '?')}")

    def _outputs(self, inputs: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` preprocessed inputs -> ``[N, D]`` flattened outputs, refused when any is NaN or inf."""
        out = batched_logits(self.runner, inputs, self.batch)
        finite(out, f"{self.target} {self.precision}")
        return out

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """A classifier's logits.

        Args:
            inputs: ``[N, 3, H, W]`` preprocessed inputs (any ``N``: run in the artefact's batch size).

        Returns:
            ``[N, classes]`` float32 logits.
        """
        self._task("classification", "logits()")
        return self._outputs(inputs)

    def features(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """A backbone bundle's (``--features``) feature maps.

        Args:
            inputs: ``[B, 3, H, W]`` preprocessed inputs, at the artefact's batch size.

        Returns:
            Each map by name (``stage0``...), float32 ``[B, C, h, w]``.
        """
        self._task("features", "features()")
        maps = self.runner.infer({self.runner.input_name: inputs})
        for m in maps.values():
            finite(m, f"{self.target} {self.precision}")
        return maps

    def embed(self, images) -> np.ndarray:
        """An embedding bundle's (a model without a classifier) pooled embeddings.

        Args:
            images: Paths, PIL images or uint8 ``[H, W, 3]`` arrays, preprocessed as at export.

        Returns:
            float32 ``[N, D]``, as the model returns them (not normalised).
        """
        self._task("embedding", "embed()")
        return self._outputs(preprocess_batch(as_images(images), self.preprocessing))

    def segment(self, images) -> list[np.ndarray]:
        """A segmentation bundle's (``export(module, task="segmentation")``) class maps.

        Args:
            images: Paths, PIL images or uint8 ``[H, W, 3]`` arrays, preprocessed as at export.

        Returns:
            Each image's class map, int64 ``[h, w]`` at the logits map's resolution (arg-max over classes;
            ``self.labels`` names them where the export was given names).
        """
        self._task("segmentation", "segment()")
        _, classes, h, w = self.manifest.output.shape
        flat = self._outputs(preprocess_batch(as_images(images), self.preprocessing))
        out = flat.reshape(len(flat), classes, h, w)
        return list(out.argmax(1))

    def predict(self, images, topk: int = 5) -> list[Prediction]:
        """A classifier's top-k classes.

        Args:
            images: Paths, PIL images or uint8 ``[H, W, 3]`` arrays, preprocessed as at export; in a bundle of
                several sizes each is served by the artefact of its own size, or the nearest.
            topk: How many classes each.

        Returns:
            One ``Prediction`` per image: labels, class indices and softmax scores, best first.
        """
        if self.manifest.task == "segmentation":
            raise UserError("this bundle is a segmentation model: it returns a logits map per image, not classes; "
                            "use segment()")
        if self.manifest.task == "embedding":
            raise UserError("this bundle is an embedding model (no classifier): it returns an embedding per image, "
                            "not classes; use embed()")
        if self.manifest.task == "features":
            raise UserError(f"this bundle is a backbone: it returns feature maps "
                            f"({', '.join(o.name for o in self.manifest.outputs)}), not classes; use features()")
        values.check("topk", topk, values.TOPK)
        logits = self._outputs(preprocess_batch(as_images(images), self.preprocessing))
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        k = min(topk, probs.shape[-1])
        out = []
        for p in probs:
            idx = np.argsort(-p, kind="stable")[:k].tolist()
            out.append(Prediction([self.labels[i] if self.labels else str(i) for i in idx], idx,
                                  [float(p[i]) for i in idx]))
        return out
