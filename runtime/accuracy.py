"""Accuracy metrics against a reference, and the pass/fail judgement.

All functions take logits ``[N, classes]`` as numpy arrays. Tests check them against
hand-computed values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtime.tolerances import Tolerance


@dataclass
class Accuracy:
    max_abs_err: float
    mean_abs_err: float
    cosine_min: float
    top1_agreement: float
    top5_agreement: float
    top1: float | None  # dataset top-1 when labels exist
    samples: int
    nonfinite: int = 0  # NaN or inf values in the output (the figures above treat them as 0); any fails the gate

    def to_dict(self) -> dict:
        return asdict(self)


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    # two all-zero rows are identical; one zero row against a non-zero one is orthogonal
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(a - b).sum(-1) == 0, 1.0, 0.0))


def cosine_per_output(ref: np.ndarray, out: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Flattened outputs ``[N, sum(widths)]`` split at ``widths``: each output's per-sample cosine, in order."""
    bounds = np.cumsum([0, *widths])
    return [cosine_per_sample(ref[:, a:b], out[:, a:b]) for a, b in zip(bounds, bounds[1:])]


def class_maps(flat: np.ndarray, classes: int) -> np.ndarray:
    """Flattened segmentation logits ``[N, classes * H * W]`` -> each pixel's class ``[N, H * W]`` (arg-max over
    classes; ties to the lower class)."""
    return flat.reshape(len(flat), classes, -1).argmax(1)


def pixel_agreement(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per sample, the share of pixels whose class (``class_maps``) equals the reference's: ``[N]``."""
    return (ref == out).mean(-1)


def mean_iou(ref: np.ndarray, out: np.ndarray, classes: int) -> float:
    """Mean over classes of intersection over union of ``out``'s class maps against ``ref``'s, over the whole set;
    a class in neither is left out (as mmseg leaves out a class absent from both prediction and label)."""
    ious = []
    for c in range(classes):
        a, b = ref == c, out == c
        union = int((a | b).sum())
        if union:
            ious.append(int((a & b).sum()) / union)
    return float(np.mean(ious)) if ious else 1.0


def dense_values(ref: np.ndarray, out: np.ndarray, classes: int) -> dict:
    """What the segmentation gates judge, from flattened logits maps: ``pixel_agreement`` (over the set),
    ``pixel_agreement_min`` (the worst sample), ``mean_iou`` and ``pixels_differing`` (a count)."""
    a, b = class_maps(ref, classes), class_maps(out, classes)
    per = pixel_agreement(a, b)
    return {"pixel_agreement": float(per.mean()), "pixel_agreement_min": float(per.min()),
            "mean_iou": mean_iou(a, b, classes), "pixels_differing": int((a != b).sum())}


def judge_dense(values: dict, tol) -> list[str]:
    """The segmentation gates a result misses (``tol``: a ``runtime.tolerances.DenseTolerance``), each with the
    figure, the limit and by how much."""
    why = []
    if values["pixel_agreement"] < tol.pixel_agreement:
        why.append(f"pixel_agreement {values['pixel_agreement']:.4f} < {tol.pixel_agreement} "
                   f"(short by {(tol.pixel_agreement - values['pixel_agreement']) * 100:.2f} points)")
    if values["mean_iou"] < tol.mean_iou:
        why.append(f"mean_iou {values['mean_iou']:.4f} < {tol.mean_iou} "
                   f"(short by {tol.mean_iou - values['mean_iou']:.4f})")
    return why


WIDE = 100_000  # above this many values per sample (a backbone's maps), the top-k is found by partition


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` largest, sorted by index. A stable full sort up to ``WIDE`` columns (ties go to
    the lower index); beyond, a partition: linear instead of n log n, and 12 M-value rows of feature maps otherwise
    took seconds each."""
    if x.shape[-1] <= WIDE:
        return np.sort(np.argsort(-x, axis=-1, kind="stable")[:, :k], axis=-1)
    return np.sort(np.argpartition(-x, k - 1, axis=-1)[:, :k], axis=-1)


def topk_agreement(ref: np.ndarray, out: np.ndarray, k: int) -> float:
    """Share of samples whose top-k set (order ignored) equals the reference's."""
    k = min(k, ref.shape[-1])
    return float((_topk(ref, k) == _topk(out, k)).all(-1).mean())


def top1_accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or len(labels) == 0:
        return None
    return float((logits.argmax(-1) == labels).mean())


def compare(ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None = None) -> Accuracy:
    """Metrics of ``out`` against ``ref`` (both ``[N, classes]``). NaN and inf in ``out`` are counted
    (``nonfinite``, which fails ``judge``) and taken as 0 in the figures, so they stay numbers; the reference must be
    finite (the caller refuses one that is not)."""
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape}, output {out.shape}")
    if not np.isfinite(ref).all():
        raise ValueError("the reference holds NaN or inf: nothing can be judged against it")
    nonfinite = int((~np.isfinite(out)).sum())
    if nonfinite:
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    return Accuracy(max_abs_err=float(diff.max()), mean_abs_err=float(diff.mean()),
                    cosine_min=float(cosine_per_sample(ref, out).min()),
                    top1_agreement=topk_agreement(ref, out, 1), top5_agreement=topk_agreement(ref, out, 5),
                    top1=top1_accuracy(out, labels), samples=int(ref.shape[0]), nonfinite=nonfinite)


def judge(acc: Accuracy, ref_top1: float | None, tol: Tolerance, gate_agreement: bool = True) -> tuple[bool, list[str]]:
    """Pass/fail and, for a failure, each tolerance missed: the figure, the limit and by how much."""
    notes = []
    if acc.nonfinite or not all(np.isfinite([acc.cosine_min, acc.top1_agreement])):
        notes.append(f"non-finite outputs: {acc.nonfinite} values are NaN or inf")
    if acc.cosine_min < tol.cosine_min:
        notes.append(f"cosine_min {acc.cosine_min:.6f} < {tol.cosine_min} (short by {tol.cosine_min - acc.cosine_min:.6f})")
    if gate_agreement and acc.top1_agreement < tol.top1_agreement:
        notes.append(f"top1_agreement {acc.top1_agreement:.4f} < {tol.top1_agreement} "
                     f"(short by {(tol.top1_agreement - acc.top1_agreement) * 100:.2f} points)")
    if acc.top1 is not None and ref_top1 is not None:
        drop = (ref_top1 - acc.top1) * 100
        if drop > tol.top1_drop:
            notes.append(f"top-1 drop {drop:.2f} points > {tol.top1_drop} (over by {drop - tol.top1_drop:.2f} points)")
    return not notes, notes
