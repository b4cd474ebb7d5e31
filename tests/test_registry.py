"""The target and backend registries: everything user-facing is derived from them."""
import dataclasses

import pytest

from exporters.targets import Target, option_fields, resolve_options, targets
from runtime.backends import backends
from runtime.errors import UserError


def test_every_target_names_a_registered_backend_and_valid_precisions():
    assert list(targets()) == ["onnxruntime", "openvino", "tensorrt", "tensorrt_rtx", "coreml"]
    for t in targets().values():
        assert isinstance(t, Target) and t.backend in backends()
        assert set(t.precisions) <= {"fp32", "fp16", "int8"} and t.precisions
        assert dataclasses.is_dataclass(t.options)


def test_exporter_cli_choices_and_flags_come_from_the_registry():
    from exporters.__main__ import parser
    p = parser()
    action = next(a for a in p._actions if a.dest == "target")
    assert action.metavar == "{" + ",".join([*targets(), "all"]) + "}"  # --target: one, a comma list, or all
    for name in [*targets(), "all"]:
        assert p.parse_args(["m", "--target", name]).target == [name]
    assert p.parse_args(["m", "--target", ",".join(targets())]).target == list(targets())
    flags = {s for a in p._actions for s in a.option_strings}
    assert set(option_fields()) <= flags and {"--io-fp16", "--device", "--compute-units", "--image-input"} <= flags


def test_runtime_cli_choices_and_preference_come_from_the_backends():
    import argparse

    from runtime.__main__ import _common
    p = argparse.ArgumentParser()
    _common(p)
    action = next(a for a in p._actions if a.dest == "target")
    assert list(action.choices) == list(backends())
    ranks = [b.rank for b in backends().values()]
    assert ranks == sorted(ranks)


def test_options_are_typed_per_target_and_foreign_flags_refused():
    opts = resolve_options(["tensorrt", "openvino"], {"io_fp16": True, "device": "CPU"})
    assert opts["tensorrt"].io_fp16 is True and opts["openvino"].device == "CPU"
    with pytest.raises(UserError, match="--image-input applies to coreml"):
        resolve_options(["onnxruntime"], {"image_input": True})
    with pytest.raises(UserError, match="--compute-units must be one of"):
        resolve_options(["coreml"], {"compute_units": "TPU"})


def test_precision_refusal_names_the_reason():
    with pytest.raises(UserError, match="not offered on the CPU"):
        targets()["onnxruntime"].check_precision("fp16")
    with pytest.raises(UserError, match="tensorrt builds fp16 or int8"):
        targets()["tensorrt"].check_precision("fp32")
    targets()["coreml"].check_precision("fp32")  # accepted for comparison, though not in --target all


def test_unavailable_backend_says_how_to_install(monkeypatch):
    b = backends()["coreml"]
    assert "macOS" in b.available() or "Darwin" in b.available() or b.available() is None
    fake = dataclasses.replace(backends()["onnxruntime"], sdk="no_such_sdk_module")
    assert "install it with: pip install onnxruntime" in fake.available()
