"""Proof where it runs: an artefact's build verdict holds on the machine that reached it; elsewhere its golden
set is run here, judged with its own gates, and repaired through the backend's ladder when it fails.

``prove(bundle, manifest, art, ...) -> Verdict`` runs the golden check (and the ladder); ``proven_here`` and
``recorded`` say whether an artefact can be used here without one (the same fingerprint as its build verdict,
or a verdict recorded for this machine). Verdicts reached here are recorded outside the bundle, which stays
read-only, in a user cache keyed by the bundle's manifest hash and this machine's fingerprint (which holds the
SDK version):
``$VITDEPLOY_CACHE``, else ``$XDG_CACHE_HOME/vitdeploy``, else ``~/.cache/vitdeploy``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.backends import backend, open_with
from runtime.backends.base import batched_logits, runner_batch
from runtime.environment import fingerprint_diff, fingerprint_key
from runtime.golden import Golden, dense_shape, judge_golden, output_widths
from runtime.manifest import MANIFEST, ArtifactEntry, Manifest, resolve_inside
from runtime.preprocess import Preprocessing
from runtime.repair import Attempt, run_ladder
from runtime.tolerances import agreement_gated, dense_tolerance_for, tolerance_for

CACHE_ENV = "VITDEPLOY_CACHE"
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
    config = dict(art.runtime_config if config is None else config)
    gates = gates_of(manifest, art, len(golden.pixels))
    x = golden.inputs(Preprocessing.from_dict(manifest.preprocessing.model_dump()))
    path = resolve_inside(Path(bundle), art.primary)

    def open_runner(cfg: dict):
        return open_with(art.target, path, cfg, device, threads)

    def judge(runner):
        return judge_golden(golden.reference, batched_logits(runner, x, runner_batch(runner)), gates,
                            output_widths(manifest))

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


# --- the record of verdicts reached on this machine, outside the bundle ----------------------------------------

def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitdeploy"


def bundle_key(bundle: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which holds every file's sha256."""
    return hashlib.sha256((Path(bundle) / MANIFEST).read_bytes()).hexdigest()[:20]


def _record_path(bundle: Path, here: dict) -> Path:
    return cache_root() / "verify" / bundle_key(bundle) / f"{fingerprint_key(here)}.json"


def _art_key(art: ArtifactEntry) -> str:
    return f"{art.target}/{art.precision}/{art.primary}"


def recorded(bundle: Path, art: ArtifactEntry, here: dict) -> Verdict | None:
    """The verdict recorded for ``art`` on a machine with this fingerprint, if any (an unreadable record: none)."""
    try:
        data = json.loads(_record_path(bundle, here).read_text())[_art_key(art)]
        v = Verdict(**data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if v.fingerprint != here or not isinstance(v.config, dict):
        return None
    v.source = "recorded"
    return v


def record(bundle: Path, art: ArtifactEntry, verdict: Verdict) -> Path | None:
    """Add ``verdict`` to this machine's record for the bundle (atomically); ``None`` when it cannot be written."""
    path = _record_path(bundle, verdict.fingerprint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[_art_key(art)] = verdict.to_dict()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        print(f"warning: cannot record the verification in {path.parent} ({exc.strerror or exc}); it will run again",
              file=sys.stderr)
        return None
    return path


def attempt_lines(verdict: Verdict) -> list[str]:
    return [Attempt(**{k: a[k] for k in Attempt.__dataclass_fields__}).line() for a in verdict.attempts]
