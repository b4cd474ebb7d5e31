"""vitdeploy against the path a user takes without it, timed interleaved in one process.

The naive paths, each with its library's defaults: timm -> ``torch.onnx.export`` (defaults) ->
ONNX Runtime FP32; -> OpenVINO with its default CPU config (whatever precision it picks here);
-> NNCF INT8 (``nncf.quantize``, transformer mode, defaults); -> ONNX Runtime ``quantize_static``
(defaults). vitdeploy's artefacts come from its own pipeline (rewrites, ``--recipe auto``: its INT8
recipe chosen by measurement on this machine, pinned hints). Latency: the full-size model (random weights
are fine for speed). Fidelity of every timed path against eager FP32 on the timed model itself (cosine of
the logits on two input sets at the model's size: digits images, and crops of photographs (scikit-learn's two
bundled photos), judged with the tolerance of its runtime and precision),
and of every INT8 path on the trained digits fixtures (top-1, agreement, cosine). A path that fails either
is no competitor: the best-naive ratio counts only naive paths that are correct.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

import runtime
from benchmarks.segmenter import segmenter
from calibration import load_set
from exporters.graph.outputs import dense_classes, output_names, widths
from exporters.models.features import backbone
from exporters.models.sizes import size_label
from exporters.models.zoo import ALIASES, create_model
from exporters.pipeline.options import RunOptions
from exporters.pipeline.stages import run, run_outputs
from exporters.verify.reference import TorchRunner
from runtime.accuracy import compare, dense_values, judge, judge_dense
from runtime.backends import Runner
from runtime.backends.base import batched_logits
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.backends.openvino import OpenVinoRunner
from runtime.golden import worst_cosine
from runtime.latency import measure_interleaved, measure_throughput_interleaved
from runtime.manifest import read_manifest
from runtime.tolerances import agreement_gated, dense_tolerance_for, tolerance_for

OURS = [("onnxruntime", "int8"), ("openvino", "fp16"), ("openvino", "int8")]
FIDELITY_SAMPLES = 16  # images of each fidelity set (digits hold-out; photo crops) at the timed model's input size


def path_precision(name: str, hint: str | None) -> tuple[str, str]:
    """``(runtime, precision)`` a timed path is judged as: its INT8, its 16-bit hint, else FP32."""
    runtime_name = "openvino" if "openvino" in name else "onnxruntime"
    if "int8" in name:
        return runtime_name, "int8"
    if "fp16" in name or hint in ("bf16", "f16"):
        return runtime_name, "fp16"
    return runtime_name, "fp32"


def fidelity(runners: dict[str, Runner], reference: str, inputs: np.ndarray, batch: int,
             widths: list[int] | None = None, classes: int | None = None, random: bool = False) -> dict[str, dict]:
    """Each runner's cosine_min and top-1 agreement against ``reference``'s outputs on ``inputs``; whether it
    meets the cosine tolerance of the runtime and precision it runs at (runtime/tolerances.py). A backbone
    (``widths``: each map's values per sample) is judged by its worst map, as its export gate is; a segmentation
    model (``classes``: its logits map's channels) by pixel agreement and mean IoU too (``DENSE``), unless
    ``random`` weights make them noise (timed models have random weights)."""
    ref = batched_logits(runners[reference], inputs, batch)
    out = {}
    for k, r in runners.items():
        if k == reference:
            continue
        hint = (r.describe().get("compiled") or {}).get("INFERENCE_PRECISION_HINT")
        got = batched_logits(r, inputs, batch)
        a = compare(ref, got, None)
        if widths:
            a.cosine_min = float(worst_cosine(ref, got, widths).min())
        runtime_name, precision = path_precision(k, hint)
        tol = tolerance_for(runtime_name, precision)
        out[k] = {"hint": hint, "cosine_min": round(a.cosine_min, 5), "agreement": round(a.top1_agreement * 100, 2),
                  "correct": bool(np.isfinite(a.cosine_min) and a.cosine_min >= tol.cosine_min),
                  "gate_cosine": tol.cosine_min}
        if classes:  # reported; gated only for trained weights (runtime.tolerances.agreement_gated)
            dense = dense_values(ref, got, classes)
            out[k].update(pixel_agreement=round(dense["pixel_agreement"], 5), mean_iou=round(dense["mean_iou"], 5))
            if agreement_gated(random, precision):
                out[k]["correct"] &= not judge_dense(dense, dense_tolerance_for(precision))
    return out


def photo_crops(folder: Path, n: int = FIDELITY_SAMPLES, seed: int = 0) -> Path:
    """``n`` crops of scikit-learn's two bundled photographs (427x640), of random position, scale (a third of the
    short side to all of it) and mirror, written as PNGs into ``folder``: natural images at any model size, offline."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[y:y + side, x:x + side]
        Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)).save(folder / f"{i}.png")
    return folder


