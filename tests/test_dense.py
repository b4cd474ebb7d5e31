"""A whole dense model through the Python API: ``export(module, input_shape=..., task="segmentation")`` for a
user's ``nn.Module`` wrapping the trained digits Swin under an FPN-style head (tests/fixtures/segmenter.py), gated
on pixel agreement and mean IoU against the module, with a drift table by module name; and the metrics and gates
themselves on hand-made maps."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from runtime.accuracy import class_maps, dense_values, judge_dense, mean_iou, pixel_agreement
from runtime.tolerances import DENSE, dense_tolerance_for

NAMES = ["background", *[str(i) for i in range(10)]]


def test_pixel_agreement_and_mean_iou_by_hand():
    ref = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    out = np.array([[0, 1, 1, 1], [2, 2, 2, 0]])
    np.testing.assert_allclose(pixel_agreement(ref, out), [0.75, 1.0])
    # class 0: I=2 U=3; class 1: I=2 U=3; class 2: I=3 U=3; class 3 in neither: left out
    assert mean_iou(ref, out, 4) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 2, 0, 1] = logits[0, 1, 1, 0] = 1.0
    np.testing.assert_array_equal(class_maps(logits.reshape(1, -1), 3), [[0, 2, 1, 0]])


def test_dense_gates_fail_on_moved_pixels_and_name_the_figure():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 5 * 8 * 8)).astype(np.float32)
    assert judge_dense(dense_values(ref, ref, 5), dense_tolerance_for("int8")) == []
    moved = ref.reshape(4, 5, 64).copy()
    moved[:, :, :8] = np.roll(moved[:, :, :8], 1, axis=1)  # an eighth of every map's pixels take the next class
    vals = dense_values(ref, moved.reshape(4, -1), 5)
    assert vals["pixel_agreement"] < 0.9 and vals["pixels_differing"] > 0
    why = judge_dense(vals, DENSE["int8"])
    assert any(w.startswith("pixel_agreement ") and "< 0.97" in w for w in why)


def test_golden_judge_holds_a_segmentation_map_to_its_pixel_allowance():
    from runtime.golden import judge_golden
    from runtime.proof import tolerance_gates
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 3 * 16)).astype(np.float32)
    gates = tolerance_gates("openvino", "int8", False, samples=100, dense=(3, 16))
    assert gates["golden_max_pixels_differing"] == int((1 - DENSE["int8"].pixel_agreement) * 100 * 16 + 1e-9)
    ok, vals, why = judge_golden(ref, ref.copy(), gates)
    assert ok and vals["pixels_differing"] == 0
    gates["golden_max_pixels_differing"] = 3
    flipped = -ref  # every pixel's arg-max moves (except exact ties)
    ok, vals, why = judge_golden(ref, flipped, gates)
    assert not ok and any("golden pixels of another class" in w for w in why)


@pytest.fixture(scope="module")
def segmenter():
    from tests.fixtures.segmenter import trained_segmenter
    return trained_segmenter()


@pytest.fixture(scope="module")
def exported(segmenter, tmp_path_factory):
    import exporters
    from exporters.models.zoo import DIGITS_PREPROCESSING
    out = tmp_path_factory.mktemp("dense")
    rep = exporters.export(segmenter, input_shape=(3, 32, 32), task="segmentation",
                           targets=["onnxruntime", "openvino", "tensorrt_rtx", "coreml"], precision="int8",
                           labels=NAMES,
                           preprocessing=DIGITS_PREPROCESSING, out=out, name="digitseg", runs=5)
    return rep


@pytest.mark.slow
def test_the_segmenter_learnt_something(segmenter):
    from tests.fixtures.segmenter import dataset_iou
    acc, miou = dataset_iou(segmenter)  # against the digits' own masks: the head is decisive, not noise
    assert acc > 0.8 and miou > 0.4


@pytest.mark.slow
def test_dense_api_passes_its_iou_gates_with_the_rewrites_inside(exported):
    assert exported.passed
    assert {"swin_window_attention", "swin_patch_merging"} <= set(exported.rewrites)  # inside the user's module
    assert exported.result("tensorrt_rtx", "int8")["checks"]["trt_parse"]["ok"]  # NVIDIA's parser and AOT builder
    coreml = exported.result("coreml", "int8")  # the package's outputs checked as a spec: the logits map
    assert coreml["status"] == "built" and "output_shape ok" in " ".join(coreml["notes"])
    for target in ("onnxruntime", "openvino", "tensorrt_rtx", "coreml"):  # TensorRT-RTX, Core ML: labelled proxies
        row = exported.result(target, "int8")
        dense = row["checks"]["dense"]
        assert dense["pixel_agreement"] >= DENSE["int8"].pixel_agreement and dense["mean_iou"] >= DENSE["int8"].mean_iou
        assert row["accuracy"]["cosine_min"] >= 0.9 and row["failures"] == []
    manifest = json.loads((exported.bundle / "manifest.json").read_text())
    assert manifest["task"] == "segmentation" and manifest["output"]["shape"] == [1, 11, 32, 32]
    assert manifest["labels"] == NAMES
    gates = manifest["artifacts"][0]["verification"]["gates"]
    assert gates["dense_classes"] == 11 and gates["mean_iou"] == DENSE["int8"].mean_iou


@pytest.mark.slow
def test_report_has_a_drift_table_by_module_name(exported):
    drift = exported.to_dict()["drift"]
    assert set(drift) == {"onnxruntime int8", "openvino int8", "tensorrt_rtx int8", "coreml int8"}
    modules = [r["module"] for r in drift["onnxruntime int8"]["rows"]]
    assert "backbone.layers.1.blocks.1.attn" in modules and "classifier" in modules and "lateral.0" in modules
    assert all(0 < r["cosine_min"] <= 1.0 + 1e-9 for r in drift["onnxruntime int8"]["rows"])
    md = (exported.bundle / "report.md").read_text()
    assert "**Drift by module, onnxruntime int8**" in md and "| pixel agree | mean IoU |" in md


@pytest.mark.slow
def test_runtime_segments_like_the_module_and_verifies(exported, segmenter, tmp_path):
    import runtime
    from calibration.digits import digits_subset
    from runtime.errors import UserError
    from runtime.preprocess import preprocess_batch
    images = digits_subset("holdout")[0][:8]
    with runtime.open(exported.bundle, target="onnxruntime", precision="int8") as s:
        masks = np.stack(s.segment(list(images)))
        with pytest.raises(UserError, match="use segment"):
            s.predict(list(images[:1]))
        x = preprocess_batch(images[:1], s.preprocessing)
        for wrong in (s.features, s.logits):  # another kind's method is refused, never a silent logits map
            with pytest.raises(UserError, match=r"this one's task is segmentation: use segment\(\)"):
                wrong(x)
    with torch.no_grad():
        want = segmenter(torch.from_numpy(preprocess_batch(images, s.preprocessing))).argmax(1).numpy()
    assert masks.shape == (8, 32, 32) and (masks == want).mean() >= DENSE["int8"].pixel_agreement
    verify = subprocess.run([sys.executable, "-m", "runtime", "verify", str(exported.bundle)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "pixels of another class (allowed)" in verify.stdout
    from PIL import Image
    Image.fromarray(images[0]).save(tmp_path / "d.png")
    cli = subprocess.run([sys.executable, "-m", "runtime", str(exported.bundle), str(tmp_path / "d.png"), "--json"],
                         capture_output=True, text=True)
    line = json.loads(cli.stdout)
    assert cli.returncode == 0 and line["mask_shape"] == [32, 32] and "background" in line["class_shares"]


def test_dense_api_refuses_what_it_cannot_do_in_one_line(tmp_path):
    import exporters
    from exporters.api import ExportError
    from exporters.models.zoo import create_model
    classifier, _ = create_model("digits_swin")
    cases = [
        (dict(model_or_name=classifier, task="segmentation"), "must return a logits map [B, classes, H, W]"),
        (dict(model_or_name="digits_swin", task="segmentation"), "a named model is a classifier"),
        (dict(model_or_name=classifier, task="detection"), "task must be one of classification, embedding, segmentation"),
        (dict(model_or_name=torch.nn.Conv2d(3, 4, 1), task="segmentation", precision="int8", max_drop=1.0),
         "task='segmentation': --max-drop is a drop of top-1 on labelled images, which output maps do not have"),
        (dict(model_or_name=torch.nn.Conv2d(3, 4, 1), task="segmentation", img_size=64),
         "takes its size from input_shape"),
        (dict(model_or_name=torch.nn.Conv2d(3, 4, 1), task="segmentation", features=0),  # 0 is a stage, not False
         "takes its size from input_shape"),
        (dict(model_or_name="digits_swin", precision=["int8", "int4"]), "precision takes fp32, fp16, int8 or auto"),
    ]
    for kwargs, match in cases:
        model = kwargs.pop("model_or_name")
        with pytest.raises(ExportError, match=re.escape(match)) as err:
            exporters.export(model, input_shape=(3, 32, 32) if not isinstance(model, str) else None,
                             out=tmp_path, **kwargs)
        assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_random_weights_report_but_do_not_gate_the_class_maps_in_reduced_precision():
    """As top-1 agreement for a random classifier: a random head's class maps are near-ties with no signal."""
    from types import SimpleNamespace

    from exporters.graph.outputs import judge_outputs
    from runtime.accuracy import compare
    from runtime.tolerances import tolerance_for
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(4, 3 * 16)).astype(np.float32)
    out = ref + rng.normal(scale=0.02, size=ref.shape).astype(np.float32)
    spec = SimpleNamespace(task="segmentation", outputs=[("logits", [3, 4, 4])])
    checks = {"dense": {"pixel_agreement": 0.5, "mean_iou": 0.3}}
    acc = compare(ref, out)
    for precision, random, passes in (("int8", True, True), ("int8", False, False), ("fp32", True, False)):
        passed, why = judge_outputs(spec, acc, checks, None, tolerance_for("onnxruntime", precision), False,
                                    precision, random)
        assert passed is passes, (precision, random, why)
        assert passes or any(w.startswith("pixel_agreement") for w in why)
