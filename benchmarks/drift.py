"""Where an artefact's output drifts from PyTorch: block by block, under the PyTorch module names.

One mechanism for every backend: a debug copy of the artefact with the block outputs added as extra
graph outputs. The tensor that carries a module's output is found once, in an export of the same
(rewritten) model whose nodes keep the exporter's ``pkg.torch.onnx.name_scopes`` metadata: the last
node, in graph order, inside the module's scope. Tensor names survive onnxslim and the quantizers
(ORT's QDQ keeps producer names; OpenVINO keeps ONNX tensor names through NNCF), so the same name
is found in the artefact. The reference is the PyTorch model rebuilt from the manifest, with forward
hooks on the same modules.

Supported: ONNX Runtime (FP32/INT8), OpenVINO (FP32/FP16/INT8), and TensorRT / TensorRT-RTX through
their TensorRT-ready ONNX in ONNX Runtime (the proxy the export pipeline also uses; engines need a GPU).
"""
from __future__ import annotations

import ast
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import UserError

# module names (after the vit_embed wrapper's "inner." is dropped) whose outputs are compared
PROBE = re.compile(r"^(patch_embed(\.proj)?|(layers\.\d+\.)?blocks\.\d+(\.(attn|mlp))?|layers\.\d+\.downsample|"
                   r"features\.\d+(\.\d+(\.(attn|mlp))?)?|encoder\.layers\.encoder_layer_\d+(\.(self_attention|mlp))?|"
                   r"norm|head|head\.fc|fc_norm)$")
WRAPPER = "inner."  # exporters/rewrites/vit.py StaticTimmViT keeps the original model under .inner


def display(name: str) -> str:
    return name[len(WRAPPER):] if name.startswith(WRAPPER) else name


@dataclass
class Probe:
    module: str  # PyTorch name in the original model
    tensor: str  # ONNX tensor carrying its output
    depth: int  # order in the graph


def probes_from_export(model, input_shape: tuple[int, ...]) -> list[Probe]:
    """Probe modules of ``model`` (the rewritten export model) and the ONNX tensor of each one's output."""
    import onnx

    from exporters.onnx import export_onnx
    modules = {n for n, m in model.named_modules() if n and PROBE.match(display(n))
               and type(m).__name__ not in ("Identity", "Dropout")}
    with tempfile.TemporaryDirectory() as d:
        exp = export_onnx(model, input_shape, Path(d) / "probe.onnx", enforce_contract=False, simplify=False)
        graph = onnx.load(str(exp.path), load_external_data=False).graph
    last: dict[str, tuple[int, str]] = {}
    for i, node in enumerate(graph.node):
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in meta:
            continue
        for scope in ast.literal_eval(meta["pkg.torch.onnx.name_scopes"]):
            if scope in modules:
                last[scope] = (i, node.output[0])
    return sorted((Probe(display(m), t, i) for m, (i, t) in last.items()), key=lambda p: p.depth)


def reference_outputs(model, probes: list[Probe], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each probe module's output for ``x``, through forward hooks on the PyTorch model."""
    import torch
    names = {p.module for p in probes}
    out, hooks = {}, []
    for n, m in model.named_modules():
        if display(n) in names:
            hooks.append(m.register_forward_hook(
                lambda mod, args, res, key=display(n): out.__setitem__(key, res.detach().float().numpy())))
    try:
        with torch.inference_mode():
            model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return out


def _ort_outputs(onnx_path: Path, tensors: list[str], x: np.ndarray, threads: int | None) -> dict[str, np.ndarray]:
    """Run a debug copy of an ONNX with ``tensors`` added as graph outputs (those it has)."""
    import onnx
    import onnxruntime as ort
    from onnx.external_data_helper import load_external_data_for_model
    proto = onnx.load(str(onnx_path), load_external_data=False)
    load_external_data_for_model(proto, str(onnx_path.parent))
    produced = {o for n in proto.graph.node for o in n.output}
    have = [t for t in tensors if t in produced]
    existing = {o.name for o in proto.graph.output}
    for t in have:
        if t not in existing:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    feed = x.astype(np.float16 if "float16" in inp.type else np.float32)
    outs = {}
    for i in range(len(x)):  # the artefact's static batch is 1 or matches; run sample by sample
        vals = sess.run(have, {inp.name: feed[i:i + 1]})
        for t, v in zip(have, vals):
            outs.setdefault(t, []).append(np.asarray(v, dtype=np.float32))
    return {t: np.concatenate(v) for t, v in outs.items()}


def _openvino_outputs(xml: Path, tensors: list[str], x: np.ndarray, config: dict,
                      threads: int | None) -> dict[str, np.ndarray]:
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(xml))
    names = {n for op in model.get_ops() for o in op.outputs() for n in o.get_names()}
    have = [t for t in tensors if t in names]
    if have:
        model.add_outputs(have)
    cfg = {"INFERENCE_PRECISION_HINT": config.get("inference_precision", "f32"), "NUM_STREAMS": "1"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(model, "CPU", cfg)
    request = compiled.create_infer_request()
    by_name = {t: next(o for o in compiled.outputs if t in o.get_names()) for t in have}
    outs = {}
    for i in range(len(x)):
        request.infer({0: x[i:i + 1]})
        for t, port in by_name.items():
            outs.setdefault(t, []).append(np.asarray(request.get_tensor(port).data, dtype=np.float32).copy())
    return {t: np.concatenate(v) for t, v in outs.items()}


def artefact_outputs(bundle: Path, art, tensors: list[str], x: np.ndarray, threads: int | None) -> dict:
    """The probe tensors of one bundle artefact (hashes verified first)."""
    from runtime.manifest import read_manifest, resolve_inside
    m = read_manifest(bundle)
    m.verify(bundle, art.files)
    tensors = list(dict.fromkeys(tensors))  # two modules can end in one tensor (a head and its fc)
    if art.target == "onnxruntime":
        return _ort_outputs(resolve_inside(bundle, art.primary), tensors, x, threads)
    if art.target in ("tensorrt", "tensorrt_rtx"):
        return _ort_outputs(resolve_inside(bundle, art.runtime_config["onnx"]), tensors, x, threads)
    if art.target == "openvino":
        return _openvino_outputs(resolve_inside(bundle, art.primary), tensors, x, art.runtime_config, threads)
    raise UserError(f"drift does not read {art.target} artefacts on this machine (Core ML's debug outputs need "
                    "macOS); choose onnxruntime, openvino, tensorrt or tensorrt_rtx")


def errors(ref: np.ndarray, out: np.ndarray) -> dict:
    """Per-sample cosine (the worst sample) and the max abs error of one block output."""
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs": float(np.abs(a - b).max()),
            "ref_max_abs": float(np.abs(a).max())}