def both_sets(runners: dict[str, Runner], reference: str, sets: dict[str, np.ndarray], batch: int,
              **kw) -> dict[str, dict]:
    """``fidelity`` on each named input set; a path is correct only when it is on every set. The first set's values
    keep their keys (``cosine_min``...), the others' are prefixed with the set's name (``photos_cosine_min``)."""
    out: dict[str, dict] = {}
    for i, (name, inputs) in enumerate(sets.items()):
        for k, v in fidelity(runners, reference, inputs, batch, **kw).items():
            row = out.setdefault(k, {"hint": v["hint"], "correct": True})
            row["correct"] &= v["correct"]
            row.update({(key if i == 0 else f"{name}_{key}"): val for key, val in v.items()
                        if key not in ("hint", "correct")})
    return out


def naive_onnx(model, shape, path: Path, output_names=("logits",)) -> Path:
    import torch
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["input"],
                          output_names=list(output_names))
    return path


NAIVE = ("naive onnxruntime fp32", "naive openvino default", "naive openvino nncf int8",
         "naive onnxruntime quantize_static int8")


def naive_artefacts(model, shape, calib, work: Path, output_names=("logits",),
                    which: tuple[str, ...] = NAIVE) -> dict[str, tuple[str, object]]:
    """The naive artefacts of ``model`` (``which`` of the four): ``{path name: (runtime, ONNX path or ov.Model)}``."""
    work.mkdir(parents=True, exist_ok=True)
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    src = naive_onnx(model, shape, work / "naive.onnx", output_names)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": b} for b in calib.batches(shape[0])])

        def get_next(self):
            return next(self.it, None)
    out = {"naive onnxruntime fp32": ("onnxruntime", src), "naive openvino default": ("openvino", src)}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if "naive onnxruntime quantize_static int8" in which:
            quantize_static(str(src), str(work / "naive-ort-int8.onnx"), Reader())
            out["naive onnxruntime quantize_static int8"] = ("onnxruntime", work / "naive-ort-int8.onnx")
        if "naive openvino nncf int8" in which:
            ir = ov.convert_model(str(src))
            q = nncf.quantize(ir, nncf.Dataset(list(calib.batches(shape[0]))), model_type=nncf.ModelType.TRANSFORMER)
            out["naive openvino nncf int8"] = ("openvino", q)
    return {k: v for k, v in out.items() if k in which}


def naive_runner(kind: str, artefact, mode: str) -> Runner:
    """A naive artefact as a runner, with its library's defaults: ORT's default threads; OpenVINO compiled with no
    configuration at all, or in throughput mode with only ``PERFORMANCE_HINT=THROUGHPUT`` (what its docs say to set)."""
    if kind == "onnxruntime":
        return OnnxRuntimeRunner(artefact, mode=mode)
    return OpenVinoRunner(artefact, mode=mode, config={} if mode == "latency" else {"PERFORMANCE_HINT": "THROUGHPUT"})


def our_bundle(name: str, out: Path, data: str, threads: int, eval_size: int | None, batch: int = 1,
               model=None, spec=None, recipe: str = "auto", targets=("onnxruntime", "openvino"),
               precisions=("fp16", "int8")) -> Path:
    """vitdeploy's artefacts of ``name``, built by its pipeline with its defaults and INT8 ``recipe`` (``auto``: each
    built, gated and timed here, the fastest that passes kept); given ``model`` and ``spec``, of that very module (a
    zoo model with random weights differs from one creation to the next)."""
    rep = run(RunOptions(model=name, module=model, spec=spec, targets=list(targets), precisions=list(precisions),
                         data=data,
                         calib=data, out=out, runs=5, warmup=1, threads=threads, eval_size=eval_size, batch=batch,
                         options={"recipe": recipe}, quiet=True))
    return Path(rep["bundle"])


