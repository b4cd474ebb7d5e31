"""The golden set: a few evaluation inputs and their PyTorch reference outputs, carried in every bundle.

``golden.npz`` holds ``pixels`` (uint8 ``[N, H, W, 3]``, resized and cropped, before normalisation, so the
bundle's preprocessing is checked with it) and ``reference``: the PyTorch outputs on them. It is hashed in the
manifest like every file and read without pickle. Any machine runs it through an artefact and judges the outputs
with the artefact's own gates (``Golden.judge``): ``python -m runtime verify`` and ``runtime.open()`` on a machine
the artefact was not proven on.

Logits and embeddings are stored whole (float32 ``[N, D]``: ``form`` "full"). Output maps (a backbone's, a
segmentation model's logits map) above ``REDUCE_ABOVE`` bytes a sample are stored reduced (``form`` "reduced"): for
each map, its average over a ``POOL`` x ``POOL`` grid of cells and a ``CROP`` x ``CROP`` window of it at full
resolution, every channel; a segmentation model adds each pixel's reference class. The artefact's maps are reduced
the same way before the cosine is taken, so the golden set stays a few MB at 800x1344 (a whole reference there was
155 MB). What it no longer sees: an error confined to a part of a map outside the crop that averages out within
the cells (a cell is 1/64 of a map); a wrong class is still counted at every pixel.

The set holds up to ``MAX_SAMPLES`` samples within ``MAX_BYTES``: at 224 px 25 with 1000-class logits, at 800x1344
one (its pixels alone are 3.2 MB).
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.accuracy import class_maps, cosine_per_output, cosine_per_sample, dense_values
from runtime.errors import UserError
from runtime.manifest import Manifest, resolve_inside
from runtime.preprocess import Preprocessing, normalise

GOLDEN = "golden.npz"
MAX_SAMPLES = 32
MAX_BYTES = 4_000_000  # pixels and references of the whole set
REDUCE_ABOVE = 32_768  # reference bytes a sample above which output maps are stored reduced
POOL, CROP = 8, 8


@dataclass
class Golden:
    pixels: np.ndarray  # uint8 [N, H, W, 3]
    reference: np.ndarray  # float32 [N, D]: the outputs flattened, or their reduction (``maps`` set)
    maps: list[tuple[int, int, int]] | None = None  # reduced form: each output map's (C, h, w)
    classes: np.ndarray | None = None  # reduced segmentation: the reference class of every pixel, [N, h * w]
    extra: dict = field(default_factory=dict)

    @property
    def form(self) -> str:
        return "full" if self.maps is None else "reduced"

    def inputs(self, pp: Preprocessing) -> np.ndarray:
        """``[N, 3, H, W]`` float32, normalised as the bundle's preprocessing says."""
        return normalise(self.pixels, pp)

    def judge(self, outputs: np.ndarray, gates: dict, widths: list[int] | None = None) -> tuple[bool, dict, list[str]]:
        """Judge an artefact's flattened outputs ``[N, D]`` on this set with its gates (``judge_golden``); the
        reduced form reduces them first and counts each pixel's class against the stored one."""
        if self.maps is None:
            return judge_golden(self.reference, outputs, gates, widths)
        finite = bool(np.isfinite(outputs).all())
        reduced = reduce_maps(np.nan_to_num(outputs, nan=0.0, posinf=0.0, neginf=0.0), self.maps)
        plain = {**gates, "golden_max_pixels_differing": None, "gate_agreement": False}  # classes: counted below
        ok, values, why = judge_golden(self.reference, reduced, plain, reduced_widths(self.maps))
        if not finite and "non-finite outputs (NaN or inf)" not in why:
            why.insert(0, "non-finite outputs (NaN or inf)")
        values["finite"] = finite
        limit = gates.get("golden_max_pixels_differing")
        if self.classes is not None and limit is not None:
            moved = int((class_maps(outputs, gates["dense_classes"]) != self.classes).sum())
            values.update(pixels_differing=moved, pixel_agreement=1 - moved / self.classes.size)
            if moved > limit:
                why.append(f"golden pixels of another class {moved} > {limit} allowed (over by {moved - limit})")
        return not why, values, why


