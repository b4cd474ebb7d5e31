"""exporters.targets._ov_constants: the folded Swin bias factored back into [heads, N, N] and [nW, N]."""
import numpy as np

from exporters.graph.rewrites.swin import shifted_window_mask, window_labels
from exporters.targets._ov_constants import factor, rebuild


def _bias(heads, hp, wp, window, shift, seed=0):
    rel = np.random.default_rng(seed).normal(size=(1, heads, window * window, window * window)).astype(np.float32)
    nw = (hp // window) * (wp // window)
    mask = shifted_window_mask(hp, wp, (window, window), (shift, shift)) if shift else np.zeros((nw, 1, 1), np.float32)
    full = np.broadcast_to(rel + mask[:, None], (nw, heads, *rel.shape[2:]))
    return rel, full.reshape(1, -1, *rel.shape[2:]).copy()


def test_a_shifted_bias_factors_into_bias_and_region_labels_bit_for_bit():
    rel, bias = _bias(3, 28, 42, 7, 3)
    got_rel, labels = factor(bias)
    assert np.array_equal(got_rel, rel) and labels.shape == (24, 49)
    assert np.array_equal(rebuild(got_rel, labels), bias)
    same = window_labels(28, 42, (7, 7), (3, 3))
    assert np.array_equal(labels[:, :, None] == labels[:, None, :], same[:, :, None] == same[:, None, :])
    assert factor(bias[0]) is not None  # the 3-D form the SDPA fusion leaves


def test_an_unshifted_bias_factors_to_the_shared_bias_alone():
    rel, bias = _bias(4, 14, 14, 7, 0)
    got_rel, labels = factor(bias)
    assert labels is None and np.array_equal(got_rel, rel)


def test_a_constant_that_is_not_a_windowed_bias_is_left_alone():
    rng = np.random.default_rng(1)
    assert factor(rng.normal(size=(1, 6, 49, 49)).astype(np.float32)) is None  # no shared bias
    _, bias = _bias(3, 28, 42, 7, 3)
    bias[0, -1, 0, 1] -= 1.0  # one value off the region pattern
    assert factor(bias) is None
    assert factor(bias.astype(np.float16)) is None
    assert factor(np.zeros((2, 49, 49), np.float32)[None, :1]) is None  # one window: nothing to share
