"""The repair ladder: when an artefact fails its gate as configured, try its backend's known-safe runtime
configurations (``Backend.alternatives``: OpenVINO's precision hints and plugin switches, ONNX Runtime's graph
optimisation levels) and keep the fastest that passes.

Gating is the costly part (the whole evaluation set per candidate), and a candidate can be two orders of magnitude
slower than the others (OpenVINO's f16 hint on a Xeon with AVX512-FP16 but no AMX-FP16: 248 ms against 1.6 to
2.1 ms per digits_swin inference, docs/BENCHMARKS.md section 1). So every candidate is first timed briefly,
interleaved; they are gated fastest first, and once one passes, only those whose brief p50 is within ``CLOSE`` of
it are gated too (the brief timing is noisy); the passing ones are then timed properly, interleaved, and the
fastest is kept. A candidate never gated is in the attempts, with why.

One loop serves the export (judged on the evaluation set) and the deployment machine (judged on the golden
set); the caller gives ``judge(runner) -> (passed, values, failures)``. Every attempt is returned, a
candidate that fails to open or compile included, for the report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from runtime.backends import Runner
from runtime.errors import UserError
from runtime.latency import measure_interleaved

LADDER_RUNS = 10
PROBE_RUNS = 5  # the brief timing that orders the candidates
CLOSE = 1.5  # candidates within this factor of the first passing one's brief p50 are gated too (it is noisy)


@dataclass
class Attempt:
    name: str
    config: dict
    passed: bool = False
    values: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    p50_ms: float | None = None
    error: str | None = None  # the candidate did not open (a compile error, a missing device)
    kept: bool = False
    probe_ms: float | None = None  # the brief timing the candidates were ordered by
    skipped: str | None = None  # not gated: a faster candidate passed (why, with both brief timings)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.error:
            return f"{self.name}: could not open ({self.error})"
        if self.skipped:
            return f"{self.name}: not gated ({self.skipped})"
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        speed = f", p50 {self.p50_ms:.2f} ms" if self.p50_ms is not None else ""
        return f"{self.name}: {verdict}{speed}{' (kept)' if self.kept else ''}"


def run_ladder(candidates: list[tuple[str, dict]], open_runner: Callable[[dict], Runner],
               judge: Callable[[Runner], tuple[bool, dict, list[str]]], feeds_for: Callable[[Runner], dict],
               runs: int = LADDER_RUNS) -> tuple[list[Attempt], Attempt | None]:
    """Open every candidate ``(name, config)``, time them briefly, gate them fastest first until one passes (and
    those close to it), time the passing ones interleaved and return all attempts and the fastest passing one
    (``None`` when none passes). ``runs=0``: no timing, every candidate gated in the order given. Runners are
    closed before returning."""
    attempts = [Attempt(name=name, config=dict(config)) for name, config in candidates]
    opened: dict[int, Runner] = {}
    passing: dict[int, Runner] = {}
    try:
        for i, att in enumerate(attempts):
            try:
                opened[i] = open_runner(att.config)
            except UserError as exc:
                att.error = str(exc)[:200]
        order = list(opened)
        if runs > 0 and len(opened) > 1:
            probe = measure_interleaved(opened, feeds_for, runs=PROBE_RUNS, warmup=1)
            for i, lat in probe.items():
                attempts[i].probe_ms = round(lat.p50, 4)
            order.sort(key=lambda i: attempts[i].probe_ms)
        first = None
        for i in order:
            att = attempts[i]
            if first is not None and att.probe_ms > CLOSE * first.probe_ms:
                att.skipped = (f"{first.name} passed and was faster: brief p50 {att.probe_ms:.2f} ms against "
                               f"{first.probe_ms:.2f} ms")
                opened.pop(i).close()
                continue
            try:
                att.passed, att.values, att.failures = judge(opened[i])
            except UserError as exc:  # reason: a candidate may compile and still fail at inference
                att.error = str(exc)[:200]
            if att.passed:
                passing[i] = opened.pop(i)
                first = first or (att if att.probe_ms is not None else None)
            else:
                opened.pop(i).close()
        if passing and runs > 0:
            lats = measure_interleaved(passing, feeds_for, runs=runs, warmup=2)
            for i, lat in lats.items():
                attempts[i].p50_ms = round(lat.p50, 4)
    finally:
        for runner in [*opened.values(), *passing.values()]:
            runner.close()
    ok = [a for a in attempts if a.passed]
    best = min(ok, key=lambda a: a.p50_ms if a.p50_ms is not None else float("inf")) if ok else None
    if best is not None:
        best.kept = True
    return attempts, best


def closest(attempts: list[Attempt]) -> Attempt | None:
    """The attempt nearest to passing (highest measured ``cosine_min``), for a model-side repair to start from."""
    measured = [a for a in attempts if not a.error and "cosine_min" in a.values]
    return max(measured, key=lambda a: a.values["cosine_min"]) if measured else None
