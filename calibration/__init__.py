"""Calibration and evaluation sets: one backend-neutral, hashed source of preprocessed batches.

``load_set(source, preprocessing, ...) -> CalibrationSet``. Targets never read images: they
get ``CalibrationSet.inputs`` (``[N, 3, H, W]`` float32) or ``batches(n)``. The same code makes
the evaluation set, so the reference and every target see identical inputs.
"""
from __future__ import annotations

import collections
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration import sources
from runtime.errors import UserError
from runtime.preprocess import ImageRejected, Preprocessing, open_image, preprocess_image

DEFAULT_CALIB_SIZE = 128
DEFAULT_SEED = 0


@dataclass
class CalibrationSet:
    """Preprocessed samples ``inputs [N, 3, H, W]``, optional ``labels [N]``, and their hash."""

    inputs: np.ndarray
    labels: np.ndarray | None
    ids: list[str]
    source: str
    sha256: str
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch: int):
        """Yield ``[batch, 3, H, W]`` arrays; the last one is padded by repeating its final sample."""
        for i in range(0, len(self.inputs), batch):
            chunk = self.inputs[i:i + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            yield chunk

    def describe(self) -> dict:
        return {"source": self.source, "size": len(self), "sha256": self.sha256, "skipped": self.skipped,
                "labelled": self.labels is not None, "notes": self.notes}


def content_hash(ids: list[str], pp: Preprocessing, seed: int, extra: str = "") -> str:
    """sha256 over the chosen sample ids, the preprocessing and the seed."""
    h = hashlib.sha256()
    h.update(json.dumps({"ids": ids, "preprocessing": pp.to_dict(), "seed": seed, "extra": extra},
                        sort_keys=True).encode())
    return h.hexdigest()


def _choose(n: int, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _raw(source: str | Path, part: str, label_index, input_shape) -> sources.RawSamples:
    s = str(source)
    if s == "digits":
        return sources.from_digits(part)
    p = Path(s)
    if p.suffix in (".npy", ".npz"):
        if not p.is_file():
            raise UserError(f"array file not found: {p}")
        return sources.from_array(p, input_shape)
    if p.suffix in (".txt", ".lst") and p.is_file():
        return sources.from_list(p, label_index)
    return sources.from_folder(p, label_index)


def _decode(raw: sources.RawSamples, idx: np.ndarray, pp: Preprocessing, progress: bool):
    """Preprocess the chosen samples; undecodable or refused images are skipped, each with its reason."""
    from PIL import Image

    out, keep, why = [], [], collections.Counter()
    it = idx
    bar = None
    if progress and raw.kind in ("folder", "list") and len(idx) > 16:
        from rich.progress import Progress
        bar = Progress(transient=True, console=_stderr_console())
        bar.start()
        task = bar.add_task("loading images", total=len(idx))
    try:
        for i in it:
            item = raw.items[i]
            try:
                if raw.preprocessed:
                    arr = np.asarray(item, np.float32)
                elif isinstance(item, np.ndarray):
                    arr = preprocess_image(Image.fromarray(item), pp)
                else:
                    arr = preprocess_image(open_image(item), pp)
                out.append(arr)
                keep.append(i)
            except ImageRejected as exc:
                why[exc.kind] += 1
            except UserError:
                why["undecodable"] += 1
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    return out, keep, why


def _stderr_console():
    from rich.console import Console
    return Console(file=sys.stderr)


def load_set(source: str | Path, pp: Preprocessing, size: int | None = DEFAULT_CALIB_SIZE,
             seed: int = DEFAULT_SEED, part: str = "holdout", label_index: dict[str, int] | None = None,
             progress: bool = True) -> CalibrationSet:
    """Load up to ``size`` samples (all when ``None``) from ``source``, chosen with ``seed``.

    ``source`` is "digits", an image folder, a ``.npy``/``.npz`` file or a ``.txt`` list.
    ``part`` picks the digits split ("holdout" for evaluation, "train" for calibration).
    """
    if size is not None and size < 1:
        raise UserError(f"the sample count must be at least 1 (got {size})")
    raw = _raw(source, part, label_index, (3, *pp.input_size))
    idx = _choose(len(raw.items), size, seed)
    arrays, keep, why = _decode(raw, idx, pp, progress)
    skipped = len(idx) - len(keep)
    notes = list(raw.notes)
    if skipped:
        reasons = ", ".join(f"{n} {k}" for k, n in why.most_common())
        msg = f"skipped {skipped} image(s) of {len(idx)} ({reasons})"
        notes.append(msg)
        print(f"warning: {msg} in {source}", file=sys.stderr)
    if not arrays:
        raise UserError(f"no decodable images in {source} ({skipped} file(s) failed to decode)")
    inputs = np.stack(arrays).astype(np.float32)
    if inputs.shape[1:] != (3, *pp.input_size):
        raise UserError(f"{source}: samples have shape {inputs.shape[1:]}, the model wants {(3, *pp.input_size)}")
    labels = [raw.labels[i] for i in keep]
    lab = np.asarray(labels, np.int64) if labels and all(v is not None for v in labels) else None
    ids = [raw.ids[i] for i in keep]
    return CalibrationSet(inputs=inputs, labels=lab, ids=ids, source=str(source),
                          sha256=content_hash(ids, pp, seed, extra=part if str(source) == "digits" else ""),
                          skipped=skipped, notes=notes)
