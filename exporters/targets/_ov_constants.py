"""Keep the Swin attention bias small inside an OpenVINO IR.

The rewritten Swin attention (exporters/graph/rewrites/swin.py) builds its ``[1, nW*heads, N, N]`` bias in the graph
from ``[1, heads, N, N]`` relative-position bias and ``[nW, N]`` window-region labels. ``ov.convert_model`` folds
that expression into one constant (reason: its MOC transformations fold constant subgraphs whatever their size,
even with ``cf=False``; ``Core.read_model`` keeps them but skips the ScaledDotProductAttention fusion the INT8
recipes and the CPU plugin key on). So after conversion (and quantization) ``factor_attention_bias`` finds each
such constant, factors it back into the small pair, checks that the pair rebuilds it bit for bit, and replaces
it with the expression. The CPU plugin folds the expression again when it compiles the model: the compiled graph,
its outputs and its speed are those of the folded constant; only the file is smaller.
"""
from __future__ import annotations

import numpy as np

from exporters.graph.rewrites.swin import MASKED, mask_from_labels

MAX_HEADS = 64


def factor(bias: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``[1, nW*heads, N, N]`` or ``[nW*heads, N, N]`` (as the ScaledDotProductAttention fusion leaves it) ->
    (``rel [1, heads, N, N]``, ``labels [nW, N]`` or ``None`` when unmasked) such that
    ``rel + (labels differ) * -100`` reshaped is ``bias`` exactly; ``None`` if no such pair exists."""
    if bias.ndim == 3:
        bias = bias[None]
    if bias.ndim != 4 or bias.shape[0] != 1 or bias.shape[2] != bias.shape[3] or bias.dtype != np.float32:
        return None
    k, n = bias.shape[1], bias.shape[2]
    for heads in (h for h in range(1, min(k, MAX_HEADS) + 1) if k % h == 0 and k // h > 1):
        by_window = bias.reshape(k // heads, heads, n, n)
        rel = by_window[:1]
        masked = by_window != rel  # where a window departs from window 0's values
        if not np.array_equal(masked, np.broadcast_to(masked[:, :1], masked.shape)):
            continue
        labels = _labels(masked[:, 0])
        if labels is None:
            continue
        if not masked.any():
            return rel.copy(), None
        if np.array_equal(rebuild(rel, labels), bias):  # bit for bit
            return rel.copy(), labels
    return None


def _labels(masked: np.ndarray) -> np.ndarray | None:
    """``[nW, N, N]`` bool (token pairs that may not attend) -> region labels ``[nW, N]``, or ``None`` if the
    pattern is not one of regions (each token labelled by the first token it may attend to)."""
    labels = np.argmin(masked, axis=-1).astype(np.float32)
    same = labels[:, :, None] == labels[:, None, :]
    return labels if np.array_equal(~same, masked) else None


def rebuild(rel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What the expression computes, ``[1, nW*heads, N, N]``, in the order the graph computes it."""
    full = rel + mask_from_labels(labels).astype(np.float32)[:, None]
    return full.reshape(1, -1, *full.shape[2:])


def factor_attention_bias(model, limit: int) -> int:
    """Replace every f32 constant above ``limit`` bytes that factors (``factor``) by its expression; return how
    many were replaced. ``model`` is an ``openvino.Model``, changed in place."""
    import openvino.opset16 as ops

    count = 0
    for op in list(model.get_ops()):
        if op.get_type_name() != "Constant" or op.get_byte_size() <= limit:
            continue
        value = op.get_data()
        pair = factor(value)
        if pair is None:
            continue
        rel, labels = pair
        shape = ops.constant(np.array(value.shape, np.int64))
        if labels is None:
            nw = value.size // rel.size
            out = ops.broadcast(ops.constant(rel), ops.constant(np.array((nw, *rel.shape[1:]), np.int64)))
        else:
            lab = ops.constant(labels)
            differ = ops.not_equal(ops.unsqueeze(lab, ops.constant(np.int64(2))),
                                   ops.unsqueeze(lab, ops.constant(np.int64(1))))
            mask = ops.multiply(ops.convert(differ, "f32"), ops.constant(np.float32(MASKED)))
            out = ops.add(ops.constant(rel), ops.unsqueeze(mask, ops.constant(np.int64(1))))
        new = ops.reshape(out, shape, special_zero=False)
        new.set_friendly_name(op.get_friendly_name() + "/factored")
        op.output(0).replace(new.output(0))
        count += 1
    return count
