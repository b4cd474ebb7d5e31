"""The explicit-precision ONNX both TensorRT targets build from, and NVIDIA's check of it.

- fp16: every tensor FP16 except FP32 islands around LayerNormalization, Softmax and the other
  reductions (FP16 LayerNorm overflows in TensorRT); inputs/outputs stay FP32 unless --io-fp16;
- both honour the accuracy budget's choice (``ctx.keep_tensors``): a kept block is one more FP32 island
  in FP16 (all its nodes), and its MatMul/Gemm/Conv are left unquantized (FP16) in INT8; such an ONNX
  is named for what it keeps (``tensorrt-int8-keep<hash>.onnx``), so the two TensorRT targets share it
  only for the same choice;
- int8: INT8 + FP16, TensorRT's own recipe for explicit quantization: Q/DQ (symmetric INT8, weights
  per channel, activations per tensor, zero points 0) on the inputs of MatMul/Gemm/Conv, attention
  matmuls included, FP16 everywhere else, FP32 islands as for fp16. The Q/DQ scales are FP16 too
  (opset 19), so each DequantizeLinear feeds its GEMM in FP16. The patch embedding and the head are
  not quantized (FP16). LayerNorm, Softmax, GELU and the residual adds never see Q/DQ.
  # reason: NVIDIA Model Optimizer (nvidia-modelopt[onnx]) would be the first choice, but it
  # installs onnxruntime-gpu beside onnxruntime (two packages, one module) and its attention
  # pattern expects plain MatMul-Softmax-MatMul; our Swin blocks carry a bias+mask Add between.
  # ONNX Runtime's QDQ quantizer with these settings gives the same placement on every block.
``nvidia_check`` parses each ONNX with TensorRT's ONNX parser and AOT-builds it with the TensorRT-RTX
builder on this machine (no GPU needed), and returns the evidence the result row carries.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import onnx

from exporters.targets import BuildContext
from exporters.targets.onnxruntime import DEFAULT_INT8, quantize_qdq
from runtime.backends import missing
from runtime.backends._trt import LIBRARIES, engine_from_onnx, library
from runtime.errors import UserError

FP32_ISLANDS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt",
                "Reciprocal", "Exp", "Log"]
QDQ_OPSET = 19  # the first opset whose Q/DQ take FP16 scales


def unshare_island_initializers(model: onnx.ModelProto) -> int:
    """Give every FP32-island consumer of a shared initializer its own copy; returns how many were made.

    # reason: onnxslim merges identical constants (e.g. the all-ones LayerNorm weights of a randomly
    # initialised model) into one initializer; ORT's float16 converter then inserts one Cast per
    # consumer with the same output name, and the model becomes invalid ("redeclared").
    """
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users[name] = users.get(name, 0) + 1
    made = 0
    for idx, node in enumerate(model.graph.node):
        if node.op_type not in FP32_ISLANDS:
            continue
        for k, name in enumerate(node.input):
            if users.get(name, 0) > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{idx}"
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
                users[name] -= 1
                made += 1
    return made


def kept_nodes(model: onnx.ModelProto, keep: frozenset, compute_only: bool = True) -> list[str]:
    """Names of the nodes of ``model`` that the budget keeps (by output tensor or node name): its
    MatMul/Gemm/Conv (what INT8 quantizes), or with ``compute_only=False`` every node of the kept blocks.

    # reason: in FP16 an FP32 island of the GEMMs alone does not stop an overflow: measured on digits_swin
    # with an activation channel x30000 (FP32 unchanged), the Reshape/Split/Add between qkv and the
    # attention matmul were FP16 and the logits inf; the whole block in FP32 holds it.
    """
    return [n.name for n in model.graph.node if (not compute_only or n.op_type in ("MatMul", "Gemm", "Conv"))
            and (keep.intersection(n.output) or n.name in keep)]


def to_half(model: onnx.ModelProto, io_fp16: bool, keep: frozenset = frozenset()) -> onnx.ModelProto:
    """FP16 graph with FP32 islands (and the ``keep`` nodes in FP32); ``onnxruntime.transformers.float16``
    inserts the Casts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    unshare_island_initializers(model)
    half = convert_float_to_float16(model, keep_io_types=not io_fp16, op_block_list=FP32_ISLANDS,
                                    node_block_list=kept_nodes(model, keep, compute_only=False),
                                    disable_shape_infer=False)
    drop_cast_round_trips(half)
    # reason: the converter appends its Casts at the end of the node list (TensorRT's parser needs
    # topological order) and leaves value_info entries with their old FP32 types
    import onnx_ir as ir
    graph = ir.from_proto(half)
    graph.graph.sort()
    half = ir.to_proto(graph)
    del half.graph.value_info[:]
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    onnx.checker.check_model(half)
    return half


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Remove FP32 -> FP16 -> FP32 Cast pairs: consumers of the FP32 Cast read the FP32 tensor directly.

    # reason: ``convert_float_to_float16`` casts every output of a blocked node to FP16 and every input back
    # to FP32, even between two blocked nodes, so a chain of FP32 nodes still passes through FP16 and
    # overflows there (measured: an x30000 activation channel, inf at the Cast after the kept qkv Gemm).
    """
    nodes = list(model.graph.node)
    by_input: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    rename, dead = {}, set()
    for c16 in nodes:
        if _cast_to(c16) != onnx.TensorProto.FLOAT16:
            continue
        for c32 in by_input.get(c16.output[0], []):
            if _cast_to(c32) == onnx.TensorProto.FLOAT and c32.output[0] not in graph_outputs:
                rename[c32.output[0]] = c16.input[0]
                dead.add(id(c32))
        if all(id(c) in dead for c in by_input.get(c16.output[0], [])) and c16.output[0] not in graph_outputs:
            dead.add(id(c16))
    keep = [n for n in nodes if id(n) not in dead]
    for n in keep:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(nodes) - len(keep)


def fp16_onnx(src, dst, io_fp16: bool, keep: frozenset = frozenset()) -> None:
    onnx.save(to_half(onnx.load(str(src)), io_fp16, keep), str(dst))


def int8_onnx(src, dst, calib, batch: int, half: bool = True, keep: frozenset = frozenset()) -> None:
    """Explicit Q/DQ placement TensorRT fuses: symmetric INT8 on MatMul/Gemm/Conv inputs, FP16 elsewhere
    (the ``keep`` nodes are not quantized)."""
    quantize_qdq(src, dst, calib, batch, {
        **DEFAULT_INT8, "activation": "int8", "reduce_range": False, "keep_tensors": keep,  # TensorRT: zero points 0
        "extra_options": {"QDQKeepRemovableActivations": False,
                          # reason: ORT quantizes a Gemm/Conv bias to INT32 by default; TensorRT's parser
                          # takes no INT32 DequantizeLinear (seen on a Swin whose proj exported as Gemm)
                          "QuantizeBias": False,
                          # reason: ORT otherwise quantizes a bias-free MatMul's output too
                          # (patch merging), feeding Q/DQ into the next LayerNorm and Add
                          "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]}})
    if half:
        model = onnx.load(str(dst))
        for op in model.opset_import:
            if op.domain in ("", "ai.onnx"):
                # reason: opset 18's Q/DQ take FP32 scales only; 19 adds FP16 (the other ops of these graphs
                # are unchanged between 18 and 19 but for added types)
                op.version = max(op.version, QDQ_OPSET)
        onnx.save(to_half(model, io_fp16=False), str(dst))


def prepare_onnx(ctx: BuildContext, precision: str, io_fp16: bool = False) -> tuple[Path, list[str], float]:
    """``tensorrt-<precision>.onnx`` in the bundle (made once per bundle and kept set): (path, notes, seconds)."""
    keep = ctx.keep_tensors
    tag = "-keep" + hashlib.sha256("\n".join(sorted(keep)).encode()).hexdigest()[:8] if keep else ""
    dst = ctx.workdir / f"tensorrt-{precision}{'-io16' if io_fp16 else ''}{tag}.onnx"
    t0 = time.perf_counter()
    if precision == "fp16":
        notes = [f"FP16 ONNX with FP32 islands around {', '.join(FP32_ISLANDS[:2])} and reductions; "
                 f"I/O {'FP16' if io_fp16 else 'FP32'}"]
        if not dst.exists():
            fp16_onnx(ctx.onnx_path, dst, io_fp16, keep)
    elif precision == "int8":
        calib = ctx.calib()
        notes = [f"INT8 + FP16: explicit Q/DQ (weights per-channel symmetric INT8, activations per-tensor "
                 f"symmetric INT8) on MatMul/Gemm/Conv inputs, attention matmuls included, {len(calib)} calibration "
                 f"samples; FP16 elsewhere, FP32 islands around LayerNorm/Softmax/reductions; patch embedding and "
                 f"head unquantized (FP16)"]
        if not dst.exists():
            int8_onnx(ctx.onnx_path, dst, calib, ctx.batch, keep=keep)
    else:
        raise UserError(f"TensorRT builds fp16 or int8 (got {precision})")
    if keep:
        proto = onnx.load(str(ctx.onnx_path), load_external_data=False)
        notes.append(f"{len(kept_nodes(proto, keep, compute_only=False))} more nodes (the kept blocks) in FP32 by the "
                     "accuracy budget" if precision == "fp16" else
                     f"{len(kept_nodes(proto, keep))} more MatMul/Gemm/Conv kept in FP16, not quantized by the "
                     "accuracy budget")
    return dst, notes, time.perf_counter() - t0


def nvidia_check(onnx_path: Path, engine_path: Path | None = None, ccs: list[str] | None = None,
                 profile: dict | None = None) -> dict:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and AOT-build it with TensorRT-RTX, here, on the CPU.

    Returns the parse report (library, version, layer counts by precision, Q/DQ layers, build seconds,
    engine bytes). A rejection by the parser or the builder raises ``UserError`` with NVIDIA's message.
    Without ``tensorrt_rtx`` installed the report says so (``ok: None``) and nothing is claimed.
    """
    why = missing("tensorrt_rtx", LIBRARIES["tensorrt_rtx"])
    if why:
        return {"library": "tensorrt_rtx", "ok": None, "error": f"not checked: {why}"}
    report = engine_from_onnx(library("tensorrt_rtx"), onnx_path, engine_path, ccs=ccs, profile=profile)
    return report.to_dict()

