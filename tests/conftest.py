"""Shared fixtures. Expensive artefacts (digits bundles) are built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _verdict_cache(tmp_path_factory):
    """Verdicts reached by runtime.open()/verify go to a cache of the test run, never the user's ~/.cache."""
    import os
    os.environ["VITDEPLOY_CACHE"] = str(tmp_path_factory.mktemp("verdict-cache"))
    yield


@pytest.fixture(scope="session")
def digits_bundles(tmp_path_factory):
    """digits_swin and digits_vit through ONNX Runtime FP32/INT8 and OpenVINO FP32/FP16/INT8."""
    from exporters.pipeline import RunOptions, run

    out = tmp_path_factory.mktemp("bundles")
    reports = {}
    for name in ("digits_swin", "digits_vit"):
        reports[name] = run(RunOptions(model=name, targets=["onnxruntime", "openvino"], data="digits",
                                       calib="digits", out=out, runs=10, warmup=2, quiet=True))
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
