"""The digits checkpoints and split are package data: an installed wheel finds them, not the source tree."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

DATA = ("exporters/data/digits_vit.safetensors", "exporters/data/digits_swin.safetensors",
        "calibration/data/digits_split.json")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(out.glob("vitdeploy-*.whl"))


def test_wheel_carries_the_fixtures(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA) <= names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_resolves_the_fixtures_from_itself(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = ("import exporters.models.zoo as z, calibration.digits as d\n"
            "m, spec = z.create_model('digits_vit')\n"
            "print(z.DATA); print(d.SPLIT_FILE); print(len(d.load_split()['holdout']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    data_dir, split, holdout = run.stdout.split()
    assert Path(data_dir).is_relative_to(site) and Path(split).is_relative_to(site)
    assert int(holdout) > 100
