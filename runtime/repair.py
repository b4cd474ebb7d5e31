"""The repair ladder: when an artefact fails its gate as configured, try its backend's known-safe runtime
configurations (``Backend.alternatives``: OpenVINO's precision hints and plugin switches, ONNX Runtime's graph
optimisation levels), gate each, time those that pass interleaved, and keep the fastest that passes.

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

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.error:
            return f"{self.name}: could not open ({self.error})"
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        speed = f", p50 {self.p50_ms:.2f} ms" if self.p50_ms is not None else ""
        return f"{self.name}: {verdict}{speed}{' (kept)' if self.kept else ''}"


def run_ladder(candidates: list[tuple[str, dict]], open_runner: Callable[[dict], Runner],
               judge: Callable[[Runner], tuple[bool, dict, list[str]]], feeds_for: Callable[[Runner], dict],
               runs: int = LADDER_RUNS) -> tuple[list[Attempt], Attempt | None]:
    """Gate every candidate ``(name, config)``; time those that pass, interleaved (``runs=0``: no timing); return
    all attempts and the fastest passing one (``None`` when none passes). Runners are closed before returning."""
    attempts, passing = [], {}
    try:
        for name, config in candidates:
            att = Attempt(name=name, config=dict(config))
            attempts.append(att)
            try:
                runner = open_runner(config)
            except UserError as exc:
                att.error = str(exc)[:200]
                continue
            try:
                att.passed, att.values, att.failures = judge(runner)
            except UserError as exc:  # reason: a candidate may compile and still fail at inference
                att.error = str(exc)[:200]
            if att.passed:
                passing[len(attempts) - 1] = runner
            else:
                runner.close()
        if passing and runs > 0:
            lats = measure_interleaved(passing, feeds_for, runs=runs, warmup=2)
            for i, lat in lats.items():
                attempts[i].p50_ms = round(lat.p50, 4)
    finally:
        for runner in passing.values():
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
