"""The vs-naive benchmark on a digits model: every naive path and vitdeploy artefact is timed in one run,
and every INT8 path's accuracy is measured against PyTorch on the hold-out."""
import pytest

pytestmark = pytest.mark.slow


def test_vs_naive_on_digits_vit():
    from benchmarks.vs_naive import measure, render
    res = measure(["digits_vit"], threads=2, runs=3, batch=2, throughput_s=0.3, accuracy_models=("digits_vit",),
                  accuracy_eval_size=128, recipe="mixed")  # auto's choice among recipes: tests/test_recipes.py
    assert res["batch"] == 2
    rows = res["latency_ms"]["digits_vit"]
    assert {"pytorch eager fp32", "naive onnxruntime fp32", "naive openvino default", "naive openvino nncf int8",
            "naive onnxruntime quantize_static int8", "vitdeploy onnxruntime int8", "vitdeploy openvino fp16",
            "vitdeploy openvino int8"} == set(rows)
    assert all(v["p50"] > 0 and v["p90"] >= v["p50"] for v in rows.values())
    assert rows["vitdeploy openvino int8"]["hint"] and rows["naive openvino default"]["hint"]
    assert all(v["images_per_s"] > 0 and v["streams"] >= 1 for v in rows.values())
    assert rows["pytorch eager fp32"]["streams"] == 1 and rows["vitdeploy onnxruntime int8"]["streams"] == 2
    acc = res["accuracy"]["digits_vit"]
    assert acc["reference_top1"] > 95
    int8 = [k for k in acc if k != "reference_top1"]
    assert len(int8) == 4 and all(0 < acc[k]["agreement"] <= 100 for k in int8)
    assert all({"cosine_min", "correct", "gate_cosine"} <= set(v) for k, v in rows.items() if k != "pytorch eager fp32")
    assert rows["naive onnxruntime fp32"]["cosine_min"] > 0.9999 and rows["naive onnxruntime fp32"]["correct"]
    assert all(rows[k]["correct"] for k in rows if k.startswith("vitdeploy"))  # the timed model is the reference's
    assert rows["naive openvino default"]["hint"] in ("bf16", "f16", "f32")
    assert rows["vitdeploy openvino int8"]["recipe"] == rows["vitdeploy onnxruntime int8"]["recipe"] == "mixed"
    assert all("correct" in acc[k] for k in int8)
    md = render(res, "test machine", "python -m benchmarks vs-naive digits_vit")
    assert "best correct naive path" in md and "| vitdeploy openvino int8 |" in md
    assert "(batch 2," in md and "img/s, throughput mode" in md


def test_a_fast_wrong_naive_path_is_no_competitor():
    """The best-naive ratio counts only paths correct on the timed model and on every trained digits fixture."""
    from benchmarks.vs_naive import competitors, render
    row = lambda p50, ok=True: {"p50": p50, "p90": p50, "hint": None, "cosine_min": 0.99 if ok else -0.26,  # noqa: E731
                                "correct": ok, "gate_cosine": 0.9}
    rows = {"pytorch eager fp32": {"p50": 90.0, "p90": 90.0, "hint": None},
            "naive openvino default": row(20.0), "naive openvino nncf int8": row(18.0),
            "naive onnxruntime quantize_static int8": row(10.0, ok=False), "vitdeploy openvino int8": row(16.0)}
    acc = {"digits_swin": {"reference_top1": 98.0,
                           "naive openvino nncf int8": {"top1": 90.0, "agreement": 87.0, "cosine_min": 0.8,
                                                        "correct": False, "missed": ["top1_agreement 0.87 < 0.99"]}}}
    assert set(competitors(rows, acc)) == {"naive openvino default"}
    md = render({"batch": 1, "latency_ms": {"swin_t": rows}, "accuracy": acc}, "m", "cmd")
    assert "best correct naive path by p50 = naive openvino default" in md and "**1.25×** it" in md
    # wrong on the Swin fixture only: still a competitor for a ViT, which it gets right
    assert set(competitors(rows, acc, "vit")) == {"naive openvino default", "naive openvino nncf int8"}
    md = render({"batch": 1, "latency_ms": {"vit_b": rows}, "accuracy": acc}, "m", "cmd")
    assert "best correct naive path by p50 = naive openvino nncf int8" in md and "**1.12×** it" in md


