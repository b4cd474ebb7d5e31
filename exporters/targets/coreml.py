"""Core ML target: ML Programs (.mlpackage) from the rewritten PyTorch model, with coremltools.

- fp16 compute precision by default (fp32 with --fp32, for comparison);
- int8: 8-bit weights, per-channel affine (``linear_quantize_weights``, mode "linear"); the modules the
  accuracy budget keeps (``ctx.keep_modules``) get no compression config, so their weights stay FP16
  (``op_name_configs``; recorded as ``kept_fp16`` in the manifest, and the proxy skips them too). Activation
  quantization needs Core ML to execute the model for calibration, which only macOS can do, so on
  other systems the result is weight-only and its notes say so;
- minimum deployment target iOS 17 / macOS 14 (``DEPLOYMENT``): the first with the ML Program
  opset (CoreML7) whose per-channel affine weight ops we use, and what current devices run;
- validation where Core ML can't execute (Linux): the package loads as a spec (``skip_model_load``),
  every op belongs to the deployment target's opset, the weights have the promised dtype, and the
  input/output names and shapes match the manifest;
- accuracy there is a labelled PROXY: the same compression applied in PyTorch (FP16 casting,
  per-channel affine fake-quantized weights) on the evaluation set. Latency needs macOS.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporters.graph.outputs import output_names
from exporters.graph.rewrites import display_name
from exporters.targets import Artifact, BuildContext, Target
from runtime.accuracy import compare
from runtime.backends import Runner, require
from runtime.backends.base import flat_outputs
from runtime.backends.coreml import INSTALL, CoreMLRunner
from runtime.errors import UserError
from runtime.latency import measure
from runtime.tolerances import tolerance_for

PRECISIONS = ("fp16", "int8")  # --fp32 also builds, for comparison; "all" and the matrix build these
DEPLOYMENT = "iOS17"
OPSET = "CoreML7"
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_ONLY", "CPU_AND_GPU")
WEIGHT_THRESHOLD = 2048  # weights with fewer elements stay FP16 in the INT8 package, and in its proxy


@dataclass(frozen=True)
class CoreMLOptions:
    compute_units: str = field(default="ALL", metadata={
        "help": "Core ML compute units recorded in the package (default ALL)", "choices": COMPUTE_UNITS})
    image_input: bool = field(default=False, metadata={
        "help": "Core ML: take an RGB image (0-255, e.g. a CVPixelBuffer) with the normalisation inside"})


def _ct():
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return require("coremltools", INSTALL)


class _Normalize(torch.nn.Module):
    """``(x - mean) / std`` per channel in front of the model, for an image input of [0, 1] pixels.

    # reason: Core ML's ImageType applies one scalar scale and a per-channel bias, which cannot express
    # a per-channel std; scale=1/255 there and this exact normalisation in the graph can.
    """

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) * self.inv_std)


def image_input_config(pp) -> dict:
    """What the manifest records for an image-input package (a Swift app passes a CVPixelBuffer)."""
    return {"input_type": "image", "color_layout": "RGB", "scale": 1 / 255.0, "bias": [0.0, 0.0, 0.0],
            "in_graph_normalization": {"mean": list(pp.mean), "std": list(pp.std)},
            "resize": {"shorter_side": pp.scale_size(), "interpolation": pp.interpolation,
                       "center_crop": list(pp.input_size)}}


def _kept(name: str, keep) -> bool:
    """Whether the export model's module or parameter ``name`` lies in one of the kept modules (display names)."""
    n = display_name(name)
    return any(n == k or n.startswith(k + ".") for k in keep)


