"""Dataset-scale evaluation of a bundle: streaming, sharded, resumable.

The image list is split into fixed shards (``shard_size`` images, in sorted order). A shard is
decoded, preprocessed and run through every chosen artefact (through the torch-free ``runtime``,
hashes verified) and the PyTorch reference, then reduced to per-image top-5 class indices, which is
all the metrics need. Each finished shard is written to ``OUT/shards/<plan>/shard-NNNNN.json`` with
its sha256 beside it, so a killed run restarts from what it finished and a shard computed twice
(a retried worker) is stored once. The metrics are computed from the shards in index order, so any
number of workers, in any order, gives the numbers of a single-process run to the last image
(given the same threads per worker: kernels may split reductions differently by thread count).

Memory stays flat as the set grows: at most one shard of decoded images per worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import runtime
from benchmarks.reference import torch_logits
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.errors import UserError
from runtime.manifest import read_manifest, resolve_inside
from runtime.preprocess import ImageRejected, Preprocessing, open_image, preprocess_image
from runtime.session import batched_logits

REFERENCE = {"torch": "pytorch fp32", "onnx": "reference fp32 onnx (onnxruntime)"}  # the reference's row
SHARD_SIZE = 256
TOPK = 5


@dataclass(frozen=True)
class Plan:
    """What is evaluated: fixed before any work, hashed into the shard folder's name."""

    bundle: str
    data: str
    ids: list[str]  # image paths relative to ``data``, sorted
    labels: list[int | None]
    artefacts: list[tuple[str, str]]  # (target, precision)
    reference: str  # "torch" | "onnx" | "none"
    shard_size: int = SHARD_SIZE
    threads: int | None = None
    manifest_sha256: str = ""
    weights: str | None = None  # the reference's checkpoint, when the manifest's cannot be rebuilt
    format: int = 2  # bumped when a shard's content changes meaning, so older shards are not reused
    notes: tuple[str, ...] = ()  # what the data folder's reading said (unreadable folders, labels dropped and why)

    @property
    def key(self) -> str:
        d = asdict(self)
        d.pop("bundle"), d.pop("data"), d.pop("notes")  # the same files elsewhere are the same plan
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def shards(self) -> list[range]:
        return [range(i, min(i + self.shard_size, len(self.ids))) for i in range(0, len(self.ids), self.shard_size)]


@dataclass
class ShardResult:
    index: int
    kept: list[int]  # positions in Plan.ids of the images that decoded
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    top5: dict[str, list[list[int]]] = field(default_factory=dict)  # "target precision" -> per kept image
    infer_s: dict[str, float] = field(default_factory=dict)  # "target precision" -> seconds of inference


def key_of(target: str, precision: str) -> str:
    return f"{target} {precision}"


def row_names(plan: Plan) -> list[str]:
    """The rows of the result: the reference (unless none) and every artefact, in plan order."""
    ref = REFERENCE.get(plan.reference)
    return ([ref] if ref else []) + [key_of(t, p) for t, p in plan.artefacts]


# ---------------------------------------------------------------- worker side

_OPEN: dict = {}  # per process: opened sessions and the reference, reused across shards


def _session(bundle: str, target: str, precision: str, threads: int | None):
    k = (bundle, target, precision, threads)
    if k not in _OPEN:
        # the artefact as built, proven or not: this evaluation is itself the measure of its accuracy
        _OPEN[k] = runtime.open(bundle, target=target, precision=precision, threads=threads, verify="never",
                                allow_unverified=True)
    return _OPEN[k]


def _reference(plan: Plan):
    """The reference's ``logits([N,3,H,W]) -> [N, classes]``: PyTorch rebuilt from the manifest, or the FP32 ONNX."""
    k = ("reference", plan.bundle, plan.reference, plan.threads)
    if k not in _OPEN:
        if plan.reference == "torch":
            _OPEN[k] = torch_logits(Path(plan.bundle), plan.threads, plan.weights)
        else:
            m = read_manifest(Path(plan.bundle))
            if m.onnx is None:
                raise UserError(f"{plan.bundle} is a pack without its ONNX: use --reference torch (with --weights)")
            m.verify(Path(plan.bundle), [m.onnx])
            r = OnnxRuntimeRunner(resolve_inside(Path(plan.bundle), m.onnx), threads=plan.threads)
            _OPEN[k] = _batched(r)
    return _OPEN[k]


