"""A dense model's drift by module name, at export (``export(module, task="segmentation")``).

A user's module cannot be rebuilt from its bundle, so ``python -m benchmarks drift`` cannot reach it later: the
export itself reads each reduced-precision artefact's block and head outputs (exporters/verify/probes.py: extra outputs
of a debug copy, under the PyTorch module names) on the samples whose maps agree worst with the reference, and
puts the table in the report, as ``benchmarks drift`` does for a classifier.
"""
from __future__ import annotations

import numpy as np

from exporters.verify.budget import worst_samples
from exporters.verify.probes import (
    artefact_outputs,
    block_errors,
    dense_probe,
    first_large_step,
    probe_label,
    probes_from_export,
    reference_outputs,
)

SAMPLES = 16  # the worst-agreeing samples each artefact's drift is read on


def drift_stage(job, ctx, ref, artifacts: list) -> None:
    """``job.report["drift"]``: per reduced-precision artefact that was verified, the rows of
    ``probes.block_errors``, the first large step and the probed modules its outputs did not show."""
    todo = [a for a in artifacts if a.precision != "fp32" and a.primary is not None]
    if not todo:
        return
    with job.steps(f"drift by module ({len(todo)} artefacts)"):
        probes = probes_from_export(ctx.model, (1, *job.input_shape[1:]), dense_probe(ctx.model))
        drift = {}
        for art in todo:
            logits = job.logits.get((art.target, art.precision))
            if logits is None:
                continue
            x = job.data.inputs[np.sort(worst_samples(ref.logits, logits, SAMPLES))]
            got = artefact_outputs(art.entry(ctx.workdir), ctx.workdir, ctx.model, probes, x, job.threads)
            rows = block_errors(probes, reference_outputs(ctx.model, probes, x), got)
            drift[f"{art.target} {art.precision}"] = {
                "samples": int(len(x)), "artefact_values_from": probe_label(art.target), "rows": rows,
                "first_large_step": first_large_step(rows),
                "not_found": [p.module for p in probes if p.module not in {r["module"] for r in rows}]}
    job.report["drift"] = drift


__all__ = ["drift_stage"]
