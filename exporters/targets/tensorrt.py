"""TensorRT target (full TensorRT: Jetson, data-centre GPUs): the explicit-precision ONNX, checked by NVIDIA.

The ONNX (FP16 with FP32 islands, or INT8 + FP16 Q/DQ; see ``_tensorrt_onnx``) is parsed by
TensorRT's ONNX parser and AOT-built by the TensorRT-RTX builder here, on the CPU, and the result
row carries that evidence (``checks.trt_parse``): library and version, layer counts by output
precision, Q/DQ layers, build seconds and engine size. A parser or builder rejection is a failed
row with NVIDIA's message. What this proves: NVIDIA's parser accepts every node, the strongly
typed network has the intended precisions, and a TensorRT builder compiles it. What it does not:
the full-TensorRT engine for a Jetson or a data-centre GPU is built on the device (``python -m
runtime build``), so its latency and its own accuracy need the device; until then the row is
``deferred`` with a PROXY accuracy (the same ONNX run by ONNX Runtime on the CPU).

With full TensorRT and a GPU present the engine is built, timed and verified like any target.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from exporters.targets import Artifact, BuildContext, Target
from exporters.targets._tensorrt_onnx import nvidia_check, prepare_onnx
from runtime.backends import backend
from runtime.backends._trt import EngineRunner, engine_from_onnx, library
from runtime.backends.onnxruntime import INSTALL as ORT_INSTALL
from runtime.backends.onnxruntime import OnnxRuntimeRunner

PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class TensorRTOptions:
    io_fp16: bool = field(default=False, metadata={"help": "TensorRT --fp16: make the input/output FP16 too"})


def engine_available() -> str | None:
    """None when a full-TensorRT engine can be built here (TensorRT and a GPU), else why not."""
    return backend("tensorrt").available()


def dynamic_profile(ctx: BuildContext) -> dict | None:
    if not ctx.dynamic_batch:
        return None
    shape = [ctx.batch, *ctx.spec.input_shape]
    return {"input": "input", "min": [1, *shape[1:]], "opt": shape, "max": [max(32, ctx.batch), *shape[1:]]}


def build(ctx: BuildContext, precision: str, options: TensorRTOptions) -> Artifact:
    dst, notes, onnx_s = prepare_onnx(ctx, precision, options.io_fp16)
    times = {"onnx": onnx_s}
    profile = dynamic_profile(ctx)
    check = nvidia_check(dst, profile=profile)
    if check.get("build_s") is not None:
        times["trt_rtx_check"] = check["build_s"]
    cmd = f"python -m runtime build <OUT>/{ctx.spec.slug} --precision {precision}"
    config = {"onnx": dst.name, "profile": profile, "build_command": cmd}
    why_not = engine_available()
    if why_not is None:
        engine = ctx.workdir / f"tensorrt-{precision}.engine"
        t0 = time.perf_counter()
        engine_from_onnx(library("tensorrt"), dst, engine, profile=profile, timing_cache=ctx.workdir / "timing.cache")
        times["engine"] = time.perf_counter() - t0
        return Artifact("tensorrt", precision, [dst, engine], engine, status="built", runtime_config=config,
                        build_s=times, notes=notes, checks={"trt_parse": check})
    notes += [f"DEFERRED: {why_not}", f"build the engine on the device with: {cmd}",
              "NOT VERIFIED on TensorRT hardware here: the latency and the engine's own accuracy need the device"]
    return Artifact("tensorrt", precision, [dst], dst, status="deferred", runtime_config=config, build_s=times,
                    notes=notes, proxy=f"the TensorRT-ready {precision} ONNX run by ONNX Runtime on the CPU",
                    checks={"trt_parse": check})


def open_for_verification(ctx: BuildContext, art: Artifact):
    """The engine where one was built here; else the labelled proxy: the same ONNX in ONNX Runtime."""
    if art.status == "built":
        return EngineRunner(library("tensorrt"), art.primary)
    return OnnxRuntimeRunner(art.primary, threads=ctx.threads)


# the ONNX preparation and the proxy run need ONNX Runtime; TensorRT itself is optional here
TARGET = Target(name="tensorrt", precisions=PRECISIONS, build=build, backend="tensorrt", sdk="onnxruntime",
                install=ORT_INSTALL, order=30, options=TensorRTOptions, open=open_for_verification,
                refusals=(("fp32", "tensorrt builds fp16 or int8 (got fp32); add --fp16 or --int8"),),
                keeps=PRECISIONS, first_last=("int8",), block_source="onnx",
                block_label="the TensorRT ONNX in ONNX Runtime (the engine needs a GPU)")