def _cells(n: int, parts: int) -> list[tuple[int, int]]:
    """Adaptive pooling's bins over ``n`` (as ``torch.nn.AdaptiveAvgPool2d``): ``parts`` overlapping-free spans."""
    return [(i * n // parts, -(-(i + 1) * n // parts)) for i in range(parts)]


def reduce_map(m: np.ndarray) -> np.ndarray:
    """``[N, C, h, w]`` -> ``[N, C * (p*q + c*d)]``: the map averaged over a ``POOL`` x ``POOL`` grid of cells (fewer
    where the map is smaller), then a ``CROP`` x ``CROP`` window at its centre, every channel."""
    n, c, h, w = m.shape
    rows, cols = _cells(h, min(POOL, h)), _cells(w, min(POOL, w))
    pooled = np.stack([m[:, :, a:b, e:f].mean((2, 3)) for a, b in rows for e, f in cols], axis=-1)
    ch, cw = min(CROP, h), min(CROP, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = m[:, :, top:top + ch, left:left + cw].reshape(n, c, -1)
    return np.concatenate([pooled, crop], axis=-1).reshape(n, -1).astype(np.float32)


def reduced_widths(maps: list[tuple[int, int, int]]) -> list[int]:
    return [c * (min(POOL, h) * min(POOL, w) + min(CROP, h) * min(CROP, w)) for c, h, w in maps]


def reduce_maps(flat: np.ndarray, maps: list[tuple[int, int, int]]) -> np.ndarray:
    """Flattened output maps ``[N, sum(C*h*w)]`` -> their reductions, concatenated per sample."""
    bounds = np.cumsum([0, *(c * h * w for c, h, w in maps)])
    return np.concatenate([reduce_map(flat[:, a:b].reshape(len(flat), *shape))
                           for (a, b), shape in zip(zip(bounds, bounds[1:]), maps)], axis=1)


def golden_form(maps: list[tuple[int, int, int]] | None) -> str:
    """"reduced" for output maps above ``REDUCE_ABOVE`` bytes a sample, else "full"."""
    return "reduced" if maps and 4 * sum(c * h * w for c, h, w in maps) > REDUCE_ABOVE else "full"


def sample_bytes(image_bytes: int, maps: list[tuple[int, int, int]] | None, width: int,
                 dense_pixels: int = 0) -> int:
    """What one sample of the golden set stores: its pixels and its reference, whole (``width`` values) or reduced
    (with a segmentation model's ``dense_pixels`` classes)."""
    if golden_form(maps) == "reduced":
        return image_bytes + 4 * sum(reduced_widths(maps)) + 2 * dense_pixels
    return image_bytes + 4 * width


def golden_count(available: int, per_sample: int) -> int:
    """How many samples the golden set holds: up to ``MAX_SAMPLES`` within ``MAX_BYTES``, at least one."""
    return max(1, min(available, MAX_SAMPLES, MAX_BYTES // max(per_sample, 1)))


def write_golden(path: Path, golden: Golden) -> int:
    """Write ``golden`` as an ``.npz`` (compressed, no pickle); returns its size in bytes."""
    arrays = {"pixels": golden.pixels, "reference": golden.reference.astype(np.float32)}
    if golden.maps is not None:
        arrays["maps"] = np.asarray(golden.maps, dtype=np.int64)
    if golden.classes is not None:
        arrays["classes"] = golden.classes.astype(np.uint16 if golden.classes.max(initial=0) < 65536 else np.int64)
    np.savez_compressed(path, **arrays)
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
            maps = z["maps"] if "maps" in z.files else None
            classes = z["classes"] if "classes" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, io.UnsupportedOperation) as exc:
        raise UserError(f"golden set {rel} is unreadable: {str(exc).splitlines()[0][:160]}") from None
    h, w = manifest.preprocessing.input_size
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (h, w, 3):
        raise UserError(f"golden set {rel}: pixels {pixels.dtype} {list(pixels.shape)}, expected uint8 [N, {h}, {w}, 3]")
    want = output_maps(manifest) if manifest.golden.form == "reduced" else None
    if manifest.golden.form == "reduced" and (maps is None or [tuple(int(v) for v in r) for r in maps] != want):
        raise UserError(f"golden set {rel}: its reduced maps do not match the manifest's outputs {want}")
    width = sum(reduced_widths(want)) if want else sum(output_widths(manifest))
    if reference.shape != (len(pixels), width) or not np.isfinite(reference).all():
        raise UserError(f"golden set {rel}: reference {list(reference.shape)} is not finite [N, {width}] values")
    if len(pixels) != manifest.golden.samples:
        raise UserError(f"golden set {rel} holds {len(pixels)} samples; the manifest says {manifest.golden.samples}")
    dense = dense_shape(manifest)
    if want and dense is not None and (classes is None or classes.shape != (len(pixels), dense[1])
                                       or not np.issubdtype(classes.dtype, np.integer)):
        raise UserError(f"golden set {rel}: a segmentation model's reduced set needs each pixel's class [N, {dense[1]}]")
    return Golden(pixels=pixels, reference=reference.astype(np.float32), maps=want,
                  classes=classes.astype(np.int64) if want and dense is not None else None)


def output_maps(manifest: Manifest) -> list[tuple[int, int, int]] | None:
    """Each output map's ``(C, h, w)``, in order; None for logits and embeddings."""
    outs = manifest.outputs or [manifest.output]
    if any(len(o.shape) != 4 for o in outs):
        return None
    return [tuple(int(v) for v in o.shape[1:]) for o in outs]


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
    if gates.get("golden_max_pixels_differing") is not None:  # segmentation: pixels whose class moved
        dense = dense_values(reference, logits, gates["dense_classes"])
        values.update(pixel_agreement=dense["pixel_agreement"], pixels_differing=dense["pixels_differing"])
        limit = gates["golden_max_pixels_differing"]
        if dense["pixels_differing"] > limit:
            why.append(f"golden pixels of another class {dense['pixels_differing']} > {limit} allowed "
                       f"(over by {dense['pixels_differing'] - limit})")
    return not why, values, why
