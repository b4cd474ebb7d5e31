"""Users' own models: timm's saved-model folders (``local-dir:PATH``, ``hf-hub:ORG/NAME`` from the local
Hugging Face cache), label files, and the classifier size read from a bare checkpoint.

timm's own loader does the work (``timm.create_model("local-dir:PATH", pretrained=True)`` reads
``config.json``: architecture, ``model_args``, ``num_classes``, ``label_names`` and ``pretrained_cfg``
with the preprocessing, then ``model.safetensors``); this module checks what it is given first, so
each way a folder can be wrong is one line, and never touches the network.
"""
from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import UserError
from runtime.values import check_labels

SOURCES = ("local-dir:", "hf-hub:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
# classifier weights in timm and torchvision layouts, most specific first
HEAD_KEYS = ("head.fc.weight", "heads.head.weight", "head.weight", "fc.weight", "classifier.weight")


def is_saved_model(name: str) -> bool:
    return name.startswith(SOURCES)


def _hf_snapshot(repo: str) -> Path:
    """The local cache folder of ``hf-hub:repo`` (config and weights), or a UserError; no network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise UserError("hf-hub: models need huggingface_hub (pip install huggingface_hub)") from None
    repo_id, _, revision = repo.partition("@")
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision or None)
    if not isinstance(found, str):
        raise UserError(f"hf-hub:{repo} is not in the local Hugging Face cache (set HF_HOME to the cache that "
                        f"has it, or save the model with timm and use local-dir:PATH)")
    return Path(found).parent


def read_config(folder: Path) -> dict:
    """``config.json`` of a saved-model folder, checked: it exists, parses and names a timm architecture."""
    import timm
    if not folder.is_dir():
        raise UserError(f"saved-model folder not found: {folder}")
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} has no config.json (save the model with timm's save_for_hf, or give a "
                        f"checkpoint with --weights)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {str(exc).splitlines()[0][:120]}") from None
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(arch, str):
        raise UserError(f"{path} names no 'architecture'")
    if not timm.is_model(arch):
        raise UserError(f"{path} names architecture '{arch}', which this timm ({timm.__version__}) does not know")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise UserError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES[:2])})")
    return cfg


def saved_model(name: str, **overrides):
    """``(model, architecture, config)`` for ``local-dir:PATH`` or ``hf-hub:ORG/NAME``; weights loaded by timm."""
    import timm
    source, _, ident = name.partition(":")
    folder = Path(ident).expanduser() if source == "local-dir" else _hf_snapshot(ident)
    cfg = read_config(folder)
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, **overrides)
    except Exception as exc:  # reason: timm raises RuntimeError/KeyError/AssertionError for weights that don't fit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"the weights in {folder} do not fit its config.json ({cfg['architecture']}): {first}") from None
    return model, cfg["architecture"], cfg


def label_names(pretrained_cfg: dict, num_classes: int) -> list[str] | None:
    """``label_names`` of a timm pretrained config as a list (timm also allows an id -> name dict)."""
    names = (pretrained_cfg or {}).get("label_names")
    if isinstance(names, dict):
        names = dense_labels(names, "label_names of the model's config")
    return check_labels(list(names), "label_names of the model's config") if names else None


def read_labels(path: str | Path) -> list[str]:
    """Label names from a file: one per line, or a JSON list (or a JSON ``{index: name}`` object)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"labels file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text") from None
    if p.suffix == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{p} is not valid JSON: {str(exc).splitlines()[0][:120]}") from None
        if isinstance(data, dict):
            data = dense_labels(data, str(p))
        if not isinstance(data, list):
            raise UserError(f"{p} must hold a JSON list of label names (or an object of index -> name)")
        names = data
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise UserError(f"{p} holds no label names")
    return check_labels(names, str(p))


def dense_labels(data: dict, where: str) -> list:
    """An ``{index: name}`` object as a list; its keys must be exactly 0..N-1 (a gap would shift every name after it)."""
    odd = [k for k in data if not (str(k).isdigit() and str(int(k)) == str(k))]
    idx = sorted(int(k) for k in data if k not in odd)
    if odd or idx != list(range(len(data))):
        missing = sorted(set(range(len(data))) - set(idx))
        why = (f"keys that are not indices: {', '.join(map(repr, odd[:3]))}" if odd
               else f"missing {', '.join(map(str, missing[:5]))}")
        raise UserError(f"{where}: an object of labels needs the keys 0..{len(data) - 1} exactly ({why})")
    return [data[k] for k in sorted(data, key=lambda k: int(k))]


def checkpoint_classes(sd: dict) -> tuple[int, str] | None:
    """``(num_classes, key)`` from a state dict's classifier weight, when one of ``HEAD_KEYS`` is there."""
    for key in HEAD_KEYS:
        w = sd.get(key)
        if w is not None and getattr(w, "ndim", 0) == 2:
            return int(w.shape[0]), key
    return None
