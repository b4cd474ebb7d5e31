"""Proof that can't be fooled: each hole a hostile round found, as a regression test. Where a machine with AMX
really corrupts OpenVINO's bf16 path, these use the fault injection of runtime/backends/base.py, so they hold on
any CPU: a corrupted configuration is one whose outputs come back negated."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import runtime
from runtime.backends.base import FAULT_ENV
from runtime.errors import UserError
from tests.conftest import cli_in_process
from tests.test_proof import as_built_fault, digit_png, other_machine

pytestmark = pytest.mark.slow


def _entry(bundle: Path, target: str, precision: str):
    from runtime.manifest import read_manifest
    return next(a for a in read_manifest(bundle).artifacts if (a.target, a.precision) == (target, precision))


def _cache_files() -> list[Path]:
    from runtime.verdicts import cache_root
    return sorted((cache_root() / "verify").rglob("*.json"))


def _edit_records(edit) -> int:
    """Apply ``edit(dict)`` to every verdict-like dict (one with a ``config``) in every cache file; returns how many."""
    count = 0

    def walk(node):
        nonlocal count
        if isinstance(node, dict):
            if "config" in node and "passed" in node:
                edit(node)
                count += 1
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    for path in _cache_files():
        data = json.loads(path.read_text())
        walk(data)
        path.write_text(json.dumps(data))
    return count


# --- 1. hash before judging -------------------------------------------------------------------------------------

def test_a_swapped_then_restored_artefact_is_judged_on_its_own_bytes(digits_bundles, tmp_path, monkeypatch):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_swin", tmp_path / "b")
    art = _entry(copy, "openvino", "int8")
    weights = copy / "openvino-int8.bin"
    genuine = weights.read_bytes()
    weights.write_bytes(genuine + b"\0")  # still loads, still passes: a swap whose verdict must not be recorded
    with pytest.raises(UserError, match="sha256 mismatch for openvino-int8.bin"):
        runtime.open(copy, target="openvino", precision="int8")
    weights.write_bytes(genuine)
    monkeypatch.setenv(FAULT_ENV, as_built_fault(art.runtime_config))  # the genuine artefact fails here as built
    with pytest.raises(UserError, match="failed its golden check here"):
        runtime.open(copy, target="openvino", precision="int8", repair=False)
    monkeypatch.delenv(FAULT_ENV)
    weights.write_bytes(bytes(len(genuine)))  # the reverse: a brief tamper that fails ...
    with pytest.raises(UserError, match="sha256 mismatch"):
        runtime.open(copy, target="openvino", precision="int8")
    weights.write_bytes(genuine)  # ... leaves no failed verdict behind: the genuine artefact passes
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.passed and s.verdict.source == "golden check"


# --- 2. NaN and inf never pass ----------------------------------------------------------------------------------

def test_a_gate_fails_on_any_non_finite_output():
    from runtime.accuracy import compare, judge
    from runtime.tolerances import tolerance_for
    ref = np.eye(4, dtype=np.float32) * 3
    for bad in (np.inf, np.nan, -np.inf):
        out = ref.copy()
        out[2, 1] = bad
        acc = compare(ref, out)
        passed, why = judge(acc, None, tolerance_for("onnxruntime", "fp32"))
        assert not passed and acc.nonfinite == 1 and "non-finite outputs: 1 values are NaN or inf" in why[0]
        assert np.isfinite([acc.cosine_min, acc.max_abs_err]).all()  # the report's figures stay numbers


def test_a_checkpoint_with_inf_is_refused_before_any_export(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from exporters.models.zoo import DATA
    state = load_file(DATA / "digits_vit.safetensors")
    state["head.bias"][3] = float("inf")
    save_file(state, tmp_path / "inf.safetensors")
    code, _, err = cli_in_process(capsys, "exporters", "digits_vit", "--weights", tmp_path / "inf.safetensors",
                                  "--out", tmp_path / "o", "--quiet")
    assert code == 2 and "NaN or inf" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


class _Inf(nn.Module):
    def __init__(self, dense: bool):
        super().__init__()
        self.dense, self.conv = dense, nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x) + float("inf")
        return y if self.dense else y.mean((2, 3))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_module_whose_output_is_inf_is_refused(task, tmp_path):
    import exporters
    with pytest.raises(UserError, match="NaN or inf"):
        exporters.export(_Inf(task == "segmentation"), input_shape=(3, 8, 8), task=task, out=tmp_path)


def test_runtime_refuses_nan_outputs_instead_of_printing_them(digits_bundles, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    from runtime.manifest import sha256_file
    out, _ = digits_bundles
    copy = shutil.copytree(out / "digits_vit", tmp_path / "b")
    model = onnx.load(copy / "model.onnx")
    for init in model.graph.initializer:
        if init.name.endswith("head.bias"):
            init.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32),
                                                  init.name))
    onnx.save(model, copy / "model.onnx")
    m = json.loads((copy / "manifest.json").read_text())
    m["sha256"]["model.onnx"] = sha256_file(copy / "model.onnx")
    (copy / "manifest.json").write_text(json.dumps(m))
    code, stdout, err = cli_in_process(capsys, "runtime", copy, digit_png(tmp_path), "--json", "--target",
                                       "onnxruntime", "--precision", "fp32", "--verify", "never")
    assert code == 2 and "returned NaN or inf" in err and "Traceback" not in err, (stdout, err)
    assert "NaN" not in stdout


# --- 3. the verdict cache is a hint, never proof ----------------------------------------------------------------

def test_a_hand_edited_verdict_is_ignored_and_the_golden_check_runs(digits_bundles, tmp_path, monkeypatch):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_swin", tmp_path / "b")
    art = _entry(copy, "openvino", "int8")
    monkeypatch.setenv(FAULT_ENV, as_built_fault(art.runtime_config))
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.repaired and s.runner.fault is None
    corrupted = dict(art.runtime_config)

    def to_corrupted(v):
        v["config"], v["repaired"], v["passed"] = dict(corrupted), False, True
    assert _edit_records(to_corrupted) >= 1
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.source == "golden check" and s.runner.fault is None  # the corrupted config is not served


def test_a_recorded_failure_whose_passed_is_a_string_is_not_a_pass(digits_bundles, tmp_path, monkeypatch):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_vit", tmp_path / "b")
    monkeypatch.setenv(FAULT_ENV, "openvino:*")
    with pytest.raises(UserError, match="failed its golden check here"):
        runtime.open(copy, target="openvino", precision="int8")

    def truthy(v):
        v["passed"] = "no"
    assert _edit_records(truthy) >= 1
    with pytest.raises(UserError, match="failed its golden check here"):
        runtime.open(copy, target="openvino", precision="int8")


def test_a_record_made_for_another_user_is_not_trusted(digits_bundles, tmp_path, monkeypatch):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_vit", tmp_path / "b")
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.source == "golden check"
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.source == "recorded"
    monkeypatch.setenv("VITDEPLOY_VERDICT_KEY", str(tmp_path / "another-users.key"))  # a cache copied over
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.source == "golden check"


# --- 4. a verdict reached with repair off stands only for runs with repair off ----------------------------------

def test_a_no_repair_failure_does_not_disable_repair_later(digits_bundles, tmp_path, monkeypatch, capsys):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_swin", tmp_path / "b")
    art = _entry(copy, "openvino", "int8")
    monkeypatch.setenv(FAULT_ENV, as_built_fault(art.runtime_config))
    with pytest.raises(UserError, match="failed its golden check here"):
        runtime.open(copy, target="openvino", precision="int8", repair=False)
    with runtime.open(copy, target="openvino", precision="int8") as s:  # repair on: the ladder runs
        assert s.verdict.passed and s.verdict.repaired and s.runner.fault is None
    with pytest.raises(UserError, match="failed its golden check here"):  # and off again: still refused
        runtime.open(copy, target="openvino", precision="int8", repair=False)


# --- 9, 10. malformed gates and golden sets: exit 2 ------------------------------------------------------------

@pytest.mark.parametrize("gates", [{}, {"cosine_min": "high"}, {"cosine_min": 0.9, "top1_agreement": 0.99,
                                                                "top1_drop": 0.5, "gate_agreement": "yes",
                                                                "golden_max_flips": 1}])
def test_malformed_gates_are_refused_when_the_manifest_is_read(gates, digits_bundles, tmp_path, capsys):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_vit", tmp_path / "b")
    m = json.loads((copy / "manifest.json").read_text())
    for art in m["artifacts"]:
        art["verification"]["gates"] = gates
    (copy / "manifest.json").write_text(json.dumps(m))
    code, _, err = cli_in_process(capsys, "runtime", "verify", copy)
    assert code == 2 and "gates" in err and "not a valid vitdeploy manifest" in err and "Traceback" not in err, err


@pytest.mark.parametrize("keep", [0, 1])
def test_a_golden_set_must_hold_the_samples_its_manifest_names(keep, digits_bundles, tmp_path, capsys):
    from runtime.manifest import sha256_file
    out, _ = digits_bundles
    copy = other_machine(out / "digits_vit", tmp_path / "b")
    with np.load(copy / "golden.npz") as z:
        pixels, reference = z["pixels"][:keep], z["reference"][:keep]
    np.savez_compressed(copy / "golden.npz", pixels=pixels, reference=reference)
    m = json.loads((copy / "manifest.json").read_text())
    m["sha256"]["golden.npz"] = sha256_file(copy / "golden.npz")
    (copy / "manifest.json").write_text(json.dumps(m))
    code, _, err = cli_in_process(capsys, "runtime", "verify", copy)
    assert code == 2 and f"holds {keep} samples; the manifest says {m['golden']['samples']}" in err, err
    assert "Traceback" not in err


# --- 13. raw exceptions from the API ---------------------------------------------------------------------------

class _NoClasses(nn.Module):
    def forward(self, x):
        return x[:, :0]


class _Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.bias.expand(1, 5) * 2


def test_the_api_refuses_in_one_line_what_it_cannot_export(tmp_path):
    import exporters
    with pytest.raises(UserError, match="no class channels"):
        exporters.export(_NoClasses(), input_shape=(3, 8, 8), task="segmentation", out=tmp_path)
    with pytest.raises(UserError, match="do not depend on its input"):
        exporters.export(_Constant(), input_shape=(3, 8, 8), out=tmp_path, data="digits")
    with pytest.raises(UserError, match="trust must be the path of a PEM public key"):
        runtime.open(tmp_path, trust=123)


# --- 19. --device where the backend takes none ------------------------------------------------------------------

def test_a_device_for_a_backend_that_takes_none_is_refused(digits_bundles, capsys):
    out, _ = digits_bundles
    code, _, err = cli_in_process(capsys, "runtime", "bench", out / "digits_vit", "--target", "onnxruntime",
                                  "--device", "GPU", "--runs", "2")
    assert code == 2 and "--device is for openvino; onnxruntime chooses its own device" in err, err
    with runtime.open(out / "digits_vit", device="CPU", verify="never") as s:  # no target: one that takes it
        assert s.target == "openvino"
