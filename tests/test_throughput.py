"""Throughput mode: the runner keeps several inferences in flight and the figure counts every image once."""
import numpy as np
import pytest

import runtime
from runtime.errors import UserError
from runtime.latency import measure_throughput


class Counting:
    """A stand-in runner that counts the images ``infer_stream`` is asked for."""
    input_name, input_dtype, mode, streams = "input", np.float32, "throughput", 3

    def __init__(self):
        self.images = 0

    def infer(self, feeds):
        return {}

    def infer_stream(self, x, count):
        self.images += count * x.shape[0]


def test_measure_throughput_counts_what_ran():
    r = Counting()
    tp = measure_throughput(r, {"input": np.zeros((2, 3, 8, 8), np.float32)}, seconds=0.05, warmup_rounds=1)
    assert tp.batch == 2 and tp.streams == 3 and tp.mode == "throughput"
    assert tp.images == r.images - 2 * 4 * 3  # the warm-up round is not counted
    assert tp.images % (2 * 4 * 3) == 0 and tp.images_per_s == pytest.approx(tp.images / tp.seconds)


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_throughput_mode_runs_several_in_flight_and_matches_latency_mode(digits_bundles, target):
    bundle = digits_bundles[0] / "digits_vit"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    with runtime.open(bundle, target=target, precision="fp32", threads=2) as lat, \
            runtime.open(bundle, target=target, precision="fp32", threads=2, mode="throughput") as tp:
        assert lat.runner.streams == 1 and tp.runner.streams >= 1
        assert tp.runner.describe()["mode"] == "throughput"
        np.testing.assert_allclose(tp.infer({"input": x})["logits"], lat.infer({"input": x})["logits"], atol=1e-4)
        figure = measure_throughput(tp.runner, {"input": x}, seconds=0.3)
        assert figure.images_per_s > 0 and figure.streams == tp.runner.streams
    if target == "onnxruntime":
        assert figure.streams == 2  # one single-threaded run per thread


def test_unknown_mode_is_one_line(digits_bundles):
    with pytest.raises(UserError, match="unknown mode"):
        runtime.open(digits_bundles[0] / "digits_vit", target="onnxruntime", mode="fast")
