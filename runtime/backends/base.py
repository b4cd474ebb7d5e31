"""The runner contract every backend follows (Polygraphy's ``BaseRunner.infer`` -> ``infer_impl``).

``Runner.infer`` checks the feed against the runner's input, converts it to the input dtype,
times the call once (``last_latency``, ms) and hands one array to ``infer_impl``. Backends write
only ``infer_impl``, ``describe`` and, where they hold resources, ``close``. Runners are closed
explicitly or used as context managers; nothing is freed in ``__del__``.

Two modes, chosen when a runner is opened: ``latency`` (one inference at a time, all threads on it)
and ``throughput`` (several inferences in flight: OpenVINO's THROUGHPUT hint with its streams,
ONNX Runtime with one single-threaded run per thread). ``infer_stream`` is where the modes differ.
"""
from __future__ import annotations

import os
import time

import numpy as np

from runtime.errors import UserError

MODES = ("latency", "throughput")
# Test-only fault injection: ``VITDEPLOY_TEST_FAULT="openvino:inference_precision=bf16;onnxruntime:*"`` negates the
# outputs of every runner of that backend whose runtime configuration has those values (``*``: any), so the
# golden check and the repair ladder can be proven on any machine, not only where a backend really corrupts.
FAULT_ENV = "VITDEPLOY_TEST_FAULT"


def injected_fault(name: str, config: dict) -> str | None:
    """The ``FAULT_ENV`` clause that matches backend ``name`` under ``config``, if any."""
    for clause in filter(None, (c.strip() for c in os.environ.get(FAULT_ENV, "").split(";"))):
        who, _, cond = clause.partition(":")
        if who.strip() != name:
            continue
        pairs = [kv.split("=", 1) for kv in cond.split(",") if "=" in kv]
        if cond.strip() == "*" or (pairs and all(str(config.get(k.strip())) == v.strip() for k, v in pairs)):
            return clause
    return None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    return mode


class Runner:
    """``infer({input_name: [B, 3, H, W]}) -> {output_name: [B, classes] float32}``."""

    input_name: str = "input"
    input_shape: list[int]  # [B, 3, H, W]; a dimension of -1 is dynamic
    input_dtype = np.float32
    mode: str = "latency"
    streams: int = 1  # inferences in flight in ``infer_stream``

    def __init__(self) -> None:
        self.last_latency = 0.0  # ms of the last infer()
        self.closed = False
        self.fault: str | None = None  # set by runtime.backends.open_with under FAULT_ENV (tests only)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise UserError(f"{type(self).__name__} is closed")
        if self.input_name not in feeds:
            raise UserError(f"input '{self.input_name}' missing from the feed (got {', '.join(feeds) or 'nothing'})")
        if len(feeds) > 1:
            extra = sorted(set(feeds) - {self.input_name})
            raise UserError(f"unknown feed name(s) {', '.join(extra)}: the artefact takes only '{self.input_name}'")
        x = np.ascontiguousarray(feeds[self.input_name], dtype=self.input_dtype)
        if not np.isfinite(x).all():
            raise UserError(f"input '{self.input_name}' holds NaN or infinite values: refused (they would come back "
                            "as NaN logits)")
        want = self.input_shape
        if x.ndim != len(want) or any(w > 0 and w != s for w, s in zip(want, x.shape)):
            raise UserError(f"input '{self.input_name}' has shape {list(x.shape)}; the artefact takes {want} "
                            "(-1: any size)")
        t0 = time.perf_counter()
        out = self.infer_impl(x)
        self.last_latency = (time.perf_counter() - t0) * 1000.0
        if self.fault:
            out = {k: -v for k, v in out.items()}
        return out

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_stream(self, x: np.ndarray, count: int) -> None:
        """Run ``count`` inferences of ``x`` (``[B, 3, H, W]``, already checked), overlapped where the
        backend has streams; the outputs are dropped. Default: one after another."""
        for _ in range(count):
            self.infer_impl(x)

    def describe(self) -> dict:
        """Device, threads, precision hints and versions, for the report."""
        return {}

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batched_logits(runner: Runner, inputs: np.ndarray, batch: int) -> np.ndarray:
    """``[N, 3, H, W]`` -> ``[N, classes]`` through ``runner`` in chunks of ``batch``; with a static batch the
    last chunk is padded (repeating its last image) and the padding's outputs dropped."""
    outs = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i:i + batch]
        n = len(chunk)
        if n < batch and runner.input_shape[0] != -1:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(flat_outputs(runner.infer({runner.input_name: chunk}))[:n])
    return np.concatenate(outs)


def flat_outputs(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """A runner's outputs as one ``[B, D]`` array: logits as they are; a backbone's feature maps flattened per sample
    and concatenated in the graph's output order (how the gates and the golden set compare them)."""
    arrays = list(outputs.values())
    if len(arrays) == 1 and arrays[0].ndim == 2:
        return arrays[0]
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


def runner_batch(runner: Runner) -> int:
    """The runner's static batch size (1 for a dynamic batch)."""
    b = runner.input_shape[0]
    return b if b and b > 0 else 1
