"""Where samples come from: an image folder, a .npy/.npz array, a list file, or the digits split.

Each source yields ``(id, image_or_array, label_or_None)``; decoding failures are counted,
not fatal. Nothing here imports torch.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.digits import digits_subset
from runtime.errors import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}


@dataclass
class RawSamples:
    """Undecoded or raw samples chosen from a source, in a fixed order."""

    ids: list[str]
    items: list  # Path to an image file, or a uint8 [H, W, 3] array, or a float32 [3, H, W] array
    labels: list[int | None]
    kind: str  # "folder" | "list" | "array" | "digits"
    preprocessed: bool = False  # arrays already [3, H, W] float32
    notes: list[str] = field(default_factory=list)


def _label(name: str, label_index: dict[str, int] | None) -> int | None:
    if label_index and name in label_index:
        return label_index[name]
    if name.isdigit():
        return int(name)
    return None


def from_folder(root: Path, label_index: dict[str, int] | None) -> RawSamples:
    """All images under ``root``, recursively; the first folder level below ``root`` is the class."""
    if not root.exists():
        raise UserError(f"data directory not found: {root}")
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    files, unreadable = _walk(root)
    notes = [f"{len(unreadable)} folder(s) could not be read and were left out: {_names(unreadable, root)}"] \
        if unreadable else []
    if not files:
        raise UserError(f"data directory is empty: {root}" + (f" ({notes[0]})" if notes else ""))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    if not images:
        raise UserError(f"no images in {root} ({len(files)} file(s), none with an image extension)")
    labels = []
    for p in images:
        rel = p.relative_to(root).parts
        labels.append(_label(rel[0], label_index) if len(rel) > 1 else None)
    if any(lab is None for lab in labels) and any(lab is not None for lab in labels):
        # partial labels would make top-1 meaningless: dropped for the whole set, saying which images caused it
        stray = [p for p, lab in zip(images, labels) if lab is None]
        top = [p for p in stray if len(p.relative_to(root).parts) == 1]
        other = sorted({p.relative_to(root).parts[0] for p in stray if p not in top})
        why = "; ".join(x for x in (
            f"{len(top)} image(s) at the top of the folder, outside any class folder: {_names(top, root)}" if top else "",
            f"folder(s) that name no class of the model: {', '.join(other[:5])}" if other else "") if x)
        notes.append(f"labels dropped for the whole set (dataset top-1 not computed): {why}")
        labels = [None] * len(images)
    elif any(lab is None for lab in labels):
        labels = [None] * len(images)
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    return RawSamples([str(p.relative_to(root)) for p in images], images, labels, "folder", notes=notes)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """Every non-hidden file under ``root`` (sorted) and the folders that could not be read (rglob skips them
    silently)."""
    unreadable: list[Path] = []
    files = []
    for folder, dirs, names in os.walk(root, onerror=lambda e: unreadable.append(Path(e.filename))):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in names if not n.startswith(".")]
    return sorted(p for p in files if p.is_file()), unreadable


def _names(paths: list[Path], root: Path, most: int = 5) -> str:
    shown = ", ".join(str(p.relative_to(root)) if p != root else str(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def from_list(path: Path, label_index: dict[str, int] | None) -> RawSamples:
    """A text file with one image path per line, optionally followed by a label."""
    ids, items, labels = [], [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        img, lab = (parts[0], _label(parts[1], label_index)) if len(parts) == 2 and not Path(line).exists() else (line, None)
        p = (path.parent / img) if not Path(img).is_absolute() else Path(img)
        ids.append(img)
        items.append(p)
        labels.append(lab)
    if not items:
        raise UserError(f"list file {path} names no images")
    if any(lab is None for lab in labels):
        labels = [None] * len(items)
    return RawSamples(ids, items, labels, "list")


def from_array(path: Path, input_shape: tuple[int, int, int]) -> RawSamples:
    """``.npy`` (images only) or ``.npz`` (``images``/``x`` and optional ``labels``/``y``).

    uint8 ``[N, H, W, 3]`` arrays are images and get the model's preprocessing; float32
    ``[N, 3, H, W]`` arrays of the model's input shape are taken as already preprocessed.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # reason: numpy raises ValueError/OSError/BadZipFile for bad files
        raise UserError(f"cannot read array file {path}: {type(exc).__name__}: {exc}")
    labels = None
    if isinstance(data, np.lib.npyio.NpzFile):
        key = next((k for k in ("images", "x", "inputs") if k in data.files), data.files[0] if data.files else None)
        if key is None:
            raise UserError(f"{path} holds no arrays")
        arr = data[key]
        lk = next((k for k in ("labels", "y", "targets") if k in data.files), None)
        if lk:
            lab = data[lk]
            if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
                raise UserError(f"{path}: '{lk}' must be a 1-D integer array (got {lab.dtype} {lab.shape})")
            labels = lab.astype(np.int64).tolist()
    else:
        arr = data
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or 0 in arr.shape:
        raise UserError(f"{path}: expected [N, H, W, 3] images or [N, 3, H, W] inputs with no empty dimension, "
                        f"got shape {arr.shape}")
    if labels is not None and len(labels) != len(arr):
        raise UserError(f"{path}: {len(labels)} labels for {len(arr)} images")
    pre = arr.shape[1:] == tuple(input_shape) and arr.dtype != np.uint8
    if not pre and not (arr.shape[-1] == 3 and arr.dtype == np.uint8):
        want = ",".join(map(str, input_shape))
        raise UserError(f"{path}: {arr.dtype} {arr.shape} is neither uint8 [N,H,W,3] nor float [N,{want}]")
    labels = labels if labels is not None else [None] * len(arr)
    return RawSamples([f"{path.name}:{i}" for i in range(len(arr))], list(arr), labels, "array", preprocessed=pre)


def from_digits(part: str) -> RawSamples:

    images, labels, ids = digits_subset(part)
    return RawSamples(ids, list(images), labels.tolist(), "digits",
                      notes=[f"digits {part} split ({len(ids)} images)"])
