"""Dataset-scale evaluation: streaming shards, exact merge on Ray, resume after a kill, a dead worker retried.

The data: the 1797 digits written as PNG files in class folders, plus each mirrored (3594 images),
plus two files that are not images, which must be skipped and counted.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    from calibration.digits import digits_images
    root = tmp_path_factory.mktemp("digits-png")
    images, labels = digits_images()
    for i, (im, y) in enumerate(zip(images, labels)):
        (root / str(y)).mkdir(exist_ok=True)
        Image.fromarray(im).save(root / str(y) / f"{i:04d}.png")
        Image.fromarray(np.ascontiguousarray(im[:, ::-1])).save(root / str(y) / f"{i:04d}-mirror.png")
    (root / "3" / "broken.png").write_bytes(b"not a png")
    (root / "7" / "empty.jpg").write_bytes(b"")
    return root


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmarks", "eval", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _table(out: Path) -> dict:
    """The per-path metrics of eval.json, without the timing figures."""
    res = json.loads((out / "eval.json").read_text())
    return {"evaluated": res["evaluated"], "skipped": res["skipped"],
            "rows": {k: {m: v for m, v in r.items() if m != "inference_images_per_s"} for k, r in res["results"].items()}}


@pytest.fixture(scope="module")
def single(digits_bundles, digits_folder, tmp_path_factory):
    bundle = digits_bundles[0] / "digits_vit"
    out = tmp_path_factory.mktemp("eval-single")
    p = _cli(bundle, "--data", digits_folder, "--targets", "onnxruntime", "--threads", "1", "--out", out)
    assert p.returncode == 0, p.stderr
    return bundle, out, _table(out)


def test_single_process_counts_every_image_and_reports_accuracy(single):
    _, out, table = single
    assert table["evaluated"] == 3594 and table["skipped"] == {"undecodable": 2}
    rows = table["rows"]
    assert set(rows) == {"pytorch fp32", "onnxruntime fp32", "onnxruntime int8"}
    ref = rows["pytorch fp32"]
    assert 50 < ref["top1"] < 100 and ref["top5"] >= ref["top1"]  # mirrored digits are harder than the hold-out
    assert rows["onnxruntime fp32"]["top1_agreement"] == 100.0
    assert rows["onnxruntime int8"]["top1_agreement"] > 97
    md = (out / "eval.md").read_text()
    assert "3594 of 3596 images" in md and "2 undecodable" in md
    res = json.loads((out / "eval.json").read_text())
    assert sorted(res["skipped_files"]) == ["3/broken.png", "7/empty.jpg"] and res["skipped_files_not_named"] == 0
    assert "skipped files: " in md and "broken.png" in md


def test_two_ray_workers_give_the_same_numbers_and_a_dead_worker_is_retried(single, digits_folder, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'vitdeploy[scale]')")
    bundle, _, expected = single
    out = tmp_path / "eval-ray"
    env = {**os.environ, "VITDEPLOY_EVAL_DIE_ONCE": f"{tmp_path}:3"}  # the worker that takes shard 3 exits hard once
    p = _cli(bundle, "--data", digits_folder, "--targets", "onnxruntime", "--workers", "2", "--threads", "1",
             "--out", out, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "died-3").is_file()  # it did die, and the shard was run again
    assert _table(out) == expected
    res = json.loads((out / "eval.json").read_text())
    assert res["mode"].startswith("Ray, 2 local workers") and res["shards"] == 15


def test_a_killed_run_resumes_from_its_finished_shards(single, digits_folder, tmp_path):
    bundle, _, expected = single
    out = tmp_path / "eval-resume"
    args = [sys.executable, "-m", "benchmarks", "eval", str(bundle), "--data", str(digits_folder), "--targets",
            "onnxruntime", "--threads", "1", "--shard-size", "128", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("shards/*/shard-*.sha256")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("shards/*/shard-*.sha256")))
    assert 1 <= finished < 29, "the run was not interrupted half-way"
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "eval.json").read_text())
    assert res["resumed"] >= 1 and res["shards"] == 29
    assert _table(out) == expected


def test_a_corrupt_shard_is_recomputed(single, digits_folder, tmp_path):
    from benchmarks.evaluate import ShardStore
    from benchmarks.scale import evaluate, make_plan
    bundle, _, _ = single
    plan = make_plan(bundle, digits_folder, ["onnxruntime"], ["fp32"], "onnx", 300, 100, 1)
    first = evaluate(plan, tmp_path)
    shard = ShardStore(tmp_path, plan)._path(1)
    assert ShardStore(tmp_path, plan).load(1, ["an unknown row"]) is None  # a shard without a needed row is redone
    shard.write_text(shard.read_text().replace("[", "[9, ", 1))  # the bytes no longer match the hash
    again = evaluate(plan, tmp_path)

    def figures(res):
        return {k: {m: v for m, v in r.items() if m != "inference_images_per_s"} for k, r in res["results"].items()}
    assert again["resumed"] == 2 and figures(again) == figures(first) and again["evaluated"] == 300


def test_without_ray_workers_is_one_line(single, digits_folder, tmp_path):
    bundle, _, _ = single
    code = ("import sys; sys.modules['ray'] = None\n"
            "from benchmarks.__main__ import main\n"
            f"raise SystemExit(main(['eval', {str(bundle)!r}, '--data', {str(digits_folder)!r}, '--workers', '2', "
            f"'--out', {str(tmp_path)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "pip install 'vitdeploy[scale]'" in p.stderr
    assert "Traceback" not in p.stderr and not list(tmp_path.glob("shards/*"))


def test_bad_input_is_one_line(single, tmp_path):
    bundle, _, _ = single
    for args in (["--data", tmp_path / "nope"], ["--data", tmp_path, "--limit", "0"],
                 ["--data", tmp_path, "--targets", "coreml"]):
        p = _cli(bundle, *args, "--out", tmp_path / "o")
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_disk_full_leaves_no_temporary_file_and_no_shard_without_its_hash(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from benchmarks.evaluate import Plan, ShardResult, ShardStore
    plan = Plan(bundle="b", data="d", ids=["a.png"], labels=[None], artefacts=[("onnxruntime", "fp32")],
                reference="none")
    store = ShardStore(tmp_path, plan)
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".shard-00000.sha256"):
            real(self, data[:1])  # a partial temporary file, as a full disk leaves one
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError):
        store.save(ShardResult(index=0, kept=[0], top5={"onnxruntime fp32": [[1, 2, 3, 4, 5]]}))
    assert sorted(p.name for p in store.folder.iterdir()) == ["plan.json"]


def test_an_interrupted_eval_says_what_it_kept(capsys):
    from runtime.cli import Terminated, keep, run_cli

    def main(argv):
        keep(lambda: "3 finished shard(s) in OUT/shards/x, from which the next run resumes")
        raise Terminated()
    assert run_cli("python -m benchmarks", main, []) == 143
    err = capsys.readouterr().err
    assert "kept: 3 finished shard(s)" in err and "nothing was written" not in err
    assert run_cli("python -m benchmarks", lambda argv: (_ for _ in ()).throw(Terminated()), []) == 143
    assert "nothing was written" in capsys.readouterr().err  # what one command kept is not claimed by the next
