"""Whether ``--batch`` fits in this machine's memory, estimated before any export work.

A run holds the PyTorch reference, the ONNX model and the artefacts being built and verified (ONNX Runtime's
and OpenVINO's arenas keep intermediate tensors), each over the whole batch. The estimate:

    need(B) = WEIGHT_COPIES x weight bytes + ACTIVATION_COPIES x B x activation bytes per sample

where the activation bytes per sample are measured, not guessed: the sum of every leaf module's output in one
batch-1 forward pass (what eager PyTorch keeps alive at most; a compiled backend keeps less). Checked against
one run (Zen 5, 24 GB): swin_t, ONNX Runtime FP32, batch 32 peaked at 4.7 GiB resident and is estimated at
5.8 GiB. It is an estimate: several targets built in one run can need more, and a batch it lets through may
still run out of memory (exit 2, "the machine refused"); what it refuses would not fit.
"""
from __future__ import annotations

import math

from runtime.environment import available_memory
from runtime.errors import UserError

WEIGHT_COPIES = 4  # torch weights, the ONNX file read back, two backends' compiled copies
ACTIVATION_COPIES = 1  # runners are timed in turn (interleaved), so one batch's intermediates live at a time


def activation_bytes(model, input_shape) -> int:
    """Bytes of every leaf module's output in one forward pass of one ``[1, *input_shape]`` sample, traced with
    fake tensors (shapes only: nothing is allocated or computed, so a size that cannot fit is measured in a
    fraction of a second instead of exhausting memory); a model fake tensors can't trace runs for real."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    total = [0]

    def hook(_m, _i, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        try:
            with FakeTensorMode(allow_non_fake_inputs=True), torch.inference_mode():
                model(torch.zeros(1, *input_shape))
        except Exception:  # reason: an op without a fake-tensor kernel; measure on a real pass instead
            total[0] = 0
            with torch.inference_mode():
                model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def check_scaled(model, input_shape, hw, name: str, available: int | None = None) -> None:
    """Before ``model`` is re-laid for ``hw`` inputs: refuse a size whose activations alone, scaled from its own
    size by the pixel count (a lower bound: attention grows faster), cannot fit in this machine's memory."""
    available = available_memory() if available is None else available
    if available is None:
        return
    base = activation_bytes(model, input_shape)
    need = WEIGHT_COPIES * weight_bytes(model) + base * (hw[0] * hw[1]) / (input_shape[1] * input_shape[2])
    if need > available:
        raise UserError(f"--img-size {hw[0]}x{hw[1]} needs at least {need / 2**30:.1f} GiB for {name} (its "
                        f"activations at {input_shape[1]}x{input_shape[2]}, {base / 2**20:.1f} MiB, scaled by the "
                        f"pixel count) and {available / 2**30:.1f} GiB is available here: choose a smaller size")


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def check_batch(model, input_shape, batch: int, available: int | None = None, samples: int = 0) -> dict:
    """Refuse (``UserError``) a batch whose estimated need exceeds the memory available; return the estimate.
    ``samples``: the evaluation and calibration images the run holds as float32 inputs (large at large sizes:
    64 images at 4096 px are 12.9 GB)."""
    available = available_memory() if available is None else available
    per_sample = activation_bytes(model, input_shape)
    weights = weight_bytes(model)
    data = samples * 4 * math.prod(input_shape)
    need = WEIGHT_COPIES * weights + ACTIVATION_COPIES * batch * per_sample + data
    est = {"batch": batch, "need_bytes": need, "available_bytes": available, "activation_bytes_per_sample": per_sample,
           "weight_bytes": weights, "data_bytes": data}
    if available is not None and data + WEIGHT_COPIES * weights > available:
        raise UserError(f"the {samples} evaluation and calibration images at {input_shape[1]}x{input_shape[2]} take "
                        f"{data / 2**30:.1f} GiB and {available / 2**30:.1f} GiB is available here: use a smaller "
                        "--img-size, or fewer images (--eval-size, --calib-size)")
    if available is not None and need > available:
        fits = max(0, (available - WEIGHT_COPIES * weights - data) // max(1, ACTIVATION_COPIES * per_sample))
        raise UserError(f"--batch {batch} needs about {need / 2**30:.1f} GiB ({per_sample / 2**20:.1f} MiB of "
                        f"activations per sample, measured on one forward pass, plus weights) and "
                        f"{available / 2**30:.1f} GiB is available here: "
                        + (f"use --batch {fits} or less" if fits >= 1 else "even batch 1 may not fit"))
    return est
