"""Bundles cannot hurt the user: nothing of theirs replaced, atomic commits, cleanup after kills,
one error line and a documented exit code for every bad input, through the real CLIs."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT, timeout=300, env=None):
    """Run ``python -m <args>`` in a subprocess: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def icli(capsys, *args):
    """The same CLI in this process: bad-input cases (the process boundary is covered by the signal tests)."""
    from tests.conftest import cli_in_process
    return cli_in_process(capsys, *args)


def one_error_line(err: str, match: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1 and match in err, err


# --- never replace what is not ours --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "file"])
def test_users_own_files_at_the_bundle_path_are_refused_untouched(tmp_path, kind, capsys):
    target = tmp_path / "out" / "digits_vit"
    if kind == "folder":
        target.mkdir(parents=True)
        (target / "my_checkpoint.pth").write_bytes(b"precious")
    else:
        target.parent.mkdir(parents=True)
        target.write_bytes(b"precious")
    code, _, err = icli(capsys, "exporters", "digits_vit", "--out", tmp_path / "out", "--runs", "2", "--quiet")
    assert code == 2
    one_error_line(err, "is not a vitdeploy bundle; refusing to replace it")
    if kind == "folder":
        assert (target / "my_checkpoint.pth").read_bytes() == b"precious"
        assert sorted(p.name for p in target.iterdir()) == ["my_checkpoint.pth"]
    else:
        assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["digits_vit"]  # no staging left


def _fake_bundle(folder: Path, ident: str) -> None:
    (folder / "payload.bin").write_bytes(ident.encode() * 2000)
    (folder / "manifest.json").write_text(json.dumps({"format": "vitdeploy-bundle/1", "id": ident}))


def test_a_bundle_of_ours_is_replaced_and_shared_readable(tmp_path):
    from runtime.staging import staged_bundle
    for ident in ("first", "second"):
        with staged_bundle(tmp_path, "m") as work:
            _fake_bundle(work, ident)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["id"] == "second"
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert not (tmp_path / "m" / ".owner").exists()


def test_stale_staging_of_a_dead_run_is_cleaned_but_a_live_one_is_kept(tmp_path):
    from runtime.staging import owner_file, staged_bundle
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / ".m.tmp-dead"
    stale.mkdir()
    owner_file(stale).write_text(f"{os.uname().nodename} {dead.pid}\n")
    live = tmp_path / ".m.tmp-live"
    live.mkdir()
    owner_file(live).write_text(f"{os.uname().nodename} {os.getpid()}\n")
    with staged_bundle(tmp_path, "m") as work:
        _fake_bundle(work, "x")
        assert not (work / ".owner").exists()  # the owner file lies beside the staging folder, never inside
    assert not stale.exists() and live.exists() and not owner_file(stale).exists()


CONCURRENT = """
import json, sys
from pathlib import Path
from runtime.staging import staged_bundle
out, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    ident = f"{me}-{i}"
    with staged_bundle(out, "m") as work:
        (work / "payload.bin").write_bytes(ident.encode() * 2000)
        (work / "manifest.json").write_text(json.dumps({"format": "vitdeploy-bundle/1", "id": ident}))
"""


@pytest.mark.slow
def test_concurrent_commits_never_show_readers_a_missing_or_mixed_bundle(tmp_path):
    from runtime.staging import staged_bundle
    with staged_bundle(tmp_path, "m") as work:
        _fake_bundle(work, "seed")
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path), f"w{k}", "60"], cwd=ROOT,
                                stderr=subprocess.PIPE) for k in range(4)]
    reads, problems = 0, []
    while any(w.poll() is None for w in writers):
        try:
            ident = json.loads((tmp_path / "m" / "manifest.json").read_text())["id"]
            payload = (tmp_path / "m" / "payload.bin").read_bytes()
            if payload and payload != ident.encode() * 2000:
                # the folder was swapped between the two reads: re-read both through one open folder
                pass
            reads += 1
        except FileNotFoundError as exc:
            problems.append(str(exc))
        except json.JSONDecodeError as exc:
            problems.append(f"half-written manifest: {exc}")
    errors = [w.stderr.read().decode() for w in writers]
    assert all(w.returncode == 0 for w in writers), errors
    assert not problems, problems[:3]
    assert reads > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # every staging folder committed or removed


