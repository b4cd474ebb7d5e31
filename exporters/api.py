"""The Python API: ``exporters.export(model_or_name, ...) -> Report``, for a name or any ``nn.Module``.

The same pipeline as the CLI (rewrites where a rule matches, ONNX + contract, targets, verification
against the module itself, latency, an atomic bundle and its report). Bad arguments raise
``ExportError`` (``runtime.errors.UserError``) with a one-line message.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporters.graph.outputs import TASKS, dry_run
from exporters.models.saved import read_labels
from exporters.models.zoo import EMBEDDING, ModelSpec, _timm_spec
from exporters.pipeline.options import RunOptions
from exporters.pipeline.stages import run
from exporters.targets import targets as registry
from runtime.errors import UserError as ExportError
from runtime.preprocess import Preprocessing
from runtime.values import check_labels


@dataclass
class Report:
    """What one export made: the bundle folder, one row per (target, precision), and the whole report.

    Attributes:
        data: The whole report, as ``report.json`` holds it.
    """

    data: dict

    @property
    def bundle(self) -> Path:
        return Path(self.data["bundle"])

    @property
    def results(self) -> list[dict]:
        return self.data["results"]

    @property
    def passed(self) -> bool:
        """True when no result failed its accuracy gate."""
        return not any(r.get("passed") is False for r in self.results)

    @property
    def rewrites(self) -> list[str]:
        """The rewrite rules that matched this model."""
        return list((self.data.get("rewrites") or {}).get("fired", []))

    @property
    def sizes(self) -> list[str]:
        """The input sizes of a multi-size bundle (``["224x224", "384x384"]``); empty for one size."""
        return list(dict.fromkeys(r["input_size"] for r in self.results if r.get("input_size")))

    def result(self, target: str, precision: str, size: str | None = None) -> dict:
        """One row of the results.

        Args:
            target: A target name (``"openvino"``).
            precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
            size: In a bundle of several sizes, which (``"384x384"``).

        Returns:
            The row: status, passed, latency, accuracy against the reference, the artefact's files.
        """
        for r in self.results:
            if r["target"] == target and r["precision"] == precision and size in (None, r.get("input_size")):
                return r
        raise KeyError((target, precision, size))

    def to_dict(self) -> dict:
        return self.data


def _family(module) -> str:
    names = " ".join(type(m).__name__.lower() for m in module.modules())
    return "swin" if "swin" in names else "vit" if ("vision" in names or "vit" in names) else "other"


def spec_for_module(module, name: str, input_shape, preprocessing, labels, task: str = "classification"):
    """A ``ModelSpec`` for a user's ``nn.Module``: shape and preprocessing given, or taken from a timm config.
    ``task``: "classification" (the module returns logits ``[B, classes]``) or "segmentation" (a logits map
    ``[B, classes, H, W]``)."""
    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise ExportError(f"export() takes a model name or a torch.nn.Module, not {type(module).__name__}")
    timm_like = hasattr(module, "pretrained_cfg") and hasattr(module, "num_classes")
    base = _timm_spec(module, name, f"module:{type(module).__module__}.{type(module).__qualname__}",
                      type(module).__name__.lower()) if timm_like else None
    if input_shape is None and base is None:
        raise ExportError("input_shape=(3, H, W) is required for a module without a timm pretrained_cfg")
    shape = tuple(input_shape) if input_shape is not None else base.input_shape
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] != 3 or min(shape) < 1:
        raise ExportError(f"input_shape must be (3, H, W) (got {tuple(input_shape)})")
    if isinstance(preprocessing, dict):
        try:
            preprocessing = Preprocessing.from_dict({"input_size": shape[1:], **preprocessing})
        except TypeError as exc:
            raise ExportError(f"preprocessing: {exc}") from None
    pp = preprocessing or (base.preprocessing if base is not None else Preprocessing(input_size=shape[1:]))
    if tuple(pp.input_size) != tuple(shape[1:]):
        raise ExportError(f"preprocessing input_size {tuple(pp.input_size)} differs from input_shape {shape}")
    out = dry_run(module, shape, "the module")  # NaN or inf in its outputs: refused here
    if task == "classification" and base is not None and base.task == "embedding":
        task = "embedding"  # a timm model without a classifier returns its pooled embedding
    dense, embedding = task == "segmentation", task == "embedding"
    if not isinstance(out, torch.Tensor) or out.ndim != (4 if dense else 2):
        got = f"a {type(out).__name__}" if not isinstance(out, torch.Tensor) else f"a tensor of shape {list(out.shape)}"
        want = {"segmentation": "a logits map [B, classes, H, W]", "embedding": "an embedding [B, D]"}.get(
            task, "logits [B, classes]")
        raise ExportError(f"the module must return {want} as one tensor for task='{task}' (it returned {got})")
    classes = int(out.shape[1] if dense else out.shape[-1])
    if classes < 1:
        raise ExportError(f"the module returns {list(out.shape)}: no "
                          f"{'class channels' if dense else 'dimensions' if embedding else 'classes'} to judge")
    if embedding:
        if labels:
            raise ExportError("labels name classes; an embedding model has none")
        return ModelSpec(name=name, source=base.source if base else f"module:{type(module).__qualname__}",
                         family=_family(module), input_shape=shape, preprocessing=pp, num_classes=0,
                         weights="given module", task="embedding", outputs=[(EMBEDDING, [classes])],
                         notes=[] if preprocessing is not None or base is not None else [
                             "preprocessing not given: ImageNet mean/std, bicubic resize, crop 0.875 assumed"])
    names = read_labels(labels) if isinstance(labels, (str, Path)) else check_labels(list(labels), "labels") if labels else \
        (base.labels if base is not None and base.num_classes == classes else None)
    if names is not None and len(names) != classes:
        raise ExportError(f"{len(names)} label names for a model with {classes} classes")
    notes = [] if preprocessing is not None or base is not None else [
        "preprocessing not given: ImageNet mean/std, bicubic resize, crop 0.875 assumed"]
    return ModelSpec(name=name, source=base.source if base else f"module:{type(module).__qualname__}",
                     family=_family(module), input_shape=shape, preprocessing=pp, num_classes=classes,
                     labels=names, weights="given module", notes=notes, task=task,
                     outputs=[("logits", list(out.shape[1:]))] if dense else None)


def export(model_or_name, *, input_shape=None, targets="onnxruntime", precision=None, data="digits", calib=None,
           labels=None, preprocessing=None, out="out", name: str | None = None, weights=None,
           num_classes: int | None = None, img_size=None, features=None, batch: int = 1, runs: int = 50,
           threads: int | None = None, rewrites: bool = True, max_drop: float | None = None,
           min_cosine: float | None = None, throughput: bool = False, repair: bool = True, quiet: bool = True,
           sign_key=None, task: str = "classification", keep: str = "all", **target_options) -> Report:
    """Export a model, build its artefacts, prove each against the model, time them, and write a bundle.

    Args:
        model_or_name: A zoo name (``swin_t``), ``timm:<arch>``, ``tv:<arch>``, ``local-dir:PATH`` or
            ``hf-hub:ORG/NAME`` (timm's saved-model format), or any ``nn.Module``.
        input_shape: ``(3, H, W)``; needed for a module without a timm config.
        targets: A target name, a list of them, or ``"all"`` (every target this machine can build).
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"auto"`` (every precision; the fastest that passed is
            the bundle's default); default: each target's first.
        data: The evaluation images the gates are judged on: a folder, ``.npy``/``.npz``, or ``"digits"``.
        calib: The INT8 calibration images (the same forms); default: ``data`` (digits: its train split).
        labels: Label names: a file (one per line, or JSON) or a list.
        preprocessing: A ``runtime.preprocess.Preprocessing`` or a dict of its fields; default: the model's.
        out: The folder the bundle is written under (``out/<name>/``).
        name: The bundle's name; default: the model's.
        weights: A checkpoint (``.safetensors`` or a torch file) for a named model.
        num_classes: The classifier's classes (0: an embedding model); default: read from the checkpoint.
        img_size: Pixels, ``(h, w)`` or a list of them: several make one bundle with an artefact set per size
            (``Report.results`` rows name their ``input_size``).
        features: ``True`` or a list of indices: export a timm Swin's stages or ViT's blocks as feature maps for
            detection and segmentation heads (every target; TensorRT and Core ML with proxy accuracy off their
            devices).
        batch: The artefacts' batch size.
        runs: Timed runs per artefact (interleaved).
        threads: Inference threads; default: the cores this process may use.
        rewrites: Apply the export-friendly rewrites (``False``: the naive export, for comparison).
        max_drop: The accuracy budget: the top-1 points an INT8/FP16 artefact may lose.
        min_cosine: The accuracy budget: the worst-sample cosine an INT8/FP16 artefact must keep.
        throughput: Also measure images/s in throughput mode.
        repair: Try the backend's known-safe runtime configurations when an artefact fails its gate
            (``False``: keep the row as it failed).
        quiet: No progress output.
        sign_key: A PEM EC private key: sign the bundle (``model.sig``, OpenSSF model-signing format;
            ``runtime.open(..., trust=PUBLIC_KEY)`` checks it).
        task: ``"classification"``; ``"embedding"`` for a module returning ``[B, D]`` (gated on the worst
            sample's cosine); ``"segmentation"`` for one returning ``[B, classes, H, W]`` (gated on the map's
            cosine, pixel agreement and mean IoU, with a drift table by module for ONNX Runtime and OpenVINO).
        keep: ``"all"``, or ``"selected"``: only the artefact the runtime serves, and what proves it.
        **target_options: Per-target flags by field name (``device="CPU"``, ``io_fp16=True``,
            ``recipe="auto"``...).

    Returns:
        The ``Report``: ``bundle`` (its path), ``passed``, ``results`` (one row per target, precision and size)
        and ``rewrites``.

    Raises:
        ExportError: One line for anything refused (a bad option, a size the model cannot take, a model whose
            outputs are not finite); a failed gate is not an error: its row has ``passed`` False.
    """
    from torch import nn

    names = list(registry()) if targets == "all" else [targets] if isinstance(targets, str) else list(targets)
    precisions = None
    if isinstance(precision, (list, tuple)):  # several: each target builds those of them it offers
        precisions, precision = list(precision), None
    module = spec = None
    if task not in TASKS:
        raise ExportError(f"task must be one of {', '.join(TASKS)} (got {task!r})")
    if isinstance(model_or_name, nn.Module):
        spec = spec_for_module(model_or_name, name or type(model_or_name).__name__.lower(), input_shape,
                               preprocessing, labels, task)
        module, model_or_name = model_or_name, spec.name
    elif not isinstance(model_or_name, str):
        raise ExportError(f"export() takes a model name or a torch.nn.Module, not {type(model_or_name).__name__}")
    elif task != "classification":
        raise ExportError(f"task={task!r} is for an nn.Module; a named model is a classifier, or an embedding model "
                          "when it has no classifier (num_classes=0); features= exports its backbone")
    elif input_shape is not None or preprocessing is not None:
        raise ExportError("input_shape and preprocessing are for modules; a named model has its own "
                          "(use img_size= to change the resolution)")
    opts = RunOptions(model=model_or_name, targets=names, precision=precision, data=data, calib=calib,
                      weights=weights, num_classes=num_classes, img_size=img_size, features=features,
                      labels=None if module is not None else labels, module=module, spec=spec, out=Path(out),
                      batch=batch, runs=runs, threads=threads, rewrites=rewrites, options=target_options,
                      max_drop=max_drop, min_cosine=min_cosine, throughput=throughput, repair=repair,
                      precisions=precisions, quiet=quiet, sign_key=Path(sign_key) if sign_key is not None else None,
                      keep=keep)
    return Report(run(opts))
