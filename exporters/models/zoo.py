"""Model zoo: short names -> real timm / torchvision models, with their preprocessing and labels.

``create_model(name, weights=None, pretrained=False) -> (nn.Module, ModelSpec)`` is the one
entry point. Weights come from a file (``weights``), the libraries' own download
(``pretrained``), or random initialisation, which ``ModelSpec.weights`` records as "random".
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from exporters.models.saved import checkpoint_classes, is_saved_model, label_names, read_labels, saved_model
from exporters.models.sizes import model_at_size
from exporters.models.weights import load_weights, read_state_dict
from runtime.errors import UserError
from runtime.preprocess import Preprocessing
from runtime.values import check_labels

DATA = Path(str(resources.files("exporters") / "data"))  # the trained digits checkpoints, shipped as package data

# short name -> "timm:<name>" or "tv:<name>"
ALIASES = {
    "vit_ti": "timm:vit_tiny_patch16_224",
    "vit_s": "timm:vit_small_patch16_224",
    "vit_b": "timm:vit_base_patch16_224",
    "vit_b_16": "timm:vit_base_patch16_224",
    "deit_t": "timm:deit_tiny_patch16_224",
    "swin_t": "timm:swin_tiny_patch4_window7_224",
    "swin_s": "timm:swin_small_patch4_window7_224",
    "swin_b": "timm:swin_base_patch4_window7_224",
}
TORCHVISION = {"swin_t": "Swin_T_Weights", "swin_s": "Swin_S_Weights", "swin_b": "Swin_B_Weights",
               "vit_b_16": "ViT_B_16_Weights"}

# The trained digits fixtures: timm configurations small enough to train on a CPU in seconds.
DIGITS_PREPROCESSING = Preprocessing(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     interpolation="bilinear", crop_pct=1.0)
DIGITS = {
    "digits_vit": ("vit", dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3,
                               mlp_ratio=2.0, num_classes=10)),
    "digits_swin": ("swin", dict(img_size=32, patch_size=2, embed_dim=48, depths=(2, 2),
                                 num_heads=(3, 6), window_size=4, mlp_ratio=2.0, num_classes=10)),
}


@dataclass
class ModelSpec:
    """What the rest of the pipeline needs to know about a model, beyond its weights."""

    name: str  # what the user typed, e.g. "swin_t"
    source: str  # "timm:swin_tiny_patch4_window7_224", "tv:swin_t", "digits:swin"
    family: str  # "swin" | "vit" | "other"
    input_shape: tuple[int, int, int]  # (3, H, W), batch excluded
    preprocessing: Preprocessing
    num_classes: int
    labels: list[str] | None = None
    weights: str = "random"  # "random" | "pretrained" | path of the weights file
    notes: list[str] = field(default_factory=list)
    outputs: list | None = None  # output maps [(name, [C, h, w]), ...] (a backbone, a segmentation model); None: logits
    task: str = "classification"  # "classification" | "embedding" | "features" | "segmentation" (exporters/graph/outputs.py)

    @property
    def slug(self) -> str:
        """File-system-safe name for the bundle folder."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)


def known_names() -> list[str]:
    return sorted(list(ALIASES) + list(DIGITS) + [f"tv:{n}" for n in TORCHVISION])


def _family(arch: str) -> str:
    if "swin" in arch:
        return "swin"
    if "vit" in arch or "deit" in arch:
        return "vit"
    return "other"


