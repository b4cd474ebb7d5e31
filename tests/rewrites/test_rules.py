"""The rule driver and its meta-tests: every registered rule runs in ORDER and has its own test file."""
from pathlib import Path

import pytest
import torch
from torch import nn

from exporters.graph.rewrites import ORDER, Rule, apply_rewrites, apply_rule, load_rules, record_input_shapes

HERE = Path(__file__).parent


def test_every_rule_is_in_order_and_has_its_own_test_file():
    rules = load_rules()
    assert set(rules) == set(ORDER) and len(ORDER) == len(set(ORDER))
    for name in rules:
        path = HERE / f"test_{name}.py"
        assert path.is_file(), f"rule '{name}' has no test file {path.name}"
        assert f'"{name}"' in path.read_text(), f"{path.name} never runs rule '{name}'"


def test_vit_embed_runs_after_the_rules_that_rewrite_vit_submodules():
    assert ORDER.index("vit_embed") > ORDER.index("vit_attention")
    assert ORDER.index("vit_embed") > ORDER.index("gelu_fusable")


def test_driver_counts_replaces_only_modules_that_ran_and_pass_the_check():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()).eval()
    unused = nn.ReLU()
    model.add_module("unused", unused)  # never called in forward: not in the dry-run shapes
    model.forward = lambda x, m=model: m[3](m[2](m[1](m[0](x))))
    shapes = record_input_shapes(model, (1, 4))
    rule = Rule(name="relu_to_tanh", match=lambda m: type(m) is nn.ReLU,
                check=lambda name, m, s: name != "3", replace=lambda name, m, s: nn.Tanh())
    model, n = apply_rule(model, rule, shapes)
    assert n == 1 and type(model[1]) is nn.Tanh and type(model[3]) is nn.ReLU and model.unused is unused


def test_driver_replaces_the_root():
    model = nn.ReLU()
    rule = Rule(name="root", match=lambda m: type(m) is nn.ReLU, replace=lambda name, m, s: nn.Identity())
    new, n = apply_rule(model, rule, {"": (1, 4)})
    assert n == 1 and type(new) is nn.Identity


def test_unknown_rule_name_is_refused():
    with pytest.raises(ValueError, match="unknown rewrite rule"):
        apply_rewrites(nn.Linear(2, 2), (1, 2), passes=["no_such_rule"])


def test_original_model_is_left_untouched():
    from exporters.models.zoo import build_digits
    model = build_digits("digits_vit").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    rewritten, report = apply_rewrites(model, (1, 3, 32, 32))
    assert report.total > 0 and rewritten is not model
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
