"""TensorRT: the explicit-precision ONNX (always), and the engine (only with TensorRT and a GPU)."""
import importlib.util
import json

import onnx
import pytest

from runtime.tolerances import tolerance_for
from tests.conftest import run_cli


def _trt_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (it needs NVIDIA's packages and a GPU)"
    from exporters.targets.tensorrt import engine_available
    return engine_available()


@pytest.fixture(scope="module")
def trt_bundles(tmp_path_factory):
    from exporters.pipeline.stages import RunOptions, run
    out = tmp_path_factory.mktemp("trt")
    reports = {m: run(RunOptions(model=m, targets=["tensorrt", "onnxruntime"], precisions=["fp32", "fp16", "int8"],
                                 data="digits", calib="digits", out=out, runs=5, warmup=1, quiet=True))
               for m in ("digits_swin", "digits_vit")}
    return out, reports


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_qdq_structure(trt_bundles):
    out, _ = trt_bundles
    model = onnx.load(str(out / "digits_swin" / "tensorrt-int8.onnx"))
    prod = _producers(model)
    inits = {i.name: i for i in model.graph.initializer}
    quantized = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                 and all(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input[:2])]
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert len(quantized) >= len(matmuls) - 2  # all but the patch embedding and the head
    # attention matmuls (activation x activation) are quantized on both inputs
    act_act = [n for n in quantized if not any(prod[i].input[0] in inits for i in n.input[:2])]
    assert len(act_act) >= 4
    for n in model.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "Erf"):
            assert not any(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input), n.name
    # TensorRT wants symmetric INT8: every zero point is 0
    from onnx import numpy_helper
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not numpy_helper.to_array(inits[n.input[2]]).any()
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and numpy_helper.to_array(inits[n.input[1]]).size > 1]
    assert per_channel  # weights per channel


def test_fp16_has_fp32_islands(trt_bundles):
    out, _ = trt_bundles
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "digits_vit" / "tensorrt-fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    islands = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert islands and all(types.get(n.input[0]) == f32 for n in islands)
    assert model.graph.input[0].type.tensor_type.elem_type == f32  # I/O kept FP32 by default
    weights = [i for i in model.graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == f16 for i in weights)


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_deferred_result_with_proxy_accuracy(trt_bundles, name):
    _, reports = trt_bundles
    rep = reports[name]
    ref = next(r for r in rep["results"] if r["target"] == "pytorch")["accuracy"]["top1"]
    for precision in ("fp16", "int8"):
        r = next(x for x in rep["results"] if x["target"] == "tensorrt" and x["precision"] == precision)
        if _trt_missing() is None:
            assert r["status"] == "built"
            continue
        assert r["status"] == "deferred" and r["latency_ms"] is None
        assert r["accuracy_kind"] == "proxy" and any("python -m runtime build" in n for n in r["notes"])
        tol = tolerance_for("tensorrt", precision)
        assert r["passed"] is True and (ref - r["accuracy"]["top1"]) * 100 <= tol.top1_drop


def test_fp16_conversion_with_shared_layernorm_constants(tmp_path):
    """Random-init models have identical LayerNorm weights, which onnxslim merges into one initializer."""
    from exporters.graph.onnx import export_onnx
    from exporters.graph.rewrites import apply_rewrites
    from exporters.models.zoo import build_digits
    from exporters.targets._tensorrt_onnx import fp16_onnx
    model, _ = apply_rewrites(build_digits("digits_swin").eval(), (1, 3, 32, 32))
    exp = export_onnx(model, (1, 3, 32, 32), tmp_path / "m.onnx")
    src = onnx.load(str(exp.path))
    ln_inputs = [n.input[1] for n in src.graph.node if n.op_type == "LayerNormalization"]
    assert len(set(ln_inputs)) < len(ln_inputs)  # the sharing this test is about is really there
    fp16_onnx(exp.path, tmp_path / "h.onnx", io_fp16=False)
    onnx.checker.check_model(onnx.load(str(tmp_path / "h.onnx")), full_check=True)


def test_deferred_cli_exits_zero_and_manifest_records_it(tmp_path, capsys):
    code, out, err = run_cli(["digits_vit", "--target", "tensorrt", "--int8", "--out", tmp_path, "--runs", "2",
                              "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "digits_vit" / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["target"] == "tensorrt")
    assert art["status"] == ("deferred" if _trt_missing() else "built")
    assert art["runtime_config"]["onnx"] in manifest["sha256"]


def test_runtime_build_without_tensorrt_is_one_line(trt_bundles, capsys):
    if _trt_missing() is None:
        pytest.skip("TensorRT is present: the refusal path does not apply")
    from runtime.__main__ import main
    out, _ = trt_bundles
    assert main(["build", str(out / "digits_vit"), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


needs_trt = pytest.mark.skipif(_trt_missing() is not None, reason=f"needs TensorRT and a CUDA GPU: {_trt_missing()}")


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_build_outputs_and_caches(trt_bundles, precision):
    import numpy as np

    import runtime
    from runtime.backends.tensorrt import build_bundle_engine
    out, _ = trt_bundles
    bundle = out / "digits_vit"
    first = build_bundle_engine(bundle, precision=precision)
    assert any((bundle / "engines").glob("timing-*.cache"))
    again = build_bundle_engine(bundle, precision=precision)  # the engine cache hit
    assert again == first
    manifest = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["target"] == "tensorrt" and a["precision"] == precision
               and a["status"] == "built")
    assert art["engine"].get("engine_cache_hit") is True
    s, ref = runtime.open(bundle, target="tensorrt", precision=precision), runtime.open(bundle, target="onnxruntime")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    a, b = s.logits(x), ref.logits(x)
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_kept_matmul_becomes_an_fp32_island_in_fp16(tmp_path):
    """The accuracy budget's keep reaches the FP16 ONNX: the kept MatMul/Gemm runs in FP32, the others in FP16."""
    from exporters.graph.onnx import export_onnx
    from exporters.graph.rewrites import apply_rewrites
    from exporters.models.zoo import build_digits
    from exporters.targets._tensorrt_onnx import fp16_onnx, kept_nodes
    from exporters.verify.probes import compute_outputs_in, probes_from_export
    model, _ = apply_rewrites(build_digits("digits_vit").eval(), (1, 3, 32, 32))
    exp = export_onnx(model, (1, 3, 32, 32), tmp_path / "m.onnx")
    probes = {p.module: p for p in probes_from_export(model, (1, 3, 32, 32))}
    keep = compute_outputs_in(exp.path, probes["blocks.2.mlp"].scope)
    names = kept_nodes(onnx.load(str(exp.path)), keep)
    assert len(names) == 2, names  # fc1 and fc2
    fp16_onnx(exp.path, tmp_path / "h.onnx", io_fp16=False, keep=keep)
    half = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "h.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.output)}
    compute = [n for n in half.graph.node if n.op_type in ("MatMul", "Gemm")]
    kept = [n for n in compute if n.name in names]
    assert len(kept) == 2 and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in kept)
    others = [n for n in compute if n.name not in names]
    assert others and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in others)
