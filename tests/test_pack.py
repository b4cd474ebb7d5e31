"""Ship only what runs: ``python -m runtime pack`` and ``--keep selected`` keep the artefact the runtime serves (or
the ones named) and what proves it, the hash chain whole, and serve exactly what the full bundle served."""
import json
import shutil

import numpy as np
import pytest

import runtime
from runtime.errors import UserError
from tests.conftest import cli_in_process

pytestmark = pytest.mark.slow


def _images(n=8):
    from calibration.digits import digits_subset
    return list(digits_subset("holdout")[0][:n])


def test_a_pack_keeps_the_served_artefact_and_serves_exactly_what_the_bundle_served(digits_bundles, tmp_path, capsys):
    out, _ = digits_bundles
    full = out / "digits_vit"
    code, stdout, err = cli_in_process(capsys, "runtime", "pack", full, "--out", tmp_path / "p")
    assert code == 0 and "packed" in stdout, err
    pack = tmp_path / "p"
    m = json.loads((pack / "manifest.json").read_text())
    [art] = m["artifacts"]
    with runtime.open(full) as s:
        served, want = (s.target, s.precision), s.predict(_images())
    assert (art["target"], art["precision"]) == served
    assert sorted(p.name for p in pack.iterdir()) == sorted({*art["files"], "golden.npz", "manifest.json"})
    assert set(m["sha256"]) == {*art["files"], "golden.npz"} and m["packed"]["left_out"]
    with runtime.open(pack) as s:
        got = s.predict(_images())
    assert [g.labels for g in got] == [w.labels for w in want]
    assert np.allclose([g.scores for g in got], [w.scores for w in want])
    code, stdout, err = cli_in_process(capsys, "runtime", "verify", pack)
    assert code == 0 and stdout.count("| passed | passed |") == 1, stdout + err
    artefact = sum((pack / f).stat().st_size for f in art["files"])
    golden = (pack / "golden.npz").stat().st_size
    assert sum(p.stat().st_size for p in pack.iterdir()) <= artefact + golden + 64_000  # the manifest is the rest


def test_a_pack_of_named_artefacts_and_what_it_refuses(digits_bundles, tmp_path, capsys):
    out, _ = digits_bundles
    full = out / "digits_vit"
    code, _, err = cli_in_process(capsys, "runtime", "pack", full, "--out", tmp_path / "ort", "--target", "onnxruntime")
    m = json.loads((tmp_path / "ort" / "manifest.json").read_text())
    assert code == 0 and sorted(a["precision"] for a in m["artifacts"]) == ["fp32", "int8"], err
    assert m["onnx"] == "model.onnx"  # the FP32 artefact is the ONNX itself
    code, _, err = cli_in_process(capsys, "runtime", "pack", full, "--out", tmp_path / "x", "--target", "coreml")
    assert code == 2 and "no coreml artefact to keep" in err and not (tmp_path / "x").exists()
    code, _, err = cli_in_process(capsys, "runtime", "pack", full, "--out", full / "inside")
    assert code == 2 and "is the bundle or inside it" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a bundle")
    code, _, err = cli_in_process(capsys, "runtime", "pack", full, "--out", tmp_path / "mine")
    assert code == 2 and "not a vitdeploy bundle" in err and (tmp_path / "mine" / "notes.txt").is_file()


def test_a_tampered_source_is_refused_before_anything_is_copied(digits_bundles, tmp_path, capsys):
    out, _ = digits_bundles
    copy = shutil.copytree(out / "digits_vit", tmp_path / "b")
    with open(copy / "golden.npz", "ab") as f:
        f.write(b"\0")
    code, _, err = cli_in_process(capsys, "runtime", "pack", copy, "--out", tmp_path / "p")
    assert code == 2 and "sha256 mismatch for golden.npz" in err and not (tmp_path / "p").exists()


def test_keep_selected_at_export_leaves_only_what_runs(tmp_path):
    import exporters
    rep = exporters.export("digits_vit", targets=["onnxruntime", "openvino"], precision="int8", out=tmp_path,
                           runs=3, keep="selected")
    m = json.loads((rep.bundle / "manifest.json").read_text())
    [art] = m["artifacts"]
    assert len(rep.results) == 3 and all(r["passed"] for r in rep.results)  # every row measured and reported
    assert m["packed"]["kept"] == [f"{art['target']} {art['precision']}"] and len(m["packed"]["left_out"]) == 1
    assert set(m["sha256"]) == {*art["files"], "golden.npz"}
    others = {p.name for p in rep.bundle.iterdir()} - set(m["sha256"]) - {"manifest.json"}
    assert all(n.startswith(("report.", "plot_")) for n in others), others  # nothing else left behind
    assert "--keep selected: the bundle holds" in (rep.bundle / "report.md").read_text()
    with runtime.open(rep.bundle) as s:
        assert (s.target, s.precision) == (art["target"], art["precision"]) and s.predict(_images(2))
    with pytest.raises(UserError, match="keep must be one of all, selected"):
        exporters.export("digits_vit", out=tmp_path, keep="some")


def test_device_cost_counts_the_child_s_memory_not_the_measuring_process_s(digits_bundles):
    """Linux carries the forking process's resident size into its child's ru_maxrss; the runs are started from a small
    launcher, so a heavy measuring process (this one, with torch and a 600 MB array) does not inflate them."""
    import resource

    import numpy as np

    from benchmarks.device_cost import cold_starts
    out, _ = digits_bundles
    heavy = np.ones(150_000_000, np.float32)  # 600 MB, touched
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    [start] = cold_starts(out / "digits_vit", 1, ["--target", "onnxruntime"])
    assert heavy[-1] == 1 and own_mb > 700 and start["peak_rss_mb"] < own_mb - 500, (start, own_mb)


def test_device_cost_measures_a_new_process_and_its_memory(digits_bundles, tmp_path, capsys):
    out, _ = digits_bundles
    code, _, err = cli_in_process(capsys, "runtime", "pack", out / "digits_vit", "--out", tmp_path / "p")
    assert code == 0, err
    code = cli_in_process(capsys, "benchmarks", "device-cost", tmp_path / "p", "--runs", "1", "--out", tmp_path / "c")[0]
    data = json.loads((tmp_path / "c" / "device_cost.json").read_text())
    assert code == 0 and len(data["cold_starts"]) == 1
    [row] = data["artefacts"]
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert row["bytes"] == sum((tmp_path / "p" / f).stat().st_size for f in manifest["artifacts"][0]["files"])
    start = data["cold_starts"][0]
    assert 0.05 < start["seconds"] < 120 and 20 < start["peak_rss_mb"] < 4000  # a real process, not this one
    (tmp_path / "p" / "manifest.json").write_text("{}")
    code, _, err = cli_in_process(capsys, "benchmarks", "device-cost", tmp_path / "p", "--runs", "1",
                                  "--out", tmp_path / "c2")
    assert code == 2 and len(err.strip().splitlines()) == 1
