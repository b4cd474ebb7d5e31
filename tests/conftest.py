"""Shared fixtures. Expensive artefacts (digits bundles) are built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config):
    """Under pytest-xdist, each worker keeps to its own core when there is one per worker.

    # reason: the runtimes default to every usable core (threads pinned to the affinity mask), so two workers on
    # two cores ran 2 x 2 threads and OpenMP/TBB spin-waited: 22 CPU-minutes for what one process does in 17
    # (measured on the 2-core EPYC). Pinned, each worker's runtimes and the subprocesses it starts use one core.
    """
    import os
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if count and len(cpus) >= count:
        share = len(cpus) // count
        index = int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, set(cpus[index * share:(index + 1) * share]))


# Seconds each slow file took on the 2-core AVX2 EPYC (pytest --durations, summed per file). Under pytest-xdist's
# --dist loadfile with --no-loadscope-reorder, files go to the workers in collection order: the longest first, so
# that no long file starts last and leaves the other worker idle (longest-processing-time-first scheduling).
FILE_SECONDS = {
    "test_vs_naive.py": 330, "test_budget.py": 250, "test_families.py": 170, "test_recipes.py": 140,
    "test_eval.py": 140, "test_own_model.py": 130, "test_tensorrt_rtx.py": 120, "test_coreml.py": 115,
    "test_contract.py": 110, "test_dense.py": 100, "test_features.py": 95, "test_proof.py": 90,
    "test_values.py": 80, "test_sizes.py": 75, "test_drift.py": 75, "test_bundle_safety.py": 75,
    "test_tensorrt.py": 70, "test_benchmarks_matrix.py": 60, "test_embedding.py": 55, "test_proof_holes.py": 45,
    "test_pack.py": 45, "test_swin_window_attention.py": 45, "test_golden_reduced.py": 35,
}


def pytest_collection_modifyitems(config, items):
    """The slowest files first (``FILE_SECONDS``), each file's tests in their own order; the same on every worker."""
    order = {}
    for i, item in enumerate(items):
        order.setdefault(item.path, (-FILE_SECONDS.get(item.path.name, 0), i))
    items.sort(key=lambda item: order[item.path])


@pytest.fixture(autouse=True, scope="session")
def _verdict_cache(tmp_path_factory):
    """Verdicts reached by runtime.open()/verify go to a cache of the test run, authenticated with a key of the test
    run, never the user's ~/.cache and ~/.config."""
    import os
    os.environ["VITDEPLOY_CACHE"] = str(tmp_path_factory.mktemp("verdict-cache"))
    os.environ["VITDEPLOY_VERDICT_KEY"] = str(tmp_path_factory.mktemp("verdict-key") / "verdict.key")
    yield


def shared_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run shares (the run's base folder; without xdist, its own)."""
    import os
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def digits_bundles(tmp_path_factory):
    """digits_swin and digits_vit through ONNX Runtime FP32/INT8 and OpenVINO FP32/FP16/INT8, built once per test
    run: under pytest-xdist the first worker that needs them builds them, the others wait on a lock and read them."""
    import json
    import os

    from filelock import FileLock

    from exporters.pipeline.stages import RunOptions, run

    root = shared_dir(tmp_path_factory)
    out, names = root / "digits-bundles", ("digits_swin", "digits_vit")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    # one lock per model, and the second worker starts with the other model: both build at once, none waits idle
    for name in names[worker % 2:] + names[:worker % 2]:
        with FileLock(str(root / f"{name}.lock")):
            if not (root / f"{name}.complete").is_file():
                run(RunOptions(model=name, targets=["onnxruntime", "openvino"], data="digits", calib="digits",
                               out=out, runs=10, warmup=2, quiet=True))
                (root / f"{name}.complete").write_text("ok")
    reports = {}
    for name in names:
        reports[name] = json.loads((out / name / "report.json").read_text())
        reports[name]["bundle"] = str(out / name)
    return out, reports


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> list[Path]:
    """scikit-learn's two bundled photographs (427x640 JPEG), written as JPEG and PNG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    d = tmp_path_factory.mktemp("photos")
    paths = []
    for i, arr in enumerate(load_sample_images().images):
        for ext in ("jpg", "png"):
            p = d / f"photo{i}.{ext}"
            Image.fromarray(arr).save(p)
            paths.append(p)
    return paths


def run_cli(argv, capsys):
    """Run ``python -m exporters`` in-process; return (exit code, stdout, stderr)."""
    from exporters.__main__ import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_in_process(capsys, module: str, *args):
    """``python -m <module> <args>`` run in this process (the CLI path, without a new interpreter's imports):
    (exit code, stdout, stderr). Bad-input cases use it; a few tests keep real subprocesses for the process
    boundary (exit status, signals, no traceback on a real stderr)."""
    import importlib
    capsys.readouterr()
    code = importlib.import_module(f"{module}.__main__").main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err
