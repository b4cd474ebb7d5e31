"""The accuracy budget on export: a planted hard-to-quantize block is found by measurement, kept, and the budget met.

Each planted model (tests/fixtures/planted.py) is the trained digits_swin with one outlier channel in
``layers.1.blocks.1.attn``, the next op compensating so that FP32 is unchanged (checked):
- ``v``: the v rows of ``qkv`` for channel 5 scaled by 100 and ``proj``'s input column divided by 100,
  so the activation entering ``proj`` spans a 100x wider range. ONNX Runtime's per-tensor INT8 loses
  about 9 top-1 points on it; TensorRT's Q/DQ ONNX (symmetric INT8) loses too.
- ``qk``: q channel 5 scaled by 100 and k channel 5 divided by 100 (q.k unchanged): the attention
  matmul's inputs get the outlier, which no weight smoothing can move; OpenVINO INT8 (NNCF quantizes
  its ScaledDotProductAttention inputs) drops to cosine 0.96.
- ``w``: the inverse of ``v``: ``proj``'s input column scaled by 100, a weight outlier that per-channel
  weight-only INT8 (Core ML's) rounds the rest of each row away on.
"""
import json
from pathlib import Path

import pytest

from tests.fixtures.planted import PLANTED, plant
from tests.fixtures.planted import save as _save

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def planted_weights(tmp_path_factory) -> Path:
    return _save(plant("v"), tmp_path_factory.mktemp("planted-v") / "planted.safetensors")


