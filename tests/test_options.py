"""The one options gate (exporters/pipeline/options.py): the CLI, the API and a run of several sizes go through it,
before any model is built."""
from __future__ import annotations

import pytest

import exporters.pipeline.multisize
import exporters.pipeline.stages
from exporters import export
from exporters.__main__ import main
from exporters.pipeline.options import RunOptions, validate
from runtime.errors import UserError
from runtime.values import usable_cores


@pytest.fixture
def no_model(monkeypatch):
    def built(*a, **k):
        raise AssertionError("a model was built before the options were checked")
    for stage in (exporters.pipeline.stages, exporters.pipeline.multisize):  # where the pipeline builds models
        monkeypatch.setattr(stage, "create_model", built)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "int4"}, "precision takes fp32, fp16, int8 or auto"),
    ({"precision": ["fp32", "bf16"]}, r"got \['bf16'\]"),
    ({"targets": []}, "no target named"),
    ({"targets": "tensorflow"}, "unknown target 'tensorflow'"),
    ({"batch": 0}, "batch"),
    ({"max_drop": -1.0}, "max_drop|max-drop"),
    ({"keep": "some"}, "keep must be one of all, selected"),
    ({"img_size": "224,abc"}, "img_size|img-size"),
    ({"features": [-1]}, "features"),
])
def test_every_api_error_that_needs_no_model_comes_before_one_is_built(tmp_path, no_model, kwargs, message):
    with pytest.raises(UserError, match=message):
        export("digits_swin", out=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_features_zero_is_an_index_not_off(tmp_path, no_model):
    """features=0 asks for map 0: the backbone's own checks apply to it (a drop of top-1 has no meaning there)."""
    with pytest.raises(UserError, match="--features: --max-drop"):
        export("digits_swin", features=0, max_drop=1.0, out=tmp_path)
    assert validate(RunOptions(model="digits_swin", features=0)).opts.feature_indices == [0]


def test_the_cli_goes_through_the_same_gate(tmp_path, no_model, capsys):
    assert main(["digits_swin", "--target", "openvino", "--precision", "fp32", "--recipe", "auto",
                 "--out", str(tmp_path)]) == 2
    assert "--recipe applies to" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_resolved_options_say_what_the_run_will_do():
    r = validate(RunOptions(model="digits_vit", targets=["onnxruntime", "openvino"], precision="int8",
                            img_size="32,48"))
    assert r.plan == [("onnxruntime", "int8"), ("openvino", "int8")]
    assert r.sizes == [(32, 32), (48, 48)] and r.threads == usable_cores()
    assert validate(RunOptions(model="digits_vit", threads=1)).threads == 1