NOISE = 1e-4  # 1 - cosine below this is rounding noise (FP32/FP16), not a step


def first_large_step(rows: list[dict]) -> dict | None:
    """The block whose error (1 - cosine_min) grows the most over the worst error before it (or the noise floor)."""
    best, worst_before = None, NOISE
    for r in rows:
        err = max(1.0 - r["cosine_min"], 1e-12)
        step = err / worst_before
        if best is None or step > best["step"]:
            best = {"module": r["module"], "step": step, "error": err}
        worst_before = max(worst_before, err)
    return best


def drift(bundle: Path, target: str | None, precision: str | None, data: str, size: int,
          threads: int | None) -> dict:
    """Block-level errors of one artefact of ``bundle`` against PyTorch on ``size`` samples of ``data``."""
    from benchmarks.reference import model_from_manifest
    from calibration import load_set
    from exporters.rewrites import apply_rewrites
    from runtime.manifest import read_manifest
    from runtime.preprocess import Preprocessing
    from runtime.session import choose_artifact
    m = read_manifest(bundle)
    art = choose_artifact(m, target, precision)
    model, _ = model_from_manifest(bundle)
    shape = (1, *m.input.shape[1:])
    fired = (m.rewrites or {}).get("fired")
    if fired:
        model, _ = apply_rewrites(model, shape, passes=fired)
    probes = probes_from_export(model, shape)
    if not probes:
        raise UserError(f"no block of {m.model} could be located in its export (no name-scope metadata)")
    pp = Preprocessing.from_dict(m.preprocessing.model_dump())
    x = load_set(data, pp, size=size, part="holdout", progress=False).inputs
    ref = reference_outputs(model, probes, x)
    got = artefact_outputs(bundle, art, [p.tensor for p in probes], x, threads)
    rows = []
    for p in probes:
        if p.tensor not in got or p.module not in ref:
            continue
        r, o = ref[p.module], got[p.tensor]
        if r.size != o.size:
            continue  # the tensor was re-laid out by a backend pass; not comparable
        rows.append({"module": p.module, "tensor": p.tensor, "depth": p.depth, **errors(r, o)})
    missing = [p.module for p in probes if p.module not in {r["module"] for r in rows}]
    return {"bundle": str(bundle), "model": m.model, "target": art.target, "precision": art.precision,
            "samples": int(len(x)), "data": data, "rows": rows, "not_found": missing,
            "first_large_step": first_large_step(rows)}


def render(res: dict, command: str, env_line: str) -> str:
    step = res["first_large_step"]
    lines = [f"## Drift of {res['model']} {res['target']} {res['precision']} against PyTorch, block by block", "",
             f"Command: `{command}`", "", f"Machine: {env_line}", "",
             f"{res['samples']} samples of {res['data']}; cosine is per sample (the worst shown), max abs over all.",
             ""]
    if step:
        lines += [f"**First large step: `{step['module']}`** (1 - cosine grows {step['step']:.1f}x over the worst "
                  f"before it, to {step['error']:.2e})", ""]
    lines += ["| # | module | cosine min | 1 - cosine min | max abs err | max abs of the reference |",
              "|---|---|---|---|---|---|"]
    for i, r in enumerate(res["rows"]):
        lines.append(f"| {i} | `{r['module']}` | {r['cosine_min']:.6f} | {1 - r['cosine_min']:.2e} | "
                     f"{r['max_abs']:.4g} | {r['ref_max_abs']:.4g} |")
    if res["not_found"]:
        lines += ["", "Not located in this artefact (fused or renamed by its compiler): "
                  + ", ".join(f"`{n}`" for n in res["not_found"])]
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
