"""--precision auto: every precision is built, the fastest that passed becomes the bundle's default."""
import json

import pytest

import runtime
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_auto_records_the_fastest_passing_artefact_and_the_runtime_opens_it(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--target", "onnxruntime", "--precision", "auto", "--out", tmp_path,
                            "--runs", "20", "--quiet"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "digits_vit" / "report.json").read_text())
    rows = [r for r in rep["results"] if r["target"] == "onnxruntime"]
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    best = min((r for r in rows if r["passed"]), key=lambda r: r["latency_ms"]["p50"])
    manifest = json.loads((tmp_path / "digits_vit" / "manifest.json").read_text())
    sel = manifest["selection"]
    assert (sel["target"], sel["precision"]) == (best["target"], best["precision"])
    assert sel["p50_ms"] == best["latency_ms"]["p50"] and "interleaved" in sel["chosen_on"]
    assert set(sel["candidates"]) == {"onnxruntime fp32", "onnxruntime int8"}
    with runtime.open(tmp_path / "digits_vit") as s:
        assert (s.target, s.precision) == (sel["target"], sel["precision"])
    other = "fp32" if sel["precision"] == "int8" else "int8"
    with runtime.open(tmp_path / "digits_vit", precision=other) as s:  # an explicit choice still wins
        assert s.precision == other
    assert "Default artefact (--precision auto)" in (tmp_path / "digits_vit" / "report.md").read_text()