def our_runners(bundle: Path, threads: int, mode: str, which=tuple(OURS)) -> dict[str, Runner]:
    return {f"vitdeploy {t} {p}": runtime.open(bundle, target=t, precision=p, threads=threads, mode=mode,
                                                     allow_unverified=True).runner
            for t, p in which}


def _close(runners: dict) -> None:
    for r in runners.values():
        r.close()


def timed_model(name: str, img_size: tuple[int, int] | None, kind: str = "classifier"):
    """``(module, spec)`` every path of one row times: the classifier re-laid for ``img_size``; its backbone
    (exporters/models/features.py: every stage or four blocks, padded to the window grid); or the re-laid classifier's
    backbone under an FPN segmentation head (benchmarks/segmenter.py). The same module for the naive paths, which
    export it as it is, and for vitdeploy, which rewrites it."""
    if kind == "segmentation":
        return segmenter(name, img_size)
    if kind == "classifier":
        return create_model(name, img_size=img_size)
    model, spec = create_model(name)
    return backbone(model, spec, None, img_size or tuple(spec.input_shape[1:]), name)


def latency(name: str, threads: int, runs: int, work: Path, batch: int = 1, throughput_s: float | None = None,
            img_size: tuple[int, int] | None = None, kind: str = "classifier", recipe: str = "auto") -> dict:
    """p50/p90 of eager PyTorch, the naive paths and vitdeploy's artefacts of ``name`` (at ``img_size``: the same
    re-laid module on every path; ``kind``: ``timed_model``'s), interleaved; with ``throughput_s``, then images/s
    of each, opened in throughput mode, also interleaved."""
    model, spec = timed_model(name, img_size, kind)
    shape = (batch, *spec.input_shape)
    calib = load_set("digits", spec.preprocessing, size=32, part="train", progress=False)
    naive = naive_artefacts(model, shape, calib, work, output_names(spec))
    bundle = our_bundle(name, work / "bundles", "digits", threads, eval_size=8, batch=batch, model=model, spec=spec,
                        recipe=recipe)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def runners_in(mode: str) -> dict[str, Runner]:
        eager = {"pytorch eager fp32": TorchRunner(model, list(shape), threads=threads)}
        return {**eager, **{k: naive_runner(kind, a, mode) for k, (kind, a) in naive.items()},
                **our_runners(bundle, threads, mode)}
    runners = runners_in("latency")
    try:
        sets = {name: load_set(src, spec.preprocessing, size=FIDELITY_SAMPLES, part="holdout", progress=False).inputs
                for name, src in (("digits", "digits"), ("photos", str(photo_crops(work / "photos"))))}
        fid = both_sets(runners, "pytorch eager fp32", sets, batch, widths=widths(spec),
                        classes=dense_classes(spec), random=spec.weights == "random")
        lats = measure_interleaved(runners, lambda r: {r.input_name: x}, runs=runs, warmup=5, rounds=5)
        rows = {k: {"p50": round(v.p50, 2), "p90": round(v.p90, 2), "hint": None, **fid.get(k, {})}
                for k, v in lats.items()}
        for a in read_manifest(bundle).artifacts:
            if a.runtime_config.get("recipe") and f"vitdeploy {a.target} {a.precision}" in rows:
                rows[f"vitdeploy {a.target} {a.precision}"]["recipe"] = a.runtime_config["recipe"]
    finally:
        _close(runners)
    if throughput_s:
        runners = runners_in("throughput")
        try:
            tps = measure_throughput_interleaved(runners, lambda r: {r.input_name: x}, seconds=throughput_s)
            for k, tp in tps.items():
                rows[k].update(images_per_s=round(tp.images_per_s, 2), streams=tp.streams)
        finally:
            _close(runners)
    return rows


