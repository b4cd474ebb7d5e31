"""Block outputs of a model and of its artefacts, under the PyTorch module names.

One mechanism for every backend: a debug copy of the artefact with the block outputs added as extra
graph outputs. The tensor that carries a module's output is found once, in an export of the same
(rewritten) model whose nodes keep the exporter's ``pkg.torch.onnx.name_scopes`` metadata: the last
node, in graph order, inside the module's scope. Tensor names survive onnxslim and the quantizers
(ORT's QDQ keeps producer names; OpenVINO keeps ONNX tensor names through NNCF), so the same name is
found in the artefact. The reference is the PyTorch model with forward hooks on the same modules.
Used by ``python -m benchmarks drift`` and by the export's accuracy budget (``--max-drop``/``--min-cosine``).
"""
from __future__ import annotations

import ast
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from exporters.graph.onnx import export_onnx
from exporters.graph.rewrites import display_name
from exporters.targets import target
from runtime.accuracy import cosine_per_sample
from runtime.backends import open_tapped, weights_of
from runtime.manifest import resolve_inside

# module names (after the vit_embed wrapper's "inner." is dropped) whose outputs are compared
PROBE = re.compile(r"^(patch_embed(\.proj)?|(layers\.\d+\.)?blocks\.\d+(\.(attn|mlp))?|layers\.\d+\.downsample|"
                   r"features\.\d+(\.\d+(\.(attn|mlp))?)?|encoder\.layers\.encoder_layer_\d+(\.(self_attention|mlp))?|"
                   r"norm|head|head\.fc|fc_norm)$")
# the same blocks inside a user's module (a backbone under "backbone." or any other attribute)
NESTED = re.compile(r"^[\w.]+?\.(patch_embed|(layers\.\d+\.)?blocks\.\d+(\.(attn|mlp))?|layers\.\d+\.downsample)$")


def dense_probe(model) -> Callable[[str], bool]:
    """Which modules of a dense model (a user's module around a timm backbone) to probe: the backbone's blocks, as
    for a classifier, and every module of the head up to two levels below the root (``lateral.0``, ``fuse``,
    ``classifier``): a name predicate for ``probes_from_export``."""
    backbone = {n.split(".")[0] for n, _ in model.named_modules() if NESTED.match(n)}

    def chosen(name: str) -> bool:
        return bool(NESTED.match(name)) or (name.split(".")[0] not in backbone and name.count(".") <= 1)
    return chosen


@dataclass
class Probe:
    module: str  # PyTorch name in the original model
    tensor: str  # ONNX tensor carrying its output
    depth: int  # order in the graph
    scope: frozenset = field(default_factory=frozenset)  # every tensor its nodes produce (to exclude it from INT8)


def probes_from_export(model, input_shape: tuple[int, ...], select=None) -> list[Probe]:
    """Probe modules of ``model`` (the rewritten export model) and the ONNX tensor of each one's output.
    ``select(name)``: which modules (default: a classifier's blocks, ``PROBE``)."""
    import onnx

    select = select or (lambda n: bool(PROBE.match(display_name(n))))
    modules = {n for n, m in model.named_modules() if n and select(n)
               and type(m).__name__ not in ("Identity", "Dropout", "ModuleList")}
    with tempfile.TemporaryDirectory() as d:
        exp = export_onnx(model, input_shape, Path(d) / "probe.onnx", enforce_contract=False, simplify=False)
        graph = onnx.load(str(exp.path), load_external_data=False).graph
    last: dict[str, tuple[int, str]] = {}
    scopes: dict[str, set] = {}
    for i, node in enumerate(graph.node):
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in meta:
            continue
        for scope in ast.literal_eval(meta["pkg.torch.onnx.name_scopes"]):
            if scope in modules:
                last[scope] = (i, node.output[0])
                scopes.setdefault(scope, set()).update(node.output)
    return sorted((Probe(display_name(m), t, i, frozenset(scopes[m])) for m, (i, t) in last.items()), key=lambda p: p.depth)


