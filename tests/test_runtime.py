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


# what only the export side installs (the `export` and `openvino-int8` extras): a device install has none of it
EXPORT_SIDE = ("torch", "torchvision", "timm", "nncf", "onnx", "onnxslim", "onnxscript", "onnx_ir", "scipy",
               "sklearn", "networkx", "matplotlib", "safetensors")
BLOCKER = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {EXPORT_SIDE!r}:
            raise ImportError(f'{{name}} is not installed on this device')
sys.meta_path.insert(0, NotInstalled())
"""


def test_a_device_install_runs_a_bundle_without_the_export_side(digits_bundles):
    """What `pip install 'vitdeploy[openvino]'` (or `[onnxruntime]`) puts on a device: the runtime and its backend.
    With every export-side package unimportable, the runtime opens, proves (golden set, here) and serves the INT8
    artefact of each backend, and `python -m runtime verify` passes."""
    out, _ = digits_bundles
    img = out / "digit-device.png"
    Image.fromarray(_digit_images(1)[0][0]).save(img)
    bundle = out / "digits_vit"
    code = BLOCKER + (
        "import runpy, runtime\n"
        "for t in ('onnxruntime', 'openvino'):\n"
        f"    with runtime.open(r'{bundle}', target=t, precision='int8', verify='always') as s:\n"
        f"        assert s.predict([r'{img}'])[0].labels\n"
        f"sys.argv = ['runtime', 'verify', r'{bundle}']\n"
        "try:\n"
        "    runpy.run_module('runtime', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"assert not set(sys.modules) & set({EXPORT_SIDE!r}), sorted(set(sys.modules) & set({EXPORT_SIDE!r}))\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_the_device_extras_leave_the_export_side_out():
    """The runtime's base install and its backend extras carry no export-side package; NNCF comes only with the
    INT8 build extra."""
    import re

    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(reqs):
        return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("-", "_") for r in reqs}
    for extra in ("onnxruntime", "openvino", "tensorrt", "tensorrt-rtx", "coreml"):
        assert not names(extras[extra]) & {*EXPORT_SIDE, "scikit_learn"}, extra
    assert not names(project["dependencies"]) & {*EXPORT_SIDE, "scikit_learn"}
    assert "nncf" in names(extras["openvino-int8"]) and "nncf" not in names(extras["openvino"])


def test_the_compiled_model_cache_is_used_only_when_asked_and_serves_the_same(digits_bundles, tmp_path, monkeypatch):
    """VITDEPLOY_CACHE_DIR: OpenVINO stores the compiled model there on the first open and a later open loads it; the
    outputs are the same. Unset, nothing is written outside the bundle; set but empty, one line."""
    from runtime.backends.openvino import CACHE_ENV
    out, _ = digits_bundles
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    with runtime.open(out / "digits_vit", target="openvino", precision="int8", verify="never") as s:
        plain = s.logits(x)
        assert "CACHE_DIR" not in s.runner.describe()["requested"]
    cache = tmp_path / "ov-cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    outs = []
    for _ in range(2):
        with runtime.open(out / "digits_vit", target="openvino", precision="int8", verify="never") as s:
            outs.append(s.logits(x))
            assert s.runner.describe()["requested"]["CACHE_DIR"] == str(cache)
    assert list(cache.glob("*.blob")), "no compiled model was cached"
    assert np.array_equal(outs[0], outs[1]) and np.allclose(outs[0], plain, atol=1e-5)
    monkeypatch.setenv(CACHE_ENV, " ")
    with pytest.raises(UserError, match="VITDEPLOY_CACHE_DIR is set but empty"):
        runtime.open(out / "digits_vit", target="openvino", precision="int8", verify="never")
