"""The machine and software a figure came from: CPU model and flags, cores, GPU, versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu() -> dict:
    info = {"model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count()}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in info.get("_seen", ""):
            info["model"] = line.split(":", 1)[1].strip()
            info["_seen"] = "model"
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    info.pop("_seen", None)
    wanted = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
    info["flags"] = [f for f in wanted if f in flags]
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def cpu_flags() -> list[str]:
    """The SIMD/matrix features that decide kernel choice (avx512f, avx512_vnni, amx_*...)."""
    return list(_cpu().get("flags", []))


def has_int8_dot() -> bool:
    """True when the CPU has an int8 dot-product instruction (VNNI or AMX-INT8)."""
    return any(f in cpu_flags() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_may_saturate() -> bool:
    """True on x86 without VNNI/AMX-INT8: u8 x s8 products summed pairwise in int16 (vpmaddubsw) can
    saturate, so 8-bit weights should be 7-bit (ONNX Runtime's reduce_range, NNCF's overflow fix)."""
    return platform.machine().lower() in ("x86_64", "amd64") and not has_int8_dot()


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "onnx", "onnxslim", "onnxruntime", "onnxruntime-gpu",
                 "openvino", "nncf", "coremltools", "tensorrt", "tensorrt-rtx", "nvidia-modelopt", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment(threads: int | None = None, gpu: str | None = None) -> dict:
    """The machine a figure comes from. ``gpu`` is given by the caller that knows it (the torch
    reference, a CUDA runner): this module stays free of torch, like the rest of ``runtime``."""
    return {"os": f"{platform.system()} {platform.release()}", "cpu": _cpu(), "gpu": gpu,
            "threads": threads, "versions": _versions()}


def one_line(env: dict) -> str:
    cpu = env["cpu"]
    v = env["versions"]
    parts = [f"{cpu.get('model')} ({cpu.get('usable_cores', cpu.get('logical_cores'))} cores"
             + (f", {' '.join(cpu.get('flags', []))}" if cpu.get("flags") else "") + ")",
             f"GPU: {env['gpu'] or 'none'}", f"threads: {env['threads']}",
             ", ".join(f"{k} {v[k]}" for k in ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf") if k in v)]
    return " · ".join(parts)
