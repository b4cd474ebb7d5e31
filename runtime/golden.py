"""The golden set: a few evaluation inputs and their PyTorch reference logits, carried in every bundle.

``golden.npz`` holds ``pixels`` (uint8 ``[N, H, W, 3]``, resized and cropped, before normalisation, so the
bundle's preprocessing is checked with it) and ``reference`` (float32 ``[N, classes]``). It is hashed in
the manifest like every file and read without pickle. Any machine runs it through an artefact and judges
the outputs with the artefact's own gates (``judge_golden``): ``python -m runtime verify`` and
``runtime.open()`` on a machine the artefact was not proven on.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.accuracy import cosine_per_output, cosine_per_sample, dense_values
from runtime.errors import UserError
from runtime.manifest import Manifest, resolve_inside
from runtime.preprocess import Preprocessing, normalise

GOLDEN = "golden.npz"
MAX_SAMPLES = 32
MAX_BYTES = 4_000_000  # pixels: a few MB at 224 px (26 images), all 32 at smaller sizes


@dataclass
class Golden:
    pixels: np.ndarray  # uint8 [N, H, W, 3]
    reference: np.ndarray  # float32 [N, classes]

    def inputs(self, pp: Preprocessing) -> np.ndarray:
        """``[N, 3, H, W]`` float32, normalised as the bundle's preprocessing says."""
        return normalise(self.pixels, pp)


def golden_count(available: int, image_bytes: int) -> int:
    """How many samples the golden set holds: up to ``MAX_SAMPLES``, within ``MAX_BYTES`` of pixels (at least 4)."""
    return max(1, min(available, MAX_SAMPLES, max(4, MAX_BYTES // max(image_bytes, 1))))


def write_golden(path: Path, golden: Golden) -> int:
    """Write ``golden`` as an ``.npz`` (compressed, no pickle); returns its size in bytes."""
    np.savez_compressed(path, pixels=golden.pixels, reference=golden.reference.astype(np.float32))
    return Path(path).stat().st_size


def read_golden(bundle: Path, manifest: Manifest) -> Golden:
    """The bundle's golden set, its sha256 checked first; a missing, tampered or malformed one is a ``UserError``."""
    if manifest.golden is None:
        raise UserError(f"{bundle} carries no golden set (exported before vitdeploy kept one): it cannot be "
                        "verified on this machine; re-export it, or pass --allow-unverified")
    rel = manifest.golden.file
    manifest.verify(bundle, [rel])
    try:
        with np.load(resolve_inside(Path(bundle), rel), allow_pickle=False) as z:
            pixels, reference = z["pixels"], z["reference"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, io.UnsupportedOperation) as exc:
        raise UserError(f"golden set {rel} is unreadable: {str(exc).splitlines()[0][:160]}") from None
    h, w = manifest.preprocessing.input_size
    classes = sum(output_widths(manifest))
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (h, w, 3):
        raise UserError(f"golden set {rel}: pixels {pixels.dtype} {list(pixels.shape)}, expected uint8 [N, {h}, {w}, 3]")
    if reference.shape != (len(pixels), classes) or not np.isfinite(reference).all():
        raise UserError(f"golden set {rel}: reference {list(reference.shape)} is not finite [N, {classes}] logits")
    if len(pixels) != manifest.golden.samples:
        raise UserError(f"golden set {rel} holds {len(pixels)} samples; the manifest says {manifest.golden.samples}")
    return Golden(pixels=pixels, reference=reference.astype(np.float32))


def output_widths(manifest: Manifest) -> list[int]:
    """Each output's values per sample, in order: ``[classes]``, or a backbone's flattened feature maps."""
    outs = manifest.outputs or [manifest.output]
    return [int(np.prod(o.shape[1:])) for o in outs]


def dense_shape(manifest: Manifest) -> tuple[int, int] | None:
    """A segmentation bundle's classes and pixels per logits map; None for other tasks."""
    if manifest.task != "segmentation":
        return None
    _, classes, h, w = manifest.output.shape
    return int(classes), int(h * w)


def worst_cosine(reference: np.ndarray, logits: np.ndarray, widths: list[int] | None = None) -> np.ndarray:
    """Per sample, the cosine of the worst output (one output: the plain cosine)."""
    if not widths or len(widths) == 1:
        return cosine_per_sample(reference, logits)
    return np.min(cosine_per_output(reference, logits, widths), axis=0)


def judge_golden(reference: np.ndarray, logits: np.ndarray, gates: dict,
                 widths: list[int] | None = None) -> tuple[bool, dict, list[str]]:
    """Judge an artefact's golden-set logits with its gates: the worst sample's cosine against ``cosine_min``
    (the golden set holds the evaluation set's worst samples, so the same limit applies) and top-1 flips
    against ``golden_max_flips`` (the flips the whole evaluation set was allowed: more flips on a subset of it
    mean the set would fail). Non-finite outputs fail. A backbone (``widths``: each map's flattened size) is judged
    by its worst map per sample, as at build. Returns (passed, values, failures)."""
    finite = bool(np.isfinite(logits).all())
    logits = np.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)
    cos = worst_cosine(reference, logits, widths)
    flips = int((reference.argmax(-1) != logits.argmax(-1)).sum())
    values = {"cosine_min": float(cos.min()), "flips": flips, "samples": int(len(reference)), "finite": finite}
    why = []
    if not finite:
        why.append("non-finite outputs (NaN or inf)")
    if values["cosine_min"] < gates["cosine_min"]:
        why.append(f"golden cosine_min {values['cosine_min']:.6f} < {gates['cosine_min']} "
                   f"(short by {gates['cosine_min'] - values['cosine_min']:.6f})")
    limit = gates.get("golden_max_flips")
    if gates.get("gate_agreement", True) and limit is not None and flips > limit:
        why.append(f"golden top-1 flips {flips} of {len(reference)} > {limit} allowed (over by {flips - limit})")
    if "golden_max_pixels_differing" in gates:  # segmentation: pixels whose class moved, against the set's allowance
        dense = dense_values(reference, logits, gates["dense_classes"])
        values.update(pixel_agreement=dense["pixel_agreement"], pixels_differing=dense["pixels_differing"])
        limit = gates["golden_max_pixels_differing"]
        if dense["pixels_differing"] > limit:
            why.append(f"golden pixels of another class {dense['pixels_differing']} > {limit} allowed "
                       f"(over by {dense['pixels_differing'] - limit})")
    return not why, values, why
