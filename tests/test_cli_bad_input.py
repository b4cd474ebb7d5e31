"""Bad input: one clear line, exit code 2, no traceback, nothing half-written in OUT."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _assert_clean_failure(code, err, out_dir: Path, match: str):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err
    assert not out_dir.exists(), list(out_dir.rglob("*"))  # not even the empty --out folder is left behind


def test_unknown_model_lists_close_names(tmp_path, capsys):
    code, _, err = run_cli(["swin_tt", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "close names: swin_t")


def test_missing_weights(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--weights", tmp_path / "none.pt", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "weights file not found")


def test_unreadable_weights(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    code, _, err = run_cli(["digits_vit", "--weights", bad, "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "cannot read weights file")


def test_checkpoint_of_another_model(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--weights", ROOT / "exporters/data/digits_swin.safetensors",
                            "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "does not fit")


def test_empty_data_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["digits_vit", "--data", tmp_path / "empty", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "empty")


def test_data_dir_without_images(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    code, _, err = run_cli(["digits_vit", "--data", d, "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "no images")


def test_only_undecodable_images(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.jpg").write_bytes(b"not a jpeg")
    code, _, err = run_cli(["digits_vit", "--data", d, "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "no decodable images")


def test_missing_data_dir(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--data", tmp_path / "nope", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "not found")


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder should be
    code, _, err = run_cli(["digits_vit", "--out", blocker / "o"], capsys)
    assert code == 2 and "not writable" in err and "Traceback" not in err


def test_calib_missing_and_size_zero(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--int8", "--calib", tmp_path / "nope", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "not found")
    code, _, err = run_cli(["digits_vit", "--int8", "--calib-size", "0", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "argument --calib-size: must be in [1, 10000000] (got 0)")


def test_int8_with_fp16_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--int8", "--fp16", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "not allowed with argument")


def test_openvino_device_absent_lists_available(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--target", "openvino", "--device", "NPU", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "available: CPU")


def test_onnxruntime_fp16_says_why(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--fp16", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "not offered on the CPU")


def test_undecodable_image_is_skipped_and_counted(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG broken")
    code, _, err = run_cli(["digits_vit", "--data", d, "--runs", "2", "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0 and "skipped 1 image(s) of 5 (1 undecodable)" in err
    import json
    rep = json.loads((tmp_path / "o/digits_vit/report.json").read_text())
    assert rep["data"]["skipped"] == 1 and rep["data"]["size"] == 4 and rep["data"]["labelled"] is False


def test_real_process_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "exporters", "no_such_model", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: unknown model")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_pretrained_offline_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what a machine without network sees, without waiting on it
    import huggingface_hub.constants
    # reason: huggingface_hub reads HF_HUB_OFFLINE once, at import; imported earlier in the session, it would try
    # the network for ~40 s (measured) before failing the same way
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _, err = run_cli(["vit_ti", "--pretrained", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "could not download pretrained weights")


def test_flag_for_another_target_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--target", "openvino", "--io-fp16", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "--io-fp16 applies to tensorrt")
    code, _, err = run_cli(["digits_vit", "--device", "CPU", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "--device applies to openvino, not to onnxruntime")


def test_negative_threads_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["digits_vit", "--threads", "-1", "--out", tmp_path / "o"], capsys)
    _assert_clean_failure(code, err, tmp_path / "o", "argument --threads: must be in [1, ")


def test_a_child_forked_under_our_sigterm_handler_can_still_be_terminated():
    """OpenVINO's telemetry forks a child per event and terminate()s it after a timeout; one stuck in C (here a
    self-deadlocked mutex, there getaddrinfo with no network) must die, or the exporter hangs at exit."""
    code = (
        "import ctypes, multiprocessing as mp, sys\n"
        "from runtime.cli import run_cli\n"
        "def stuck():\n"
        "    libc = ctypes.CDLL(None); m = ctypes.create_string_buffer(64)\n"
        "    libc.pthread_mutex_lock(m); libc.pthread_mutex_lock(m)\n"
        "def main(argv):\n"
        "    p = mp.get_context('fork').Process(target=stuck, daemon=True); p.start(); p.join(1)\n"
        "    p.terminate(); p.join(10)\n"
        "    print('alive' if p.is_alive() else 'terminated'); return 0\n"
        "sys.exit(run_cli('t', main, []))\n")
    import subprocess
    import sys
    from pathlib import Path
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "terminated", proc.stdout + proc.stderr


def test_target_takes_a_comma_list_and_refuses_a_bad_one_in_one_line(tmp_path, capsys):
    from exporters.__main__ import parser
    assert parser().parse_args(["swin_t", "--target", "onnxruntime,openvino"]).target == ["onnxruntime", "openvino"]
    assert parser().parse_args(["swin_t", "--target", "all"]).target == ["all"]
    for bad in ("onnxruntime,bogus", "all,openvino", "openvino,openvino", ","):
        code, _, err = run_cli(["digits_vit", "--target", bad, "--out", tmp_path / "o"], capsys)
        _assert_clean_failure(code, err, tmp_path / "o", f"argument --target: invalid choice: '{bad}'")