def test_op_profile_on_digits_vit():
    """OpenVINO's counters for both INT8 paths: every executed kernel is summed, and int8 kernels are among them."""
    from benchmarks.op_profile import measure, render
    res = measure(["digits_vit"], threads=2, runs=3)["digits_vit"]
    assert set(res) == {"naive openvino nncf int8", "vitdeploy openvino int8"}
    for path in res.values():
        assert path["p50_ms"] > 0 and sum(ms for ms, _ in path["ops"].values()) > 0
        assert any("FullyConnected" in k and "8" in k.split(" · ")[1] for k in path["ops"]), path["ops"]
    md = render({"digits_vit": res}, "test machine", "python -m benchmarks op-profile digits_vit")
    assert "sum of node times" in md and "FullyConnected" in md


@pytest.mark.parametrize("kind,size", [("backbone", (40, 56)), ("segmentation", (32, 32))])
def test_vs_naive_times_a_backbone_and_a_segmentation_model(kind, size):
    """--features: the same padded backbone module on every path, its fidelity judged by the worst map;
    --segmentation: the backbone under an FPN head, exported by vitdeploy as task='segmentation', its fidelity
    judged by pixel agreement and mean IoU too."""
    from benchmarks.vs_naive import measure, render
    res = measure(["digits_swin"], threads=2, runs=2, sizes=[size], kind=kind, accuracy_models=(), recipe="mixed")
    key = f"digits_swin {kind} {size[0]}x{size[1]}"
    rows = res["latency_ms"][key]
    assert {"naive openvino nncf int8", "vitdeploy openvino int8", "vitdeploy onnxruntime int8"} <= set(rows)
    assert rows["naive onnxruntime fp32"]["cosine_min"] > 0.9999  # both maps: the worst one is reported
    assert all(rows[k]["correct"] for k in rows if k.startswith("vitdeploy"))
    if kind == "segmentation":
        assert rows["naive onnxruntime fp32"]["pixel_agreement"] == 1.0 and "mean_iou" in rows["vitdeploy openvino int8"]
    assert f"### {key}" in render(res, "test machine", f"python -m benchmarks vs-naive --{kind}")


def test_fidelity_has_a_second_set_of_photo_crops_and_a_path_must_pass_both(tmp_path, monkeypatch):
    """Digits are one kind of image; crops of photographs at the model's own size are the second fidelity set, and
    a path wrong on either is not correct."""
    import numpy as np
    from PIL import Image

    import benchmarks.vs_naive as vn
    folder = vn.photo_crops(tmp_path / "photos", n=4)
    imgs = [np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]
    assert len(imgs) == 4 and all(i.shape[0] == i.shape[1] >= 427 // 3 and i.std() > 10 for i in imgs)

    def fidelity(runners, reference, inputs, batch, **kw):  # wrong on the photos (the set of ones) only
        bad = bool(inputs.mean() > 0.5)
        return {"naive openvino nncf int8": {"hint": "bf16", "cosine_min": -0.2 if bad else 0.999,
                                             "correct": not bad, "gate_cosine": 0.9}}
    monkeypatch.setattr(vn, "fidelity", fidelity)
    out = vn.both_sets({}, "pytorch eager fp32", {"digits": np.zeros((2, 3, 8, 8)), "photos": np.ones((2, 3, 8, 8))},
                       1)["naive openvino nncf int8"]
    assert out["correct"] is False and out["cosine_min"] == 0.999 and out["photos_cosine_min"] == -0.2
    rows = {"pytorch eager fp32": {"p50": 9.0, "p90": 9.0, "hint": None},
            "naive openvino default": {"p50": 5.0, "p90": 5.0, "hint": "f32", "correct": True, "cosine_min": 0.9999,
                                       "photos_cosine_min": 0.9998, "gate_cosine": 0.999},
            "naive openvino nncf int8": {"p50": 2.0, "p90": 2.0, **out}}
    md = vn.render({"batch": 1, "latency_ms": {"swin_t": rows}, "accuracy": {}}, "m", "cmd")
    assert "best correct naive path by p50 = naive openvino default" in md
    assert "digits; photos (gate)" in md and "0.99900; -0.20000 (0.9) | **NO**" in md
