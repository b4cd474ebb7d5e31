"""Latency: one method for every backend.

Warm-up runs, then N timed runs of the runner's ``infer`` on the same input. The time of each
call is the runner's own ``last_latency``: ``Runner.infer`` (runtime/backends/base.py) measures
it with ``time.perf_counter`` around ``infer_impl`` only, in one place for every backend (CUDA
runners synchronise inside ``infer_impl``). When several
runners are compared, ``measure_interleaved`` times them in alternating rounds, so that drift
in the machine's speed (measured here: the same FP32 graph at 69 ms and at 81 ms minutes apart
on a shared 2-core VM) falls on every runner alike and same-run speedups stay meaningful.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 10


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(ms: list[float] | np.ndarray) -> Latency:
    """Percentiles (linear interpolation, numpy's default) and mean of per-run milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timings")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Latency(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(a.mean()), runs=int(a.size))


def throughput(lat: Latency, batch: int) -> float:
    """Images per second at the median latency."""
    return batch * 1000.0 / lat.p50 if lat.p50 > 0 else 0.0


@dataclass
class Throughput:
    images_per_s: float
    batch: int
    streams: int  # inferences in flight
    mode: str  # the runner's mode: "throughput", or "latency" for one at a time
    images: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure_throughput(runner, feeds: dict, seconds: float = 3.0, warmup_rounds: int = 2) -> Throughput:
    """Images per second of one runner's ``infer_stream`` over about ``seconds``."""
    return measure_throughput_interleaved({0: runner}, lambda r: feeds, seconds, rounds=1,
                                          warmup_rounds=warmup_rounds)[0]


def measure_throughput_interleaved(runners: dict, feeds_for, seconds: float = 3.0, rounds: int = 5,
                                   warmup_rounds: int = 2) -> dict:
    """Images per second of every runner's ``infer_stream``, ``{name: Throughput}``.

    Each runner gets about ``seconds`` in ``rounds`` alternating blocks (as ``measure_interleaved``
    does for latency), in chunks of ``4 x streams`` inferences, so the machine's drift falls on all
    alike. The feed goes through ``runner.infer`` once first, so it is checked like any other.
    """
    if seconds <= 0 or rounds < 1:
        raise ValueError(f"seconds must be positive and rounds at least 1 (got {seconds}, {rounds})")
    xs, counts, spent = {}, dict.fromkeys(runners, 0), dict.fromkeys(runners, 0.0)
    for k, r in runners.items():
        feeds = feeds_for(r)
        r.infer(feeds)
        xs[k] = np.ascontiguousarray(feeds[r.input_name], dtype=r.input_dtype)
        for _ in range(warmup_rounds):
            r.infer_stream(xs[k], 4 * max(1, r.streams))
    for _ in range(rounds):
        for k, r in runners.items():
            chunk, t0 = 4 * max(1, r.streams), time.perf_counter()
            while True:
                r.infer_stream(xs[k], chunk)
                counts[k] += chunk
                if time.perf_counter() - t0 >= seconds / rounds:
                    break
            spent[k] += time.perf_counter() - t0
    out = {}
    for k, r in runners.items():
        images = counts[k] * xs[k].shape[0]
        out[k] = Throughput(images_per_s=images / spent[k], batch=int(xs[k].shape[0]), streams=r.streams,
                            mode=r.mode, images=images, seconds=spent[k])
    return out


def measure(runner, feeds: dict, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP) -> Latency:
    """Time ``runner.infer(feeds)``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be at least 1 and warmup at least 0 (got {runs}, {warmup})")
    for _ in range(warmup):
        runner.infer(feeds)
    ms = []
    for _ in range(runs):
        runner.infer(feeds)
        ms.append(runner.last_latency)
    return summarize(ms)


def measure_interleaved(runners: dict, feeds_for, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP,
                        rounds: int = 5) -> dict:
    """Time several runners in ``rounds`` alternating blocks; ``{name: Latency}`` with ``runs`` samples each."""
    times = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(warmup):
            r.infer(feeds_for(r))
    per_round = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    for n in per_round:
        for name, r in runners.items():
            feeds = feeds_for(r)
            for _ in range(n):
                r.infer(feeds)
                times[name].append(r.last_latency)
    return {k: summarize(v) for k, v in times.items()}
