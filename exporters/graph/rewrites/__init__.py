"""Export-friendly rewrites as rules (onnxscript's rewriter idea): match, check, replace.

A ``Rule`` names what it rewrites: ``match(module)`` is a cheap type test, ``check(name, module,
shapes)`` the preconditions (a module that fails them is left alone), ``replace(name, module,
shapes) -> nn.Module`` builds the export-friendly equivalent. ``shapes`` maps every submodule's
qualified name to the shape of its first input in a dry run at the export resolution, so a rule
only touches modules that ran. One driver, ``apply_rule``, walks the model and returns the count;
``apply_rewrites`` runs every rule module's ``RULES``, in ``Rule.order``, on a deep copy, so the original stays
the reference.
No rule monkeypatches a library or flips a global flag.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from exporters.graph.rewrites._rules import (  # noqa: F401  (the package's API)
    WRAPPER,
    Rule,
    Shapes,
    display_name,
    folded_qkv,
    scaled_qkv,
)
from runtime.registry import declared


@functools.lru_cache(maxsize=None)
def load_rules() -> dict[str, Rule]:
    """Every rule by name, in the order they run (each rule module declares its ``RULES``)."""
    return {r.name: r for r in declared(__name__, __path__, "RULES", key=lambda r: r.order)}


ORDER = tuple(load_rules())  # the rules' names in the order they run (``Rule.order``: vit_embed last)


def apply_rule(model: nn.Module, rule: Rule, shapes: Shapes) -> tuple[nn.Module, int]:
    """Replace every module that ran (is in ``shapes``), matches and passes the check; return the count.

    A match on the root (name ``""``) returns the replacement as the new model.
    """
    todo = [(name, rule.replace(name, mod, shapes)) for name, mod in model.named_modules()
            if name in shapes and rule.match(mod) and rule.check(name, mod, shapes)]
    for name, new in todo:
        if name == "":
            model = new
        else:
            replace_module(model, name, new)
    return model, len(todo)


@dataclass
class RewriteReport:
    """Which passes fired and how many modules each replaced."""

    replaced: dict[str, int] = field(default_factory=dict)

    @property
    def fired(self) -> list[str]:
        return [k for k, v in self.replaced.items() if v > 0]

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def to_dict(self) -> dict:
        return {"replaced": dict(self.replaced), "fired": self.fired}


def record_input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> Shapes:
    """Dry-run ``model`` on zeros of ``input_shape`` ([B, 3, H, W]) and record each module's input shape."""
    shapes: Shapes = {}
    hooks = []
    for name, mod in model.named_modules():
        def hook(m, args, _name=name):
            if args and isinstance(args[0], torch.Tensor) and _name not in shapes:
                shapes[_name] = tuple(args[0].shape)
        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path ``name`` for ``new``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def apply_rewrites(model: nn.Module, input_shape: tuple[int, ...],
                   passes: list[str] | None = None) -> tuple[nn.Module, RewriteReport]:
    """Run every rule in ``ORDER`` (or only those named in ``passes``) on a deep copy of ``model``.

    ``input_shape`` is ``[B, 3, H, W]`` or ``[3, H, W]``: the export resolution the constants are baked for.
    """
    rules = load_rules()
    unknown = sorted(set(passes or ()) - set(ORDER))
    if unknown:
        raise ValueError(f"unknown rewrite rule(s): {', '.join(unknown)}; known: {', '.join(ORDER)}")
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    input_shape = (1, *input_shape[1:])
    model = copy.deepcopy(model).eval()
    shapes = record_input_shapes(model, input_shape)
    report = RewriteReport()
    for name in ORDER if passes is None else [n for n in ORDER if n in passes]:
        model, report.replaced[name] = apply_rule(model, rules[name], shapes)
    return model.eval(), report