def _export(*args):
    """``python -m exporters digits_swin ARGS`` in this process (no new interpreter's imports per export)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout
    from types import SimpleNamespace

    from exporters.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["digits_swin", *map(str, args)])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _row(out: Path, target: str, precision: str = "int8") -> dict:
    rep = json.loads((out / "digits_swin" / "report.json").read_text())
    return next(r for r in rep["results"] if r["target"] == target and r["precision"] == precision)


def test_onnxruntime_budget_keeps_the_planted_block_and_is_met(planted_weights, tmp_path):
    p = _export("--weights", planted_weights, "--data", "digits", "--target", "onnxruntime", "--int8",
                "--max-drop", "0.1", "--min-cosine", "0.998", "--out", tmp_path, "--runs", "5")
    assert p.returncode == 0, p.stderr
    b = _row(tmp_path, "onnxruntime")["checks"]["budget"]
    assert b["met"] and b["kept"] == [PLANTED]
    first, last = b["steps"][0], b["steps"][-1]
    assert first["drop_points"] > 1 and first["cosine_min"] < 0.9  # measured before anything was kept
    assert last["drop_points"] <= 0.1 and last["cosine_min"] >= 0.998
    md = (tmp_path / "digits_swin" / "report.md").read_text()
    assert "Accuracy budget, onnxruntime int8" in md and f"| 1 | {PLANTED} |" in md
    assert f"kept in higher precision: {PLANTED}" in md


def test_openvino_budget_keeps_the_planted_attention_and_is_met(tmp_path):
    weights = _save(plant("qk"), tmp_path / "planted-qk.safetensors")
    p = _export("--weights", weights, "--data", "digits", "--target", "openvino", "--int8",
                "--max-drop", "0.1", "--min-cosine", "0.998", "--out", tmp_path / "out", "--runs", "5")
    assert p.returncode == 0, p.stderr
    b = _row(tmp_path / "out", "openvino")["checks"]["budget"]
    # found first by measurement (measured on an AVX2 EPYC: it alone, cosine 0.974 -> 0.99976); where the CPU's
    # INT8 loses more elsewhere (before NNCF's overflow fix there: two more attentions) more blocks may follow
    assert b["met"] and b["kept"][0] == PLANTED, b["kept"]
    assert not {"head", "head.fc", "patch_embed", "patch_embed.proj"} & set(b["kept"] + b["tried_without_gain"])
    assert b["steps"][0]["cosine_min"] < 0.99 and b["steps"][-1]["cosine_min"] >= 0.998
    assert all(s["p50_ms"] > 0 for s in b["steps"])  # a real artefact: every step timed


def test_tensorrt_budget_keeps_the_planted_block_in_its_qdq_onnx(planted_weights, tmp_path):
    p = _export("--weights", planted_weights, "--data", "digits", "--target", "tensorrt", "--int8",
                "--max-drop", "0.1", "--min-cosine", "0.998", "--out", tmp_path, "--runs", "5")
    assert p.returncode == 0, p.stderr
    row = _row(tmp_path, "tensorrt")
    b = row["checks"]["budget"]
    assert b["met"] and b["kept"] == [PLANTED], b["kept"]
    assert b["steps"][0]["cosine_min"] < 0.99 and b["steps"][-1]["cosine_min"] >= 0.998
    assert "TensorRT ONNX in ONNX Runtime" in b["probes_from"]
    if row["status"] == "deferred":  # a proxy's speed says nothing: no step is timed
        assert all(s["p50_ms"] is None for s in b["steps"])
    assert any("kept in FP16, not quantized by the accuracy budget" in n for n in row["notes"])
    bundle = tmp_path / "digits_swin"
    onnxs = sorted(f.name for f in bundle.glob("tensorrt-*.onnx"))
    assert len(onnxs) == 1 and "-keep" in onnxs[0], onnxs  # the superseded step's ONNX is gone
    manifest = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["target"] == "tensorrt")
    assert art["runtime_config"]["onnx"] == onnxs[0] and onnxs[0] in manifest["sha256"]
    if row["checks"]["trt_parse"]["ok"] is not None:  # NVIDIA's parser and builder took the final ONNX
        assert row["checks"]["trt_parse"]["ok"] is True
    page = (bundle / "report.html").read_text()
    assert "Accuracy budget, tensorrt int8" in page and PLANTED in page
    assert (bundle / "plot_accuracy_budget.png").stat().st_size > 5_000


def test_tensorrt_fp16_budget_keeps_an_overflowing_block_in_fp32(tmp_path):
    """An activation channel x30000 (FP32 unchanged) overflows FP16: the logits go inf; the block in FP32 holds it."""
    weights = _save(plant("v", 30000.0), tmp_path / "planted-v30k.safetensors")
    p = _export("--weights", weights, "--data", "digits", "--target", "tensorrt", "--fp16", "--min-cosine", "0.999",
                "--out", tmp_path / "out", "--runs", "5")
    assert p.returncode == 0, p.stderr
    row = _row(tmp_path / "out", "tensorrt", "fp16")
    b = row["checks"]["budget"]
    assert b["met"] and b["kept"] == [PLANTED], b["kept"]
    assert b["steps"][0]["cosine_min"] < 0.5 <= 0.999 <= b["steps"][-1]["cosine_min"]
    assert any("in FP32 by the accuracy budget" in n for n in row["notes"])
    if row["checks"]["trt_parse"]["ok"] is not None:
        assert row["checks"]["trt_parse"]["ok"] is True


def test_coreml_budget_keeps_the_planted_weights_fp16(tmp_path):
    pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'vitdeploy[coreml]')")
    weights = _save(plant("w"), tmp_path / "planted-w.safetensors")
    p = _export("--weights", weights, "--data", "digits", "--target", "coreml", "--int8",
                "--min-cosine", "0.9999", "--out", tmp_path / "out", "--runs", "5")
    assert p.returncode == 0, p.stderr
    row = _row(tmp_path / "out", "coreml")
    b = row["checks"]["budget"]
    assert b["met"] and b["kept"] == [PLANTED], b["kept"]
    assert b["steps"][0]["cosine_min"] < 0.9999 <= b["steps"][-1]["cosine_min"]
    manifest = json.loads((tmp_path / "out" / "digits_swin" / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["target"] == "coreml")
    assert art["runtime_config"]["kept_fp16"] == [PLANTED]
    import coremltools as ct
    spec = ct.models.MLModel(str(tmp_path / "out" / "digits_swin" / art["primary"]), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    ops = {o.outputs[0].name: o.type for o in next(iter(main.block_specializations.values())).operations}
    assert ops["layers_1_blocks_1_attn_proj_weight_to_fp16"] == "const"  # kept: FP16
    assert ops["layers_1_blocks_0_attn_proj_weight_to_fp16_quantized"].startswith("constexpr")  # the rest INT8


def test_openvino_exclusion_reaches_the_block_named(tmp_path):
    """The OpenVINO side of a keep: the block's MatMuls are found in the IR by the ONNX names of the block."""
    import openvino as ov

    from exporters.graph.onnx import export_onnx
    from exporters.graph.rewrites import apply_rewrites
    from exporters.models.zoo import create_model
    from exporters.targets.openvino import ops_producing
    from exporters.verify.probes import compute_outputs_in, probes_from_export
    model, _ = create_model("digits_swin")
    rewritten, _ = apply_rewrites(model, (1, 3, 32, 32))
    exp = export_onnx(rewritten, (1, 3, 32, 32), tmp_path / "m.onnx")
    probes = {p.module: p for p in probes_from_export(rewritten, (1, 3, 32, 32))}
    keep = compute_outputs_in(exp.path, probes["layers.1.blocks.1.mlp"].scope)
    ops = ops_producing(ov.convert_model(str(exp.path)), keep)
    assert len(ops) == 2, ops  # fc1 and fc2, nothing else
    attn = ops_producing(ov.convert_model(str(exp.path)),
                         compute_outputs_in(exp.path, probes["layers.1.blocks.1.attn"].scope))
    # qkv and proj (the weight MatMuls) and the attention itself (one ScaledDotProductAttention in OpenVINO)
    assert len(attn) == 3 and not set(attn) & set(ops), attn


