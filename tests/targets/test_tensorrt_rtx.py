"""NVIDIA's own code on every TensorRT artefact: TensorRT-RTX's ONNX parser and AOT builder, on the CPU.

These run in CI (no GPU needed). Running an engine needs an NVIDIA GPU: those tests skip and say so.
"""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.errors import UserError
from runtime.manifest import sha256_file
from runtime.tolerances import tolerance_for
from tests.conftest import run_cli

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install 'vitdeploy[tensorrt-rtx]')")


@pytest.fixture(scope="module")
def rtx_bundles(tmp_path_factory):
    from exporters.pipeline.stages import RunOptions, run
    out = tmp_path_factory.mktemp("rtx")
    reports = {m: run(RunOptions(model=m, targets=["tensorrt", "tensorrt_rtx"], precisions=["fp16", "int8"],
                                 data="digits", calib="digits", out=out, runs=3, warmup=1, quiet=True))
               for m in ("digits_swin", "digits_vit")}
    return out, reports


def _row(rep, target, precision):
    return next(r for r in rep["results"] if r["target"] == target and r["precision"] == precision)


def _layers(path):
    """(type, output dtype) of every layer NVIDIA's parser makes of ``path``."""
    from runtime.backends._trt import parse_onnx
    _, network, _, _ = parse_onnx(trt, path)
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        out.append((str(layer.type).split(".")[-1], str(layer.get_output_type(0)).split(".")[-1]))
    return out


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_every_tensorrt_onnx_is_parsed_and_built_by_nvidia(rtx_bundles, name, precision):
    _, reports = rtx_bundles
    check = _row(reports[name], "tensorrt", precision)["checks"]["trt_parse"]
    assert check["ok"] is True and check["library"] == "tensorrt_rtx" and check["version"] == trt.__version__
    assert check["layers"] > 50 and check["engine_bytes"] > 100_000 and check["build_s"] > 0
    prec = check["compute_layers_by_precision"]
    assert prec["HALF"] > prec.get("FLOAT", 0)  # FP16 is the bulk, FP32 only in the islands
    assert (check["qdq_layers"] > 0) == (precision == "int8")


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_int8_is_int8_plus_fp16_with_fp32_islands(rtx_bundles, name):
    out, _ = rtx_bundles
    layers = _layers(out / name / "tensorrt-int8.onnx")
    kinds = {t for t, _ in layers}
    assert {"QUANTIZE", "DEQUANTIZE", "MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX"} <= kinds
    assert all(d == "HALF" for t, d in layers if t == "MATRIX_MULTIPLY")  # GEMMs read dequantized FP16
    assert all(d == "HALF" for t, d in layers if t == "DEQUANTIZE")
    assert all(d == "FLOAT" for t, d in layers if t in ("NORMALIZATION", "SOFTMAX"))  # the FP32 islands
    assert all(d == "INT8" for t, d in layers if t == "QUANTIZE")


def test_fp16_islands_in_the_parsed_network(rtx_bundles):
    out, _ = rtx_bundles
    layers = _layers(out / "digits_vit" / "tensorrt-fp16.onnx")
    assert all(d == "HALF" for t, d in layers if t == "MATRIX_MULTIPLY")
    assert all(d == "FLOAT" for t, d in layers if t in ("NORMALIZATION", "SOFTMAX"))


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_rtx_engine_is_in_the_bundle_hashed_with_proxy_accuracy(rtx_bundles, name):
    from runtime.backends import backend
    out, reports = rtx_bundles
    manifest = json.loads((out / name / "manifest.json").read_text())
    ref_top1 = _row(reports[name], "pytorch", "fp32")["accuracy"]["top1"]
    for precision in ("fp16", "int8"):
        r = _row(reports[name], "tensorrt_rtx", precision)
        art = next(a for a in manifest["artifacts"] if a["target"] == "tensorrt_rtx" and a["precision"] == precision)
        engine = out / name / art["primary"]
        assert r["status"] == "built" and engine.is_file() and engine.suffix == ".engine"
        assert manifest["sha256"][art["primary"]] == sha256_file(engine)
        assert art["runtime_config"]["compute_capabilities"] and art["runtime_config"]["version"] == trt.__version__
        tol = tolerance_for("tensorrt_rtx", precision)
        assert r["passed"] is True and (ref_top1 - r["accuracy"]["top1"]) * 100 <= tol.top1_drop
        if backend("tensorrt_rtx").available() is not None:  # no GPU: proxy accuracy, no latency
            assert r["accuracy_kind"] == "proxy" and r["latency_ms"] is None
            assert any(n.startswith("NOT RUN here") for n in r["notes"])


