"""Metric functions against hand-computed values."""
import numpy as np
import pytest

from runtime.accuracy import compare, cosine_per_sample, judge, top1_accuracy, topk_agreement
from runtime.tolerances import Tolerance, tolerance_for


def test_cosine_hand_computed():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    # orthogonal -> 0; parallel -> 1; two zero rows are identical -> 1
    assert cosine_per_sample(a, b).tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert cosine_per_sample(np.array([[3.0, 4.0]]), np.array([[4.0, 3.0]]))[0] == pytest.approx(24 / 25)


def test_topk_agreement_hand_computed():
    ref = np.array([[5, 4, 3, 2, 1, 0.0], [0, 1, 2, 3, 4, 5.0]])
    out = np.array([[4, 5, 3, 2, 1, 0.0], [0, 1, 2, 3, 4, 5.0]])
    assert topk_agreement(ref, out, 1) == 0.5  # first row's arg-max changed
    assert topk_agreement(ref, out, 2) == 1.0  # the top-2 sets are the same
    out2 = out.copy()
    out2[1] = [9, 1, 2, 3, 4, 5.0]  # class 0 enters row 2's top-5, class 1 leaves
    assert topk_agreement(ref, out2, 5) == 0.5


def test_compare_errors_and_top1():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    out = np.array([[1.0, 2.5, 3.0], [3.0, 2.0, 0.0]])
    acc = compare(ref, out, labels=np.array([2, 1]))
    assert acc.max_abs_err == pytest.approx(1.0)
    assert acc.mean_abs_err == pytest.approx(1.5 / 6)
    assert acc.top1_agreement == 1.0
    assert acc.top1 == pytest.approx(0.5)  # row 0 is right (2), row 1 predicts 0 but label is 1
    assert acc.samples == 2
    assert top1_accuracy(out, None) is None


def test_compare_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        compare(np.zeros((2, 3)), np.zeros((2, 4)))


def test_judge_flags_each_gate():
    tol = Tolerance(cosine_min=0.99, top1_agreement=0.99, top1_drop=0.5)
    ref = np.eye(4) * 5
    good = compare(ref, ref, np.arange(4))
    assert judge(good, 1.0, tol) == (True, [])
    bad_out = ref.copy()
    bad_out[0] = [0, 5, 0, 0]
    bad = compare(ref, bad_out, np.arange(4))
    ok, why = judge(bad, 1.0, tol)
    assert not ok and len(why) == 3  # cosine, agreement, top-1 drop of 25 points
    ok2, why2 = judge(bad, 1.0, tol, gate_agreement=False)
    assert not ok2 and not any("agreement" in w for w in why2)


def test_tolerances_keyed_by_target_and_precision():
    assert tolerance_for("onnxruntime", "fp32").cosine_min == 0.9999
    assert tolerance_for("openvino", "int8").top1_drop == 0.5
    assert tolerance_for("tensorrt", "int8").top1_drop == 1.0


def test_topk_of_wide_rows_by_partition_equals_the_full_sort():
    """A backbone's flattened maps (above ``WIDE`` values a row) take the partition path: same sets, no ties."""
    import numpy as np

    from runtime.accuracy import WIDE, _topk, topk_agreement
    rng = np.random.default_rng(0)
    x = rng.permutation(WIDE * 2 + 7)[None].repeat(3, 0).astype(np.float64) + rng.random((3, 1))
    full = np.sort(np.argsort(-x, axis=-1, kind="stable")[:, :5], axis=-1)
    assert (_topk(x, 5) == full).all()
    y = x.copy()
    y[1, x[1].argmax()] = -1.0  # sample 1's top one falls out of its top five
    assert topk_agreement(x, y, 5) == 2 / 3 and topk_agreement(x, y, 1) == 2 / 3