def compressed_weight_names(model, keep, prefix: str = "") -> dict[str, str]:
    """Core ML const names of the weights an INT8 package compresses, each to its module's name: every Linear/Conv
    weight of at least ``WEIGHT_THRESHOLD`` elements outside the kept modules (what ``compressed_model``
    fake-quantizes).

    # reason: coremltools names a PyTorch parameter's const after its path, dots as underscores, with
    # "_to_fp16" once cast (e.g. ``layers_0_blocks_0_attn_qkv_weight_to_fp16``), and "p_" in front from a
    # ``torch.export`` program; checked in ``convert``.
    """
    return {prefix + name.replace(".", "_") + "_weight_to_fp16": name for name, mod in model.named_modules()
            if _compressible(mod) and not _kept(name, keep)}


@contextlib.contextmanager
def _quiet(logger: str):
    """Silence ``logger`` for the block. # reason: coremltools logs an ERROR for a frontend that fails before the next
    one converts; a failure that remains is raised as one line instead."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)  # setLevel, not .level =: it also clears the logger's isEnabledFor cache
    try:
        yield
    finally:
        log.setLevel(level)


FRONTENDS = ("torch.jit.trace", "torch.export")  # tried in this order; the first that converts is kept


def _program(model, example, frontend: str):
    """The PyTorch program coremltools converts. ``torch.export`` specialises every shape to a constant.

    # reason: coremltools' TorchScript frontend fails on ``int(size)`` ops of a traced shape, which a user's dense
    # head makes (``F.interpolate(size=feature.shape[-2:])``); the rewrites make a classifier static, not a head.
    """
    if frontend == "torch.jit.trace":
        return torch.jit.trace(model, example)
    return torch.export.export(model, (example,)).run_decompositions({})


def _compressible(mod) -> bool:
    return isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and mod.weight.numel() >= WEIGHT_THRESHOLD


def convert(model, input_shape, precision: str, compute_units: str = "ALL", image_input=None, keep=(),
            output_names=("logits",)):
    """Trace the rewritten model and convert it to an ML Program; a failure names the first bad op.

    ``image_input``: a ``Preprocessing`` to make the input an RGB image (0-255 pixels) instead of a tensor.
    ``keep``: module names whose weights stay FP16 in an INT8 package. ``output_names``: the model's outputs in
    order (a backbone's maps; one logits tensor or map otherwise).
    """
    ct = _ct()
    example = torch.zeros(input_shape)
    if image_input is not None:
        model = _Normalize(model, image_input.mean, image_input.std)
        inp = ct.ImageType(name="input", shape=tuple(input_shape), scale=1 / 255.0, bias=[0.0, 0.0, 0.0],
                           color_layout=ct.colorlayout.RGB)
    else:
        inp = ct.TensorType(name="input", shape=tuple(input_shape), dtype=np.float32)
    first_error = None
    for frontend in FRONTENDS:
        try:
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()), _quiet("coremltools"):
                warnings.simplefilter("ignore")
                ml = ct.convert(_program(model.eval(), example, frontend), source="pytorch", convert_to="mlprogram",
                                inputs=[inp],
                                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in output_names],
                                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else
                                ct.precision.FLOAT16, minimum_deployment_target=getattr(ct.target, DEPLOYMENT),
                                compute_units=getattr(ct.ComputeUnit, compute_units), skip_model_load=True)
            break
        except Exception as exc:  # reason: coremltools raises ValueError/NotImplementedError/RuntimeError per op
            first_error = first_error or exc
    else:
        exc = first_error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        op = _failing_op(exc)
        where = f" at op '{op[0]}' (node '{op[1]}')" if op else ""
        raise UserError(f"Core ML conversion failed{where}: {first[:240]}")
    ml.user_defined_metadata["vitdeploy.frontend"] = frontend
    prefix = ("p_" if frontend == "torch.export" else "") + ("model_" if image_input is not None else "")
    wanted = compressed_weight_names(model.model if image_input is not None else model, keep, prefix) \
        if precision == "int8" else {}
    if precision == "int8":
        # only Linear/Conv weights are compressed: baked constants (Swin's bias+mask, ViT's pos_embed) and
        # the kept modules' weights stay FP16, so the package and its proxy compress the same tensors
        main = ml.get_spec().mlProgram.functions["main"]
        consts = {o.name for op in next(iter(main.block_specializations.values())).operations if op.type == "const"
                  for o in op.outputs}
        missing = set(wanted) - consts
        if missing and missing == set(wanted):  # none found: the naming scheme above no longer holds
            raise UserError("Core ML: weights to compress not found in the program: " + ", ".join(sorted(missing)[:5]))
        # a Conv folded with its BatchNorm by coremltools' passes becomes a new constant: it stays FP16, and the
        # proxy must leave it alone too (build() adds these modules to kept_fp16)
        ml.user_defined_metadata["vitdeploy.left_fp16"] = ",".join(sorted(wanted[n] for n in missing))
        cfg = ct.optimize.coreml.OptimizationConfig(global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
            mode="linear", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD),
            op_name_configs={name: None for name in consts - set(wanted)})
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ml = ct.optimize.coreml.linear_quantize_weights(ml, config=cfg)
    return ml


def _failing_op(exc: BaseException) -> tuple[str, str] | None:
    """The torch op coremltools was converting when it failed, from its frames' ``node`` local.

    # reason: coremltools re-raises the op converter's own error (e.g. numpy's TypeError for an
    # ``int`` cast of a traced size) without naming the op it was converting.
    """
    found, tb = None, exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if node is not None and hasattr(node, "kind") and hasattr(node, "name"):
            found = (str(node.kind), str(node.name))
        tb = tb.tb_next
    return found


def validate(path: Path, input_shape, num_classes: int, precision: str, outputs=None) -> dict:
    """Spec-level checks that need no Core ML runtime. Raises UserError on a failed check. ``outputs``: output maps
    ``[(name, [C, h, w]), ...]`` (a backbone, a segmentation model) instead of ``logits [B, num_classes]``."""
    ct = _ct()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    checks = {}
    want = [(n, [input_shape[0], *s]) for n, s in outputs] if outputs else [("logits", [input_shape[0], num_classes])]
    inp, outs = spec.description.input[0], list(spec.description.output)
    checks["io_names"] = (inp.name, [o.name for o in outs]) == ("input", [n for n, _ in want])
    if inp.type.WhichOneof("Type") == "imageType":
        checks["input_shape"] = [inp.type.imageType.height, inp.type.imageType.width] == list(input_shape[2:])
    else:
        checks["input_shape"] = list(inp.type.multiArrayType.shape) == list(input_shape)
    checks["output_shape"] = [list(o.type.multiArrayType.shape) for o in outs] == [list(s) for _, s in want]
    main = spec.mlProgram.functions["main"]
    opsets = list(main.block_specializations.keys())
    checks["opset"] = opsets == [OPSET] or opsets == [main.opset]
    program = main.block_specializations[opsets[0]].operations
    ops = [op.type for op in program]
    from coremltools.proto import MIL_pb2
    weight_types = {MIL_pb2.DataType.Name(op.attributes["val"].type.tensorType.dataType)
                    for op in program if op.type == "const" and op.attributes["val"].type.tensorType.rank >= 2}
    if precision == "int8":
        int8 = [op for op in program if op.type in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
                and any(MIL_pb2.DataType.Name(v.type.tensorType.dataType) == "INT8" for v in op.attributes.values())]
        checks["weights_int8"] = bool(int8)
    else:
        want = "FLOAT16" if precision == "fp16" else "FLOAT32"
        checks[f"weights_{precision}"] = weight_types == {want}
    checks["spec_version"] = spec.specificationVersion >= 8  # iOS17
    failed = [k for k, v in checks.items() if not v]
    if failed:
        raise UserError(f"Core ML package failed validation: {', '.join(failed)}")
    return {"checks": checks, "opset": opsets[0], "spec_version": spec.specificationVersion,
            "op_counts": dict(collections.Counter(ops).most_common())}


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def build(ctx: BuildContext, precision: str, options: CoreMLOptions) -> Artifact:
    units = options.compute_units
    if units not in COMPUTE_UNITS:
        raise UserError(f"--compute-units must be one of {', '.join(COMPUTE_UNITS)} (got {units})")
    shape = (ctx.batch, *ctx.spec.input_shape)
    t0 = time.perf_counter()
    image = ctx.spec.preprocessing if options.image_input else None
    keep = ctx.keep_modules if precision == "int8" else ()
    ml = convert(ctx.model, shape, precision, units, image_input=image, keep=keep, output_names=output_names(ctx.spec))
    times = {"convert": time.perf_counter() - t0}
    dst = ctx.workdir / f"coreml-{precision}.mlpackage"
    ml.save(str(dst))
    report = validate(dst, shape, ctx.spec.num_classes, precision, ctx.spec.outputs)
    notes = [f"ML Program, minimum deployment target {DEPLOYMENT} (opset {report['opset']}), compute units {units}, "
             f"converted from {ml.user_defined_metadata['vitdeploy.frontend']}",
             "validated as a spec: " + ", ".join(f"{k} ok" for k in report["checks"])]
    if precision == "int8":
        notes.append("weight-only INT8 (per-channel affine): activation quantization needs Core ML to run the "
                     "model for calibration, which only macOS can do" if platform.system() != "Darwin"
                     else "INT8 weights per-channel affine")
    on_mac = platform.system() == "Darwin"
    proxy = None if on_mac else ("PyTorch with the same compression (FP16 weights and activations"
                                 + (", per-channel affine INT8 fake-quantized weights" if precision == "int8" else "")
                                 + "); Core ML latency and on-device accuracy need macOS")
    if keep:
        notes.append(f"weights of {', '.join(keep)} kept FP16 by the accuracy budget")
    folded = [n for n in ml.user_defined_metadata.get("vitdeploy.left_fp16", "").split(",") if n]
    if folded:
        keep = (*keep, *folded)
        notes.append(f"weights of {', '.join(folded)} left FP16 (folded with a BatchNorm by coremltools, so no longer "
                     "the module's own constant); the proxy leaves them too")
    config = {"compute_units": units, "deployment_target": DEPLOYMENT, "validation": report, "kept_fp16": list(keep),
              "input": image_input_config(image) if image else {"input_type": "tensor", "layout": "NCHW float32"}}
    if image:
        notes.append("image input (RGB, 0-255): scale 1/255 in Core ML, per-channel mean/std inside the graph; "
                     "resize and crop stay with the caller (see the manifest)")
    return Artifact("coreml", precision, _dir_files(dst), dst, status="built", runtime_config=config,
                    build_s=times, notes=notes, proxy=proxy)


def compressed_model(model, precision: str, keep=()):
    """A copy of ``model`` with the compression Core ML applies: FP16 (unless fp32), and for int8 per-channel
    affine fake-quantized weights outside the ``keep`` modules. ``[B, 3, H, W]`` in the model's dtype."""
    import copy
    m = copy.deepcopy(model).eval()
    if precision == "int8":
        with torch.no_grad():
            for name, mod in m.named_modules():
                if _compressible(mod) and not _kept(name, keep):
                    mod.weight.copy_(fake_quant_affine(mod.weight))
    return m.to(torch.float32 if precision == "fp32" else torch.float16)


def block_proxy(model, art: Artifact):
    """What a Core ML artefact's block outputs are read from here: ``model`` with the package's compression
    (``compressed_model``), hooked like the reference (exporters/verify/probes.py)."""
    return compressed_model(model, art.precision, art.runtime_config.get("kept_fp16", ()))


class _ProxyRunner(Runner):
    """PyTorch run of the compression Core ML applies: the labelled proxy on non-macOS systems."""

    eager = True  # takes any batch: the evaluation runs in chunks (exporters.pipeline.stages.evaluate)

    def __init__(self, model, precision: str, input_shape, keep=(), output_names=("logits",)):
        super().__init__()
        self.model = compressed_model(model, precision, keep)
        self.dtype = next(self.model.parameters()).dtype
        self.input_name, self.output_names = "input", list(output_names)
        self.input_shape = [-1, *list(input_shape)[1:]]

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(x).to(self.dtype)
        with torch.no_grad():
            out = self.model(x)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.float().numpy() for n, o in zip(self.output_names, outs)}

    def describe(self):
        return {"device": "cpu (PyTorch proxy)", "dtype": str(self.dtype)}


