"""One bundle, several input sizes: the whole export once per size, from one model and one calibration source.

``run_sizes(opts, sizes, single)`` builds the model once (so random weights are the same network at every size), re-lays
it for each size (exporters/models/sizes.py: a size that needs padding is refused before any work), and runs the single-
size pipeline into ``BUNDLE/<h>x<w>/``: rewrites with the Swin bias and masks for that size, ONNX, every target
and precision, gates, latency, golden set. The calibration and evaluation sets are the same source, preprocessed
per size. Then every weight is stored once for all sizes, in ``shared/`` (exporters/pipeline/shared_weights.py).
``sizes.json`` names the sizes with each manifest's sha256; the top report compares them (a table per size and the
latency-against-resolution plot); the signature, when asked for, covers everything.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Callable

from exporters.models.features import check_indices
from exporters.models.memory import check_scaled
from exporters.models.sizes import check_size, model_at_size, size_label, spelled
from exporters.models.zoo import create_model
from exporters.pipeline.options import ResolvedOptions
from exporters.pipeline.shared_weights import share_weights
from exporters.report.render import write_matrix
from runtime import signing
from runtime.manifest import MANIFEST, sha256_file
from runtime.sizes import SizeEntry, SizeSet
from runtime.staging import check_replaceable, check_writable, staged_bundle


def _models(opts, sizes):
    """The base model once and, for each size, a callable that re-lays a copy for it: ``[(size, () -> (model,
    spec))]``. Every size is checked first, cheaply (it fits the architecture; its activations, scaled from the
    model's own size, fit in memory), so a bad size is refused before any is re-laid; copies are made one at a time."""
    if opts.module is not None:
        base, spec = opts.module.eval(), opts.spec
    else:
        base, spec = create_model(opts.model, weights=opts.weights, pretrained=opts.pretrained,
                                  num_classes=opts.num_classes, labels=opts.labels)
    check_replaceable(Path(opts.out), spec.slug)
    if opts.backbone:  # a backbone pads each size to its window grid (exporters/models/features.py)
        check_indices(base, opts.feature_indices, opts.model)  # any size fits; the maps?
        for hw in sizes:
            check_scaled(base, spec.input_shape, hw, opts.model)
        return spec.slug, [(hw, lambda: (base, spec)) for hw in sizes]
    for hw in sizes:
        check_size(base, hw, opts.model)
    for hw in sizes:
        check_scaled(base, spec.input_shape, hw, opts.model)
    return spec.slug, [(hw, lambda hw=hw: model_at_size(base, spec, hw, opts.model)) for hw in sizes]


def command_of(opts, sizes) -> str:
    return (f"python -m exporters {opts.model} --img-size {','.join(map(spelled, sizes))} "
            f"--target {','.join(opts.targets)}" + (f" --precision {opts.precision}" if opts.precision else ""))


@dataclasses.dataclass(frozen=True)
class SingleSize:
    """The single-size pipeline's stages a bundle of sizes runs once per size (exporters/pipeline/stages.py passes its
    own, so this module never imports the pipeline that calls it)."""
    prepare: Callable  # (ResolvedOptions) -> job
    run_into: Callable  # (job, folder) -> None


def run_sizes(resolved: ResolvedOptions, single: SingleSize) -> dict:
    """Every requested target and precision at every size, in one bundle; returns the combined report
    (``results``: every row, each with its ``input_size``; ``reports``: each size's whole report). ``resolved``:
    options that ``exporters.pipeline.options.validate`` passed, before the model is built."""
    opts, sizes = resolved.opts, resolved.sizes
    out = Path(opts.out)
    check_writable(out)
    slug, models = _models(opts, sizes)  # a size the model can't take is one line here, before any build
    reports = []
    with staged_bundle(out, slug) as work:
        from rich.console import Console
        console = Console(stderr=True, quiet=opts.quiet, highlight=False)
        for hw, relaid in models:
            console.print(f"[bold]input {size_label(hw)}[/]")
            model, spec = relaid()
            one = dataclasses.replace(opts, img_size=hw if opts.backbone else None, module=model, spec=spec,
                                      sign_key=None, shares_weights=True)
            job = single.prepare(dataclasses.replace(resolved, opts=one, sizes=[hw] if opts.backbone else None))
            folder = work / size_label(hw)
            folder.mkdir()
            single.run_into(job, folder)
            job.report["bundle"] = str(out / slug / size_label(hw))
            reports.append(job.report)
        shared = share_weights(work, [size_label(hw) for hw, _ in models])
        size_set = SizeSet(model=reports[0]["model"], created=reports[0]["created"], sizes=[
            SizeEntry(input_size=hw, bundle=size_label(hw), manifest_sha256=sha256_file(work / size_label(hw) / MANIFEST))
            for hw, _ in models])
        command = command_of(opts, sizes)
        combined = combine(reports, command)
        if shared["before"]:
            combined["shared_weights"] = {**shared, "folder": "shared"}
        if opts.sign_key is not None:
            size_set.signed_by = combined["signed_by"] = signing.key_id(signing.signing_key(opts.sign_key).public_key())
        size_set.write(work)
        write_matrix(reports, work, command)
        (work / "report.json").write_text(json.dumps(combined, indent=2, default=str))
        if opts.sign_key is not None:
            signing.sign_bundle(work, opts.sign_key)  # last: it covers every size's files and sizes.json
    combined["bundle"] = str(out / slug)
    return combined


def combine(reports: list[dict], command: str) -> dict:
    """The top report: every size's rows in one list (each row names its ``input_size``), and the reports."""
    rows = [{**r, "input_size": size_label(rep["input_shape"][-2:])} for rep in reports for r in rep["results"]]
    return {"model": reports[0]["model"], "command": command, "sizes": [rep["input_shape"][-2:] for rep in reports],
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": reports[0]["environment"], "results": rows, "reports": reports}


__all__ = ["run_sizes", "combine", "SingleSize"]
