"""scikit-learn's bundled handwritten digits as 32x32 RGB images, with a fixed train/hold-out split.

The split indices ship as package data (``calibration/data/digits_split.json``) so that training,
evaluation and calibration always agree.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_FILE = Path(str(resources.files("calibration") / "data" / "digits_split.json"))
IMAGE_SIZE = 32
HOLDOUT_FRACTION = 0.3
SPLIT_SEED = 0


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 ``[N, 32, 32, 3]`` images and int64 ``[N]`` labels."""
    from sklearn.datasets import load_digits  # the data ships inside scikit-learn: no network

    d = load_digits()
    small = np.clip(d.images / 16.0 * 255.0, 0, 255).astype(np.uint8)  # [N, 8, 8]
    big = np.stack([
        np.asarray(Image.fromarray(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        for im in small
    ])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    return rgb, d.target.astype(np.int64)


def make_split(n: int) -> dict:
    """Seeded split of ``n`` indices into train and hold-out."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_hold = int(round(n * HOLDOUT_FRACTION))
    return {"seed": SPLIT_SEED, "holdout": sorted(perm[:n_hold].tolist()),
            "train": sorted(perm[n_hold:].tolist())}


def load_split() -> dict:
    if not SPLIT_FILE.exists():
        raise FileNotFoundError(f"{SPLIT_FILE} is missing: run tests/fixtures/make_digits.py")
    return json.loads(SPLIT_FILE.read_text())


def digits_subset(part: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``part`` is "holdout" or "train": images ``[N, 32, 32, 3]`` uint8, labels ``[N]``, ids."""
    images, labels = digits_images()
    idx = np.asarray(load_split()[part])
    return images[idx], labels[idx], [f"digits:{i}" for i in idx]
