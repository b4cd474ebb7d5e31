"""Coverage meta-test: every (zoo model, target) pair is tested somewhere or excluded with a reason."""
from exporters.targets import TARGET_NAMES
from exporters.zoo import known_names

ALL = set(TARGET_NAMES)
# where each pair is exercised end to end (build + verify) in this suite
TESTED = {
    "digits_swin": ALL,  # test_pipeline_digits, targets/test_tensorrt, targets/test_coreml
    "digits_vit": ALL,  # same, plus test_benchmarks_matrix and test_runtime
    "swin_t": {"coreml"},  # targets/test_coreml (rewritten full-size conversion); ONNX in test_contract
    "vit_s": {"coreml"},
}
FULL_SIZE = ("full-size end-to-end builds are run by `make bench` (docs/BENCHMARKS.md), not in CI: on 2 cores "
             "one model × all targets takes minutes; their export, rewrites and contract are tested in "
             "test_contract and tests/rewrites, and their preprocessing in test_preprocess")
EXCLUDED = {(name, target): FULL_SIZE for name in known_names() for target in ALL
            if target not in TESTED.get(name, set())}


def test_every_zoo_pair_is_tested_or_excluded_with_a_reason():
    for name in known_names():
        for target in TARGET_NAMES:
            assert target in TESTED.get(name, set()) or EXCLUDED.get((name, target)), (name, target)


def test_no_stale_entries():
    assert set(TESTED) <= set(known_names())
    for name, targets in TESTED.items():
        assert targets <= ALL