def accuracy(name: str, threads: int, work: Path, recipe: str = "auto", eval_size: int | None = None) -> dict:
    """Top-1, agreement and cosine_min of every INT8 path of a trained digits model, against PyTorch FP32, on the
    hold-out (``eval_size`` of it, chosen with a fixed seed; default all)."""
    import torch

    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    calib = load_set("digits", spec.preprocessing, size=128, part="train", progress=False)
    ev = load_set("digits", spec.preprocessing, size=eval_size, part="holdout", progress=False)
    with torch.no_grad():
        ref = model(torch.from_numpy(ev.inputs)).numpy()
    int8 = tuple(k for k in NAIVE if "int8" in k)
    runners = {k: naive_runner(kind, a, "latency")
               for k, (kind, a) in naive_artefacts(model, shape, calib, work, which=int8).items()}
    bundle = our_bundle(name, work / "bundles", "digits", threads, eval_size=eval_size, recipe=recipe,
                        precisions=("int8",))  # only INT8 is judged here
    runners.update(our_runners(bundle, threads, "latency", which=[(t, p) for t, p in OURS if p == "int8"]))
    ref_top1 = float((ref.argmax(-1) == ev.labels).mean())
    out = {"reference_top1": round(ref_top1 * 100, 2)}
    for k, r in runners.items():
        a = compare(ref, run_outputs(r, ev, 1), ev.labels)
        r.close()
        passed, why = judge(a, ref_top1, tolerance_for(*path_precision(k, None)))
        out[k] = {"top1": round(a.top1 * 100, 2), "agreement": round(a.top1_agreement * 100, 2),
                  "cosine_min": round(a.cosine_min, 4), "correct": passed, "missed": why}
    return out


def family_of(model: str) -> str | None:
    """``swin`` / ``vit`` for a zoo or timm name (``"swin_t 384x384"`` too), else None."""
    name = model.split()[0]
    arch = ALIASES.get(name, name).lower()
    return "swin" if "swin" in arch else "vit" if "vit" in arch or "deit" in arch else None


def competitors(rows: dict, accuracy: dict, family: str | None = None) -> dict:
    """The naive paths that count: correct on the timed model and on the trained digits fixture of its family
    (``family`` None: on every fixture). A path that breaks Swin on this CPU is no competitor for a Swin, but it
    still is for a ViT it gets right."""
    failed_digits = {k for m, acc in accuracy.items() if family is None or family_of(m) == family
                     for k, v in acc.items() if isinstance(v, dict) and not v["correct"]}
    return {k: v for k, v in rows.items() if k.startswith("naive") and v.get("correct", True)
            and k not in failed_digits}


def row_key(model: str, size: tuple[int, int] | None, kind: str = "classifier") -> str:
    """How a timed row is named: ``"swin_t"``, ``"swin_t 384x384"``, ``"swin_t backbone 800x1344"``."""
    return " ".join([model, *([kind] if kind != "classifier" else []), *([size_label(size)] if size else [])])


def measure(models: list[str], threads: int, runs: int, batch: int = 1, throughput_s: float | None = None,
            accuracy_models=("digits_swin", "digits_vit"), sizes: list[tuple[int, int]] | None = None,
            kind: str = "classifier", recipe: str = "auto", accuracy_eval_size: int | None = None) -> dict:
    """Every model (at every size of ``sizes``, each keyed ``"swin_t 384x384"``; another ``kind`` named in the key:
    ``"swin_t backbone 800x1344"``), then the digits accuracy (on ``accuracy_eval_size`` hold-out images, default
    all). ``recipe``: vitdeploy's INT8 recipe (default ``auto``)."""
    with tempfile.TemporaryDirectory() as d:
        lat = {}
        for m in models:
            for size in sizes or [None]:
                key = row_key(m, size, kind)
                lat[key] = latency(m, threads, runs, Path(d) / key.replace(" ", "-"), batch, throughput_s, size, kind,
                                   recipe)
        acc = {m: accuracy(m, threads, Path(d) / f"acc-{m}", recipe, accuracy_eval_size) for m in accuracy_models}
    return {"batch": batch, "latency_ms": lat, "accuracy": acc}


