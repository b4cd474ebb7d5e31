"""Models without a classifier are embedding models: the pooled embedding ``[B, D]`` exported, gated by the worst
sample's cosine, served by ``Session.embed()`` and printed by the runtime CLI; through the CLI (``--num-classes 0``,
a classifier's checkpoint included) and the API, end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
from runtime.errors import UserError
from tests.conftest import cli_in_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def _vit(num_classes):
    import timm

    from tests.rewrites.helpers import lively
    model = lively(timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **TINY))
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
    return model


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A headless ViT through the API (ONNX Runtime and OpenVINO INT8) and its bundle."""
    import exporters
    out = tmp_path_factory.mktemp("embedding")
    model = _vit(0)
    rep = exporters.export(model, targets=["onnxruntime", "openvino"], precision="int8", out=out, name="headless",
                           runs=3)
    return model, rep


def _images(n=4):
    from calibration.digits import digits_subset
    return list(digits_subset("holdout")[0][:n])


def test_a_model_without_a_classifier_exports_its_embedding_gated_by_cosine(embedded):
    _, rep = embedded
    manifest = json.loads((rep.bundle / "manifest.json").read_text())
    assert manifest["task"] == "embedding" and manifest["output"] == {
        "name": "embedding", "shape": [1, 48], "dtype": "float32", "dynamic_batch": False, "layout": None}
    assert manifest["labels"] is None and rep.passed
    for target in ("onnxruntime", "openvino"):
        row = rep.result(target, "int8")
        assert row["passed"] and row["accuracy"]["cosine_min"] >= 0.9
        assert all("top1" not in f for f in row["failures"])
    assert any("embedding (no classifier): gated on the worst sample's cosine" in n for n in rep.data["notes"])
    assert manifest["artifacts"][0]["verification"]["gates"]["gate_agreement"] is False


def test_runtime_embeds_like_pytorch_and_refuses_the_wrong_method(embedded):
    from runtime.preprocess import preprocess_batch
    model, rep = embedded
    images = _images()
    with runtime.open(rep.bundle, target="openvino", precision="int8") as s:
        got = s.embed(images)
        with pytest.raises(UserError, match="an embedding model .* use embed"):
            s.predict(images[:1])
        with pytest.raises(UserError, match=r"this one's task is embedding: use embed\(\)"):
            s.logits(preprocess_batch(images[:1], s.preprocessing))
    with torch.no_grad():
        ref = model(torch.from_numpy(preprocess_batch(images, s.preprocessing))).numpy()
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert got.shape == (4, 48) and cos.min() > 0.95


def test_runtime_cli_prints_the_embedding_and_verify_passes(embedded, tmp_path, capsys):
    from PIL import Image
    _, rep = embedded
    img = tmp_path / "d.png"
    Image.fromarray(_images(1)[0]).save(img)
    code, out, err = cli_in_process(capsys, "runtime", rep.bundle, img)
    assert code == 0 and "embedding [48], L2 norm" in out and out.rstrip().endswith("..."), err
    code, out, err = cli_in_process(capsys, "runtime", rep.bundle, img, "--json")
    line = json.loads(out)
    assert code == 0 and line["dim"] == 48 and len(line["embedding"]) == 48
    code, out, err = cli_in_process(capsys, "runtime", "verify", rep.bundle)
    assert code == 0 and out.count("| passed | passed |") == 2, out + err


def test_num_classes_0_drops_a_checkpoints_classifier_from_the_cli(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=7).state_dict(), tmp_path / "ft.safetensors")
    code, out, err = cli_in_process(capsys, "exporters", "timm:vit_tiny_patch16_224", "--weights",
                                    tmp_path / "ft.safetensors", "--num-classes", "0", "--img-size", "32",
                                    "--eval-size", "8", "--runs", "2", "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    bundle = tmp_path / "o" / "timm_vit_tiny_patch16_224"
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    assert manifest["task"] == "embedding" and manifest["output"]["shape"] == [1, 192]
    assert any("classifier 'head.weight' (7 classes) is left out" in n for n in report["notes"])
    code, _, err = cli_in_process(capsys, "exporters", "tv:swin_t", "--num-classes", "0", "--out", tmp_path / "p")
    assert code == 2 and "applies to timm models" in err and not (tmp_path / "p").exists()


def test_max_drop_is_refused_for_an_embedding_model(tmp_path):
    import exporters
    with pytest.raises(UserError, match="no classifier .* use --min-cosine"):
        exporters.export(_vit(0), out=tmp_path, max_drop=1.0, precision="int8")
    assert not (tmp_path / "vitclassifier").exists()


def test_a_multi_size_embedding_bundle_embeds_at_each_size(tmp_path):
    import exporters
    rep = exporters.export(_vit(0), img_size=[32, 48], out=tmp_path, name="sized", runs=2)
    assert rep.sizes == ["32x32", "48x48"] and rep.passed
    from PIL import Image
    pics = [Image.fromarray(im).resize((48, 48)) for im in _images(2)] + [Image.fromarray(_images(1)[0])]
    with runtime.open(rep.bundle) as s:
        out = s.embed(pics)
    assert out.shape == (3, 48) and np.isfinite(out).all()


def test_runtime_cli_without_torch_in_a_subprocess(embedded, tmp_path):
    """The runtime CLI's embedding path imports no torch (the device side)."""
    from PIL import Image
    _, rep = embedded
    img = tmp_path / "d.png"
    Image.fromarray(_images(1)[0]).save(img)
    code = ("import sys, runtime.__main__ as m; rc = m.main([sys.argv[1], sys.argv[2]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(rep.bundle), str(img)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "embedding [48]" in proc.stdout, proc.stderr
