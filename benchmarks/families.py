"""Every ViT and Swin family timm registers, exported, rewritten and proven: ``python -m benchmarks families``.

The families come from timm's registry: the model modules whose names say ViT, DeiT, BEiT, EVA or Swin
(``timm.list_modules()``), less those listed in ``EXCLUDED`` with the reason. Each family's representative is its
smallest registered model: the first size word its names use (tiny, small, medium, base, large), then the fewest
parameters (counted on the meta device, nothing allocated), then the smaller input, then the name. ``--quick``
builds a narrow, shallow config of it through timm's own keyword arguments (``QUICK``), with random weights that
``exporters.models.zoo`` keeps from being degenerate.

For each representative: the rewrite rules that fired; the ONNX nodes of the export without the rewrites against
with them (the same exporter, opset and onnxslim, so the difference is the rules'); and vitdeploy's pipeline for
ONNX Runtime and OpenVINO
at FP32 and INT8 plus TensorRT-RTX INT8 (NVIDIA's parser and AOT builder; its accuracy is the labelled ONNX Runtime
proxy without a GPU): each row's status, gate, worst-sample cosine and p50 latency.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

from exporters.api import spec_for_module
from exporters.graph.onnx import export_onnx
from exporters.models.zoo import create_model, reinit_degenerate
from exporters.pipeline.options import RunOptions
from exporters.pipeline.stages import run
from runtime.errors import UserError

FAMILY_WORDS = ("vision_transformer", "deit", "beit", "eva", "swin")
EXCLUDED = {"vision_transformer_sam": "SAM's image encoder is a dense encoder with a neck for a mask decoder (no "
                                      "classifier, no pooled embedding): not one of the model kinds vitdeploy exports"}
SIZE_WORDS = ("tiny", "small", "medium", "base", "large")
TARGETS = ["onnxruntime", "openvino", "tensorrt_rtx"]
PRECISIONS = ["fp32", "int8"]
# --quick: narrow and shallow, through timm's own kwargs; small inputs (a Swin keeps two stages and its shifted blocks)
QUICK_VIT = dict(img_size=64, embed_dim=48, depth=2, num_heads=3)
QUICK_SWIN = dict(img_size=32, embed_dim=32, depths=(2, 2), num_heads=(1, 2), window_size=4)


def families() -> list[str]:
    """timm's ViT and Swin model modules, from its registry, less ``EXCLUDED``."""
    import timm
    return [m for m in timm.list_modules() if any(w in m for w in FAMILY_WORDS) and m not in EXCLUDED]


def _params(name: str) -> int:
    import timm
    import torch
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters())


def representative(module: str) -> str:
    """The family's smallest registered model (see the module docstring for the order)."""
    import timm
    names = [n for n in timm.list_models(module=module) if not n.startswith("test_")]
    for size in SIZE_WORDS:
        sized = [n for n in names if size in n.split("_")]
        if sized:
            names = sized
            break
    def key(n):
        return _params(n), timm.get_pretrained_cfg(n).input_size[-1] if timm.get_pretrained_cfg(n) else 0, n
    return min(names, key=key)


def quick_kwargs(module: str) -> dict:
    return dict(QUICK_SWIN if "swin" in module else QUICK_VIT)


def _unrewritten_nodes(model, shape) -> int | str:
    """Nodes of the same export without the rewrites (vitdeploy's exporter, opset and onnxslim), or why it failed:
    the difference is the rules' alone."""
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return export_onnx(model, shape, Path(d) / "plain.onnx", enforce_contract=False).num_nodes
        except Exception as exc:  # reason: the plain export's own failure is a figure of the table
            return f"fails: {str(exc).split(':')[1].strip() if ':' in str(exc) else type(exc).__name__}"


