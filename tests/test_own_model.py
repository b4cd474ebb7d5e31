"""Bring your own model: a small timm Swin of a config no zoo lists, trained here on the digits, saved in
timm's folder format with ten label names, exported through the CLI and the Python API."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runtime.tolerances import tolerance_for

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# not in the zoo: another embed dim, heads, window and depth than digits_swin
CONFIG = dict(img_size=32, patch_size=4, embed_dim=64, depths=(2, 2), num_heads=(2, 4), window_size=4,
              mlp_ratio=2.0, num_classes=10)
EPOCHS = 12
pytestmark = pytest.mark.slow


def _train() -> torch.nn.Module:
    import timm

    from calibration.digits import digits_subset
    from exporters.models.zoo import DIGITS_PREPROCESSING
    from runtime.preprocess import preprocess_batch
    torch.manual_seed(0)
    images, labels, _ = digits_subset("train")
    x = torch.from_numpy(preprocess_batch(images, DIGITS_PREPROCESSING))
    y = torch.from_numpy(labels)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.02)
    steps = EPOCHS * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(timm saved-model folder, labelled image folder, the trained module)."""
    from timm.models import save_for_hf

    from calibration.digits import digits_subset
    root = tmp_path_factory.mktemp("own")
    model = _train()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5),
                            "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1.0}
    folder = root / "my_digit_swin"
    save_for_hf(model, folder, model_config={"label_names": NAMES, "architecture": "swin_tiny_patch4_window7_224",
                                             "model_args": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in CONFIG.items()}})
    data = root / "holdout"
    images, labels, _ = digits_subset("holdout")
    for i, (im, lab) in enumerate(zip(images, labels)):
        (data / NAMES[lab]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(data / NAMES[lab] / f"{i}.png")
    return folder, data, model


def test_cli_local_dir_int8_bundle_with_label_names(saved, tmp_path):
    folder, data, _ = saved
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "exporters", f"local-dir:{folder}", "--data", str(data),
                           "--target", "all", "--int8", "--out", str(out), "--runs", "3", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    rep = json.loads((out / "my_digit_swin" / "report.json").read_text())
    ref = next(r for r in rep["results"] if r["target"] == "pytorch")
    assert ref["accuracy"]["top1"] >= 0.85 and rep["data"]["labelled"]  # dataset top-1 under its own names
    for target in ("onnxruntime", "openvino"):
        r = next(x for x in rep["results"] if x["target"] == target and x["precision"] == "int8")
        tol = tolerance_for(target, "int8")
        assert r["passed"] is True, r["notes"]
        assert (ref["accuracy"]["top1"] - r["accuracy"]["top1"]) * 100 <= tol.top1_drop
        assert r["accuracy"]["top1_agreement"] >= tol.top1_agreement
    manifest = json.loads((out / "my_digit_swin" / "manifest.json").read_text())
    assert manifest["labels"] == NAMES and manifest["source"] == f"local-dir:{folder}"
    assert manifest["preprocessing"]["input_size"] == [32, 32] and manifest["preprocessing"]["mean"] == [0.5] * 3
    assert "swin_window_attention" in rep["rewrites"]["fired"]
    img = next((data / "seven").iterdir())
    run = subprocess.run([sys.executable, "-m", "runtime", str(out / "my_digit_swin"), str(img), "--topk", "1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.split(": ")[1].split()[0] in NAMES, run.stdout + run.stderr


def test_python_api_on_the_module_matches_the_folder(saved, tmp_path):
    import exporters
    folder, data, model = saved
    report = exporters.export(model, input_shape=(3, 32, 32), targets=["onnxruntime"], precision="int8", data=data,
                              labels=NAMES, preprocessing={"mean": (0.5,) * 3, "std": (0.5,) * 3,
                                                           "interpolation": "bilinear", "crop_pct": 1.0},
                              out=tmp_path, name="api_swin", runs=3)
    assert report.passed and report.bundle == tmp_path / "api_swin"
    assert "swin_window_attention" in report.rewrites
    assert report.result("pytorch", "fp32")["accuracy"]["top1"] >= 0.85
    import runtime
    with runtime.open(report.bundle) as s:
        pred = s.predict([next((data / "three").iterdir())], topk=2)[0]
    assert pred.labels[0] in NAMES and s.labels == NAMES


def test_python_api_bad_arguments_are_one_exception_type(tmp_path):
    import exporters
    with pytest.raises(exporters.ExportError, match="input_shape"):
        exporters.export(torch.nn.Linear(4, 2), out=tmp_path)
    with pytest.raises(exporters.ExportError, match="does not run on a"):
        exporters.export(torch.nn.Linear(4, 2), input_shape=(3, 8, 8), out=tmp_path)
    with pytest.raises(exporters.ExportError, match="takes a model name or a torch.nn.Module"):
        exporters.export(42, out=tmp_path)
    with pytest.raises(exporters.ExportError, match="3 label names for a model with 10 classes"):
        exporters.export("digits_vit", labels=["a", "b", "c"], out=tmp_path)


def _cli(capsys, *args):
    """``python -m exporters`` in this process (test_real_process_exit_code_and_single_line covers the process)."""
    from tests.conftest import cli_in_process
    code, _, err = cli_in_process(capsys, "exporters", *args)
    return code, err


@pytest.mark.parametrize("make, match", [
    (lambda f: (f / "config.json").unlink(), "has no config.json"),
    (lambda f: (f / "config.json").write_text("{not json"), "is not valid JSON"),
    (lambda f: (f / "config.json").write_text(json.dumps({"architecture": "no_such_net_v9"})),
     "names architecture 'no_such_net_v9'"),
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                          "model_args": {**CONFIG, "embed_dim": 48}})),
     "do not fit its config.json"),
])
def test_bad_saved_folders_are_one_line_exit_2(saved, tmp_path, make, match, capsys):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    make(folder)
    code, err = _cli(capsys, f"local-dir:{folder}", "--out", tmp_path / "o")
    assert code == 2 and err.count("error:") == 1 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bare_checkpoint_classes_inferred_checked_and_labels_counted(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file
    model = timm.create_model("vit_tiny_patch16_224", num_classes=37, img_size=64)
    ckpt = tmp_path / "ft.safetensors"
    save_file(model.state_dict(), str(ckpt))
    code, err = _cli(capsys, "vit_ti", "--weights", ckpt, "--num-classes", "10", "--img-size", "64", "--out", tmp_path / "o")
    assert code == 2 and "--num-classes 10 contradicts the checkpoint" in err and "37 classes" in err
    (tmp_path / "labels.txt").write_text("\n".join(f"c{i}" for i in range(36)))
    code, err = _cli(capsys, "vit_ti", "--weights", ckpt, "--img-size", "64", "--labels", tmp_path / "labels.txt",
                     "--out", tmp_path / "o")
    assert code == 2 and "36 label names for a model with 37 classes" in err
    (tmp_path / "labels.json").write_text(json.dumps([f"c{i}" for i in range(37)]))
    code, err = _cli(capsys, "vit_ti", "--weights", ckpt, "--img-size", "64", "--labels", tmp_path / "labels.json",
                     "--out", tmp_path / "o", "--eval-size", "4", "--runs", "2", "--quiet")
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "vit_ti" / "report.json").read_text())
    assert any("num_classes 37 read from the checkpoint's classifier 'head.weight'" in n for n in rep["notes"])
    manifest = json.loads((tmp_path / "o" / "vit_ti" / "manifest.json").read_text())
    assert manifest["labels"][36] == "c36" and manifest["input"]["shape"] == [1, 3, 64, 64]


