"""FLOPs per image (counted by torch's FlopCounterMode on the model) and a measured GEMM peak.

The "peak" is what this machine attains on a large float32 GEMM through numpy's BLAS with the
same thread count: a measured ceiling, not a datasheet number. Attained GFLOP/s of a result is
``flops_per_image * batch / p50``.
"""
from __future__ import annotations

import functools
import time

import numpy as np


def model_flops(model, input_shape) -> int:
    """FLOPs of one forward pass for one image (multiply-add counted as 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros((1, *input_shape[1:]))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


@functools.lru_cache(maxsize=None)
def gemm_peak_gflops(threads: int | None = None, n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate over a few runs, in GFLOP/s, with numpy's BLAS limited to ``threads``.

    Cached per process: it is a property of the machine, not of the model being exported.
    """
    from threadpoolctl import threadpool_limits  # ships with scikit-learn, a dependency of the export extra

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def attained(flops_per_image: int, batch: int, p50_ms: float) -> float:
    return flops_per_image * batch / (p50_ms / 1000.0) / 1e9
