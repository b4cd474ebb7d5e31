"""Drift localisation: block-level errors under PyTorch module names, and a planted hard-to-quantize block.

The planted model is the trained digits_swin with one outlier channel: ``layers.1.blocks.1.norm2``'s
affine weight and bias for channel 5 are scaled by 60 and ``mlp.fc1``'s input column for it divided
by 60. In FP32 the output is unchanged (checked); the activation entering that MLP now spans a
60x wider range, so a per-tensor INT8 scale for it loses the other channels. Drift must name that
MLP (or its block) as the first large step. OpenVINO is given the q/k plant of tests/fixtures/planted.py
in the same block's attention instead: NNCF's SmoothQuant absorbs the MLP outlier (measured on an AVX2
EPYC: the first step then lay in an unplanted attention), not an outlier into the attention matmul.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.planted import plant, save

pytestmark = pytest.mark.slow

PLANTED = "layers.1.blocks.1"
SCALE = 60.0


def planted_model():
    from exporters.models.zoo import create_model
    model, _ = create_model("digits_swin")
    block = model.get_submodule(PLANTED)
    with torch.no_grad():
        block.norm2.weight[5] *= SCALE
        block.norm2.bias[5] *= SCALE
        block.mlp.fc1.weight[:, 5] /= SCALE
    return model


@pytest.fixture(scope="module")
def planted_bundles(tmp_path_factory) -> dict:
    """``target -> bundle``: the MLP plant for ONNX Runtime, TensorRT and Core ML, the q/k plant for OpenVINO."""
    from exporters.models.zoo import create_model
    from exporters.pipeline.stages import RunOptions, run
    d = tmp_path_factory.mktemp("planted")
    model = planted_model()
    original, _ = create_model("digits_swin")
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - original(x)).abs().max() < 1e-4  # FP32: the same function
    plants = {"mlp": (save(model, d / "planted.safetensors"), ["onnxruntime", "tensorrt", "coreml"]),
              "qk": (save(plant("qk"), d / "planted-qk.safetensors"), ["openvino"])}
    out = {}
    for kind, (weights, targets) in plants.items():
        run(RunOptions(model="digits_swin", weights=str(weights), targets=targets, precisions=["int8"], data="digits",
                       calib="digits", eval_size=64, out=d / kind, runs=2, warmup=1, quiet=True))
        out.update({t: d / kind / "digits_swin" for t in targets})
    return out


@pytest.mark.parametrize("target", ["onnxruntime", "openvino", "tensorrt", "coreml"])
def test_drift_names_the_planted_block_first(planted_bundles, target, tmp_path):
    """Every backend through one mechanism: the artefact's own file, TensorRT's deferred Q/DQ ONNX, Core ML's proxy."""
    from benchmarks.__main__ import main
    if target == "coreml":
        pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'vitdeploy[coreml]')")
    assert main(["drift", str(planted_bundles[target]), "--target", target, "--precision", "int8", "--size", "16",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "drift.json").read_text())
    modules = [r["module"] for r in res["rows"]]
    for expected in ("patch_embed", "layers.0.blocks.0", "layers.0.blocks.0.attn", "layers.1.downsample",
                     f"{PLANTED}.mlp", "head.fc"):
        assert expected in modules, modules
    assert res["first_large_step"]["module"].startswith(PLANTED), res["first_large_step"]
    if target in ("tensorrt", "coreml"):
        assert "proxy" in res["artefact_values_from"] or "ONNX Runtime" in res["artefact_values_from"]
    md = (tmp_path / "drift.md").read_text()
    assert f"First large step: `{PLANTED}" in md
    assert (tmp_path / "drift.png").stat().st_size > 10_000


def test_clean_fp32_artefact_has_no_step(digits_bundles, tmp_path):
    from benchmarks.drift import drift
    from exporters.verify.probes import NOISE
    res = drift(Path(digits_bundles[0]) / "digits_vit", "onnxruntime", "fp32", "digits", 8, 2)
    assert res["rows"] and res["first_large_step"]["error"] < NOISE
    assert all(r["cosine_min"] > 0.99999 for r in res["rows"])
    assert {"patch_embed.proj", "blocks.0.attn", "blocks.3.mlp", "head"} <= {r["module"] for r in res["rows"]}


def test_errors_are_per_sample():
    from exporters.verify.probes import errors
    ref = np.ones((2, 4))
    out = ref.copy()
    out[1] = [1, 1, 1, -1]
    e = errors(ref, out)
    assert e["cosine_min"] == pytest.approx(0.5) and e["cosine_mean"] == pytest.approx(0.75) and e["max_abs"] == 2


def test_largest_step_is_the_largest_growth_not_the_largest_ratio():
    """Measured case (planted q/k outlier, OpenVINO INT8): a small early error over the noise floor has the
    larger ratio; the block that adds the most error is the one to name and to keep."""
    from exporters.verify.probes import first_large_step, largest_step
    rows = [{"module": "patch_embed", "tensor": "t0", "cosine_min": 1 - 1e-6},
            {"module": "blocks.0.attn", "tensor": "t1", "cosine_min": 1 - 1.4e-3},  # 14x over the 1e-4 floor
            {"module": "blocks.1.attn", "tensor": "t2", "cosine_min": 1 - 3.9e-3},
            {"module": "blocks.2.attn", "tensor": "t3", "cosine_min": 1 - 5.1e-2},  # 13x, but +4.7e-2
            {"module": "head", "tensor": "t3", "cosine_min": 1 - 5.1e-2}]  # the same tensor: not a second candidate
    assert first_large_step(rows)["module"] == "blocks.2.attn"
    assert largest_step(rows, lambda r: r["module"] != "blocks.2.attn")["module"] == "blocks.1.attn"
