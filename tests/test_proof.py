"""Proven where it runs: verdicts and the golden set in the bundle, the runtime serving only proven artefacts,
the golden check on a machine that differs, and the repair ladder, proven anywhere through fault injection
(``VITDEPLOY_TEST_FAULT``, runtime/backends/base.py) and, on a CPU with AMX, on the real corruption."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import runtime
from runtime.backends.base import FAULT_ENV
from runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def as_built_fault(config: dict) -> str:
    """A fault clause that corrupts exactly this OpenVINO configuration, not the ladder's alternatives."""
    return (f"openvino:inference_precision={config['inference_precision']},"
            f"snippets_mode={config.get('snippets_mode')},execution_mode={config.get('execution_mode')}")


def cli(*args, env=None):
    import os
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def one_error_line(err: str, match: str) -> None:
    assert "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1 and match in err, err


def other_machine(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` whose verdicts say they were reached on another CPU (the manifest is not hashed); each
    copy's CPU is named after ``dest``, so verdicts recorded for one copy are not another's."""
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    for art in m["artifacts"]:
        art["verification"]["proven_on"]["cpu"] = f"Some Other CPU ({dest})"
        art["verification"]["proven_on"]["isa"] = ["avx2", "amx_int8", "amx_bf16"]
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def digit_png(tmp_path: Path) -> Path:
    from calibration.digits import digits_subset
    images, _, _ = digits_subset("holdout")
    p = tmp_path / "digit.png"
    Image.fromarray(images[0]).save(p)
    return p


# --- what a bundle carries --------------------------------------------------------------------------------------

def test_every_artefact_records_its_verdict_and_the_machine(digits_bundles):
    from runtime.environment import NUMERIC_FLAGS
    from runtime.manifest import read_manifest
    out, reports = digits_bundles
    m = read_manifest(out / "digits_swin")
    rows = {(r["target"], r["precision"]): r for r in reports["digits_swin"]["results"]}
    assert len(m.artifacts) == 5
    for art in m.artifacts:
        v = art.verification
        assert v is not None and v.passed is rows[(art.target, art.precision)]["passed"] and v.kind == "direct"
        assert v.values["cosine_min"] == pytest.approx(rows[(art.target, art.precision)]["accuracy"]["cosine_min"])
        assert v.gates["cosine_min"] > 0 and v.gates["golden_max_flips"] >= 0 and v.runtime_config == art.runtime_config
        fp = v.proven_on
        assert fp["cpu"] and set(fp["isa"]) <= set(NUMERIC_FLAGS) and fp["sdk"].startswith(art.target.split("_")[0])
        assert v.golden["passed"] and v.golden["samples"] == m.golden.samples


def test_golden_set_is_small_hashed_and_holds_the_worst_samples(digits_bundles):
    from runtime.golden import read_golden
    from runtime.manifest import read_manifest
    out, reports = digits_bundles
    bundle = out / "digits_swin"
    m = read_manifest(bundle)
    g = read_golden(bundle, m)
    assert m.golden.file in m.sha256 and 8 <= len(g.pixels) <= 32 and m.golden.bytes < 4_000_000
    assert g.pixels.dtype == np.uint8 and g.pixels.shape[1:] == (32, 32, 3)
    assert reports["digits_swin"]["golden"]["samples"] == len(g.pixels)
    assert "Golden set:" in (bundle / "report.md").read_text()


def test_golden_pixels_round_trip_through_the_preprocessing():
    from runtime.preprocess import Preprocessing, normalise, pixels_from_inputs
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for pp in (Preprocessing(input_size=(16, 16)), Preprocessing(input_size=(16, 16), channel_order="BGR",
                                                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))):
        assert np.array_equal(pixels_from_inputs(normalise(px, pp), pp), px)


def test_golden_gates_count_flips_against_the_eval_sets_allowance():
    from runtime.golden import judge_golden
    ref = np.eye(10, dtype=np.float32)[np.arange(10)] * 5
    out = ref.copy()
    gates = {"cosine_min": 0.9, "golden_max_flips": 1, "gate_agreement": True}
    assert judge_golden(ref, out, gates)[0]
    out[0], out[1] = ref[1], ref[0]  # two flips, cosine 0 on both
    ok, vals, why = judge_golden(ref, out, gates)
    assert not ok and vals["flips"] == 2 and any("flips 2 of 10 > 1 allowed" in w for w in why)
    nan = ref.copy()
    nan[3, 3] = np.nan
    assert "non-finite" in judge_golden(ref, nan, gates)[2][0]
    assert judge_golden(ref, -ref, {**gates, "gate_agreement": False})[2][0].startswith("golden cosine_min")


# --- the runtime serves only what is proven here ---------------------------------------------------------------

def test_same_machine_opens_without_a_check_and_another_machine_checks_first(digits_bundles, tmp_path):
    out, _ = digits_bundles
    with runtime.open(out / "digits_vit", target="openvino", precision="int8") as s:
        assert s.verdict.source == "build"
    copy = other_machine(out / "digits_vit", tmp_path / "b")
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.source == "golden check" and s.verdict.passed and not s.verdict.repaired
        assert any("cpu: Some Other CPU" in d for d in s.verdict.differs)
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.source == "recorded"  # recorded outside the bundle, for this machine
    with runtime.open(copy, target="openvino", precision="int8", verify="always") as s:
        assert s.verdict.source == "golden check"
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in (out / "digits_vit").iterdir())


def test_a_corrupted_configuration_on_another_machine_is_repaired(digits_bundles, tmp_path, monkeypatch, capsys):
    from runtime.manifest import read_manifest
    out, _ = digits_bundles
    copy = other_machine(out / "digits_swin", tmp_path / "b")
    art = next(a for a in read_manifest(copy).artifacts if (a.target, a.precision) == ("openvino", "int8"))
    monkeypatch.setenv(FAULT_ENV, as_built_fault(art.runtime_config))
    with runtime.open(copy, target="openvino", precision="int8") as s:
        assert s.verdict.passed and s.verdict.repaired and s.verdict.config != art.runtime_config
        assert s.runner.fault is None  # the configuration running is not the corrupted one
        assert s.predict([digit_png(tmp_path)])[0].labels
    err = capsys.readouterr().err
    assert "openvino int8 as built failed its golden check here" in err and "repaired: runs with" in err


def test_an_artefact_that_fails_here_is_skipped_for_the_next_proven_one(digits_bundles, tmp_path, monkeypatch, capsys):
    out, _ = digits_bundles
    copy = other_machine(out / "digits_vit", tmp_path / "b")
    monkeypatch.setenv(FAULT_ENV, "openvino:*")
    with runtime.open(copy) as s:
        assert s.target == "onnxruntime" and s.verdict.source == "golden check"
    err = capsys.readouterr().err
    assert "openvino int8 failed its golden check here" in err and "running onnxruntime" in err
    with pytest.raises(UserError, match="no artefact of the bundle is proven to run correctly here"):
        runtime.open(copy, target="openvino", precision="int8")
    monkeypatch.setenv(FAULT_ENV, "openvino:*;onnxruntime:*")
    with runtime.open(copy, target="openvino", precision="int8", allow_unverified=True) as s:
        assert s.verdict.source.startswith("not checked") and s.target == "openvino"


def test_tampered_golden_set_is_refused(digits_bundles, tmp_path):
    from runtime.manifest import sha256_file
    out, _ = digits_bundles
    copy = tmp_path / "b"
    shutil.copytree(out / "digits_vit", copy)
    with open(copy / "golden.npz", "ab") as f:
        f.write(b"\0")
    code, _, err = cli("runtime", "verify", copy)
    assert code == 2
    one_error_line(err, "sha256 mismatch for golden.npz")
    (copy / "golden.npz").write_bytes(b"PK\x03\x04 not an npz")  # forged together with its hash
    m = json.loads((copy / "manifest.json").read_text())
    m["sha256"]["golden.npz"] = sha256_file(copy / "golden.npz")
    (copy / "manifest.json").write_text(json.dumps(m))
    code, _, err = cli("runtime", "verify", copy)
    assert code == 2
    one_error_line(err, "golden set golden.npz is unreadable")


def test_runtime_verify_passes_a_good_bundle_and_fails_a_corrupted_configuration(digits_bundles):
    from runtime.backends.openvino import alternatives
    from runtime.manifest import read_manifest
    out, _ = digits_bundles
    bundle = out / "digits_vit"
    code, stdout, err = cli("runtime", "verify", bundle)
    assert code == 0, err
    assert "| openvino int8 | passed | passed |" in stdout and "| onnxruntime fp32 | passed | passed |" in stdout
    code, stdout, _ = cli("runtime", "verify", bundle, "--target", "openvino", "--precision", "int8",
                          env={FAULT_ENV: "openvino:*"})
    assert code == 1 and "| openvino int8 | passed | **FAILED** |" in stdout
    art = next(a for a in read_manifest(bundle).artifacts if (a.target, a.precision) == ("openvino", "int8"))
    ladder = [name for name, _ in alternatives(art.runtime_config)]  # what this CPU offers (f32 hint or not)
    assert "golden cosine_min" in stdout and "short by" in stdout
    assert ladder and all(f"{name}: FAILED" in stdout for name in ladder)
    code, stdout, _ = cli("runtime", "verify", bundle, "--json", "--target", "onnxruntime", "--precision", "int8",
                          "--no-repair", env={FAULT_ENV: "onnxruntime:graph_optimization_level=None"})
    rows = json.loads(stdout)
    assert code == 1 and len(rows) == 1 and len(rows[0]["attempts"]) == 1 and not rows[0]["passed"]


# --- repair at export ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faulted_exports(tmp_path_factory):
    """digits_swin INT8 with OpenVINO's as-built configuration corrupted: OpenVINO repaired, and ONNX Runtime +
    OpenVINO with --no-repair."""
    import os

    from exporters.pipeline.stages import RunOptions, run
    from runtime.backends.openvino import half_hint
    out = tmp_path_factory.mktemp("faulted")
    fault = as_built_fault({"inference_precision": half_hint("CPU")})
    os.environ[FAULT_ENV] = fault
    try:
        reports = {}
        for repair, targets in ((True, ["openvino"]), (False, ["onnxruntime", "openvino"])):
            reports[repair] = run(RunOptions(model="digits_swin", targets=targets, precision="int8",
                                             out=out / str(repair), runs=5, warmup=1, quiet=True, repair=repair))
    finally:
        del os.environ[FAULT_ENV]
    return out, reports, fault


def test_export_repairs_a_failed_row_with_a_safe_configuration(faulted_exports):
    from runtime.manifest import read_manifest
    out, reports, _ = faulted_exports
    row = next(r for r in reports[True]["results"] if r["target"] == "openvino")
    rep = row["checks"]["repair"]
    assert row["passed"] and rep["kept"] and rep["attempts"][0]["name"] == "as built"
    assert not rep["attempts"][0]["passed"] and rep["attempts"][0]["values"]["cosine_min"] < 0
    kept = next(a for a in rep["attempts"] if a["kept"])
    assert kept["passed"] and kept["p50_ms"] > 0 and row["accuracy"]["cosine_min"] >= 0.99
    art = next(a for a in read_manifest(out / "True" / "digits_swin").artifacts if a.target == "openvino")
    assert art.runtime_config == kept["config"] and art.verification.repaired and art.verification.passed
    md = (out / "True" / "digits_swin" / "report.md").read_text()
    assert "**Repair, openvino int8** (failed its gate as built): repaired with" in md


def test_without_repair_the_failed_row_stays_failed_and_is_never_served(faulted_exports, tmp_path):
    out, reports, fault = faulted_exports
    row = next(r for r in reports[False]["results"] if r["target"] == "openvino")
    assert row["passed"] is False and "repair" not in row["checks"] and "budget" not in row["checks"]
    bundle = out / "False" / "digits_swin"
    img = digit_png(tmp_path)
    code, stdout, err = cli("runtime", bundle, img, "--json", env={FAULT_ENV: fault})
    assert code == 0 and json.loads(stdout)["target"] == "onnxruntime", err
    assert "openvino int8 failed at build" in err and "running onnxruntime int8 instead" in err
    code, _, err = cli("runtime", bundle, img, "--target", "openvino", "--precision", "int8")
    assert code == 2
    one_error_line(err, "openvino int8 failed at build")
    code, stdout, err = cli("runtime", bundle, img, "--target", "openvino", "--precision", "int8", "--allow-unverified")
    assert code == 0 and "because unverified artefacts were allowed" in err


def test_onnxruntime_ladder_lowers_the_optimisation_level(digits_bundles):
    from runtime.backends.onnxruntime import alternatives, open_artifact
    out, _ = digits_bundles
    names = [c["graph_optimization_level"] for _, c in alternatives({"providers": ["CPUExecutionProvider"]})]
    assert names == ["EXTENDED", "BASIC"] and alternatives({"graph_optimization_level": "BASIC"}) == []
    with open_artifact(out / "digits_vit" / "model.onnx", {"graph_optimization_level": "BASIC"}, None, 1) as r:
        assert r.describe()["graph_optimization_level"] == "BASIC"


def test_ladder_gates_the_fastest_first_and_never_gates_what_a_faster_pass_makes_moot():
    import time

    from runtime.backends import Runner
    from runtime.repair import run_ladder
    speeds = {"slow": 40.0, "fast": 2.0, "fastest but wrong": 0.5}

    class Sleepy(Runner):
        input_name, input_shape = "input", [1, 2]

        def __init__(self, name):
            super().__init__()
            self.name = name

        def infer_impl(self, x):
            time.sleep(speeds[self.name] / 1000)
            return {"logits": x}

    def ladder(wrong: set):
        gated = []

        def judge(r):
            gated.append(r.name)
            return r.name not in wrong, {"cosine_min": 0.0 if r.name in wrong else 1.0}, ["wrong"] * (r.name in wrong)
        attempts, best = run_ladder([(n, {"n": n}) for n in speeds], lambda c: Sleepy(c["n"]), judge,
                                    lambda r: {"input": np.zeros((1, 2), np.float32)}, runs=3)
        return gated, {a.name: a for a in attempts}, best
    gated, attempts, best = ladder({"fastest but wrong"})
    assert gated == ["fastest but wrong", "fast"] and best.name == "fast" and best.p50_ms > 0
    assert not attempts["slow"].passed and attempts["slow"].skipped.startswith("fast passed and was faster")
    assert "not gated" in attempts["slow"].line()
    gated, attempts, best = ladder({"fastest but wrong", "fast"})  # only the slow one is right: it is gated, kept
    assert gated == ["fastest but wrong", "fast", "slow"] and best.name == "slow"


def test_openvino_ladder_offers_what_the_cpu_has():
    from runtime.backends.openvino import alternatives, cpu_capabilities
    names = [n for n, _ in alternatives({"device": "CPU", "inference_precision": "bf16"})]
    assert names[0] == "bf16 hint, snippets off" and "f32 hint" in names and names[-1] == "accuracy mode"
    assert ("f16 hint" in names) == ("FP16" in cpu_capabilities())
    f32 = alternatives({"device": "CPU", "inference_precision": "f32"})
    assert [c.get("inference_precision") for _, c in f32] == ["f32", "f32"]


def _has_amx() -> bool:
    from runtime.environment import cpu_flags
    return "amx_int8" in cpu_flags()


@pytest.mark.skipif(not _has_amx(), reason="needs a CPU with AMX (amx_int8): the real INT8 + bf16 corruption "
                                           "of OpenVINO's CPU plugin was seen only there")
def test_real_amx_corruption_is_repaired(tmp_path):
    code, stdout, err = cli("exporters", "digits_swin", "--data", "digits", "--calib", "digits", "--target", "openvino",
                            "--int8", "--out", tmp_path, "--quiet")
    assert code == 0, stdout + err
    rep = json.loads((tmp_path / "digits_swin" / "report.json").read_text())
    row = next(r for r in rep["results"] if r["target"] == "openvino")
    assert row["passed"] and row["accuracy"]["cosine_min"] >= 0.99