def _batched(runner):
    """Logits of ``[N,3,H,W]`` through a runner: its static batch, or all at once when dynamic."""
    return lambda x: batched_logits(runner, x, runner.input_shape[0] if runner.input_shape[0] > 0 else len(x))


def _decode(plan: Plan, positions: range, pp) -> tuple[np.ndarray | None, list[int], dict[str, int]]:
    arrays, kept, skipped = [], [], {}
    for i in positions:
        try:
            arrays.append(preprocess_image(open_image(Path(plan.data) / plan.ids[i]), pp))
            kept.append(i)
        except ImageRejected as exc:
            skipped[exc.kind] = skipped.get(exc.kind, 0) + 1
        except UserError:
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1
    return (np.stack(arrays) if arrays else None), kept, skipped


def _preprocessing(bundle: str):
    """The bundle's preprocessing, read from its manifest once per process."""
    k = ("preprocessing", bundle)
    if k not in _OPEN:
        _OPEN[k] = Preprocessing.from_dict(read_manifest(Path(bundle)).preprocessing.model_dump())
    return _OPEN[k]


def _top5(logits: np.ndarray) -> list[list[int]]:
    k = min(TOPK, logits.shape[-1])
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k].tolist()


def eval_shard(plan: Plan, index: int) -> ShardResult:
    """Decode shard ``index`` of ``plan`` and run the reference and every artefact on it."""
    _fault_injection(index)
    x, kept, skipped = _decode(plan, plan.shards()[index], _preprocessing(plan.bundle))
    res = ShardResult(index=index, kept=kept, skipped=skipped)
    if x is None:
        return res
    runs = [] if plan.reference == "none" else [(REFERENCE[plan.reference], _reference(plan))]
    runs += [(key_of(t, p), _session(plan.bundle, t, p, plan.threads).logits) for t, p in plan.artefacts]
    for name, logits in runs:
        t0 = time.perf_counter()
        out = logits(x)
        res.infer_s[name] = time.perf_counter() - t0
        res.top5[name] = _top5(out)
    return res


def _fault_injection(index: int) -> None:
    """``VITDEPLOY_EVAL_DIE_ONCE=DIR:K``: the first process to reach shard K exits hard (tests the retry path)."""
    spec = os.environ.get("VITDEPLOY_EVAL_DIE_ONCE")
    if not spec:
        return
    folder, _, k = spec.rpartition(":")
    marker = Path(folder) / f"died-{k}"
    if int(k) == index and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(17)


# ---------------------------------------------------------------- driver side

