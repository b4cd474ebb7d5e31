"""Targets: one module per deployment target, each declaring a ``TARGET``; the registry is derived.

A target module (``exporters/targets/<name>.py``) defines ``TARGET = Target(...)``:
- ``name`` and ``precisions`` (what ``--target all`` and the matrix build, the default first),
  ``accepts`` (every precision ``build`` takes; a superset, e.g. Core ML's comparison FP32);
- ``options``: a dataclass of the flags it takes (each field becomes ``--field-name`` on the CLI;
  its ``metadata["help"]`` is the help text, ``metadata["choices"]`` the allowed values);
- ``sdk`` / ``install``: what must import to build, and the one-line hint when it does not;
- ``build(ctx, precision, options) -> Artifact``: files written into ``ctx.workdir``;
- ``backend``: the ``runtime.backends`` name whose runner opens its artefacts, and optionally
  ``open(ctx, artifact) -> Runner`` for a proxy where the artefact can't execute here;
- ``keeps``: the precisions whose ``build`` honours ``ctx.keep_tensors`` / ``ctx.keep_modules`` (what the
  accuracy budget, ``exporters/verify/budget.py``, asks to keep in higher precision), and ``first_last`` those
  whose build already keeps the patch embedding and the head (the first/last-layer rule: no candidates).
The exporter CLI's choices, its per-target flags, ``--target all`` and the matrix all come from
``targets()``. Adding a target is one module here plus its runtime backend.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runtime.backends import Runner, missing, runner_from_artifact
from runtime.errors import UserError
from runtime.manifest import ArtifactEntry
from runtime.registry import declared

# The recipe names every CPU INT8 target offers, each meaning the same choice there (the target's module says how)
RECIPE_NAMES = ("mixed", "symmetric", "projections")
DEFAULT_RECIPE = "mixed"


@dataclass
class BuildContext:
    """Everything a target may use. Targets never read images: calibration comes from ``calib()``."""

    spec: object  # exporters.models.zoo.ModelSpec
    model: object  # the (rewritten) torch model, for targets that convert from PyTorch
    onnx_path: Path  # the FP32 ONNX export
    workdir: Path  # the staging bundle folder
    batch: int
    threads: int | None
    calib: Callable[[], object]  # -> calibration.CalibrationSet, loaded on first use
    dynamic_batch: bool = False
    # ONNX tensor names whose producing MatMul/Gemm/Conv must stay in higher precision (the accuracy budget's
    # choice, exporters/verify/budget.py); INT8 builds exclude those nodes on top of the first/last-layer rule
    keep_tensors: frozenset = frozenset()
    # the same choice as PyTorch module names (display names, as in exporters/verify/probes.py), for targets that
    # convert from PyTorch (Core ML)
    keep_modules: tuple[str, ...] = ()
    # runtime-configuration overrides every build carries (the repair ladder's choice, exporters/verify/proof.py)
    runtime_config: dict = field(default_factory=dict)
    # a calibration result the builds of one `--recipe auto` share (exporters/verify/recipes.py), where the quantizer
    # can save and reload one: the first build calibrates, the others reuse its ranges
    calibration_cache: Path | None = None
    # the build is one size of a bundle of several, which stores each weight once (exporters/pipeline/shared_weights.py):
    # a quantizer derives weights from the weights alone, so every size's are the same bytes
    shares_weights: bool = False


@dataclass
class Artifact:
    """What a target built: its files (inside the staging bundle) and how the runtime opens them."""

    target: str
    precision: str
    files: list[Path]
    primary: Path | None
    status: str = "built"  # built | deferred
    runtime_config: dict = field(default_factory=dict)  # how to open it (precision hints, providers)
    build_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    proxy: str | None = None  # what a proxy accuracy stands for, when the real one can't run here
    checks: dict = field(default_factory=dict)  # evidence from other tools (e.g. NVIDIA's parser: "trt_parse")
    verification: object = None  # runtime.manifest.Verification, once verified (exporters/verify/proof.py)

    @property
    def timeable(self) -> bool:
        """Only real artefacts are timed: a proxy's speed says nothing about the target."""
        return self.status == "built" and not self.proxy

    @property
    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.files if f.is_file()) / 1e6

    def entry(self, bundle: Path) -> ArtifactEntry:
        """The manifest's record of this artefact, paths relative to ``bundle``."""
        rel = lambda p: Path(p).relative_to(bundle).as_posix()  # noqa: E731
        return ArtifactEntry(target=self.target, precision=self.precision, status=self.status,
                             primary=rel(self.primary) if self.primary else None,
                             files=[rel(f) for f in self.files], runtime_config=self.runtime_config,
                             verification=self.verification)


@dataclass(frozen=True)
class NoOptions:
    """A target that takes no flags of its own."""


