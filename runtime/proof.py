"""Proof where it runs: an artefact's build verdict holds on the machine that reached it; elsewhere its golden
set is run here, judged with its own gates, and repaired through the backend's ladder when it fails.

``prove(bundle, manifest, art, ...) -> Verdict`` runs the golden check (and the ladder); ``proven_here`` and
``recorded`` say whether an artefact can be used here without one (the same fingerprint as its build verdict,
or a verdict recorded for this machine, bound to the manifest, the machine and the run's options and
authenticated: runtime/verdicts.py). ``prove`` checks every file's sha256 before it runs anything.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime import verdicts
from runtime.backends import backend, open_with, weights_of
from runtime.backends.base import batched_logits, runner_batch
from runtime.environment import fingerprint_diff
from runtime.golden import Golden, dense_shape, output_widths
from runtime.manifest import ArtifactEntry, Manifest, resolve_inside
from runtime.preprocess import Preprocessing
from runtime.repair import Attempt, run_ladder
from runtime.tolerances import agreement_gated, dense_tolerance_for, tolerance_for

VERIFY_MODES = ("auto", "always", "never")


@dataclass
class Verdict:
    """Whether an artefact is usable on this machine, with which runtime configuration, and how that was decided."""

    target: str
    precision: str
    passed: bool
    config: dict
    source: str  # "build" (same machine), "recorded" (an earlier check here), "golden check", "not checked"
    values: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    repaired: bool = False
    fingerprint: dict = field(default_factory=dict)
    differs: list[str] = field(default_factory=list)  # how this machine differs from the one of the build verdict

    def to_dict(self) -> dict:
        return asdict(self)


def tolerance_gates(target: str, precision: str, gate_agreement: bool, samples: int,
                    dense: tuple[int, int] | None = None) -> dict:
    """The tolerance table's gates for the golden set: its limits, whether agreement is gated, and
    ``golden_max_flips``, the top-1 flips the tolerance allows over ``samples`` (at export: the whole evaluation
    set, of which the golden set is a subset). A segmentation model (``dense``: its classes and pixels per map) adds
    its pixel-agreement and mean-IoU limits and ``golden_max_pixels_differing``, the pixels whose class the
    tolerance lets differ over ``samples`` maps (mean IoU is not additive, so the golden set is not held to it)."""
    tol = tolerance_for(target, precision)
    gates = {"cosine_min": tol.cosine_min, "top1_agreement": tol.top1_agreement, "top1_drop": tol.top1_drop,
             "gate_agreement": gate_agreement,
             "golden_max_flips": math.floor((1 - tol.top1_agreement) * samples + 1e-9)}
    if dense is not None:
        d = dense_tolerance_for(precision)
        gates.update(pixel_agreement=d.pixel_agreement, mean_iou=d.mean_iou, dense_classes=int(dense[0]),
                     golden_max_pixels_differing=math.floor((1 - d.pixel_agreement) * samples * dense[1] + 1e-9))
    return gates


def gates_of(manifest: Manifest, art: ArtifactEntry, samples: int) -> dict:
    """The artefact's gates: those recorded with its build verdict, else the tolerance table's over the ``samples``
    of the golden set (an engine built on the device)."""
    if art.verification is not None:
        return dict(art.verification.gates)
    signal = agreement_gated(manifest.weights == "random", art.precision)
    return tolerance_gates(art.target, art.precision, signal and manifest.task == "classification", samples,
                           dense_shape(manifest) if signal else None)


def prove(bundle: Path, manifest: Manifest, art: ArtifactEntry, golden: Golden, device: str | None = None,
          threads: int | None = None, repair: bool = True, config: dict | None = None) -> Verdict:
    """Run ``golden`` through ``art`` under ``config`` (default: the manifest's) and judge it with the artefact's
    gates; when it fails and ``repair``, walk the backend's ladder and keep the fastest configuration that passes."""
    b = backend(art.target)
    manifest.verify(bundle, art.files)  # hash before judging: a verdict is only ever reached on the listed bytes
    config = dict(art.runtime_config if config is None else config)
    gates = gates_of(manifest, art, len(golden.pixels))
    x = golden.inputs(Preprocessing.from_dict(manifest.preprocessing.model_dump()))
    path, weights = resolve_inside(Path(bundle), art.primary), weights_of(bundle, art)

    def open_runner(cfg: dict):
        return open_with(art.target, path, cfg, device, threads, weights=weights)

    def judge(runner):
        return golden.judge(batched_logits(runner, x, runner_batch(runner)), gates, output_widths(manifest))

    def feeds(runner):
        return {runner.input_name: x[:runner_batch(runner)]}

    attempts, best = run_ladder([("as built", config)], open_runner, judge, feeds, runs=0)  # nothing to choose
    if best is None and repair:
        more, best = run_ladder(b.repairs(config), open_runner, judge, feeds)
        attempts += more
    here = b.fingerprint(config)
    chosen = best or attempts[0]
    return Verdict(target=art.target, precision=art.precision, passed=best is not None,
                   config=chosen.config, source="golden check", values=chosen.values, failures=chosen.failures,
                   attempts=[a.to_dict() for a in attempts], repaired=best is not None and best is not attempts[0],
                   fingerprint=here, differs=differs(art, here))


def differs(art: ArtifactEntry, here: dict) -> list[str]:
    """How this machine's fingerprint differs from the one the artefact's verdict was reached on."""
    if art.verification is None:
        return ["never proven (no build verdict)"]
    return fingerprint_diff(art.verification.proven_on, here)


def proven_here(art: ArtifactEntry, here: dict) -> bool:
    """The build verdict holds here: reached directly (not on a proxy) on a machine with this fingerprint."""
    v = art.verification
    return v is not None and v.passed and v.kind == "direct" and v.proven_on == here


# --- verdicts recorded on this machine (runtime/verdicts.py: bound, authenticated, strictly validated) ----------

def run_options(repair: bool, device: str | None) -> dict:
    """The options a verdict is reached under and holds for: one reached with repair off stands only for runs with
    repair off; one reached on one device only for that device."""
    return {"repair": bool(repair), "device": device}


def recorded(bundle: Path, art: ArtifactEntry, here: dict, options: dict) -> Verdict | None:
    """The verdict recorded for ``art`` on a machine with this fingerprint under ``options``, when one stands."""
    data = verdicts.lookup(bundle, art, here, options)
    if data is None:
        return None
    v = Verdict(**data)
    v.source = "recorded"
    return v


def record(bundle: Path, art: ArtifactEntry, verdict: Verdict, options: dict) -> Path | None:
    """Add ``verdict`` to this machine's record for the bundle; ``None`` when it cannot be written."""
    return verdicts.store(bundle, art, verdict.to_dict(), options)


def attempt_lines(verdict: Verdict) -> list[str]:
    return [Attempt(**{k: a[k] for k in Attempt.__dataclass_fields__}).line() for a in verdict.attempts]
