"""ONNX export with torch.onnx (dynamo, opset 18), simplification, and the graph contract check.

``export_onnx`` writes one ``.onnx`` file (plus ``.onnx.data`` when over 2 GB) and returns an
``OnnxExport`` with the op counts. ``check_contract`` rejects the shape plumbing that the
rewrites exist to remove, naming the first offending node.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from runtime.errors import UserError

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
TWO_GB = 2 * 1024 ** 3
FORBIDDEN = ("Shape", "ConstantOfShape", "Range", "ScatterND", "NonZero")


@dataclass
class OnnxExport:
    path: Path
    files: list[Path]
    op_counts: dict[str, int]
    num_nodes: int
    dynamic_batch: bool
    contract: dict = field(default_factory=dict)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    c = collections.Counter(n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs, by name."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def contract_violations(model: onnx.ModelProto) -> list[str]:
    """Every breach of the graph contract, as ``"<op> node '<name>': <why>"`` strings."""
    consts = _constants(model)
    bad = []
    for n in model.graph.node:
        label = f"{n.op_type} node '{n.name or n.output[0]}'"
        if n.op_type in FORBIDDEN:
            bad.append(f"{label}: shape computation in the graph")
        elif n.op_type == "Expand" and len(n.input) > 1 and n.input[1] not in consts:
            bad.append(f"{label}: Expand to a computed shape")
        elif n.op_type == "Gather" and n.input[0] in consts and consts[n.input[0]].size > 1:
            bad.append(f"{label}: Gather over a constant table {list(consts[n.input[0]].shape)}")
        elif n.op_type == "Pad" and len(n.input) > 1 and n.input[1] in consts and not consts[n.input[1]].any():
            bad.append(f"{label}: Pad that pads nothing")
    return bad


def check_contract(model: onnx.ModelProto, what: str) -> dict:
    """Raise ``UserError`` naming the first violation; return the contract summary otherwise."""
    bad = contract_violations(model)
    if bad:
        raise UserError(f"graph contract failed for {what}: {bad[0]} ({len(bad)} violation(s) in all)")
    return {"passed": True, "violations": []}


def first_last_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the first and last Conv/MatMul/Gemm nodes: the patch embedding and the classifier head."""
    comp = [n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    return list(dict.fromkeys([comp[0], comp[-1]])) if comp else []


# Constants onnxslim may fold into the file, in bytes. torch.onnx's own optimizer has already folded the weights
# (transposes included); what is left above this is a large constant computed from small ones, such as the Swin
# attention bias built from [heads, N, N] and [nW, N] (44 MB a stage-0 block at 800x1344), which every backend folds
# in memory when it loads the model. reason: onnxslim folds everything by default.
FOLD_LIMIT = 1 << 20


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim constant folding (up to ``FOLD_LIMIT`` bytes a constant) and dead-node removal; the original is kept
    if slim fails."""
    try:
        import onnxslim
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model, size_threshold=FOLD_LIMIT)
        if slim is not None and len(slim.graph.node) <= len(model.graph.node):
            return slim
    except Exception as exc:  # reason: onnxslim is an optimisation; a failure there must not stop the export
        logging.getLogger(__name__).warning("onnxslim skipped: %s", exc)
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save, moving weights to ``<name>.data`` beside it when the file would pass 2 GB."""
    if model.ByteSize() > TWO_GB or sum(i.ByteSize() for i in model.graph.initializer) > TWO_GB:
        data = path.name + ".data"
        from onnx.external_data_helper import convert_model_to_external_data
        # convert_attribute: the baked constants (Swin bias+mask tables) are Constant-node attributes
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data, size_threshold=1024,
                                       convert_attribute=True)
        onnx.save_model(model, str(path))
        return [path, path.with_name(data)]
    onnx.save_model(model, str(path))
    return [path]


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path,
                dynamic_batch: bool = False, enforce_contract: bool = True, simplify: bool = True,
                output_names: list[str] | None = None) -> OnnxExport:
    """Export ``model`` for an input ``[B, 3, H, W]`` to ``path`` (outputs named ``output_names``, default
    ``logits``); check, simplify and count ops."""
    x = torch.zeros(input_shape)
    dyn = ({"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                     output_names=output_names or [OUTPUT_NAME], dynamic_shapes=_dyn_for(model, dyn),
                                     verbose=False)
        proto = prog.model_proto
    except Exception as exc:  # reason: torch.export raises many types; the first line names the cause
        raise UserError(f"ONNX export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
    if simplify:
        proto = _simplify(proto)
    if not proto.graph.input:  # reason: torch.onnx and onnxslim drop an input that no output depends on
        raise UserError("the model's outputs do not depend on its input (the exported graph has no input): "
                        "nothing to deploy")
    onnx.checker.check_model(proto, full_check=proto.ByteSize() < TWO_GB)
    contract = check_contract(proto, path.name) if enforce_contract else {
        "passed": not contract_violations(proto), "violations": contract_violations(proto)[:20], "enforced": False}
    files = save_onnx(proto, path)
    return OnnxExport(path=path, files=files, op_counts=op_counts(proto), num_nodes=len(proto.graph.node),
                      dynamic_batch=dynamic_batch, contract=contract)


def _dyn_for(model: torch.nn.Module, dyn):
    """Key the dynamic-shape spec by the forward's first argument name, whatever it is."""
    if dyn is None:
        return None
    import inspect
    first = next(iter(inspect.signature(model.forward).parameters))
    return {first: dyn["x"]}
