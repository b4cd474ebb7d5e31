"""TensorRT target: explicit-precision ONNX built anywhere, engines built where TensorRT and a GPU are.

- fp16: every tensor FP16 except FP32 islands around LayerNormalization, Softmax and the other
  reductions (FP16 LayerNorm overflows in TensorRT); inputs/outputs stay FP32 unless --io-fp16;
- int8: explicit Q/DQ, calibrated on the shared set: weights per-channel symmetric INT8,
  activations per-tensor symmetric INT8 (TensorRT needs zero points of 0), on the inputs of
  MatMul/Gemm/Conv, attention matmuls included. LayerNorm, Softmax, GELU and the residual adds
  are never quantized; the patch embedding and the head stay in higher precision.
  # reason: NVIDIA Model Optimizer (nvidia-modelopt[onnx]) would be the first choice, but it
  # installs onnxruntime-gpu beside onnxruntime (two packages, one module) and its attention
  # pattern expects plain MatMul-Softmax-MatMul; our Swin blocks carry a bias+mask Add between.
  # ONNX Runtime's QDQ quantizer with these settings gives the same placement on every block.

With TensorRT and a GPU present the engine is built, timed and verified like any target.
Without them the bundle keeps the TensorRT-ready ONNX, the result is ``status: deferred``
with a PROXY accuracy (the same ONNX run by ONNX Runtime on the CPU) and the command that
builds the engine on the device. NOT VERIFIED ON TensorRT HARDWARE in this repository's CI.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from exporters.targets import Artifact, BuildContext, Target
from runtime.backends.onnxruntime import INSTALL as ORT_INSTALL
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.errors import UserError

PRECISIONS = ("fp16", "int8")
FP32_ISLANDS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt",
                "Reciprocal", "Exp", "Log"]


@dataclass(frozen=True)
class TensorRTOptions:
    io_fp16: bool = field(default=False, metadata={"help": "TensorRT --fp16: make the input/output FP16 too"})


def engine_available() -> str | None:
    """None when an engine can be built here, else why not."""
    try:
        from runtime.backends.tensorrt import device_info
        device_info()
    except UserError as exc:
        return str(exc)
    return None


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


def fp16_onnx(src, dst, io_fp16: bool) -> None:
    """FP16 graph with FP32 islands; ``onnxruntime.transformers.float16`` inserts the Casts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = onnx.load(str(src))
    unshare_island_initializers(model)
    half = convert_float_to_float16(model, keep_io_types=not io_fp16, op_block_list=FP32_ISLANDS,
                                    disable_shape_infer=False)
    # reason: the converter appends its Casts at the end of the node list (TensorRT's parser needs
    # topological order) and leaves value_info entries with their old FP32 types
    import onnx_ir as ir
    graph = ir.from_proto(half)
    graph.graph.sort()
    half = ir.to_proto(graph)
    del half.graph.value_info[:]
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))


def int8_onnx(src, dst, calib, batch: int) -> None:
    """Explicit Q/DQ placement TensorRT fuses: symmetric INT8 on MatMul/Gemm/Conv inputs."""
    from exporters.targets.onnxruntime import DEFAULT_INT8, quantize_qdq
    quantize_qdq(src, dst, calib, batch, {
        **DEFAULT_INT8, "activation": "int8", "reduce_range": False,  # TensorRT: zero points of 0, full range
        "extra_options": {"QDQKeepRemovableActivations": False,
                          # reason: ORT otherwise quantizes a bias-free MatMul's output too
                          # (patch merging), feeding Q/DQ into the next LayerNorm and Add
                          "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]}})


def build(ctx: BuildContext, precision: str, options: TensorRTOptions) -> Artifact:
    dst = ctx.workdir / f"tensorrt-{precision}.onnx"
    t0 = time.perf_counter()
    notes = []
    if precision == "fp16":
        fp16_onnx(ctx.onnx_path, dst, options.io_fp16)
        notes.append(f"FP16 ONNX with FP32 islands around {', '.join(FP32_ISLANDS[:2])} and reductions; "
                     f"I/O {'FP16' if options.io_fp16 else 'FP32'}")
    else:
        calib = ctx.calib()
        int8_onnx(ctx.onnx_path, dst, calib, ctx.batch)
        notes.append(f"explicit Q/DQ: weights per-channel symmetric INT8, activations per-tensor symmetric INT8, "
                     f"MatMul/Gemm/Conv inputs (attention matmuls included); {len(calib)} calibration samples; "
                     f"LayerNorm/Softmax/GELU/residual adds unquantized")
    times = {"onnx": time.perf_counter() - t0}
    profile = None
    if ctx.dynamic_batch:
        shape = [ctx.batch, *ctx.spec.input_shape]
        profile = {"input": "input", "min": [1, *shape[1:]], "opt": shape, "max": [max(32, ctx.batch), *shape[1:]]}
    bundle_name = ctx.spec.slug
    cmd = f"python -m runtime build <OUT>/{bundle_name} --precision {precision}"
    config = {"onnx": dst.name, "profile": profile, "build_command": cmd}
    why_not = engine_available()
    if why_not is None:
        from runtime.backends.tensorrt import build_engine
        engine = ctx.workdir / f"tensorrt-{precision}.engine"
        facts = build_engine(dst, engine, ctx.workdir / "timing.cache", profile=profile)
        times["engine"] = facts["build_s"]
        return Artifact("tensorrt", precision, [dst, engine], engine, status="built",
                        runtime_config={**config, **facts}, build_s=times, notes=notes)
    notes += [f"DEFERRED: {why_not}", f"build the engine on the device with: {cmd}",
              "NOT VERIFIED on TensorRT hardware here: the latency and the engine's own accuracy need the device"]
    return Artifact("tensorrt", precision, [dst], dst, status="deferred", runtime_config=config, build_s=times,
                    notes=notes, proxy=f"the TensorRT-ready {precision} ONNX run by ONNX Runtime on the CPU")


def open_for_verification(ctx: BuildContext, art: Artifact):
    """The engine where one was built here; else the labelled proxy: the same ONNX in ONNX Runtime."""
    if art.status == "built":
        from runtime.backends.tensorrt import TensorRTRunner
        return TensorRTRunner(art.primary)
    return OnnxRuntimeRunner(art.primary, threads=ctx.threads)


# the ONNX preparation and the proxy run need ONNX Runtime; TensorRT itself is optional here
TARGET = Target(name="tensorrt", precisions=PRECISIONS, build=build, backend="tensorrt", sdk="onnxruntime",
                install=ORT_INSTALL, order=30, options=TensorRTOptions, open=open_for_verification,
                refusals=(("fp32", "tensorrt builds fp16 or int8 (got fp32); add --fp16 or --int8"),))
