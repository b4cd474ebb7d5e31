"""The runner contract every backend follows (Polygraphy's ``BaseRunner.infer`` -> ``infer_impl``).

``Runner.infer`` checks the feed against the runner's input, converts it to the input dtype,
times the call once (``last_latency``, ms) and hands one array to ``infer_impl``. Backends write
only ``infer_impl``, ``describe`` and, where they hold resources, ``close``. Runners are closed
explicitly or used as context managers; nothing is freed in ``__del__``.
"""
from __future__ import annotations

import time

import numpy as np

from runtime.errors import UserError


class Runner:
    """``infer({input_name: [B, 3, H, W]}) -> {output_name: [B, classes] float32}``."""

    input_name: str = "input"
    input_shape: list[int]  # [B, 3, H, W]; a dimension of -1 is dynamic
    input_dtype = np.float32

    def __init__(self) -> None:
        self.last_latency = 0.0  # ms of the last infer()
        self.closed = False

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise UserError(f"{type(self).__name__} is closed")
        if self.input_name not in feeds:
            raise UserError(f"input '{self.input_name}' missing from the feed (got {', '.join(feeds) or 'nothing'})")
        x = np.ascontiguousarray(feeds[self.input_name], dtype=self.input_dtype)
        want = self.input_shape
        if x.ndim != len(want) or any(w > 0 and w != s for w, s in zip(want, x.shape)):
            raise UserError(f"input '{self.input_name}' has shape {list(x.shape)}; the artefact takes {want} "
                            "(-1: any size)")
        t0 = time.perf_counter()
        out = self.infer_impl(x)
        self.last_latency = (time.perf_counter() - t0) * 1000.0
        return out

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Device, threads, precision hints and versions, for the report."""
        return {}

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
