"""Coverage meta-test (optimum's test_all_models_tested): every (zoo model, target) pair is tested
or excluded here by hand, with a reason. A new model or a new target fails this test until each
of its pairs is added to one list or the other."""
from pathlib import Path

from exporters.models.zoo import known_names
from exporters.targets import targets

TESTS = Path(__file__).parent

# pair -> the test file that builds and verifies it end to end
TESTED = {
    ("digits_swin", "onnxruntime"): "test_pipeline_digits.py",
    ("digits_swin", "openvino"): "test_pipeline_digits.py",
    ("digits_swin", "tensorrt"): "targets/test_tensorrt.py",
    ("digits_swin", "coreml"): "targets/test_coreml.py",
    ("digits_vit", "onnxruntime"): "test_pipeline_digits.py",
    ("digits_vit", "openvino"): "test_pipeline_digits.py",
    ("digits_vit", "tensorrt"): "targets/test_tensorrt.py",
    ("digits_vit", "coreml"): "targets/test_coreml.py",
    ("digits_swin", "tensorrt_rtx"): "targets/test_tensorrt_rtx.py",
    ("digits_vit", "tensorrt_rtx"): "targets/test_tensorrt_rtx.py",
    ("swin_t", "tensorrt"): "targets/test_tensorrt_rtx.py",  # parse + AOT build of the full-size FP16 ONNX
    ("swin_t", "coreml"): "targets/test_coreml.py",  # the rewritten full-size conversion
    ("vit_s", "coreml"): "targets/test_coreml.py",
}

FULL_SIZE = ("full-size end-to-end builds take minutes each on CI's 2 cores; they run in `make bench` "
             "(docs/BENCHMARKS.md). Their rewrites and ONNX contract are tested in tests/rewrites and "
             "test_contract, their preprocessing in test_preprocess")
FULL_SIZE_RTX = ("a full-size TensorRT-RTX engine build is the tensorrt target's parse + AOT build (tested for "
                 "swin_t) plus writing the engine; the digits models test the target end to end")
FULL_SIZE_COREML = ("Core ML conversion of the full-size models is shown for swin_t and vit_s; the other sizes "
                    "differ only in depth and width, and each conversion costs about a minute")


def _each(model: str, names: tuple[str, ...], reason: str) -> dict:
    return {(model, t): reason for t in names}


EXCLUDED = {
    **_each("vit_ti", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE),
    **_each("vit_ti", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("vit_ti", ("coreml",), FULL_SIZE_COREML),
    **_each("vit_s", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE),
    **_each("vit_s", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("vit_b", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE),
    **_each("vit_b", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("vit_b", ("coreml",), FULL_SIZE_COREML),
    **_each("vit_b_16", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE + " (an alias of vit_b)"),
    **_each("vit_b_16", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("vit_b_16", ("coreml",), FULL_SIZE_COREML),
    **_each("deit_t", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE),
    **_each("deit_t", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("deit_t", ("coreml",), FULL_SIZE_COREML),
    **_each("swin_t", ("onnxruntime", "openvino"), FULL_SIZE),
    **_each("swin_t", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("swin_s", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE),
    **_each("swin_s", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("swin_s", ("coreml",), FULL_SIZE_COREML),
    **_each("swin_b", ("onnxruntime", "openvino", "tensorrt"), FULL_SIZE),
    **_each("swin_b", ("tensorrt_rtx",), FULL_SIZE_RTX),
    **_each("swin_b", ("coreml",), FULL_SIZE_COREML),
    **_each("tv:swin_t", ("onnxruntime", "openvino", "tensorrt", "tensorrt_rtx", "coreml"),
            FULL_SIZE + "; the torchvision rewrites are tested in tests/rewrites and the weight mapping in "
            "test_weights"),
    **_each("tv:swin_s", ("onnxruntime", "openvino", "tensorrt", "tensorrt_rtx", "coreml"), FULL_SIZE),
    **_each("tv:swin_b", ("onnxruntime", "openvino", "tensorrt", "tensorrt_rtx", "coreml"), FULL_SIZE),
    **_each("tv:vit_b_16", ("onnxruntime", "openvino", "tensorrt", "tensorrt_rtx", "coreml"), FULL_SIZE),
}


def test_every_pair_is_tested_or_excluded_with_a_reason():
    pairs = {(m, t) for m in known_names() for t in targets()}
    neither = sorted(pairs - set(TESTED) - set(EXCLUDED))
    assert not neither, f"add these pairs to TESTED or EXCLUDED (with a reason): {neither}"
    both = sorted(set(TESTED) & set(EXCLUDED))
    assert not both, f"listed as tested and excluded: {both}"
    assert all(len(reason) > 20 for reason in EXCLUDED.values())


def test_no_stale_entries():
    pairs = {(m, t) for m in known_names() for t in targets()}
    assert set(TESTED) <= pairs and set(EXCLUDED) <= pairs


def test_tested_pairs_name_a_test_that_builds_them():
    for (model, target), path in TESTED.items():
        text = (TESTS / path).read_text()
        assert f'"{model}"' in text and target in text, (model, target, path)
