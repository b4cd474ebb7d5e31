"""Core ML: packages built and validated on any OS; execution only on macOS."""
import platform

import pytest
import torch
from torch import nn

from runtime.errors import UserError

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'vitdeploy[coreml]')")


@pytest.fixture(scope="module")
def coreml_reports(tmp_path_factory):
    from exporters.pipeline.stages import RunOptions, run
    out = tmp_path_factory.mktemp("coreml")
    return out, {m: run(RunOptions(model=m, targets=["coreml"], precisions=["fp16", "int8"], data="digits",
                                   calib="digits", out=out, runs=3, warmup=1, quiet=True))
                 for m in ("digits_swin", "digits_vit")}


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_fp16_and_int8_packages_validate_and_hold_accuracy(coreml_reports, name):
    out, reports = coreml_reports
    rep = reports[name]
    ref = next(r for r in rep["results"] if r["target"] == "pytorch")["accuracy"]["top1"]
    for precision in ("fp16", "int8"):
        r = next(x for x in rep["results"] if x["target"] == "coreml" and x["precision"] == precision)
        assert r["status"] == "built" and r["passed"] is True, r["notes"]
        assert any(n.startswith("validated as a spec") for n in r["notes"])
        assert r["size_mb"] > 0 and (out / name / f"coreml-{precision}.mlpackage").is_dir()
        assert (ref - r["accuracy"]["top1"]) * 100 <= 1.0
        if platform.system() != "Darwin":
            assert r["latency_ms"] is None and r["accuracy_kind"] == "proxy"
    sizes = {x["precision"]: x["size_mb"] for x in rep["results"] if x["target"] == "coreml"}
    assert sizes["int8"] < sizes["fp16"]


def test_validation_checks_opset_dtype_and_io(coreml_reports):
    out, _ = coreml_reports
    from exporters.targets.coreml import OPSET, validate
    v = validate(out / "digits_vit" / "coreml-int8.mlpackage", (1, 3, 32, 32), 10, "int8")
    assert v["opset"] == OPSET and all(v["checks"].values())
    with pytest.raises(UserError, match="input_shape"):
        validate(out / "digits_vit" / "coreml-int8.mlpackage", (1, 3, 64, 64), 10, "int8")
    with pytest.raises(UserError, match="output_shape"):
        validate(out / "digits_vit" / "coreml-int8.mlpackage", (1, 3, 32, 32), 1000, "int8")


def test_image_input_package_is_exact_and_recorded(tmp_path, capsys):
    import json

    from tests.conftest import run_cli
    code, _, err = run_cli(["digits_vit", "--target", "coreml", "--image-input", "--out", tmp_path, "--runs", "2",
                            "--quiet"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "digits_vit" / "manifest.json").read_text())
    cfg = next(a for a in manifest["artifacts"] if a["target"] == "coreml")["runtime_config"]["input"]
    assert cfg["input_type"] == "image" and cfg["in_graph_normalization"]["mean"] == [0.5, 0.5, 0.5]
    spec = ct.models.MLModel(str(tmp_path / "digits_vit" / "coreml-fp16.mlpackage"), skip_model_load=True).get_spec()
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    # the in-graph normalisation on [0, 1] pixels equals the model on normalised inputs
    from exporters.models.zoo import create_model
    from exporters.targets.coreml import _Normalize
    model, spec_ = create_model("digits_vit")
    px = torch.rand(2, 3, 32, 32)
    norm = (px - 0.5) / 0.5
    with torch.no_grad():
        assert torch.allclose(_Normalize(model, (0.5,) * 3, (0.5,) * 3)(px), model(norm), atol=1e-5)


class _Unsupported(nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x.flatten(1) @ x.flatten(1).T).S


def test_unsupported_op_is_named():
    from exporters.targets.coreml import convert
    with pytest.raises(UserError, match="Core ML conversion failed at op '.*svd.*'"):
        convert(_Unsupported(), (2, 3, 8, 8), "fp16")


def test_naive_swin_failure_names_the_op():
    from exporters.models.zoo import create_model
    from exporters.targets.coreml import convert
    model, _ = create_model("digits_swin")
    with pytest.raises(UserError, match="Core ML conversion failed at op 'int'"):
        convert(model, (1, 3, 32, 32), "fp16")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "vit_s"])
def test_full_size_rewritten_models_convert(name, tmp_path):
    from exporters.graph.rewrites import apply_rewrites
    from exporters.models.zoo import create_model
    from exporters.targets.coreml import convert, validate
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    rewritten, _ = apply_rewrites(model, shape)
    ml = convert(rewritten, shape, "fp16")
    ml.save(str(tmp_path / "m.mlpackage"))
    assert all(validate(tmp_path / "m.mlpackage", shape, 1000, "fp16")["checks"].values())


@pytest.mark.macos
@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML executes only on macOS")
def test_predict_on_macos(coreml_reports):
    import runtime
    out, _ = coreml_reports
    s = runtime.open(out / "digits_vit", target="coreml", precision="fp16")
    assert s.logits(torch.zeros(1, 3, 32, 32).numpy()).shape == (1, 10)
