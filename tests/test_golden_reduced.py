"""The golden set's reduced form for output maps (runtime/golden.py): a few MB at any size, and still failing what
the whole reference fails: a negated artefact (the fault injection), a wrong scale, a corrupted region, a moved class,
NaN. Unit tests on synthetic maps, then a digits backbone bundle built with the reduced form end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest

from runtime import golden as g
from runtime.backends.base import FAULT_ENV

MAPS = [(8, 40, 56), (16, 20, 28)]
GATES = {"cosine_min": 0.99, "golden_max_flips": 0}


def _flat(rng, n=3):
    return np.concatenate([rng.standard_normal((n, c * h * w)).astype(np.float32) for c, h, w in MAPS], axis=1)


def _reduced(reference):
    return g.Golden(pixels=np.zeros((len(reference), 4, 4, 3), np.uint8), reference=g.reduce_maps(reference, MAPS),
                    maps=MAPS)


def test_reduced_maps_pool_like_torch_and_keep_a_full_resolution_crop():
    import torch
    rng = np.random.default_rng(0)
    m = rng.standard_normal((2, 3, 37, 53)).astype(np.float32)
    out = g.reduce_map(m)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(m), g.POOL).flatten(2).numpy()
    assert out.shape == (2, 3 * (g.POOL ** 2 + g.CROP ** 2)) == (2, g.reduced_widths([(3, 37, 53)])[0])
    per_channel = out.reshape(2, 3, -1)
    np.testing.assert_allclose(per_channel[:, :, :g.POOL ** 2], pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(per_channel[:, :, g.POOL ** 2:].reshape(2, 3, g.CROP, g.CROP), m[:, :, 14:22, 22:30])


def test_the_reduced_set_passes_the_reference_and_fails_what_the_whole_one_fails():
    rng = np.random.default_rng(1)
    ref = _flat(rng)
    golden = _reduced(ref)
    ok, values, why = golden.judge(ref + 1e-4 * rng.standard_normal(ref.shape).astype(np.float32), GATES)
    assert ok and values["cosine_min"] > 0.999, why
    bad = {"negated (the injected fault)": -ref, "NaN": np.where(np.arange(ref.shape[1]) == 5, np.nan, ref),
           "zeros": np.zeros_like(ref), "shuffled maps": ref[:, rng.permutation(ref.shape[1])]}
    region = ref.copy()  # one 5x7 region of the first map of every sample corrupted, away from the centre crop
    region[:, :MAPS[0][0] * MAPS[0][1] * MAPS[0][2]].reshape(3, *MAPS[0])[:, :, :5, :7] += 8.0
    bad["a corrupted region outside the crop"] = region
    for name, outputs in bad.items():
        ok, _, why = golden.judge(outputs, GATES)
        assert not ok and why, name
    assert "non-finite outputs (NaN or inf)" in golden.judge(bad["NaN"], GATES)[2]


def test_reduced_segmentation_counts_every_pixels_class():
    from runtime.accuracy import class_maps
    rng = np.random.default_rng(2)
    maps = [(4, 64, 96)]
    ref = rng.standard_normal((2, 4 * 64 * 96)).astype(np.float32)
    golden = g.Golden(pixels=np.zeros((2, 4, 4, 3), np.uint8), reference=g.reduce_maps(ref, maps), maps=maps,
                      classes=class_maps(ref, 4))
    gates = {"cosine_min": 0.9, "golden_max_pixels_differing": 10, "dense_classes": 4, "gate_agreement": False}
    assert golden.judge(ref, gates)[0]
    moved = ref.reshape(2, 4, 64, 96).copy()
    moved[0, :, 30:34, 0:4] = moved[0, ::-1, 30:34, 0:4]  # 16 pixels' scores reversed: most change class
    ok, values, why = golden.judge(moved.reshape(2, -1), gates)
    assert not ok and values["pixels_differing"] > 10 and "golden pixels of another class" in why[0]


def test_a_set_at_detection_size_stays_within_its_budget():
    """The swin_t backbone at 800x1344: four stage maps (96..768 channels at strides 4..32); the whole reference
    took 155 MB in the set. Reduced, one sample's pixels and reference fit ``MAX_BYTES``."""
    maps = [(96 * 2 ** i, 200 // 2 ** i, 336 // 2 ** i) for i in range(4)]
    per_sample = g.sample_bytes(800 * 1344 * 3, maps, sum(c * h * w for c, h, w in maps))
    assert g.golden_form(maps) == "reduced" and per_sample < g.MAX_BYTES
    assert g.golden_count(64, per_sample) == 1
    assert g.golden_count(64, g.sample_bytes(224 * 224 * 3, None, 1000)) == 25  # 1000-class logits at 224


@pytest.fixture(scope="module")
def reduced_backbone(tmp_path_factory):
    from exporters.pipeline.stages import RunOptions, run
    out = tmp_path_factory.mktemp("reduced")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "REDUCE_ABOVE", 0)  # the digits maps are small: reduce them as large ones are
        run(RunOptions(model="digits_swin", features=True, targets=["onnxruntime", "openvino"], precision="int8",
                       out=out, runs=2, warmup=1, eval_size=64, calib_size=32, quiet=True))
    return out / "digits_swin"


@pytest.mark.slow
def test_a_reduced_backbone_bundle_verifies_and_fails_a_negated_artefact(reduced_backbone):
    manifest = json.loads((reduced_backbone / "manifest.json").read_text())
    assert manifest["golden"]["form"] == "reduced"
    cmd = [sys.executable, "-m", "runtime", "verify", str(reduced_backbone), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert all(row["passed"] for row in json.loads(proc.stdout))
    env = {**__import__("os").environ, FAULT_ENV: "openvino:*"}
    proc = subprocess.run([*cmd, "--target", "openvino", "--no-repair"], capture_output=True, text=True, timeout=600,
                          env=env)
    rows = json.loads(proc.stdout)
    assert proc.returncode == 1 and rows and not any(row["passed"] for row in rows)