def _imagenet_labels(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    import collections

    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    names, synsets = list(info.label_descriptions(as_dict=False)), list(info.label_names())
    # reason: ImageNet's descriptions repeat two names ("crane" the bird and the machine, "maillot" twice); label
    # names must be unique, so a repeated one carries its WordNet synset
    twice = {n for n, c in collections.Counter(names).items() if c > 1}
    return [f"{n} ({s})" if n in twice else n for n, s in zip(names, synsets)]


def _timm_spec(model: nn.Module, name: str, source: str, arch: str) -> ModelSpec:
    """The spec of a timm model: preprocessing from its pretrained config, labels where it names them."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    pp = Preprocessing(input_size=tuple(cfg["input_size"][1:]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]),
                       crop_mode=cfg.get("crop_mode", "center"))
    if not model.num_classes:  # no classifier: the pooled embedding is the output
        return ModelSpec(name=name, source=source, family=_family(arch), input_shape=tuple(cfg["input_size"]),
                         preprocessing=pp, num_classes=0, task="embedding",
                         outputs=[(EMBEDDING, [embedding_width(model)])])
    labels = label_names(getattr(model, "pretrained_cfg", {}), model.num_classes) or _imagenet_labels(model.num_classes)
    return ModelSpec(name=name, source=source, family=_family(arch), input_shape=tuple(cfg["input_size"]),
                     preprocessing=pp, num_classes=model.num_classes, labels=labels)


EMBEDDING = "embedding"  # the output's name in an embedding model's ONNX and manifest


def embedding_width(model: nn.Module) -> int:
    """What a timm model without a classifier returns per image: its pre-logits width (``head_hidden_size``, which a
    head with a pre-logits layer sets), else ``num_features``. The dry run checks it."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _timm_model(name: str, arch: str, pretrained: bool, **kw) -> tuple[nn.Module, ModelSpec]:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise UserError(f"unknown timm model '{arch}'" + (f"; close names: {', '.join(close)}" if close else ""))
    kw = {k: v for k, v in kw.items() if v is not None}

    def build():
        try:
            return timm.create_model(arch, pretrained=pretrained, **kw)
        except Exception as exc:  # reason: hub download errors come in many types (HTTP, OS, hub-specific)
            if not pretrained:
                raise
            raise UserError(f"could not download pretrained weights for '{arch}' (offline? use --weights PATH): "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
    model = build()
    return model, _timm_spec(model, name, f"timm:{arch}", arch)


def _saved_model(name: str, **kw) -> tuple[nn.Module, ModelSpec]:
    kw = {k: v for k, v in kw.items() if v is not None}
    found = {}

    def build():
        model, found["arch"], _ = saved_model(name, **kw)
        return model
    model = build()
    arch = found["arch"]
    display = Path(name.partition(":")[2].rstrip("/")).name or "model"
    spec = _timm_spec(model, display, name, arch)
    spec.weights = name
    return model, spec


def _tv_model(name: str, arch: str, pretrained: bool, num_classes: int | None = None,
              img_size: int | None = None) -> tuple[nn.Module, ModelSpec]:
    import torchvision

    if arch not in TORCHVISION:
        close = difflib.get_close_matches(arch, list(TORCHVISION), n=5)
        raise UserError(f"unknown torchvision model 'tv:{arch}'; supported: "
                        + ", ".join(f"tv:{n}" for n in (close or TORCHVISION)))
    if img_size:
        raise UserError("--img-size applies to timm models; torchvision's are built for 224 px "
                        "(load torchvision weights into the timm model with timm:<name> --weights)")
    weights_enum = getattr(torchvision.models, TORCHVISION[arch]).IMAGENET1K_V1
    try:
        model = getattr(torchvision.models, arch)(weights=weights_enum if pretrained else None,
                                                  **({"num_classes": num_classes} if num_classes else {}))
    except Exception as exc:  # reason: torch.hub raises URLError/OSError/RuntimeError offline
        raise UserError(f"could not download pretrained weights for 'tv:{arch}' "
                        f"(offline? use --weights PATH): {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    t = weights_enum.transforms()
    size = t.crop_size[0]
    pp = Preprocessing(input_size=(size, size), mean=tuple(t.mean), std=tuple(t.std),
                       interpolation=t.interpolation.value, crop_pct=size / t.resize_size[0],
                       resize_size=t.resize_size[0])
    classes = num_classes or 1000
    spec = ModelSpec(name=name, source=f"tv:{arch}", family=_family(arch), input_shape=(3, size, size),
                     preprocessing=pp, num_classes=classes,
                     labels=list(weights_enum.meta["categories"]) if classes == 1000 else None)
    return model, spec


def build_digits(name: str) -> nn.Module:
    """The untrained digits architecture (used by the training script and the zoo)."""
    family, kwargs = DIGITS[name]
    if family == "vit":
        from timm.models.vision_transformer import VisionTransformer
        return VisionTransformer(**kwargs)
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(**kwargs)


def _digits_model(name: str) -> tuple[nn.Module, ModelSpec]:
    model = build_digits(name)
    family = DIGITS[name][0]
    spec = ModelSpec(name=name, source=f"digits:{family}", family=family, input_shape=(3, 32, 32),
                     preprocessing=DIGITS_PREPROCESSING, num_classes=10, labels=[str(i) for i in range(10)])
    return model, spec


def reinit_degenerate(model: nn.Module, spec: ModelSpec) -> None:
    """Give a random-weight model's all-zero weights a random start, so it is no degenerate network: zero Linear
    weights (torchvision's ViT head, SwinV2-CR's) a small random init, and zero normalisation scales (SwinV2's
    post-norm blocks, which start as identities) ones. Each is named in ``spec.notes``.

    # reason: with a zero head every logit is zero, and with zero post-norm scales every SwinV2 block returns its
    # input, so every accuracy comparison of a random model would be vacuous.
    """
    gen = torch.Generator().manual_seed(0)
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    zero_norms = []
    for name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.detach().any():
            continue
        if isinstance(mod, nn.Linear):
            with torch.no_grad():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * 0.02)
            spec.notes.append(f"'{name}' was initialised to zeros upstream; re-initialised randomly (std 0.02)")
        elif isinstance(mod, norms):
            with torch.no_grad():
                mod.weight.fill_(1.0)
            zero_norms.append(name)
    if zero_norms:
        spec.notes.append(f"{len(zero_norms)} normalisation layers were initialised with zero scales upstream (e.g. "
                          f"'{zero_norms[0]}'); set to ones, so no block is an identity")


def _build(name: str, pretrained: bool, num_classes: int | None, img_size):
    if name in DIGITS:
        if num_classes is not None:
            raise UserError("the digits models are fixed fixtures: --num-classes does not apply")
        return _digits_model(name)
    if is_saved_model(name):
        if pretrained:
            raise UserError(f"{name} loads its own weights; --pretrained does not apply")
        return _saved_model(name, num_classes=num_classes)
    target = ALIASES.get(name, name)
    if target.startswith("timm:"):
        return _timm_model(name, target[5:], pretrained, num_classes=num_classes)
    if target.startswith("tv:"):
        if num_classes == 0:
            raise UserError("--num-classes 0 (an embedding model) applies to timm models; load torchvision weights "
                            "into the timm model: timm:<name> --weights ... --num-classes 0")
        return _tv_model(name, target[3:], pretrained, num_classes=num_classes, img_size=img_size)
    close = difflib.get_close_matches(name, known_names(), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else f"; known: {', '.join(known_names())}"
    raise UserError(f"unknown model '{name}'{hint} (or use timm:<name>, tv:<name>, local-dir:PATH, hf-hub:ORG/NAME)")


def _classes_from_checkpoint(weights: Path, num_classes: int | None) -> tuple[int | None, str | None]:
    """The classifier size to build: ``--num-classes`` (checked against the checkpoint) or the checkpoint's."""
    found = checkpoint_classes(read_state_dict(weights))
    if found is None:
        return num_classes, None
    n, key = found
    if num_classes == 0:
        return 0, (f"num_classes 0: the checkpoint's classifier '{key}' ({n} classes) is left out and the pooled "
                   "embedding exported")
    if num_classes is not None and num_classes != n:
        raise UserError(f"--num-classes {num_classes} contradicts the checkpoint: its classifier '{key}' has "
                        f"{n} classes")
    return n, None if num_classes is not None else f"num_classes {n} read from the checkpoint's classifier '{key}'"


def create_model(name: str, weights: str | Path | None = None, pretrained: bool = False,
                 num_classes: int | None = None, img_size: int | tuple[int, int] | None = None,
                 labels: str | Path | list[str] | None = None) -> tuple[nn.Module, ModelSpec]:
    """Build a model by name and load its weights. Returns ``(model.eval(), spec)``.

    ``name``: a zoo name, ``timm:<arch>``, ``tv:<arch>``, ``local-dir:PATH`` or ``hf-hub:ORG/NAME`` (timm's
    saved-model format: architecture, args, classes, label names and preprocessing from ``config.json``).
    ``digits_*`` models load their committed trained checkpoint unless ``weights`` is given. With a
    bare checkpoint, ``num_classes`` is read from its classifier unless given (and then checked);
    ``img_size`` (pixels, or ``(h, w)``) re-lays a timm Swin or ViT for another resolution after its weights
    are loaded (exporters/models/sizes.py: Swin windows kept or scaled, never padded; ViT position embeddings
    resampled as timm does); ``labels`` is a file (one per line, or JSON) or a list.
    """

    if weights is not None and pretrained:
        raise UserError("give either --weights or --pretrained, not both")
    if num_classes is not None and num_classes < 0:
        raise UserError(f"--num-classes must be 0 (no classifier: an embedding model) or more (got {num_classes})")
    note = None
    if weights is not None and name not in DIGITS:
        num_classes, note = _classes_from_checkpoint(Path(weights), num_classes)
    model, spec = _build(name, pretrained, num_classes, img_size)
    if note:
        spec.notes.append(note)
    if name in DIGITS:
        weights = weights or DATA / f"{name}.safetensors"
    elif pretrained:
        spec.weights = "pretrained"
    if weights is not None:
        load_weights(model, Path(weights), spec.source, drop_classifier=spec.task == "embedding")
        w = Path(weights).resolve()
        spec.weights = f"exporters/data/{w.name}" if w.parent == DATA.resolve() else str(weights)
    elif not pretrained and spec.weights == "random":
        reinit_degenerate(model, spec)
        spec.notes.append("RANDOM WEIGHTS: no --weights or --pretrained given; accuracy figures compare "
                          "backends on a randomly initialised network, not a trained one")
    if labels is not None:
        names = read_labels(labels) if isinstance(labels, (str, Path)) else check_labels(list(labels), "labels")
        if len(names) != spec.num_classes:
            raise UserError(f"{len(names)} label names for a model with {spec.num_classes} classes")
        spec.labels = names
    if img_size is not None:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if tuple(spec.input_shape[1:]) != hw:
            return model_at_size(model.eval(), spec, hw, name)
    return model.eval(), spec
