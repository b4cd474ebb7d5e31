"""The machine and software a figure came from: CPU model and flags, cores, GPU, versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata

# ISA flags the backends' kernels dispatch on: a change in any of them can change numerics (issue: on an AMX
# Xeon, OpenVINO's INT8 + bf16 path corrupted a Swin that passes on AVX2 and AVX-512 machines)
NUMERIC_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                 "amx_bf16", "amx_int8", "amx_fp16")


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
    info["flags"] = [f for f in NUMERIC_FLAGS if f in flags]
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


def available_memory() -> int | None:
    """Bytes this process can still allocate: the system's MemAvailable, capped by the cgroup's limit (a container
    or a CI runner sees the host's memory in /proc/meminfo); None where neither can be read."""
    found = []
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            found.append(int(limit) - int(open("/sys/fs/cgroup/memory.current").read()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


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


_SDK_DISTS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "openvino": ("openvino",),
              "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "tensorrt_rtx": ("tensorrt-rtx",),
              "coremltools": ("coremltools",)}


def sdk_version(sdk: str) -> str | None:
    """The installed version of a backend SDK (by its import name), without importing it."""
    for dist in _SDK_DISTS.get(sdk, (sdk,)):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def gpu_identity() -> str | None:
    """``"<name> (compute capability X.Y)"`` of the first NVIDIA GPU, from ``nvidia-smi``; ``None`` without one."""
    import shutil
    import subprocess
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, cc = out[0].partition(",")
    return f"{name.strip()} (compute capability {cc.strip()})"


def fingerprint(sdk: str, gpu: bool = False, device: str | None = None) -> dict:
    """What changes an artefact's numerics on this machine, for one backend: CPU model and the ISA flags
    kernels dispatch on, OS and architecture, the backend SDK's version, and for GPU backends the GPU and its
    compute capability. Two machines with equal fingerprints are expected to compute the same outputs."""
    cpu = _cpu()
    fp = {"cpu": cpu.get("model"), "isa": list(cpu.get("flags", [])), "os": platform.system(), "arch": platform.machine(),
          "sdk": sdk_version(sdk), "device": device or "CPU"}
    if gpu:
        fp["gpu"] = gpu_identity()
    return fp


def fingerprint_key(fp: dict) -> str:
    """A short stable hash of a fingerprint (cache keys)."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_diff(a: dict, b: dict) -> list[str]:
    """The fields on which two fingerprints differ, as ``field: a -> b``."""
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