def fake_quant_affine(w):
    """Per-output-channel affine (asymmetric) 8-bit quantize-dequantize, as Core ML's "linear" mode."""
    flat = w.reshape(w.shape[0], -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scale = torch.clamp((hi - lo) / 255.0, min=1e-12)
    zero = torch.round(-lo / scale) - 128
    q = torch.clamp(torch.round(flat / scale) + zero, -128, 127)
    return ((q - zero) * scale).reshape(w.shape)


def compute_unit_check(path: Path, units: str, calib, batch: int, runs: int = 20) -> tuple[dict, list[str]]:
    """macOS only: run CPU_ONLY and each other compute unit on calibration samples; flag disagreement.

    # reason: Core ML's Neural Engine and GPU paths are known upstream to disagree silently with the
    # CPU for some models; a deployment report must say so rather than average it away.
    """
    xs = list(calib.batches(batch))[:8]
    outs, facts, flags = {}, {}, []
    for u in dict.fromkeys(["CPU_ONLY", *([units] if units != "CPU_ONLY" else []), "CPU_AND_NE", "CPU_AND_GPU"]):
        r = CoreMLRunner(path, compute_units=u)
        outs[u] = np.concatenate([flat_outputs(r.infer({"input": x})) for x in xs])  # closed below, after timing
        with r:
            facts[u] = {"p50_ms": measure(r, {"input": xs[0]}, runs=runs, warmup=3).p50}
    tol = tolerance_for("coreml", "fp16")
    for u, o in outs.items():
        if u == "CPU_ONLY":
            continue
        acc = compare(outs["CPU_ONLY"], o)
        facts[u].update({"cosine_min_vs_cpu": acc.cosine_min, "top1_agreement_vs_cpu": acc.top1_agreement})
        if acc.cosine_min < tol.cosine_min or acc.top1_agreement < tol.top1_agreement:
            flags.append(f"FLAGGED: {u} disagrees with CPU_ONLY (cosine_min {acc.cosine_min:.4f}, "
                         f"top-1 agreement {acc.top1_agreement:.2%})")
    return facts, flags


def open_for_verification(ctx: BuildContext, art: Artifact) -> Runner:
    """On macOS the package itself (after the compute-unit check); elsewhere the labelled PyTorch proxy."""
    if platform.system() == "Darwin":
        facts, flags = compute_unit_check(art.primary, art.runtime_config["compute_units"], ctx.calib(), ctx.batch)
        art.runtime_config["compute_unit_check"] = facts
        art.notes.extend(flags)
        return CoreMLRunner(art.primary, compute_units=art.runtime_config["compute_units"])
    return _ProxyRunner(ctx.model, art.precision, (ctx.batch, *ctx.spec.input_shape),
                        art.runtime_config.get("kept_fp16", ()), output_names(ctx.spec))


TARGET = Target(name="coreml", precisions=PRECISIONS, accepts=("fp16", "int8", "fp32"), build=build,
                backend="coreml", sdk="coremltools", install=INSTALL, order=40, options=CoreMLOptions,
                open=open_for_verification, keeps=("int8",), block_source="proxy", block_proxy=block_proxy,
                block_label="the Core ML proxy: PyTorch with the package's compression (Core ML runs on macOS only)")