def measure_family(module: str, quick: bool, out: Path, threads: int, runs: int, eval_size: int,
                   calib_size: int) -> dict:
    """One family: its representative exported without the rewrites, and through vitdeploy's pipeline."""
    import timm

    name = representative(module)
    row: dict = {"family": module, "model": name, "quick": quick}
    t0 = time.perf_counter()
    try:
        if quick:
            kw = quick_kwargs(module)
            model = timm.create_model(name, **kw).eval()
            # reason: timm keeps the registered config's input size when img_size is given; its other preprocessing
            # stands
            model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, kw["img_size"], kw["img_size"])}
            spec = spec_for_module(model, name, None, None, None)
            spec.weights = "random"  # timm's initialisation: the gates treat it as the zoo's random models
            reinit_degenerate(model, spec)
        else:
            model, spec = create_model(f"timm:{name}")
        row["plain_nodes"] = _unrewritten_nodes(model, (1, *spec.input_shape))
        rep = run(RunOptions(model=f"timm:{name}", module=model if quick else None, spec=spec if quick else None,
                             targets=TARGETS, precisions=PRECISIONS, data="digits", calib="digits",
                             calib_size=calib_size, eval_size=eval_size, out=out, runs=runs, warmup=2,
                             threads=threads, quiet=True))
    except Exception as exc:  # reason: one family's failure is a row of the table, not the end of the run
        row.update(error=f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row
    row.update(task=spec.task, input=list(spec.input_shape), rewrites=rep.get("rewrites", {}).get("fired", []),
               nodes=rep.get("graph", {}).get("num_nodes"), seconds=round(time.perf_counter() - t0, 1),
               rows=[_row(r) for r in rep["results"]])
    return row


def _row(r: dict) -> dict:
    acc = r.get("accuracy") or {}
    return {"target": r["target"], "precision": r["precision"], "status": r["status"], "passed": r.get("passed"),
            "cosine_min": acc.get("cosine_min"), "p50_ms": (r.get("latency_ms") or {}).get("p50"),
            "proxy": r.get("accuracy_kind") == "proxy", "failures": r.get("failures") or []}


def measure(modules: list[str], quick: bool, threads: int, runs: int, eval_size: int, calib_size: int,
            out: Path) -> list[dict]:
    return [measure_family(m, quick, out / m, threads, runs, eval_size, calib_size) for m in modules]


def passed(rows: list[dict]) -> bool:
    """Every family exported, and every row built and within its gate."""
    return all("error" not in f and all(r["passed"] is True for r in f["rows"] if r["target"] != "pytorch")
               for f in rows)


def _cell(f: dict, target: str, precision: str) -> str:
    r = next((r for r in f.get("rows", []) if (r["target"], r["precision"]) == (target, precision)), None)
    if r is None:
        return "–"
    if r["status"] != "built":
        return r["status"]
    mark = "✅" if r["passed"] else "❌"
    cos = f"{r['cosine_min']:.4f}" if r["cosine_min"] is not None else "–"
    speed = f", {r['p50_ms']:.1f} ms" if r["p50_ms"] is not None else (" (proxy)" if r["proxy"] else "")
    return f"{mark} {cos}{speed}"


def render(rows: list[dict], command: str, machine: str) -> str:
    lines = ["## Every ViT and Swin family timm registers", "", f"Command: `{command}`", "", f"Machine: {machine}", "",
             "Random weights. ONNX nodes: the same exporter (torch.onnx, opset 18, onnxslim) without and with the "
             "rewrite rules. Each cell: gate (✅ passed, ❌ failed), the worst sample's cosine to PyTorch FP32 and "
             "the p50 latency (TensorRT-RTX: the engine was parsed and AOT-built by NVIDIA's code; without a GPU its "
             "accuracy is the ONNX Runtime proxy of the ONNX it was built from and it has no latency).", "",
             "| family | model | rules fired | ONNX nodes without → with the rules | PyTorch p50 | ONNX Runtime FP32 "
             "| ONNX Runtime INT8 | OpenVINO FP32 | OpenVINO INT8 | TensorRT-RTX INT8 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for f in rows:
        if "error" in f:
            lines.append(f"| {f['family']} | {f['model']} | – | – | – | **{f['error']}** | | | | |")
            continue
        ref = next((r for r in f["rows"] if r["target"] == "pytorch"), {})
        rules = ", ".join(f["rewrites"]) or "none"
        lines.append(f"| {f['family']} | `{f['model']}`{' (embedding)' if f['task'] == 'embedding' else ''} | "
                     f"{rules} | {f['plain_nodes']} → {f['nodes']} | "
                     f"{ref.get('p50_ms') or 0:.1f} ms | " + " | ".join(
                         _cell(f, t, p) for t, p in (("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                     ("openvino", "fp32"), ("openvino", "int8"),
                                                     ("tensorrt_rtx", "int8"))) + " |")
    excluded = "; ".join(f"{k}: {v}" for k, v in EXCLUDED.items())
    lines += ["", f"Not exported: {excluded}.", ""]
    return "\n".join(lines)


README_START, README_END = "<!-- families:start -->", "<!-- families:end -->"


def readme_table(rows: list[dict], command: str, machine: str) -> str:
    """The README's supported-families table, generated from a run: one line per family."""
    lines = [README_START, f"Generated by `{command}` on {machine}; random weights, "
             "docs/BENCHMARKS.md has the figures.", "",
             "| family (timm module) | tried with | rules that fire | ONNX Runtime FP32 / INT8 | OpenVINO FP32 / INT8 "
             "| TensorRT-RTX INT8 (parse + AOT build) |", "|---|---|---|---|---|---|"]
    for f in rows:
        if "error" in f:
            lines.append(f"| {f['family']} | `{f['model']}` | – | ❌ {f['error']} | | |")
            continue
        ok = {(r["target"], r["precision"]): "✅" if r["passed"] else "❌" for r in f["rows"]}
        lines.append(f"| {f['family']} | `{f['model']}` | {', '.join(f['rewrites']) or 'none'} | "
                     f"{ok.get(('onnxruntime', 'fp32'), '–')} / {ok.get(('onnxruntime', 'int8'), '–')} | "
                     f"{ok.get(('openvino', 'fp32'), '–')} / {ok.get(('openvino', 'int8'), '–')} | "
                     f"{ok.get(('tensorrt_rtx', 'int8'), '–')} |")
    return "\n".join([*lines, README_END])


def write_readme(path: Path, table: str) -> None:
    """Replace the table between the markers of ``path`` (a README), atomically."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise UserError(f"{path} has no {README_START} ... {README_END} block to replace")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + table + tail)
    tmp.replace(path)


__all__ = ["families", "representative", "quick_kwargs", "measure", "measure_family", "render", "readme_table",
           "write_readme", "passed", "EXCLUDED"]
