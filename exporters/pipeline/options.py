"""One gate for the export's options: ``validate(RunOptions) -> ResolvedOptions``.

Every check that needs no model runs here, once, before anything is built, read or downloaded: the target names and
their flags, every number (the CLI's own rules, ``runtime.values``, so the Python API gets the same), precisions,
the accuracy budget's ranges, the keep mode, the signing key. The CLI, the Python API and a run of several sizes all
pass through it (``exporters.pipeline.stages.run``). What needs the model stays beside it: that a size fits the
architecture (``models/sizes.py``), feature indices (``models/features.py``), the label count (``models/zoo.py``) and
the batch's memory (``models/memory.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from calibration import DEFAULT_CALIB_SIZE
from exporters.models.features import check_options
from exporters.targets import check_recipe_flag, resolve_options, target, targets
from exporters.verify import budget
from runtime import signing, values
from runtime.errors import UserError
from runtime.latency import DEFAULT_RUNS, DEFAULT_WARMUP

KEEP = ("all", "selected")  # --keep
PRECISIONS = ("fp32", "fp16", "int8")  # and "auto": every precision a target offers, the fastest that passes served


@dataclass
class RunOptions:
    model: str
    targets: list[str] = field(default_factory=lambda: ["onnxruntime"])
    precision: str | None = None  # None: fp32 for one target, every precision for several
    precisions: list[str] | None = None  # restricts the multi-target plan (benchmarks matrix)
    data: str = "digits"
    calib: str | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    eval_size: int | None = None
    weights: str | None = None
    pretrained: bool = False
    num_classes: int | None = None  # a fine-tuned checkpoint's classes (else read from the checkpoint)
    img_size: object = None  # pixels, (h, w), "224,384" or a list: several sizes make one bundle (pipeline/multisize.py)
    features: object = None  # a backbone's feature maps (exporters/models/features.py): True (default maps) or indices
    labels: str | list[str] | None = None  # a labels file (one per line, or JSON), or the names
    module: object = None  # an nn.Module given through the Python API, with ``spec`` describing it
    spec: object = None
    out: Path = Path("out")
    batch: int = 1
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    threads: int | None = None
    rewrites: bool = True
    dynamic_batch: bool = False
    max_drop: float | None = None  # accuracy budget for INT8/FP16: top-1 points (labelled data) ...
    min_cosine: float | None = None  # ... and/or the worst sample's cosine; see exporters/verify/budget.py
    throughput: bool = False  # also measure images/s with each artefact opened in throughput mode
    throughput_seconds: float = 3.0
    sign_key: Path | None = None  # a PEM EC private key: the bundle is signed (model.sig, runtime/signing.py)
    keep: str = "all"  # "selected": only the artefact the runtime serves (and what proves it) stays in the bundle
    repair: bool = True  # a failed row: the backend's safe runtime configurations, then the budget loop (verify/proof.py)
    options: dict = field(default_factory=dict)  # target flags given by the user: field name -> value
    quiet: bool = False
    shares_weights: bool = False  # set by a run of several sizes for each size: its weights are stored once

    @property
    def backbone(self) -> bool:
        """``--features`` given: the export is the model's feature maps (exporters/models/features.py)."""
        return self.features is not None and self.features is not False  # identity: 0 is an index, not False

    @property
    def feature_indices(self) -> list[int] | None:
        """The maps asked for (checked by ``validate``); None: the architecture's default (``default_indices``)."""
        return values.indices(self.features) if self.backbone and self.features is not True else None



def plan(names: list[str], precision: str | None, precisions: list[str] | None = None) -> list[tuple[str, str]]:
    """(target, precision) pairs to build, in order, from each target's declared precisions."""
    offered = {t: target(t).precisions for t in names}
    if precisions:
        return [(t, p) for t in names for p in offered[t] if p in precisions]
    out = []
    for t in names:
        if precision == "auto":
            out += [(t, p) for p in offered[t] + (("fp32",) if "fp32" not in offered[t] and target(t).takes("fp32")
                                                  else ())]
        elif precision:
            out.append((t, precision))
        elif len(names) > 1:
            out += [(t, p) for p in offered[t]]
        else:  # one target, no precision flag: FP32 where the target builds it, else its first precision
            out.append((t, "fp32" if "fp32" in offered[t] else offered[t][0]))
    return out


@dataclass(frozen=True)
class ResolvedOptions:
    """The options once checked, with what they resolve to."""

    opts: RunOptions
    sizes: list[tuple[int, int]] | None  # the input sizes asked for, parsed; None: the model's own
    plan: list[tuple[str, str]]  # (target, precision) pairs to build, in order
    target_options: dict  # each target's flags, by target name
    threads: int  # the threads every runner gets (default: the cores this process may use)


def _check_precision(opts: RunOptions) -> None:
    takes = "precision takes fp32, fp16, int8 or auto, or a list of the first three"
    if opts.precision is not None and opts.precision not in (*PRECISIONS, "auto"):
        raise UserError(f"{takes} (got {opts.precision!r})")
    if opts.precisions is not None:
        bad = [p for p in opts.precisions if p not in PRECISIONS]
        if bad or not opts.precisions:
            raise UserError(f"{takes} (got {bad or []})")
    if len(opts.targets) == 1 and opts.precision and opts.precision != "auto":
        target(opts.targets[0]).check_precision(opts.precision)


def validate(opts: RunOptions) -> ResolvedOptions:
    """Every check that needs no model, before anything is built or read: one ``UserError`` line for the first
    problem. Returns the options with what they resolve to."""
    if not opts.targets:
        raise UserError(f"no target named; choose from {', '.join(targets())} or all")
    for name in opts.targets:
        target(name)  # an unknown target fails here, before any work
    _check_precision(opts)
    # the CLI's rules for every number (runtime/values.py), for the Python API alike
    for name, kind in (("calib_size", values.SAMPLES), ("eval_size", values.SAMPLES), ("batch", values.BATCH),
                       ("runs", values.RUNS), ("warmup", values.WARMUP), ("threads", values.threads),
                       ("num_classes", values.CLASSES), ("max_drop", values.POINTS),
                       ("min_cosine", values.COSINE), ("throughput_seconds", values.SECONDS)):
        values.check(name, getattr(opts, name), kind)
    sizes = values.check("img_size", opts.img_size, values.img_sizes)
    budget.validate(opts.max_drop, opts.min_cosine, labelled=True)  # ranges now; labels once the data is read
    if opts.backbone and opts.features is not True:
        values.check("features", opts.features, values.indices)
    segmentation = opts.spec is not None and opts.spec.task == "segmentation"
    if segmentation and (opts.img_size is not None or opts.backbone):
        raise UserError("task='segmentation' takes its size from input_shape; img_size and features are for "
                        "classifiers and their backbones")
    if opts.backbone or segmentation:
        check_options(opts, "--features" if opts.backbone else "task='segmentation'")
    if opts.keep not in KEEP:
        raise UserError(f"keep must be one of {', '.join(KEEP)} (got {opts.keep!r})")
    if opts.sign_key is not None:
        signing.signing_key(opts.sign_key)  # a missing package, file or password fails before any work
    target_options = resolve_options(opts.targets, opts.options)  # a flag no named target takes
    planned = plan(opts.targets, opts.precision, opts.precisions)
    check_recipe_flag(opts.options, planned)
    return ResolvedOptions(opts=opts, sizes=sizes, plan=planned, target_options=target_options,
                           threads=opts.threads or values.usable_cores())


__all__ = ["KEEP", "PRECISIONS", "ResolvedOptions", "RunOptions", "plan", "validate"]