class ShardStore:
    """Finished shards of one plan under ``OUT/shards/<plan key>/``, each with its sha256 beside it."""

    def __init__(self, out: Path, plan: Plan):
        self.folder = Path(out) / "shards" / plan.key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(self.folder / "plan.json", json.dumps({**asdict(plan), "ids": len(plan.ids)}, indent=1).encode())
        for stale in self.folder.glob(".*.tmp"):  # a temporary file of a run killed mid-write
            stale.unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, body: bytes) -> None:
        """``path`` by rename from a temporary file, which is removed on every failure (disk full included)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(body)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def finished(self) -> int:
        return len(list(self.folder.glob("shard-*.sha256")))

    def _path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.json"

    def load(self, index: int, names: list[str]) -> ShardResult | None:
        """A finished shard, or None when absent, when its bytes do not match its sha256, or when it
        lacks one of the rows ``names``."""
        p, h = self._path(index), self._path(index).with_suffix(".sha256")
        if not (p.is_file() and h.is_file()):
            return None
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != h.read_text().strip():
            return None
        res = ShardResult(**json.loads(data))
        if res.kept and any(len(res.top5.get(n, [])) != len(res.kept) for n in names):
            return None
        return res

    def save(self, res: ShardResult) -> None:
        """Write the shard, then its hash, each by rename: a crash leaves no half-written shard that loads."""
        data = json.dumps(asdict(res)).encode()
        p = self._path(res.index)
        try:
            for path, body in ((p, data), (p.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())):
                self._write(path, body)
        except OSError:
            p.unlink(missing_ok=True)  # no shard without its hash
            raise


SKIPPED_NAMED = 100  # skipped images named in eval.json (the rest counted)


def metrics(plan: Plan, shards: list[ShardResult]) -> dict:
    """Top-1/top-5 per artefact beside the reference, agreement with it, skipped images and inference img/s."""
    shards = sorted(shards, key=lambda s: s.index)
    kept = [i for s in shards for i in s.kept]
    labels = [plan.labels[i] for i in kept]
    labelled = bool(kept) and all(lab is not None for lab in labels)
    y = np.asarray(labels if labelled else [], dtype=np.int64)
    skipped: dict[str, int] = {}
    for s in shards:
        for k, v in s.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    ref_name = REFERENCE.get(plan.reference)
    names = row_names(plan)
    preds = {n: np.asarray([row for s in shards for row in s.top5.get(n, [])], dtype=np.int64).reshape(len(kept), -1)
             for n in names}
    ref = preds.get(ref_name) if ref_name else None
    rows = {}
    for n in names:
        p = preds[n]
        secs = sum(s.infer_s.get(n, 0.0) for s in shards)
        rows[n] = {"images": len(kept),
                   "top1": round(float((p[:, 0] == y).mean()) * 100, 4) if labelled else None,
                   "top5": round(float((p == y[:, None]).any(1).mean()) * 100, 4) if labelled else None,
                   "top1_agreement": (round(float((p[:, 0] == ref[:, 0]).mean()) * 100, 4)
                                      if ref is not None and n != ref_name and len(kept) else None),
                   "inference_images_per_s": round(len(kept) / secs, 2) if secs else None}
    ranges = plan.shards()
    missed = [plan.ids[i] for s in shards for i in ranges[s.index] if i not in set(s.kept)]
    return {"images": len(plan.ids), "evaluated": len(kept), "skipped": skipped, "labelled": labelled,
            "skipped_files": missed[:SKIPPED_NAMED], "skipped_files_not_named": max(0, len(missed) - SKIPPED_NAMED),
            "shards": len(shards), "results": rows}


def render(res: dict, command: str, env_line: str) -> str:
    lines = [f"## Evaluation of {res['bundle']} on {res['data']}", "", f"Command: `{command}`", "",
             f"Machine: {env_line}", "",
             f"{res['evaluated']} of {res['images']} images evaluated in {res['shards']} shards of {res['shard_size']}"
             f" ({res['mode']}; wall {res['wall_s']:.1f} s, {res['wall_images_per_s']:.1f} images/s for every "
             f"path together; {res['resumed']} shards reused from an earlier run)"]
    if res["skipped"]:
        lines.append("skipped: " + ", ".join(f"{v} {k}" for k, v in sorted(res["skipped"].items())))
    lines += [f"note: {n}" for n in res.get("data_notes", [])]
    if res.get("skipped_files"):
        more = res.get("skipped_files_not_named", 0)
        lines.append("skipped files: " + ", ".join(res["skipped_files"][:10])
                     + (f" and {len(res['skipped_files']) - 10 + more} more (eval.json names up to {SKIPPED_NAMED})"
                        if len(res["skipped_files"]) > 10 or more else ""))
    if not res["labelled"]:
        lines.append("no labels (class folders not matching the model's labels): top-1/top-5 not computed")
    lines += ["", "| path | top-1 % | top-5 % | top-1 agreement with the reference % | inference img/s per worker |",
              "|---|---|---|---|---|"]
    def fmt(v):
        return ("–" if v is None else f"{v:.2f}")
    for n, r in res["results"].items():
        lines.append(f"| {n} | {fmt(r['top1'])} | {fmt(r['top5'])} | {fmt(r['top1_agreement'])} | "
                     f"{fmt(r['inference_images_per_s'])} |")
    return "\n".join(lines) + "\n"
