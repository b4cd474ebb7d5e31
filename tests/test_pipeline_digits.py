"""End to end on the trained digits models: verification, INT8 gates, bundle and manifest."""
import json
from dataclasses import asdict

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.manifest import sha256_file
from runtime.tolerances import tolerance_for

pytestmark = pytest.mark.slow


def _result(report, target, precision):
    return next(r for r in report["results"] if r["target"] == target and r["precision"] == precision)


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_fp32_is_equivalent_and_accurate(digits_bundles, name):
    _, reports = digits_bundles
    rep = reports[name]
    ref = _result(rep, "pytorch", "fp32")
    assert ref["accuracy"]["top1"] >= 0.95
    for target in ("onnxruntime", "openvino"):
        r = _result(rep, target, "fp32")
        tol = tolerance_for(target, "fp32")
        assert r["status"] == "built" and r["passed"] is True and r["tolerance"] == asdict(tol)
        assert r["accuracy"]["cosine_min"] >= tol.cosine_min and r["accuracy"]["top1_agreement"] == 1.0
        assert r["latency_ms"]["p50"] > 0 and r["speedup_vs_reference"] > 0


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_int8_accuracy_gate(digits_bundles, name, target):
    _, reports = digits_bundles
    rep = reports[name]
    ref_top1 = _result(rep, "pytorch", "fp32")["accuracy"]["top1"]
    r = _result(rep, target, "int8")
    tol = tolerance_for(target, "int8")
    assert r["passed"] is True and r["failures"] == [], r["notes"]
    assert (ref_top1 - r["accuracy"]["top1"]) * 100 <= tol.top1_drop
    assert r["accuracy"]["top1_agreement"] >= tol.top1_agreement
    assert r["size_mb"] < _result(rep, target, "fp32")["size_mb"]


def test_openvino_fp16_records_its_precision_hint(digits_bundles):
    _, reports = digits_bundles
    r = _result(reports["digits_vit"], "openvino", "fp16")
    assert r["passed"] and r["runtime"]["requested"]["INFERENCE_PRECISION_HINT"] in ("bf16", "f16", "f32")
    assert r["runtime"]["compiled"]["INFERENCE_PRECISION_HINT"]


def test_manifest_hashes_every_artefact(digits_bundles):
    out, _ = digits_bundles
    bundle = out / "digits_swin"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["calibration"]["sha256"] and manifest["evaluation"]["sha256"]
    listed = set(manifest["sha256"])
    for art in manifest["artifacts"]:
        assert set(art["files"]) <= listed
    for rel, digest in manifest["sha256"].items():
        assert sha256_file(bundle / rel) == digest
    assert {"model.onnx", "openvino-int8.xml", "openvino-int8.bin", "model.ort-int8.onnx"} <= listed
    assert manifest["preprocessing"]["input_size"] == [32, 32] and manifest["labels"][3] == "3"
    assert manifest["graph"]["contract"]["passed"] and manifest["rewrites"]["fired"]


def test_report_files_and_schema(digits_bundles):
    out, _ = digits_bundles
    rep = json.loads((out / "digits_vit" / "report.json").read_text())
    for key in ("model", "source", "weights", "input_shape", "environment", "results"):
        assert key in rep
    for r in rep["results"]:
        for key in ("target", "precision", "device", "artifact", "latency_ms", "throughput_ips", "accuracy",
                    "speedup_vs_reference", "passed", "notes", "status"):
            assert key in r, key
    md = (out / "digits_vit" / "report.md").read_text()
    assert "| onnxruntime | int8 |" in md and "threads:" in md


def test_failed_build_leaves_no_bundle_and_keeps_the_old_one(tmp_path, monkeypatch):
    import dataclasses

    from exporters.pipeline.stages import RunOptions, run
    from exporters.targets import targets

    run(RunOptions(model="digits_vit", out=tmp_path, runs=2, warmup=1, quiet=True))
    before = sha256_file(tmp_path / "digits_vit" / "manifest.json")

    def boom(ctx, precision, options):
        raise UserError("simulated failure")
    monkeypatch.setitem(targets(), "onnxruntime", dataclasses.replace(targets()["onnxruntime"], build=boom))
    with pytest.raises(UserError):
        run(RunOptions(model="digits_vit", out=tmp_path, runs=2, warmup=1, quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_vit"]  # no temp folders left
    assert sha256_file(tmp_path / "digits_vit" / "manifest.json") == before


def test_dynamic_batch_bundle_runs_at_batch_two(tmp_path, capsys):
    from tests.conftest import run_cli
    code, _, err = run_cli(["digits_vit", "--dynamic-batch", "--batch", "2", "--runs", "3", "--out", tmp_path,
                            "--quiet"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "digits_vit" / "report.json").read_text())
    assert rep["graph"]["dynamic_batch"] and rep["input_shape"][0] == 2
    assert all(r["passed"] for r in rep["results"])
    import runtime
    s = runtime.open(tmp_path / "digits_vit")
    import numpy as np
    assert s.logits(np.zeros((5, 3, 32, 32), np.float32)).shape == (5, 10)


def test_large_models_go_to_external_data_and_the_bundle_hashes_it(tmp_path, monkeypatch):
    import exporters.graph.onnx as exp
    from exporters.pipeline.stages import RunOptions, run
    monkeypatch.setattr(exp, "TWO_GB", 1000)  # pretend the 1 MB digits model is over the limit
    run(RunOptions(model="digits_vit", out=tmp_path, runs=2, warmup=1, quiet=True))
    manifest = json.loads((tmp_path / "digits_vit" / "manifest.json").read_text())
    assert {"model.onnx", "model.onnx.data"} <= set(manifest["sha256"])
    import onnx
    model = onnx.load(str(tmp_path / "digits_vit" / "model.onnx"), load_external_data=False)
    inline = [i.name for i in model.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL
              and i.ByteSize() > 1100]
    assert inline == []  # every tensor over the 1 KB threshold went to model.onnx.data
    import runtime
    assert runtime.open(tmp_path / "digits_vit").logits(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