def reference_outputs(model, probes: list[Probe], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each probe module's output for ``x``, through forward hooks on the PyTorch model."""
    import torch
    names = {p.module for p in probes}
    out, hooks = {}, []
    for n, m in model.named_modules():
        if display_name(n) in names:
            hooks.append(m.register_forward_hook(
                lambda mod, args, res, key=display_name(n): out.__setitem__(key, res.detach().float().numpy())))
    dtype = next(model.parameters()).dtype  # a half-precision proxy (Core ML's) takes half inputs
    try:
        with torch.inference_mode():
            model(torch.from_numpy(x).to(dtype))
    finally:
        for h in hooks:
            h.remove()
    return out


def artefact_outputs(art, bundle: Path, model, probes: list[Probe], x: np.ndarray,
                     threads: int | None) -> dict[str, np.ndarray]:
    """The probe tensors of one artefact (a manifest ``ArtifactEntry``: paths relative to ``bundle``).

    Where they are read from is the target's to say (``Target.block_source``): ONNX Runtime and OpenVINO the
    artefact itself; TensorRT and TensorRT-RTX the ONNX their engine is built from, in ONNX Runtime (the proxy the
    export pipeline verifies; engines need a GPU); Core ML its proxy, ``model`` with the package's compression
    (Core ML runs on macOS only).
    """
    tensors = [p.tensor for p in probes]
    t = target(art.target)
    if t.block_source == "proxy":
        out = reference_outputs(t.block_proxy(model, art), probes, x)
        return {p.tensor: out[p.module] for p in probes if p.module in out}
    if t.block_source == "onnx":
        return outputs_of("onnxruntime", resolve_inside(bundle, art.runtime_config["onnx"]), {}, tensors, x, threads)
    return outputs_of(t.backend, resolve_inside(bundle, art.primary), art.runtime_config, tensors, x, threads,
                      weights=weights_of(bundle, art))


def probe_label(name: str) -> str:
    """What a target's block outputs are read from, in words (for drift.json and checks.budget)."""
    return target(name).block_label


def outputs_of(backend: str, path: Path, runtime_config: dict, tensors: list[str], x: np.ndarray,
               threads: int | None, weights: Path | None = None) -> dict[str, np.ndarray]:
    """The probe tensors of one artefact file, opened by its runtime backend with them as further outputs
    (``runtime.backends.open_tapped``), one sample at a time (an artefact's batch is static)."""
    tensors = list(dict.fromkeys(tensors))  # two modules can end in one tensor (a head and its fc)
    runner, carried = open_tapped(backend, path, runtime_config, tensors, threads, weights)
    outs: dict[str, list] = {}
    with runner:
        for i in range(len(x)):
            got = runner.infer({runner.input_name: x[i:i + 1]})
            for t, name in carried.items():
                outs.setdefault(t, []).append(np.asarray(got[name], dtype=np.float32))
    return {t: np.concatenate(v) for t, v in outs.items()}


def errors(ref: np.ndarray, out: np.ndarray) -> dict:
    """Per-sample cosine (the worst sample) and the max abs error of one block output."""
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        cos = cosine_per_sample(a, b)
    cos = np.where(np.isfinite(b).all(1), np.nan_to_num(cos, nan=-1.0), -1.0)  # inf/NaN (an FP16 overflow): worst
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs": float(np.abs(a - b).max()),
            "ref_max_abs": float(np.abs(a).max())}


def block_errors(probes: list[Probe], ref: dict, got: dict) -> list[dict]:
    """Rows in graph order: module, tensor, cosine_min/mean, max abs (and the reference's), for probes found in both."""
    rows = []
    for p in probes:
        if p.tensor not in got or p.module not in ref:
            continue
        r, o = ref[p.module], got[p.tensor]
        if r.size != o.size:
            continue  # the tensor was re-laid out by a backend pass; not comparable
        rows.append({"module": p.module, "tensor": p.tensor, "depth": p.depth, **errors(r, o)})
    return rows


PLUMBING = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Cast"}
COMPUTE = {"MatMul", "Gemm", "Conv"}


def compute_outputs_in(onnx_path: Path, scope: frozenset, graph=None) -> frozenset:
    """``scope`` plus the outputs and node names of every MatMul/Gemm/Conv of ``onnx_path`` that lands in it.

    # reason: onnxslim rewrites a 3-D/4-D MatMul+Add into Reshape -> Gemm -> Reshape; the Gemm's own
    # output is new ("<name>_gemm_out") and only the Reshape after it keeps the exporter's tensor name.
    # Node names are added for OpenVINO, which names the MatMul it makes of a Gemm after the ONNX node.
    # The plumbing node right in front (onnxslim's Reshape before such a Gemm) is added too: an FP16 build
    # that keeps the block in FP32 must keep it as well, or the block's own wide activations overflow there.
    """
    if graph is None:  # ``graph``: the same ONNX's graph, already loaded by a caller that asks many times
        import onnx
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = set(scope)
    for n in graph.node:
        if n.op_type not in COMPUTE:
            continue
        frontier, seen = list(n.output), set()
        while frontier:
            t = frontier.pop()
            if t in scope:
                found.update([*n.output, n.name])
                feeding = producer.get(n.input[0])
                if feeding is not None and feeding.op_type in PLUMBING:
                    found.update([*feeding.output, feeding.name])
                break
            seen.add(t)
            frontier += [o for c in consumers.get(t, []) if c.op_type in PLUMBING for o in c.output if o not in seen]
    return frozenset(found)


NOISE = 1e-4  # 1 - cosine below this is rounding noise (FP32/FP16), not a step


def largest_step(rows: list[dict], eligible=lambda row: True) -> dict | None:
    """The eligible block whose error (1 - cosine_min) grows the most over the worst error before it.

    Growth is absolute (how much of the final error the block adds), not a ratio: measured on a planted
    q/k outlier in digits_swin's last attention on OpenVINO INT8, the ratio against the noise floor ranked
    the first attention (1.3e-3 over 1e-4: 13.5x) above the planted one (5.1e-2 over 3.9e-3: 13.2x), and
    the budget kept three innocent blocks before the guilty one. ``step`` (the ratio) is reported too.
    Two modules ending in one tensor (a head and its fc) count once, as the first.
    """
    best, worst_before, seen = None, NOISE, set()
    for r in rows:
        err = max(1.0 - r["cosine_min"], 1e-12)
        fresh = r["tensor"] not in seen
        seen.add(r["tensor"])
        if fresh and eligible(r):
            growth = err - worst_before
            if best is None or growth > best["growth"]:
                best = {**r, "growth": growth, "step": err / worst_before, "error": err}
        worst_before = max(worst_before, err)
    return best


def first_large_step(rows: list[dict]) -> dict | None:
    """The block of ``rows`` (graph order) whose error grows the most: where the drift starts to matter."""
    best = largest_step(rows)
    return best and {k: best[k] for k in ("module", "growth", "step", "error")}