@pytest.mark.parametrize("args,message", [
    (["--max-drop", "0.1", "--data", "DATA"], "--max-drop needs labelled --data"),
    (["--min-cosine", "2"], "argument --min-cosine: must be a finite number in (0, 1] (got 2)"),
    (["--max-drop", "-1"], "argument --max-drop: must be a finite number in [0, 100] (got -1)"),
    (["--max-drop", "nan"], "argument --max-drop: must be a finite number in [0, 100] (got nan)"),
])
def test_bad_budget_is_one_line(tmp_path, args, message, capsys):
    import numpy as np

    from tests.conftest import cli_in_process
    np.save(tmp_path / "unlabelled.npy", np.zeros((4, 3, 32, 32), np.float32))
    args = [str(tmp_path / "unlabelled.npy") if a == "DATA" else a for a in args]
    code, _, err = cli_in_process(capsys, "exporters", "digits_swin", "--target", "onnxruntime", "--int8", *args,
                                  "--out", tmp_path / "out")
    assert code == 2 and err.count("error:") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "digits_swin").exists()


def test_a_keep_that_buys_nothing_is_not_kept():
    from exporters.verify.budget import gained
    before = {"drop_points": 0.2, "top1_agreement": 0.99, "cosine_min": 0.96}
    assert not gained(before, {**before, "cosine_min": 0.9601})  # 0.25% less error: nothing bought
    assert gained(before, {**before, "cosine_min": 0.97})
    assert gained(before, {**before, "drop_points": 0.0})
    assert gained(before, {**before, "top1_agreement": 1.0})


def test_worst_samples_are_the_flipped_then_the_least_similar():
    import numpy as np

    from exporters.verify.budget import worst_samples
    ref = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    got = np.array([[1.0, 0.1], [0.4, 0.6], [1.0, 0.0], [1.0, 0.5]])
    assert list(worst_samples(ref, got, 3)) == [1, 3, 0]  # the flip first, then by cosine


def test_a_backbone_budget_keeps_the_planted_block_on_the_worst_map(planted_weights, tmp_path):
    """--features with --min-cosine: the budget judges the worst map and finds the block inside the wrapper."""
    import exporters
    rep = exporters.export("digits_swin", weights=str(planted_weights), features=True, targets="onnxruntime",
                           precision="int8", min_cosine=0.998, out=tmp_path, runs=3)
    row = rep.result("onnxruntime", "int8")
    b = row["checks"]["budget"]
    assert b["met"] and b["kept"] == [f"model.{PLANTED}"] and row["passed"]
    assert b["steps"][0]["cosine_min"] < 0.9 and min(row["checks"]["cosine_min_per_output"].values()) >= 0.998