def render(res: dict, env_line: str, command: str) -> str:
    lines = ["## vitdeploy against the naive path (one process, interleaved)", "", f"Command: `{command}`", "",
             f"Machine: {env_line}", ""]
    batch = res.get("batch", 1)
    for model, rows in res["latency_ms"].items():
        naive = competitors(rows, res["accuracy"], family_of(model))
        if not naive:
            lines += [f"### {model}: no naive path is correct (see the fidelity columns)", ""]
            naive = {k: v for k, v in rows.items() if k.startswith("naive")}
        best_k = min(naive, key=lambda k: naive[k]["p50"])
        best = naive[best_k]["p50"]
        eager = rows["pytorch eager fp32"]["p50"]
        tp = all("images_per_s" in v for v in rows.values())
        photos = any("photos_cosine_min" in v for v in rows.values())
        best_tp = max(v["images_per_s"] for v in naive.values()) if tp else None
        ours = {k: v for k, v in rows.items() if k.startswith("vitdeploy") and v.get("correct", True)}
        top = min(ours, key=lambda k: ours[k]["p50"]) if ours else None
        recipes = ", ".join(f"{k.removeprefix('vitdeploy ')} **{v['recipe']}**" for k, v in rows.items() if v.get("recipe"))
        lines += [f"### {model} (batch {batch}, random weights): best correct naive path by p50 = {best_k}"
                  + (f"; best vitdeploy = {top}, **{best / ours[top]['p50']:.2f}×** it" if top else ""), "",
                  (f"vitdeploy's INT8 recipes, chosen here by `--recipe auto`: {recipes}. " if recipes else "")
                  + f"Fidelity: cosine of the logits against eager FP32 on {FIDELITY_SAMPLES} digits images at the "
                  "model's size" + (f" and on {FIDELITY_SAMPLES} crops of photographs (`photo_crops`)" if photos
                                    else "") + ", gated with the tolerance of the path's runtime and precision "
                  "(runtime/tolerances.py); a naive path that fails it, or fails its gate on the trained digits "
                  "fixture of the same family below, is left out of the best-naive ratio."
                  + (" A segmentation model's pixel agreement and mean IoU against eager are shown, not gated: its "
                     "random head's class maps are near-ties." if any("mean_iou" in v for v in rows.values()) else ""),
                  "",
                  "| path | p50 ms | p90 ms | × eager | best naive p50 / this p50 | OpenVINO precision hint "
                  + ("| cosine min vs eager: digits; photos (gate) | correct |" if photos
                     else "| cosine min vs eager (gate) | correct |")
                  + (" img/s, throughput mode (in flight) | this / best naive img/s |" if tp else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|---|" if tp else "")]
        for k, v in rows.items():
            extra = (f" {v['images_per_s']:.1f} ({v['streams']}) | {v['images_per_s'] / best_tp:.2f}× |" if tp else "")
            fid = (f"{v['cosine_min']:.5f}" + (f"; {v['photos_cosine_min']:.5f}" if "photos_cosine_min" in v else "")
                   + f" ({v['gate_cosine']})" if "cosine_min" in v else "reference") + (
                f"; pixels {v['pixel_agreement'] * 100:.2f} %, mean IoU {v['mean_iou']:.4f}" if "mean_iou" in v else "")
            correct = "–" if "correct" not in v else "yes" if v["correct"] else "**NO**"
            lines.append(f"| {k} | {v['p50']:.2f} | {v['p90']:.2f} | {eager / v['p50']:.2f}× | "
                         f"{best / v['p50']:.2f}× | {v['hint'] or '–'} | {fid} | {correct} |" + extra)
        lines.append("")
    for model, rows in res["accuracy"].items():
        lines += [f"### INT8 accuracy on {model} (hold-out, reference top-1 {rows['reference_top1']:.2f} %)", "",
                  "| path | top-1 % | top-1 agreement % | cosine min | passes its gate |", "|---|---|---|---|---|"]
        for k, v in rows.items():
            if k != "reference_top1":
                ok = "yes" if v.get("correct", True) else "**NO**: " + "; ".join(v.get("missed") or [])
                lines.append(f"| {k} | {v['top1']:.2f} | {v['agreement']:.2f} | {v['cosine_min']:.4f} | {ok} |")
        lines.append("")
    return "\n".join(lines)
