"""Backbones for dense prediction: feature maps per stage or block, gated per map, served by the runtime."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import runtime
from runtime.errors import UserError

SIZE = (40, 56)  # non-square, and not a multiple of digits_swin's 16-px window grid: padded to 48x64


def _cosines(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_swin_stages_as_maps_padded_to_the_window_grid_match_timm():
    from exporters.models.features import backbone
    from exporters.models.zoo import create_model
    model, spec = create_model("digits_swin")
    maps, bspec = backbone(model, spec, None, SIZE, "digits_swin")
    assert [n for n, _ in bspec.outputs] == ["stage0", "stage1"]
    assert [s for _, s in bspec.outputs] == [[48, 20, 28], [96, 10, 14]]  # ceil(40/2), ceil(56/2); /4
    assert "padded with zeros to 48x64" in bspec.notes[-1] and bspec.input_shape == (3, *SIZE)
    twin = copy.deepcopy(model)
    twin.set_input_size(img_size=(48, 64), window_size=4)  # timm itself, at the padded size, trained windows
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():  # the same as timm's own intermediates of the zero-padded image, cropped
        want = twin.forward_intermediates(torch.nn.functional.pad(x, (0, 8, 0, 8)), intermediates_only=True)
        for got, ref, (_, (c, h, w)) in zip(maps(x), want, bspec.outputs):
            torch.testing.assert_close(got, ref[:, :, :h, :w])


def test_vit_blocks_default_to_four_spread_to_the_last():
    from exporters.models.features import backbone, default_indices
    from exporters.models.zoo import create_model
    model, spec = create_model("vit_b")
    assert default_indices(model) == [2, 5, 8, 11]
    small, sspec = create_model("digits_vit")
    _, bspec = backbone(small, sspec, [1, 3], (32, 48), "digits_vit")
    assert bspec.outputs == [("block1", [96, 8, 12]), ("block3", [96, 8, 12])]
    with pytest.raises(UserError, match="digits_vit has 4 blocks, indices 0 to 3"):
        backbone(small, sspec, [4], (32, 32), "digits_vit")


@pytest.mark.parametrize("args,match", [
    (["--features", "0,5"], "digits_swin has 2 stages, indices 0 to 1"),
    (["--features", "--int8", "--max-drop", "1"], "--max-drop is a drop of top-1 on labelled images"),
    (["--features", "0,0"], "distinct indices"),
])
def test_bad_features_flags_are_one_line(args, match, tmp_path, capsys):
    from tests.conftest import cli_in_process
    code, _, err = cli_in_process(capsys, "exporters", "digits_swin", *args, "--out", tmp_path)
    assert code == 2 and match in err and err.strip().count("\n") == 0 and "Traceback" not in err


@pytest.fixture(scope="module")
def backbone_bundle(tmp_path_factory):
    from exporters.api import Report
    from exporters.pipeline.stages import RunOptions, run
    out = tmp_path_factory.mktemp("features")
    report = run(RunOptions(model="digits_swin", features=True, img_size=SIZE,
                            targets=["onnxruntime", "openvino", "tensorrt_rtx", "coreml"], precision="int8", out=out, runs=5,
                            warmup=1, eval_size=200, quiet=True))
    return out / "digits_swin", Report(report)


def test_int8_backbone_passes_a_gate_per_stage(backbone_bundle):
    bundle, report = backbone_bundle
    rtx = report.result("tensorrt_rtx", "int8")  # NVIDIA's parser and AOT builder took the multi-output network
    assert rtx["checks"]["trt_parse"]["ok"] and rtx["checks"]["trt_parse"]["engine_bytes"] > 0
    assert "output_shape ok" in " ".join(report.result("coreml", "int8")["notes"])  # two maps in the package
    for target in ("onnxruntime", "openvino", "tensorrt_rtx", "coreml"):  # the last two: labelled proxies
        row = report.result(target, "int8")
        maps = row["checks"]["cosine_min_per_output"]
        assert set(maps) == {"stage0", "stage1"} and row["passed"], (target, row.get("failures"))
        assert row["accuracy"]["cosine_min"] == pytest.approx(min(maps.values()), abs=1e-6)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["stage0", "stage1"]
    assert manifest["input"]["shape"] == [1, 3, *SIZE] and manifest["labels"] is None


def test_runtime_returns_the_named_maps_close_to_pytorch(backbone_bundle):
    from calibration.digits import digits_subset
    from exporters.models.features import backbone
    from exporters.models.zoo import create_model
    from runtime.preprocess import preprocess_batch
    bundle, _ = backbone_bundle
    model, spec = create_model("digits_swin")
    maps, bspec = backbone(model, spec, None, SIZE, "digits_swin")
    x = preprocess_batch(list(digits_subset("holdout")[0][:4]), bspec.preprocessing)
    with torch.no_grad():
        ref = [m.numpy() for m in maps(torch.from_numpy(x))]
    for target in ("onnxruntime", "openvino"):
        with runtime.open(bundle, target=target) as s:
            got = [s.features(x[i:i + 1]) for i in range(len(x))]
            for name, r in zip(("stage0", "stage1"), ref):
                out = np.concatenate([g[name] for g in got])
                assert out.shape == r.shape and _cosines(out, r).min() > 0.99, (target, name)
            with pytest.raises(UserError, match="this bundle is a backbone"):
                s.predict([np.zeros((40, 56, 3), np.uint8)])
            with pytest.raises(UserError, match=r"logits\(\) is for classification bundles; this one's task is "
                                                r"features: use features\(\)"):
                s.logits(x[:1])  # never the maps flattened
    proc = subprocess.run([sys.executable, "-m", "runtime", "verify", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.count(" int8 | passed | passed |") == 2, proc.stdout + proc.stderr
