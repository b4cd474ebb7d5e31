"""Input sizes: ``--img-size`` parsed, which sizes an architecture takes without padding, and the model at one.

A Swin at a size is the same weights with its windows re-laid: the trained window where it tiles every stage's
grid (448 px keeps swin_t's 7), else the window scaled with the grid as timm's ``set_input_size`` does
(384 px gives 12, the bias tables resized by interpolation, as timm's 384 fine-tunes were made). A size that
needs neither (windows padded with zeros the model never saw in training) is refused, naming the nearest
sizes that work. A ViT takes any multiple of its patch, its position embeddings resampled as timm does.
"""
from __future__ import annotations

import copy
import dataclasses

from exporters.models.memory import check_scaled
from runtime.errors import UserError

Size = tuple[int, int]  # (height, width) in pixels


def size_label(hw: Size) -> str:
    """``(384, 384)`` -> ``"384x384"``: the sub-bundle's folder and the name in reports."""
    return f"{hw[0]}x{hw[1]}"


def spelled(hw: Size) -> str:
    """``(384, 384)`` -> ``"384"``, ``(800, 1344)`` -> ``"800x1344"``: a size as the flag takes it."""
    return str(hw[0]) if hw[0] == hw[1] else size_label(hw)


def arch_of(model) -> str | None:
    """``swin`` or ``vit`` for a timm SwinTransformer / VisionTransformer, else None."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer
    if isinstance(model, SwinTransformer):
        return "swin"
    if isinstance(model, VisionTransformer):
        return "vit"
    return None


def pair(v) -> Size:
    """A timm size attribute (an int or an ``(h, w)`` pair) as ``(h, w)``."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _swin_windows(model, hw: Size) -> tuple[list[Size], bool] | None:
    """Per-stage windows that tile ``hw``'s stage grids without padding, and whether they are the trained ones;
    None when no window does (``hw`` not a multiple of the last stage's stride, or a scaled window not whole)."""
    ph, pw = pair(model.patch_embed.patch_size)
    stages = len(model.layers)
    if hw[0] % (ph * 2 ** (stages - 1)) or hw[1] % (pw * 2 ** (stages - 1)):
        return None
    grids = [(hw[0] // ph // 2 ** i, hw[1] // pw // 2 ** i) for i in range(stages)]
    trained = [pair(w) for w in model._ref_window_sizes]
    ref = pair(model._ref_grid_size)

    def tiles(ws):
        return all(g[0] % w[0] == 0 and g[1] % w[1] == 0 for g, w in zip(grids, ws))
    if tiles(trained):
        return trained, True
    scaled = []
    for w in trained:  # the window keeps its ratio to the patch grid (timm's set_input_size default)
        num = (w[0] * grids[0][0], w[1] * grids[0][1])
        if num[0] % ref[0] or num[1] % ref[1]:
            return None
        scaled.append((num[0] // ref[0], num[1] // ref[1]))
    return (scaled, False) if tiles(scaled) else None


def _fits(model, arch: str, hw: Size) -> bool:
    if arch == "swin":
        return _swin_windows(model, hw) is not None
    ph, pw = pair(model.patch_embed.patch_size)
    return hw[0] % ph == 0 and hw[1] % pw == 0


def nearest_sizes(model, arch: str, hw: Size, count: int = 2) -> list[int]:
    """The square sizes nearest ``hw`` that ``model`` takes without padding (for the refusal's hint)."""
    target = round((hw[0] * hw[1]) ** 0.5)
    found: list[int] = []
    for d in range(max(4 * target, 1024)):
        for s in (target - d, target + d):
            if len(found) < count and s >= 8 and s not in found and _fits(model, arch, (s, s)):
                found.append(s)
    return sorted(found)


def check_size(model, hw: Size, name: str) -> str:
    """The architecture (``swin``/``vit``) when ``model`` takes ``hw`` without padding; else one ``UserError`` naming
    the nearest sizes that work. Cheap: nothing is re-laid."""
    arch = arch_of(model)
    if arch is None:
        raise UserError(f"--img-size applies to timm Swin and ViT models; {name} is a {type(model).__name__}")
    if not _fits(model, arch, hw):
        if arch == "swin":
            why = (f"its {len(model.layers)} stages and {pair(model._ref_window_sizes[0])[0]}-px windows would "
                   "need zero padding it was not trained with")
        else:
            why = f"it is not a multiple of the {pair(model.patch_embed.patch_size)[0]}-px patch"
        near = nearest_sizes(model, arch, hw)
        raise UserError(f"--img-size {spelled(hw)} does not fit {name}: {why}; "
                        + (f"nearest sizes that do: {', '.join(map(str, near))}" if near else "no size near it does"))
    return arch


def model_at_size(model, spec, hw: Size, name: str):
    """A copy of ``model`` (a timm Swin or ViT) for ``hw`` inputs and its spec; the original is untouched.
    A size the architecture can't take without padding, or whose activations cannot fit in this machine's memory,
    is one ``UserError`` (the first naming the nearest sizes that work), before anything is re-laid."""
    arch = check_size(model, hw, name)
    check_scaled(model, spec.input_shape, hw, name)
    resized = copy.deepcopy(model)
    spec = dataclasses.replace(spec, notes=list(spec.notes))
    if arch == "swin":
        windows, trained = _swin_windows(model, hw)
        resized.set_input_size(img_size=hw, window_size=windows)
        w = windows[0]
        spec.notes.append(f"input {size_label(hw)}: windows {w[0]}x{w[1]} "
                          + ("(as trained)" if trained else "(scaled with the grid as timm's set_input_size does; "
                             "relative-position bias tables resized by interpolation)"))
    else:
        resized.set_input_size(img_size=hw)
        spec.notes.append(f"input {size_label(hw)}: position embeddings resampled as timm does")
    spec.input_shape = (3, *hw)
    spec.preprocessing = dataclasses.replace(spec.preprocessing, input_size=hw, resize_size=None)
    return resized.eval(), spec


__all__ = ["Size", "size_label", "spelled", "arch_of", "pair", "check_size", "model_at_size", "nearest_sizes"]
