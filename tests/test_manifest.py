"""The manifest schema: validated on read, one line for every problem, paths contained, files hashed."""
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import UserError
from runtime.manifest import Manifest, read_manifest, resolve_inside, sha256_file


def _valid(tmp_path) -> dict:
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    digest = sha256_file(tmp_path / "model.onnx")
    return {
        "format": "vitdeploy-bundle/1", "model": "m", "source": "timm:m", "weights": "random",
        "input": {"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"},
        "output": {"name": "logits", "shape": [1, 2], "dtype": "float32"},
        "preprocessing": {"input_size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                          "crop_pct": 1.0},
        "labels": ["a", "b"], "onnx": "model.onnx",
        "artifacts": [{"target": "onnxruntime", "precision": "fp32", "status": "built", "primary": "model.onnx",
                       "files": ["model.onnx"]}],
        "sha256": {"model.onnx": digest}}


def _write(tmp_path, data) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(data))


def test_valid_manifest_round_trips(tmp_path):
    _write(tmp_path, _valid(tmp_path))
    m = read_manifest(tmp_path)
    m.write(tmp_path)
    assert read_manifest(tmp_path) == m and isinstance(m, Manifest)
    m.verify(tmp_path, ["model.onnx"])


@pytest.mark.parametrize("mutate, match", [
    (lambda d: [], "Input should be a valid dictionary"),
    (lambda d: None, "Input should be a valid dictionary"),
    (lambda d: {k: v for k, v in d.items() if k != "sha256"}, "sha256: Field required"),
    (lambda d: {k: v for k, v in d.items() if k != "preprocessing"}, "preprocessing: Field required"),
    (lambda d: {**d, "artifacts": [{**d["artifacts"][0], "target": None}]}, "target"),
    (lambda d: {**d, "artifacts": [{**d["artifacts"][0], "precision": "fp8"}]}, "precision"),
    (lambda d: {**d, "labels": ["a"]}, "1 labels for 2 output classes"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "crop_pct": 0}}, "crop_pct"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "std": [0, 1, 1]}}, "std"),
    (lambda d: {**d, "artifacts": [{**d["artifacts"][0], "primary": "../x.onnx", "files": ["../x.onnx"]}]},
     "relative path inside the bundle"),
    (lambda d: {**d, "artifacts": [{**d["artifacts"][0], "primary": "/etc/passwd", "files": ["/etc/passwd"]}]},
     "relative path inside the bundle"),
    (lambda d: {**d, "artifacts": [{**d["artifacts"][0], "files": []}]}, "primary 'model.onnx' is not among"),
    (lambda d: {**d, "sha256": {}}, "no sha256 for model.onnx"),
    (lambda d: {**d, "sha256": {"model.onnx": "abc"}}, "sha256"),
    (lambda d: {**d, "artifacts": [d["artifacts"][0], d["artifacts"][0]]}, "two built onnxruntime fp32 artefacts"),
    (lambda d: {**d, "input": {**d["input"], "shape": [1, 3, 0, 8]}}, "a dimension must be positive"),
    (lambda d: {**d, "output": {**d["output"], "shape": [1, -2]}}, "a dimension must be positive"),
    (lambda d: {**d, "labels": ["a", "b\nc"]}, "holds a control character"),
    (lambda d: {**d, "labels": ["a", " "]}, "label 1 is empty"),
])
def test_bad_manifest_is_one_line(tmp_path, mutate, match):
    _write(tmp_path, mutate(_valid(tmp_path)))
    with pytest.raises(UserError, match=match) as exc:
        read_manifest(tmp_path)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(str(tmp_path / "manifest.json"))


def test_duplicate_json_keys_are_refused(tmp_path):
    text = json.dumps(_valid(tmp_path))
    (tmp_path / "manifest.json").write_text(text[:-1] + ', "weights": "other"}')  # JSON would keep the last
    with pytest.raises(UserError, match="the key 'weights' appears twice"):
        read_manifest(tmp_path)


def test_non_utf8_manifest(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    bundle = tmp_path / "b"
    bundle.mkdir()
    os.symlink(outside, bundle / "model.onnx")
    with pytest.raises(UserError, match="resolves outside the bundle"):
        resolve_inside(bundle, "model.onnx")


def test_tampered_or_unlisted_file_is_refused_without_leaking_a_digest(tmp_path):
    _write(tmp_path, _valid(tmp_path))
    m = read_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"other bytes")
    with pytest.raises(UserError, match="sha256 mismatch for model.onnx") as exc:
        m.verify(tmp_path, ["model.onnx"])
    assert sha256_file(tmp_path / "model.onnx")[:12] not in str(exc.value)
    with pytest.raises(UserError, match="no sha256 for other.bin"):
        m.verify(tmp_path, ["other.bin"])


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["model", "input", "output", "preprocessing", "labels", "onnx", "artifacts", "sha256",
                              "format", "graph"]), value=json_values)
def test_fuzzed_manifest_fields_give_a_manifest_or_one_line(tmp_path, field, value):
    data = _valid(tmp_path)
    data[field] = value
    _write(tmp_path, data)
    try:
        read_manifest(tmp_path)
    except UserError as exc:
        assert "\n" not in str(exc)
