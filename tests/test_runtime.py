"""The torch-free runtime: open, verify, predict, bench; parity with the exporter; no torch import."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import runtime
from runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _digit_images(n=20):
    from calibration.digits import digits_subset
    images, labels, _ = digits_subset("holdout")
    return images[:n], labels[:n]


def test_predict_matches_the_pytorch_reference(digits_bundles):
    import torch

    from exporters.models.zoo import create_model
    from runtime.preprocess import preprocess_batch
    out, _ = digits_bundles
    images, labels = _digit_images()
    model, spec = create_model("digits_swin")
    with torch.no_grad():
        ref = model(torch.from_numpy(preprocess_batch(images, spec.preprocessing))).numpy()
    for target in ("onnxruntime", "openvino"):
        s = runtime.open(out / "digits_swin", target=target, precision="fp32")
        preds = s.predict([Image.fromarray(im) for im in images], topk=3)
        assert [int(p.labels[0]) for p in preds] == ref.argmax(-1).tolist()
        np.testing.assert_allclose(s.logits(preprocess_batch(images, s.preprocessing)), ref, atol=1e-4)
        z = np.exp(ref - ref.max(-1, keepdims=True))
        probs = z / z.sum(-1, keepdims=True)  # the softmax of the reference, computed here
        for p, want in zip(preds, probs):
            assert p.scores == sorted(p.scores, reverse=True)
            np.testing.assert_allclose(p.scores, np.sort(want)[::-1][:3], atol=1e-4)
        full = s.predict([Image.fromarray(images[0])], topk=10)[0]
        assert sum(full.scores) == pytest.approx(1.0, abs=1e-5) and sorted(full.indices) == list(range(10))


def test_runtime_preprocessing_equals_the_exporters(tmp_path, sample_photos):
    from calibration import load_set
    from exporters.models.zoo import create_model
    _, spec = create_model("swin_t")
    d = tmp_path / "imgs"
    d.mkdir()
    for p in sample_photos:
        shutil.copy(p, d / p.name)
    exporter_side = load_set(d, spec.preprocessing, size=None, progress=False)
    from runtime.preprocess import preprocess_batch
    runtime_side = preprocess_batch([Image.open(d / i) for i in exporter_side.ids], spec.preprocessing)
    assert np.array_equal(exporter_side.inputs, runtime_side)


def test_default_backend_and_precision_choice(digits_bundles):
    out, _ = digits_bundles
    s = runtime.open(out / "digits_vit")
    assert s.target == "openvino" and s.precision == "int8"  # fastest in the bundle, TensorRT absent


def test_tampered_artefact_is_refused(digits_bundles, tmp_path):
    out, _ = digits_bundles
    copy = tmp_path / "b"
    shutil.copytree(out / "digits_vit", copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="sha256 mismatch for model.onnx"):
        runtime.open(copy, target="onnxruntime", precision="fp32")


def test_bundle_without_manifest(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        runtime.open(tmp_path)


def test_cli_predict_json_and_bench(digits_bundles, tmp_path, capsys):
    from runtime.__main__ import main
    out, _ = digits_bundles
    images, labels = _digit_images(2)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).resize((50, 40)).save(paths[-1])  # another size: resized, never mis-shaped
    assert main([str(out / "digits_vit"), *map(str, paths), "--json", "--topk", "2",
                 "--target", "onnxruntime"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and len(lines[0]["labels"]) == 2
    assert main(["bench", str(out / "digits_vit"), "--runs", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["latency_ms"]["p50"] > 0 and res["latency_ms"]["runs"] == 5
    assert main(["bench", str(out / "digits_vit"), "--runs", "2", "--throughput", "--seconds", "0.2", "--json",
                 "--target", "openvino", "--threads", "2"]) == 0
    tp = json.loads(capsys.readouterr().out)["throughput_mode"]
    assert tp["mode"] == "throughput" and tp["images_per_s"] > 0 and tp["streams"] >= 1
    assert main(["bench", str(tmp_path / "nope")]) == 2


def test_runtime_never_imports_torch(digits_bundles):
    out, _ = digits_bundles
    img = out / "digit.png"
    Image.fromarray(_digit_images(1)[0][0]).save(img)
    code = (
        "import sys, runtime\n"
        f"for t in ('onnxruntime', 'openvino'):\n"
        f"    s = runtime.open(r'{out / 'digits_vit'}', target=t)\n"
        f"    s.predict([r'{img}'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