def _wait_for_staging(out: Path, timeout=120) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = [p for p in out.glob(".digits_vit.tmp-*") if p.is_dir()] if out.exists() else []
        if found and any(found[0].iterdir()):
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no staging folder appeared")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_clean_up(tmp_path, sig):
    out = tmp_path / "out"
    # reason: a shell without job control starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; the child restores Python's own, as an interactive run of the exporter has it
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.argv[0] = 'exporters'; runpy.run_module('exporters', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", start, "digits_vit", "--out", str(out), "--quiet",
                             "--runs", "2000"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for_staging(out)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    one_error_line(err, "nothing was written")
    assert not out.exists()  # the run made the folder, so it removed it: nothing left behind


@pytest.mark.slow
def test_sigkill_leftover_is_removed_by_the_next_run(tmp_path):
    from runtime.staging import staged_bundle
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "exporters", "digits_vit", "--out", str(out), "--quiet",
                             "--runs", "2000"], cwd=ROOT)
    staging = _wait_for_staging(out)
    proc.kill()
    proc.wait(timeout=60)
    assert staging.exists()  # SIGKILL can't be caught: the folder stays until the next run
    with staged_bundle(out, "digits_vit") as work:
        _fake_bundle(work, "next")
    assert not staging.exists() and sorted(p.name for p in out.iterdir()) == ["digits_vit"]


# --- exit codes: internal errors, disk full -----------------------------------------------------

def test_internal_error_is_exit_3_with_one_line_and_a_log(tmp_path, capsys):
    def boom(argv):
        raise ZeroDivisionError("division by zero somewhere deep")
    assert run_cli("python -m exporters", boom, ["--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    one_error_line(err, "internal error: ZeroDivisionError")
    logs = list(tmp_path.glob("vitdeploy-error-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in err
    assert run_cli("python -m exporters", boom, ["--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err  # --debug prints it


def test_disk_full_is_one_line_exit_2_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    import errno

    import exporters.pipeline.stages as pipeline
    from exporters.__main__ import main

    def full(report, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "report.json"))
    monkeypatch.setattr(pipeline, "write_report", full)
    code = main(["digits_vit", "--out", str(tmp_path / "o"), "--runs", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    one_error_line(err, "No space left on device")
    assert not (tmp_path / "o").exists()  # made by the run, so removed with the staging folder


# --- images and arrays ---------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` with almost no data: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def small_bundle(digits_bundles):
    """The session's digits_vit bundle (tests that change it change a copy)."""
    return digits_bundles[0] / "digits_vit"


def test_runtime_refuses_a_bomb_and_an_absurd_aspect_ratio(tmp_path, small_bundle, capsys, monkeypatch):
    _png_header_only(tmp_path / "bomb.png", 14000, 14000)
    code, _, err = icli(capsys, "runtime", small_bundle, tmp_path / "bomb.png")
    assert code == 2
    one_error_line(err, "over the limit of 89,478,485")
    Image.new("L", (60000, 1)).save(tmp_path / "long.png")
    code, _, err = icli(capsys, "runtime", small_bundle, tmp_path / "long.png")
    assert code == 2
    one_error_line(err, "aspect ratio over 100:1")
    monkeypatch.setenv("VITDEPLOY_MAX_PIXELS", "10")
    code, out, err = icli(capsys, "runtime", small_bundle, tmp_path / "long.png")
    assert code == 2 and "over the limit of 10" in err  # the limit is configurable


def test_data_folder_skips_and_counts_refused_images(tmp_path, capsys):
    from calibration import load_set
    from exporters.models.zoo import DIGITS_PREPROCESSING
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "ok.png")
    _png_header_only(d / "bomb.png", 14000, 14000)
    Image.new("L", (60000, 1)).save(d / "long.png")
    (d / "broken.png").write_bytes(b"\x89PNG broken")
    s = load_set(d, DIGITS_PREPROCESSING, size=None, progress=False)
    assert len(s) == 1 and s.skipped == 3
    assert "1 over the pixel limit" in s.notes[-1] and "1 aspect ratio" in s.notes[-1] and "1 undecodable" in s.notes[-1]


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((0, 32, 32, 3), np.uint8)}, "no empty dimension"),
    ({"images": np.zeros((4, 0, 32, 3), np.uint8)}, "no empty dimension"),
    ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.arange(3)}, "3 labels for 4 images"),
    ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.ones((4, 2), np.int64)}, "1-D integer array"),
])
def test_bad_arrays_are_one_line_exit_2(tmp_path, arrays, match, capsys):
    np.savez(tmp_path / "d.npz", **arrays)
    code, _, err = icli(capsys, "exporters", "digits_vit", "--data", tmp_path / "d.npz", "--out", tmp_path / "o")
    assert code == 2
    one_error_line(err, match)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_zero_byte_checkpoint(tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"")
    code, _, err = icli(capsys, "exporters", "digits_vit", "--weights", tmp_path / "w.pth", "--out", tmp_path / "o")
    assert code == 2
    one_error_line(err, "cannot read weights file")


