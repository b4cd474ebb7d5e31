"""Latency statistics against hand-computed values."""
import numpy as np
import pytest

from runtime.backends import Runner
from runtime.errors import UserError
from runtime.latency import measure, summarize, throughput


def test_percentiles_hand_computed():
    lat = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    # numpy linear interpolation: p50 at rank 4.5 -> 5.5; p90 at 8.1 -> 9.1; p99 at 8.91 -> 9.91
    assert lat.p50 == pytest.approx(5.5)
    assert lat.p90 == pytest.approx(9.1)
    assert lat.p99 == pytest.approx(9.91)
    assert lat.mean == pytest.approx(5.5)
    assert lat.runs == 10


def test_throughput_uses_batch_and_median():
    lat = summarize([20.0, 20.0, 40.0])
    assert throughput(lat, batch=4) == pytest.approx(200.0)  # 4 images / 20 ms


class _Counting(Runner):
    """A runner whose n-th call 'takes' n ms, so the statistics are known exactly."""

    input_shape = [1, 2]

    def __init__(self):
        super().__init__()
        self.calls = 0

    def infer_impl(self, x):
        self.calls += 1
        return {"y": x}

    def infer(self, feeds):
        out = super().infer(feeds)
        self.last_latency = float(self.calls)  # replace the measured time with a known one
        return out


def test_measure_counts_warmup_and_takes_the_runners_own_times():
    r = _Counting()
    lat = measure(r, {"input": np.zeros((1, 2), np.float32)}, runs=7, warmup=3)
    assert r.calls == 10 and lat.runs == 7
    assert lat.mean == pytest.approx(sum(range(4, 11)) / 7) and lat.p50 == pytest.approx(7.0)


def test_runner_checks_its_input_once_for_every_backend():
    r = _Counting()
    with pytest.raises(UserError, match="missing"):
        r.infer({"x": np.zeros((1, 2))})
    with pytest.raises(UserError, match=r"shape \[1, 3\]"):
        r.infer({"input": np.zeros((1, 3))})
    out = r.infer({"input": np.zeros((1, 2), np.float64)})
    assert out["y"].dtype == np.float32  # converted to the runner's input dtype
    with r:
        pass
    with pytest.raises(UserError, match="closed"):
        r.infer({"input": np.zeros((1, 2))})


def test_summarize_rejects_empty():
    with pytest.raises(ValueError):
        summarize([])
