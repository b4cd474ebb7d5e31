"""Latency statistics against hand-computed values."""
import pytest

from benchmarks.latency import measure, summarize, throughput


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


def test_measure_counts_warmup_and_runs():
    calls = []
    lat = measure(lambda feeds: calls.append(1), {}, runs=7, warmup=3)
    assert len(calls) == 10 and lat.runs == 7


def test_summarize_rejects_empty():
    with pytest.raises(ValueError):
        summarize([])