def test_torchvision_swin_fine_tuned_to_37_classes_loads_into_timm(tmp_path):
    import timm
    import torchvision
    tv = torchvision.models.swin_t(num_classes=37).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    from exporters.models.zoo import create_model
    model, spec = create_model("swin_t", weights=tmp_path / "tv.pth")
    assert spec.num_classes == 37 and isinstance(model, timm.models.swin_transformer.SwinTransformer)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-4)


def test_swin_img_size_that_does_not_fit_is_one_line(tmp_path, capsys):
    code, err = _cli(capsys, "swin_t", "--img-size", "3", "--out", tmp_path / "o")
    assert code == 2 and "--img-size 3 does not fit" in err and "Traceback" not in err, err


def test_hf_hub_name_not_in_the_cache_is_one_line(tmp_path, monkeypatch):
    proc = subprocess.run([sys.executable, "-m", "exporters", "hf-hub:nobody/not-a-model", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "not in the local Hugging Face cache" in proc.stderr, proc.stderr


def test_hf_hub_name_from_the_local_cache(saved, tmp_path):
    """A cached hub model loads offline: the cache's snapshot folder is read like local-dir."""
    import shutil
    folder = saved[0]
    snap = tmp_path / "hf" / "hub" / "models--me--my_digit_swin" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (tmp_path / "hf" / "hub" / "models--me--my_digit_swin" / "refs").mkdir()
    (tmp_path / "hf" / "hub" / "models--me--my_digit_swin" / "refs" / "main").write_text("abc123")
    code = ("from exporters.models.zoo import create_model\n"
            "m, s = create_model('hf-hub:me/my_digit_swin')\n"
            "print(s.name, s.num_classes, s.labels[7])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.split() == ["my_digit_swin", "10", "seven"], proc.stderr[-2000:]
    _ = np  # numpy is used by the fixtures' images
