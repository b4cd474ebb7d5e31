"""``python -m benchmarks drift``: where an artefact's output drifts from PyTorch, block by block.

The mechanism (block outputs as extra outputs of a debug copy, mapped to PyTorch module names) is
``exporters/verify/probes.py``. Supported: ONNX Runtime (FP32/INT8), OpenVINO (FP32/FP16/INT8), and TensorRT /
TensorRT-RTX through their TensorRT-ready ONNX in ONNX Runtime (the proxy the export pipeline also
uses; engines need a GPU), and Core ML through its labelled proxy (the model with the package's
compression, hooked like the reference; Core ML itself runs on macOS only).
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.reference import model_from_manifest, rebuild_reason
from calibration import load_set
from exporters.graph.rewrites import apply_rewrites
from exporters.models.zoo import DIGITS, create_model
from exporters.report.render import drift_table
from exporters.verify.probes import (
    artefact_outputs,
    block_errors,
    first_large_step,
    outputs_of,
    probe_label,
    probes_from_export,
    reference_outputs,
)
from runtime.errors import UserError
from runtime.manifest import read_manifest
from runtime.preprocess import Preprocessing
from runtime.session import choose_artifact


def drifting_artifact(m, target: str | None, precision: str | None):
    """The artefact to compare: the one named (its block outputs are read from its files, so it need not run
    here: a deferred TensorRT ONNX, an engine without a GPU, a Core ML package off macOS); else the
    runtime's own choice."""
    if not target:
        return choose_artifact(m, target, precision)
    arts = [a for a in m.artifacts if a.target == target and a.primary and (not precision or a.precision == precision)]
    if not arts:
        have = sorted({f"{a.target} {a.precision}" for a in m.artifacts})
        raise UserError(f"the bundle has no {target} {precision or ''} artefact; it has: {', '.join(have) or 'none'}"
                        .replace("  ", " "))
    return arts[0]


def drift(bundle: Path, target: str | None, precision: str | None, data: str, size: int,
          threads: int | None, weights: str | None = None) -> dict:
    """Block-level errors of one artefact of ``bundle`` against PyTorch on ``size`` samples of ``data``."""
    m = read_manifest(bundle)
    art = drifting_artifact(m, target, precision)
    pp = Preprocessing.from_dict(m.preprocessing.model_dump())
    x = load_set(data, pp, size=size, part="holdout", progress=False).inputs
    shape = (1, *m.input.shape[1:])
    if rebuild_reason(m) and not weights:
        # random (or unavailable) weights: the architecture alone names the blocks; the values come from
        # the bundle's FP32 ONNX, which matches PyTorch to 1e-5 (the export's own check)
        model, _ = create_model(m.model, img_size=m.input.shape[-1]) if m.model not in DIGITS else create_model(m.model)
        reference = "the bundle's FP32 ONNX in ONNX Runtime (weights not rebuildable: " + rebuild_reason(m) + ")"
    else:
        model, _ = model_from_manifest(bundle, weights)
        reference = "PyTorch FP32 (eager)"
    fired = (m.rewrites or {}).get("fired")
    if fired:
        model, _ = apply_rewrites(model, shape, passes=fired)
    probes = probes_from_export(model, shape)
    if not probes:
        raise UserError(f"no block of {m.model} could be located in its export (no name-scope metadata)")
    if reference.startswith("PyTorch"):
        ref = reference_outputs(model, probes, x)
    else:
        if m.onnx is None:
            raise UserError(f"{bundle} is a pack without its ONNX: the reference must be PyTorch (--weights)")
        m.verify(bundle, [m.onnx])
        by_tensor = outputs_of("onnxruntime", bundle / m.onnx, {}, [p.tensor for p in probes], x, threads)
        ref = {p.module: by_tensor[p.tensor] for p in probes if p.tensor in by_tensor}
    m.verify(bundle, art.files)
    got = artefact_outputs(art, bundle, model, probes, x, threads)
    rows = block_errors(probes, ref, got)
    missing = [p.module for p in probes if p.module not in {r["module"] for r in rows}]
    return {"bundle": str(bundle), "model": m.model, "target": art.target, "precision": art.precision,
            "samples": int(len(x)), "data": data, "reference": reference,
            "artefact_values_from": probe_label(art.target), "rows": rows, "not_found": missing,
            "first_large_step": first_large_step(rows)}


def render(res: dict, command: str, env_line: str) -> str:
    lines = [f"## Drift of {res['model']} {res['target']} {res['precision']} against PyTorch, block by block", "",
             f"Command: `{command}`", "", f"Machine: {env_line}", "",
             f"{res['samples']} samples of {res['data']}; reference: {res['reference']}; artefact values from "
             f"{res.get('artefact_values_from', 'the artefact itself')}; cosine is per sample "
             "(the worst shown), max abs over all.",
             ""]
    lines += drift_table(res)
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["rows"]
    err = [max(1 - r["cosine_min"], 1e-9) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.28), 4))
    ax.semilogy(range(len(rows)), err, marker="o", ms=3)
    step = res["first_large_step"]
    if step:
        i = next(i for i, r in enumerate(rows) if r["module"] == step["module"])
        ax.axvline(i, color="tab:red", ls="--", lw=1)
        ax.annotate(step["module"], (i, err[i]), textcoords="offset points", xytext=(4, 6), fontsize=8,
                    color="tab:red")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["module"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("1 - cosine (worst sample)")
    ax.set_title(f"{res['model']} {res['target']} {res['precision']}: drift from PyTorch by depth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