@dataclass(frozen=True)
class Target:
    name: str
    precisions: tuple[str, ...]
    build: Callable[..., Artifact]  # (ctx, precision, options) -> Artifact
    backend: str
    sdk: str
    install: str
    order: int  # position in CLI choices and --target all
    accepts: tuple[str, ...] = ()  # defaults to precisions
    options: type = NoOptions
    open: Callable[[BuildContext, Artifact], Runner] | None = None
    refusals: tuple[tuple[str, str], ...] = ()  # (precision, why it is not offered and what to use instead)
    keeps: tuple[str, ...] = ()  # precisions whose build keeps ctx.keep_tensors/keep_modules in higher precision
    first_last: tuple[str, ...] = ()  # precisions whose build already keeps the first and last compute layers
    # precision -> candidates(options) -> [(recipe, runtime_config)]: what `--recipe auto` builds, gates and times
    # (exporters/verify/recipes.py); the options dataclass then has a ``recipe`` field
    recipes: dict = dataclasses.field(default_factory=dict)
    # Where the accuracy budget and the drift table read this target's block outputs (exporters/verify/probes.py):
    # "artefact" (the artefact itself, in its runtime), "onnx" (the ONNX its engine is built from, in ONNX Runtime,
    # runtime_config["onnx"]) or "proxy" (``block_proxy(model, art) -> nn.Module``, hooked like the reference);
    # ``block_label`` says it in words for drift.json and checks.budget.
    block_source: str = "artefact"
    block_proxy: Callable | None = None
    block_label: str = "the artefact itself"

    def available(self) -> str | None:
        return missing(self.sdk, self.install)

    def takes(self, precision: str) -> bool:
        return precision in (self.accepts or self.precisions)

    def check_precision(self, precision: str) -> None:
        """A one-line ``UserError`` when ``build`` does not take ``precision``."""
        if not self.takes(precision):
            why = dict(self.refusals).get(precision)
            raise UserError(why or f"{self.name} builds {', '.join(self.accepts or self.precisions)} "
                                   f"(got {precision})")

    def runner(self, ctx: BuildContext, art: Artifact, threads: int | None, mode: str = "latency") -> Runner:
        """The runner that verifies ``art``: the target's own proxy (one inference at a time), or the runtime's backend."""
        if self.open is not None:
            return self.open(ctx, art)
        return runner_from_artifact(ctx.workdir, art.entry(ctx.workdir), threads=threads, mode=mode)


@functools.lru_cache(maxsize=None)
def targets() -> dict[str, Target]:
    """Every target module's ``TARGET``, by name, in ``order`` (``_``-modules are helpers shared by targets)."""
    return {t.name: t for t in declared(__name__, __path__, "TARGET", key=lambda t: t.order)}


def target(name: str) -> Target:
    if name not in targets():
        raise UserError(f"unknown target '{name}'; choose from {', '.join(targets())} or all")
    return targets()[name]


def check_recipe_flag(given: dict, planned: list[tuple[str, str]]) -> None:
    """``--recipe`` is refused (one line) when nothing planned has recipes: it would be silently ignored."""
    if "recipe" in given and not any(p in target(n).recipes for n, p in planned):
        takes = " and ".join(f"{t.name} {p}" for t in targets().values() for p in t.recipes)
        raise UserError(f"--recipe applies to {takes} builds (add --int8 or --precision auto); this run builds "
                        + ", ".join(f"{n} {p}" for n, p in planned))


def option_fields() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """``flag -> [(target, field)]`` over every target's options dataclass."""
    out: dict[str, list] = {}
    for t in targets().values():
        for f in dataclasses.fields(t.options):
            out.setdefault("--" + f.name.replace("_", "-"), []).append((t.name, f))
    return out


def recipe_field(docs: dict[str, str]):
    """The ``recipe`` field of a target's options dataclass (the shared ``--recipe`` flag)."""
    assert tuple(docs) == RECIPE_NAMES
    return dataclasses.field(default=DEFAULT_RECIPE, metadata={
        "choices": (*RECIPE_NAMES, "auto"),
        "help": f"INT8 recipe: {', '.join(RECIPE_NAMES)} (default {DEFAULT_RECIPE}; see docs/guide/export.md) or auto: "
                "build each, gate each, keep the fastest that passes on this machine and keeps the default's fidelity "
                "(also under --precision auto)"})


def recipe_of(options) -> str:
    """The recipe a target's build applies: the one named, the default for ``auto`` (``recipe_stage`` names one
    per build) or for options without a recipe."""
    recipe = getattr(options, "recipe", DEFAULT_RECIPE)
    return recipe if recipe in RECIPE_NAMES else DEFAULT_RECIPE


def resolve_options(names: list[str], given: dict[str, object]) -> dict[str, object]:
    """Each named target's options instance from the flags ``given`` (``field name -> value``).

    A flag that none of ``names`` takes is a ``UserError``: it would otherwise be silently ignored.
    """
    taken = {f.name for n in names for f in dataclasses.fields(targets()[n].options)}
    for key in given:
        if key not in taken:
            owners = [t for t, _ in option_fields().get("--" + key.replace("_", "-"), [])]
            raise UserError(f"--{key.replace('_', '-')} applies to {' and '.join(owners) or 'no target'}, "
                            f"not to {', '.join(names)}")
    out = {}
    for n in names:
        cls = targets()[n].options
        mine = {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            if choices and f.name in mine and mine[f.name] not in choices:
                raise UserError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)} "
                                f"(got {mine[f.name]})")
        out[n] = cls(**mine)
    return out
