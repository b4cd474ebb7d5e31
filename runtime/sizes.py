"""Bundles that hold one model at several input sizes: ``sizes.json`` and the session that serves them.

A multi-size bundle is a folder of single-size bundles, one per size (``224x224/``, ``384x384/``), each with its
own manifest, artefacts, golden set and verdicts, and a ``sizes.json`` at the top naming them with the sha256 of
each one's manifest (so the chain of hashes still covers every file) and the signature, when there is one, over
the whole folder. ``SizedSession`` serves an input with the artefact of its size; an image of another size is
resized to the nearest declared size, and each prediction says which size served it and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from runtime import values
from runtime.errors import UserError
from runtime.manifest import (
    MANIFEST,
    SIZES,
    RelPath,
    Sha256,
    _Model,
    first_error,
    load_json,
    read_manifest,
    resolve_inside,
    sha256_file,
)
from runtime.session import Session, as_images, check_open
from runtime.signing import Checked, trusted

SIZES_FORMAT = "vitdeploy-sizes/1"


def size_name(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


Side = Annotated[int, Field(gt=0, le=8192)]


class SizeEntry(_Model):
    input_size: tuple[Side, Side]  # (height, width)
    bundle: RelPath  # the single-size bundle's folder
    manifest_sha256: Sha256


class SizeSet(_Model):
    format: Literal["vitdeploy-sizes/1"] = SIZES_FORMAT
    model: str
    sizes: list[SizeEntry] = Field(min_length=1)
    created: str = ""
    signed_by: str | None = None

    @model_validator(mode="after")
    def _distinct(self):
        for attr in ("input_size", "bundle"):
            seen = [getattr(e, attr) for e in self.sizes]
            if len(set(seen)) != len(seen):
                raise ValueError(f"two sizes share one {attr.replace('_', ' ')}")
        return self

    def write(self, folder: Path) -> Path:
        return self.write_json(Path(folder) / SIZES)

    @property
    def names(self) -> str:
        return ", ".join(size_name(e.input_size) for e in self.sizes)

    def entry(self, hw) -> SizeEntry:
        for e in self.sizes:
            if tuple(e.input_size) == tuple(hw):
                return e
        raise UserError(f"the bundle has no {size_name(hw)} artefacts; its sizes: {self.names}")

    def folder(self, bundle: Path, hw) -> Path:
        """The single-size bundle for ``hw``, inside ``bundle``, its manifest checked against ``sizes.json``: its
        sha256, and that its input is the size the entry names (entries swapped with their hashes are refused)."""
        e = self.entry(hw)
        sub = resolve_inside(bundle, e.bundle)
        manifest = resolve_inside(bundle, f"{e.bundle}/{MANIFEST}")
        if not manifest.is_file():
            raise UserError(f"bundle file missing: {e.bundle}/{MANIFEST}")
        if sha256_file(manifest) != e.manifest_sha256:
            raise UserError(f"sha256 mismatch for {e.bundle}/{MANIFEST}: it differs from {SIZES} (tampered or corrupt)")
        takes = tuple(read_manifest(sub).input.shape[-2:])
        if takes != tuple(e.input_size):
            raise UserError(f"{SIZES} names {e.bundle} for {size_name(e.input_size)} inputs, but its manifest takes "
                            f"{size_name(takes)}: refused (tampered or corrupt)")
        return sub


def read_sizes(bundle: str | Path) -> SizeSet | None:
    """``bundle/sizes.json`` validated, or None for a single-size bundle; any problem is one ``UserError``."""
    path = Path(bundle) / SIZES
    if not path.is_file():
        return None
    try:
        return SizeSet.model_validate(load_json(path, "vitdeploy size list"))
    except ValidationError as exc:
        raise UserError(f"{path} is not a valid vitdeploy size list: {first_error(exc)}") from None


def nearest(sizes: list[tuple[int, int]], hw: tuple[int, int]) -> tuple[int, int]:
    """The declared size closest to an ``hw`` image in scale (log ratio of each side; ties go to the larger)."""
    return min(sizes, key=lambda s: (abs(math.log(hw[0] / s[0])) + abs(math.log(hw[1] / s[1])), -s[0] * s[1]))


@dataclass
class Served:
    """Which size served an input, and why."""

    size: tuple[int, int]
    exact: bool
    image: tuple[int, int] | None = None  # the image's (h, w), for predictions

    def __str__(self) -> str:
        if self.exact:
            return f"{size_name(self.size)} artefact (the input's size)"
        return f"{size_name(self.size)} artefact (nearest declared size to the {size_name(self.image)} image; resized)"


class SizedSession:
    """``predict``/``infer``/``logits`` over a multi-size bundle: one ``Session`` per size, opened when first needed.
    ``open_one(folder) -> Session`` opens a single-size bundle (the signature was checked on the whole folder)."""

    def __init__(self, bundle: Path, sizes: SizeSet, open_one, signed_by: str | None):
        self.bundle, self.size_set, self._open_one, self.signed_by = Path(bundle), sizes, open_one, signed_by
        self.sizes = [tuple(e.input_size) for e in sizes.sizes]
        self._sessions: dict = {}
        self.last = None

    def session(self, hw):
        hw = tuple(hw)
        if hw not in self._sessions:
            self._sessions[hw] = self._open_one(self.size_set.folder(self.bundle, hw))
        self.last = self._sessions[hw]
        return self.last

    @property
    def notes(self) -> list[str]:
        return [f"{size_name(hw)}: {n}" for hw, s in self._sessions.items() for n in s.notes]

    def _route(self, inputs: np.ndarray):
        hw = tuple(int(d) for d in np.shape(inputs)[-2:])
        if hw not in self.sizes:
            raise UserError(f"no artefact takes {size_name(hw)} inputs; the bundle's sizes: {self.size_set.names} "
                            "(predict() resizes images; infer() takes preprocessed tensors of a declared size)")
        return self.session(hw)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(feeds) != 1:
            raise UserError(f"one input expected, got {len(feeds)}")
        return self._route(next(iter(feeds.values()))).infer(feeds)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return self._route(inputs).logits(inputs)

    def features(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self._route(inputs).features(inputs)

    def embed(self, images) -> np.ndarray:
        """Each image's embedding through the artefact of its size (else the nearest declared size)."""
        return np.stack(self._by_size(images, lambda session, ims: list(session.embed(ims))))

    def serving(self, images: list) -> list[Served]:
        """For each image (PIL or uint8 array), the size that serves it."""
        out = []
        for im in images:
            hw = (im.height, im.width) if hasattr(im, "height") else tuple(np.shape(im)[:2])
            size = nearest(self.sizes, hw)
            out.append(Served(size, exact=tuple(hw) == size, image=tuple(hw)))
        return out

    def predict(self, images, topk: int = 5) -> list:
        """Each image through the artefact of its size (else the nearest declared size); ``Prediction.served``
        says which and why."""
        images = as_images(images)
        served = self.serving(images)
        preds = self._by_size(images, lambda session, ims: session.predict(ims, topk=topk))
        for p, how in zip(preds, served):
            p.served = str(how)
        return preds

    def _by_size(self, images, run) -> list:
        """``run(session, images)`` for each size's images, its results back in the images' order."""
        images = as_images(images)  # reason: a list of opened images passes through unchanged
        served = self.serving(images)
        out: list = [None] * len(images)
        for size in dict.fromkeys(s.size for s in served):
            idx = [i for i, s in enumerate(served) if s.size == size]
            for i, r in zip(idx, run(self.session(size), [images[i] for i in idx])):
                out[i] = r
        return out

    @property
    def target(self) -> str | None:
        return self.last.target if self.last else None

    @property
    def precision(self) -> str | None:
        return self.last.precision if self.last else None

    def close(self) -> None:
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(bundle: str | Path, size, trust, **session_kw):
    """``runtime.open``: the signature checked once on the whole folder, then a ``Session`` (one size, or the
    ``size`` asked for) or a ``SizedSession``."""
    sizes_asked = values.check("size", size, values.img_sizes)
    if sizes_asked is not None and len(sizes_asked) != 1:
        raise UserError(f"size names one size (got {size!r})")
    bundle = Path(bundle)
    signer = trusted(bundle, trust)

    def open_one(folder: Path) -> Session:
        return Session(folder, trust=Checked(signer) if signer else None, **session_kw)
    size_set = read_sizes(bundle) if bundle.is_dir() else None
    if size_set is None:
        session = open_one(bundle)
        have = tuple(session.manifest.input.shape[-2:])
        if sizes_asked and sizes_asked[0] != have:
            session.close()
            raise UserError(f"the bundle takes {size_name(have)} inputs only (asked for {size_name(sizes_asked[0])})")
        return session
    if sizes_asked:
        return open_one(size_set.folder(bundle, sizes_asked[0]))
    # each size's Session opens when an input of its size first comes: its arguments are checked now
    check_open(**{k: v for k, v in session_kw.items() if k in ("target", "precision", "device", "threads", "mode",
                                                               "verify")})
    return SizedSession(bundle, size_set, open_one, signer)


__all__ = ["open_bundle", "SIZES", "SizeSet", "SizeEntry", "SizedSession", "read_sizes", "nearest", "size_name"]
