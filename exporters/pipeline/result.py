"""One result row for every outcome: built, deferred, skipped and failed artefacts, and the reference."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from runtime.accuracy import Accuracy
from runtime.tolerances import Tolerance


@dataclass
class Result:
    target: str
    precision: str
    status: str  # built | deferred | skipped | failed
    device: str | None = None
    artifact: str | None = None  # primary file, relative to the bundle
    size_mb: float | None = None
    build_s: dict[str, float] = field(default_factory=dict)
    latency_ms: dict | None = None  # p50, p90, p99, mean
    runs: int | None = None
    throughput_ips: float | None = None  # batch / p50: one batch at a time
    throughput_mode: dict | None = None  # --throughput: images_per_s, streams, batch, seconds (runtime/latency.py)
    speedup_vs_reference: float | None = None  # only from figures of the same run
    gflops: float | None = None
    accuracy: Accuracy | None = None
    accuracy_kind: str | None = None  # "direct" | "proxy"
    tolerance: Tolerance | None = None
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)  # each missed tolerance, with the figure and the limit
    runtime: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # evidence from other tools, e.g. "trt_parse" (NVIDIA's parser)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def not_built(cls, target: str, precision: str, status: str, why: str) -> "Result":
        """A skipped (SDK missing) or failed row, with its one-line reason."""
        return cls(target=target, precision=precision, status=status, passed=False if status == "failed" else None,
                   notes=[why])

    def to_dict(self) -> dict:
        """The report.json form (``accuracy`` and ``tolerance`` as plain dicts)."""
        return asdict(self)