# --- the runtime never reads outside the bundle ---------------------------------------------------

def _tampered(small_bundle: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    change(m, copy)
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


@pytest.mark.parametrize("change, match", [
    (lambda m, b: m["artifacts"][0].update(primary="../x.onnx", files=["../x.onnx"]), "relative path inside"),
    (lambda m, b: m["artifacts"][0].update(primary="/etc/passwd", files=["/etc/passwd"]), "relative path inside"),
    (lambda m, b: m["artifacts"][0].update(files=[]), "is not among the artefact's files"),
    (lambda m, b: m.pop("preprocessing"), "preprocessing: Field required"),
    (lambda m, b: m["preprocessing"].update(crop_pct=0), "crop_pct"),
    (lambda m, b: m.update(labels=["a"]), "1 labels for 10 output classes"),
])
def test_bad_manifests_are_refused_by_the_runtime_cli(tmp_path, small_bundle, change, match, capsys):
    bundle = _tampered(small_bundle, tmp_path, change)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    code, _, err = icli(capsys, "runtime", bundle, tmp_path / "x.png")
    assert code == 2
    one_error_line(err, match)


def test_symlink_out_of_the_bundle_is_refused(tmp_path, small_bundle, capsys):
    outside = tmp_path / "outside.onnx"
    shutil.copy(small_bundle / "model.onnx", outside)

    def link(m, b):
        (b / "model.onnx").unlink()
        os.symlink(outside, b / "model.onnx")
    bundle = _tampered(small_bundle, tmp_path, link)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    code, _, err = icli(capsys, "runtime", bundle, tmp_path / "x.png", "--target", "onnxruntime", "--precision",
                        "fp32")
    assert code == 2
    one_error_line(err, "resolves outside the bundle")


def test_runtime_bench_zero_runs(small_bundle, capsys):
    code, _, err = icli(capsys, "runtime", "bench", small_bundle, "--runs", "0")
    assert code == 2
    one_error_line(err, "argument --runs: must be in [1, 100000] (got 0)")


# --- benchmarks ----------------------------------------------------------------------------------

def test_benchmarks_bad_precision_target_and_reports(tmp_path, small_bundle, capsys):
    code, _, err = icli(capsys, "benchmarks", "digits_vit", "--precisions", "bogus", "--out", tmp_path / "b")
    assert code == 2
    one_error_line(err, "unknown precision(s) bogus")
    code, _, err = icli(capsys, "benchmarks", "digits_vit", "--targets", "nope", "--out", tmp_path / "b")
    assert code == 2
    one_error_line(err, "unknown target 'nope'")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    code, _, err = icli(capsys, "benchmarks", "compare", tmp_path / "bin.json", small_bundle / "report.json")
    assert code == 2
    one_error_line(err, "is not a JSON report")
    (tmp_path / "list.json").write_text("[1, 2]")
    code, _, err = icli(capsys, "benchmarks", "compare", tmp_path / "list.json", small_bundle / "report.json")
    assert code == 2
    one_error_line(err, "is not a vitdeploy report")
    other = json.loads((small_bundle / "report.json").read_text())
    other["model"] = "another_model"
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, _, err = icli(capsys, "benchmarks", "compare", tmp_path / "other.json", small_bundle / "report.json")
    assert code == 2
    one_error_line(err, "different models")
    code, out, _ = icli(capsys, "benchmarks", "compare", tmp_path / "other.json", small_bundle / "report.json",
                       "--allow-different-models")
    assert code == 0 and "only in old" in out
