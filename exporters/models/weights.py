"""Checkpoint loading: safetensors or torch files (``weights_only=True``), timm or torchvision layout.

A torchvision-layout checkpoint (``features.*`` for Swin, ``encoder.layers.*`` for ViT) is
renamed to timm's layout when the target model is a timm one, so torchvision weights can be
deployed through the timm implementation. Anything that doesn't fit is a ``UserError``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from exporters.models.saved import checkpoint_classes
from runtime.errors import UserError

_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``name -> tensor`` dict."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read weights file {path}: the file is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # reason: corrupt files raise from pickle, zipfile, safetensors alike
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(f"cannot read weights file {path}: {type(exc).__name__}: {first}") from None
    for key in _WRAPPERS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _tv_swin_to_timm(sd: dict) -> dict:
    """torchvision swin_{t,s,b} keys -> timm SwinTransformer keys (same tensors, renamed)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("relative_position_index"):
            continue  # rebuilt by timm
        m = re.match(r"features\.0\.0\.(.*)", k) or None
        if m:
            out[f"patch_embed.proj.{m[1]}"] = v
            continue
        if m := re.match(r"features\.0\.2\.(.*)", k):
            out[f"patch_embed.norm.{m[1]}"] = v
            continue
        if m := re.match(r"features\.(\d+)\.(\d+)\.(.*)", k):  # stage blocks: features.1,3,5,7
            stage, blk, rest = int(m[1]), m[2], m[3]
            rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            out[f"layers.{(stage - 1) // 2}.blocks.{blk}.{rest}"] = v
            continue
        if m := re.match(r"features\.(\d+)\.(reduction|norm)\.(.*)", k):  # patch merging: 2,4,6
            out[f"layers.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}"] = v
            continue
        if k.startswith("head."):
            out["head.fc." + k[5:]] = v
            continue
        out[k] = v  # norm.*
    return out


def _tv_vit_to_timm(sd: dict) -> dict:
    """torchvision vit_b_16 keys -> timm VisionTransformer keys."""
    out = {}
    for k, v in sd.items():
        if k == "class_token":
            out["cls_token"] = v
        elif k == "encoder.pos_embedding":
            out["pos_embed"] = v
        elif k.startswith("conv_proj."):
            out["patch_embed.proj." + k[10:]] = v
        elif k.startswith("encoder.ln."):
            out["norm." + k[11:]] = v
        elif k.startswith("heads.head."):
            out["head." + k[11:]] = v
        elif m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.(.*)", k):
            rest = (m[2].replace("ln_1.", "norm1.").replace("ln_2.", "norm2.")
                    .replace("self_attention.in_proj_weight", "attn.qkv.weight")
                    .replace("self_attention.in_proj_bias", "attn.qkv.bias")
                    .replace("self_attention.out_proj.", "attn.proj.")
                    .replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2."))
            out[f"blocks.{m[1]}.{rest}"] = v
        else:
            out[k] = v
    return out


def to_model_layout(sd: dict, model: nn.Module, source: str) -> dict:
    """Rename a checkpoint's keys into the layout of ``model`` where we know how."""
    if source.startswith(("timm:", "digits:")):
        if any(k.startswith("features.") for k in sd):
            sd = _tv_swin_to_timm(sd)
        elif any(k.startswith("encoder.layers.") for k in sd):
            sd = _tv_vit_to_timm(sd)
        else:
            import importlib
            # reason: timm's own filter converts original-repo layouts (e.g. Microsoft's Swin release)
            mod = importlib.import_module(type(model).__module__)
            filt = getattr(mod, "checkpoint_filter_fn", None)
            if filt is not None:
                try:
                    sd = filt(sd, model)
                except Exception:  # reason: filters assume their own layout; fall back to the raw keys
                    pass
    return sd


def load_weights(model: nn.Module, path: Path, source: str, drop_classifier: bool = False) -> None:
    """Load ``path`` into ``model`` strictly; a key or shape mismatch is a one-line ``UserError``. With
    ``drop_classifier`` (an embedding model built from a classifier's checkpoint) the classifier's weight and bias
    are left out."""
    sd = to_model_layout(read_state_dict(path), model, source)
    found = checkpoint_classes(sd) if drop_classifier else None
    if found is not None:
        head = found[1].rsplit(".", 1)[0] + "."
        sd = {k: v for k, v in sd.items() if not (k.startswith(head) and k not in model.state_dict())}
    own = model.state_dict()
    bad_shape = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad_shape:
        k = bad_shape[0]
        raise UserError(f"{path} does not fit {source}: {len(bad_shape)} shape mismatch(es), e.g. '{k}' is "
                        f"{tuple(sd[k].shape)} in the file but {tuple(own[k].shape)} in the model")
    missing = [k for k in own if k not in sd and not k.endswith(("relative_position_index", "attn_mask"))]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. '{unexpected[0]}'")
        raise UserError(f"{path} does not fit {source}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