def test_report_md_shows_the_parser_evidence(rtx_bundles):
    out, _ = rtx_bundles
    md = (out / "digits_swin" / "report.md").read_text()
    assert "tensorrt int8: NVIDIA check: tensorrt_rtx" in md and "Q/DQ layers" in md


def test_chosen_compute_capability_is_recorded(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--target", "tensorrt_rtx", "--fp16", "--compute-capability", "8.6",
                            "--out", tmp_path, "--runs", "2", "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "digits_vit" / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["target"] == "tensorrt_rtx")
    assert art["runtime_config"]["compute_capabilities"] == ["8.6"]
    code, _, err = run_cli(["digits_vit", "--target", "tensorrt_rtx", "--fp16", "--compute-capability", "5.0",
                            "--out", tmp_path / "o2", "--quiet"], capsys)
    assert code == 2 and "--compute-capability 5.0 is not one" in err and not (tmp_path / "o2" / "digits_vit").exists()


def _unknown_domain_onnx(path):
    node = helper.make_node("FancyOp", ["input"], ["logits"], name="my_custom_node", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))


def test_parser_rejection_names_the_node(tmp_path):
    from exporters.targets._tensorrt_onnx import nvidia_check
    _unknown_domain_onnx(tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="rejected bad.onnx at node 'my_custom_node'") as exc:
        nvidia_check(tmp_path / "bad.onnx")
    assert "\n" not in str(exc.value)


def test_parser_rejection_in_the_cli_is_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import exporters.targets.tensorrt as trt_target

    def bad_onnx(ctx, precision, io_fp16=False):
        dst = ctx.workdir / f"tensorrt-{precision}.onnx"
        _unknown_domain_onnx(dst)
        return dst, [], 0.0
    monkeypatch.setattr(trt_target, "prepare_onnx", bad_onnx)
    code, _, err = run_cli(["digits_vit", "--target", "tensorrt", "--fp16", "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 2 and err.count("error:") == 1 and "my_custom_node" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written, not even the --out folder


def test_engine_is_refused_with_one_line_where_it_cannot_run(rtx_bundles):
    from runtime.backends import backend
    if backend("tensorrt_rtx").available() is None:
        pytest.skip("a GPU is present: the engine can run, so there is no refusal to check")
    from runtime.backends._trt import check_engine_valid
    out, _ = rtx_bundles
    engine = out / "digits_vit" / "tensorrt_rtx-int8.engine"
    with pytest.raises(UserError, match="cannot run here") as exc:
        check_engine_valid(trt, engine.read_bytes(), engine)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_full_size_swin_t_parses_and_builds(tmp_path):
    from exporters.pipeline.stages import RunOptions, run
    rep = run(RunOptions(model="swin_t", targets=["tensorrt"], precision="fp16", data="digits", eval_size=4,
                         out=tmp_path, runs=2, warmup=1, quiet=True))
    check = _row(rep, "tensorrt", "fp16")["checks"]["trt_parse"]
    assert check["ok"] and check["engine_bytes"] > 50e6 and check["compute_layers_by_precision"]["HALF"] > 100


@pytest.mark.gpu
def test_rtx_engine_runs_on_the_gpu(rtx_bundles):
    from runtime.backends import backend
    why = backend("tensorrt_rtx").available()
    if why:
        pytest.skip(f"needs an NVIDIA GPU with cuda-python: {why}")
    import torch

    import runtime
    from exporters.models.zoo import create_model
    out, _ = rtx_bundles
    model, _ = create_model("digits_vit")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    with runtime.open(out / "digits_vit", target="tensorrt_rtx", precision="fp16") as s:
        np.testing.assert_allclose(s.logits(x), ref, atol=0.05)
    assert (out / "digits_vit" / "tensorrt_rtx-fp16.runtime-cache").is_file()
