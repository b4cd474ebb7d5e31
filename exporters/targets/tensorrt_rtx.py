"""TensorRT for RTX target: engines built here, on any machine, for Ampere and later RTX GPUs.

The same explicit-precision ONNX as the ``tensorrt`` target (FP16 with FP32 islands, or INT8 + FP16
Q/DQ) is parsed and AOT-built by TensorRT-RTX's strongly typed builder, which needs no GPU. The
engine goes into the bundle with its sha256 and the compute capabilities it targets (the library's
portable default, or ``--compute-capability``). On a machine with an NVIDIA GPU the engine runs
(JIT-specialised on first load, its runtime cache kept next to it) and is verified and timed like
any target. Without one the row is ``built`` for the engine, its accuracy is the labelled ONNX
Runtime proxy of the same ONNX, and its latency is null.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from exporters.targets import Artifact, BuildContext, Target
from exporters.targets._tensorrt_onnx import nvidia_check, prepare_onnx
from exporters.targets.tensorrt import dynamic_profile
from runtime.backends import backend, runner_from_artifact
from runtime.backends.onnxruntime import OnnxRuntimeRunner
from runtime.backends.tensorrt_rtx import INSTALL

PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class TensorRTRTXOptions:
    compute_capability: str | None = field(default=None, metadata={
        "help": "TensorRT-RTX: comma list of GPU compute capabilities to build for, e.g. 8.6,12.0 "
                "(default: the library's portable set, Ampere and later)"})


def build(ctx: BuildContext, precision: str, options: TensorRTRTXOptions) -> Artifact:
    onnx_path, notes, onnx_s = prepare_onnx(ctx, precision)
    ccs = [c.strip() for c in options.compute_capability.split(",") if c.strip()] \
        if options.compute_capability else None
    engine = ctx.workdir / f"tensorrt_rtx-{precision}.engine"
    profile = dynamic_profile(ctx)
    check = nvidia_check(onnx_path, engine, ccs=ccs, profile=profile)
    cache = f"tensorrt_rtx-{precision}.runtime-cache"
    config = {"onnx": onnx_path.name, "runtime_cache": cache, "compute_capabilities": check["compute_capabilities"],
              "library": check["library"], "version": check["version"], "profile": profile}
    notes.append(f"engine AOT-built here for compute capabilities: {', '.join(check['compute_capabilities'])}; "
                 f"runs with {check['library']} {check['version']} only (JIT on first load; runtime cache {cache})")
    why = backend("tensorrt_rtx").available()
    proxy = None
    if why:
        notes.append(f"NOT RUN here: {why}; accuracy is the ONNX Runtime proxy of the same ONNX, latency needs the GPU")
        proxy = f"the {precision} ONNX the engine was built from, run by ONNX Runtime on the CPU"
    return Artifact("tensorrt_rtx", precision, [onnx_path, engine], engine, status="built", runtime_config=config,
                    build_s={"onnx": onnx_s, "engine": check["build_s"]}, notes=notes, proxy=proxy,
                    checks={"trt_parse": check})


def open_for_verification(ctx: BuildContext, art: Artifact):
    """The engine on a GPU; else the labelled proxy: the ONNX it was built from, in ONNX Runtime."""
    if art.proxy is None:
        return runner_from_artifact(ctx.workdir, art.entry(ctx.workdir), threads=ctx.threads)
    return OnnxRuntimeRunner(ctx.workdir / art.runtime_config["onnx"], threads=ctx.threads)


TARGET = Target(name="tensorrt_rtx", precisions=PRECISIONS, build=build, backend="tensorrt_rtx",
                sdk="tensorrt_rtx", install=INSTALL, order=35, options=TensorRTRTXOptions,
                open=open_for_verification,
                refusals=(("fp32", "tensorrt_rtx builds fp16 or int8 (got fp32); add --fp16 or --int8"),),
                keeps=PRECISIONS, first_last=("int8",), block_source="onnx",
                block_label="the TensorRT ONNX in ONNX Runtime (the engine needs a GPU)")
