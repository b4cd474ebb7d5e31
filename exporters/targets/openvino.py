"""OpenVINO target: IR from the contract-checked ONNX, FP32 / FP16 / INT8 (NNCF PTQ).

- fp32: FP32 IR, compiled with ``INFERENCE_PRECISION_HINT=f32`` so the figure is honest
  (OpenVINO's CPU default on AMX/AVX512-BF16 machines is bf16);
- fp16: FP16-compressed weights, compiled with the CPU's fastest 16-bit hint (bf16 with AMX,
  f16 with AMX-FP16, else f32), recorded in the result;
- int8: ``nncf.quantize`` with ``ModelType.TRANSFORMER`` on the shared calibration set; the
  ops NNCF leaves unquantized run at the hint recorded in ``runtime_config``.
The IR comes from the ONNX, not from PyTorch directly: measured in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field

from exporters.graph.onnx import FOLD_LIMIT
from exporters.targets import Artifact, BuildContext, Target, recipe_field, recipe_of
from exporters.targets._ov_constants import factor_attention_bias
from runtime.backends import require
from runtime.backends.openvino import INSTALL, check_device, half_hint
from runtime.environment import int8_may_saturate

INSTALL_INT8 = "pip install 'vitdeploy[openvino-int8]'"  # NNCF: only building INT8 IRs needs it

PRECISIONS = ("fp32", "fp16", "int8")
# Unquantized ops of the INT8 IR run at the CPU's fastest 16-bit type (bf16 with AMX/AVX512-BF16, else f32):
# measured with `python -m benchmarks vs-naive swin_t vit_b` on an AVX512-BF16 EPYC, the f32 hint left our INT8
# IR at 0.84x / 0.92x the speed of NNCF's defaults (which run the rest in bf16); accuracy is gated as ever.


# INT8 recipes: which op groups are INT8, how activations are quantized, and (at run time) the precision of what
# stays unquantized. Each is a named choice; `--recipe auto` builds every one, gates each on the evaluation set,
# times the passing ones interleaved on this machine and keeps the fastest (exporters/verify/recipes.py).
RECIPES = {
    "mixed": "NNCF transformer mode, mixed preset: symmetric weights, asymmetric activations (a zero point "
             "subtracted before each INT8 GEMM); projections, MLP and attention matmuls INT8",
    "symmetric": "performance preset: symmetric activations too, so no zero-point subtraction (the inputs of "
                 "the GEMMs follow LayerNorm or attention and are centred; after GELU one bit of range is spent)",
    "projections": "mixed preset with the attention matmuls (QK^T, AV) left unquantized: projections and MLP "
                   "INT8, attention at the 16-bit hint (for CPUs where 16-bit attention beats INT8 attention)",
}


@dataclass(frozen=True)
class OpenVinoOptions:
    device: str = field(default="CPU", metadata={"help": "OpenVINO device: CPU, GPU, NPU (default CPU)"})
    recipe: str = recipe_field(RECIPES)


def recipe_candidates(options: OpenVinoOptions) -> list[tuple[str, dict]]:
    """``--recipe auto``: ``(recipe, runtime configuration)`` per candidate: every recipe under the CPU's fastest
    16-bit hint for the unquantized ops and under f32 (one candidate where those are the same)."""
    hints = list(dict.fromkeys([half_hint(options.device), "f32"]))
    return [(r, {"recipe": r, "inference_precision": h}) for r in RECIPES for h in hints]


def first_last_compute_ops(model) -> list[str]:
    """Names of the first Convolution/MatMul (patch embedding) and the last MatMul (classifier head).

    # reason: measured on digits_swin, quantizing these two cost 0.55 top-1 points and 1% agreement;
    # keeping them FP32 (the usual first/last-layer rule) removed the drop at ~2% of the FLOPs.
    """
    ops = [o for o in model.get_ordered_ops() if o.get_type_name() in ("Convolution", "MatMul")]
    return list(dict.fromkeys([ops[0].get_friendly_name(), ops[-1].get_friendly_name()])) if ops else []


KEEPABLE = ("Convolution", "MatMul", "ScaledDotProductAttention")


def ops_producing(model, names: frozenset) -> list[str]:
    """Friendly names of the MatMul/Convolution/attention ops that carry any of ``names`` (ONNX tensor or node names).

    # reason: OpenVINO turns an ONNX Gemm/Conv into MatMul/Convolution + Add; the ONNX output name moves to
    # the Add and the friendly name becomes "<onnx node>/WithoutBiases", so both are matched. Its ONNX
    # frontend (2026) also fuses MatMul-Softmax-MatMul into one ScaledDotProductAttention op named after the
    # second MatMul, whose inputs NNCF quantizes; keeping an attention block must name that op too.
    """
    found = []
    for o in model.get_ordered_ops():
        if o.get_type_name() not in KEEPABLE:
            continue
        tensors = {n for out in o.outputs() for n in out.get_names()}
        for out in o.outputs():
            for target in out.get_target_inputs():
                nxt = target.get_node()
                if nxt.get_type_name() == "Add":
                    tensors |= {n for x in nxt.outputs() for n in x.get_names()}
        if tensors & names or o.get_friendly_name().split("/")[0] in names:
            found.append(o.get_friendly_name())
    return found


def build(ctx: BuildContext, precision: str, options: OpenVinoOptions) -> Artifact:
    ov = require("openvino", INSTALL)
    device = options.device
    check_device(device)
    times = {}
    t0 = time.perf_counter()
    model = ov.convert_model(str(ctx.onnx_path))
    times["convert"] = time.perf_counter() - t0
    notes = []
    hint = "f32"
    if precision == "int8":
        nncf = require("nncf", INSTALL_INT8)
        calib = ctx.calib()
        t0 = time.perf_counter()
        logging.getLogger("nncf").setLevel(logging.ERROR)
        keep = list(dict.fromkeys(first_last_compute_ops(model) + ops_producing(model, ctx.keep_tensors)))
        # reason: without VNNI/AMX, OpenVINO's u8s8 kernels sum pairs in int16 (vpmaddubsw), which can saturate;
        # NNCF's default fixes the first layer only. Measured on an AVX2 EPYC (digits_swin hold-out, 539 images):
        # cosine_min 0.979 with the default, 0.99979 with the fix on every layer (docs/BENCHMARKS.md section 12).
        overflow = nncf.OverflowFix.ENABLE if int8_may_saturate() else nncf.OverflowFix.FIRST_LAYER
        recipe = recipe_of(options)
        preset = nncf.QuantizationPreset.PERFORMANCE if recipe == "symmetric" else None
        types = ["ScaledDotProductAttention"] if recipe == "projections" else []
        advanced = nncf.AdvancedQuantizationParameters(overflow_fix=overflow)
        if ctx.shares_weights:
            # reason: SmoothQuant rescales each weight by the activations of the size it calibrates at, so the INT8
            # weights of a bundle of several sizes differ byte for byte and are stored once per size; without it
            # they are quantized from the weights alone, the same bytes at every size, and stored once
            advanced.smooth_quant_alphas = nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        with contextlib.redirect_stdout(io.StringIO()):
            model = nncf.quantize(model, nncf.Dataset(list(calib.batches(ctx.batch))),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib), preset=preset,
                                  ignored_scope=nncf.IgnoredScope(names=keep, types=types, validate=False),
                                  advanced_parameters=advanced)
        times["quantize"] = time.perf_counter() - t0
        hint = half_hint(device)
        kept = (f"{', '.join(keep[:2])} (the first and last layers: patch embedding, and classifier head or last "
                "projection)"
                + (f" and {len(keep) - 2} more kept by the accuracy budget" if len(keep) > 2 else ""))
        notes.append(f"NNCF PTQ, recipe {recipe} ({RECIPES[recipe].split(':')[0]}) on {len(calib)} calibration samples; "
                     f"not quantized: {kept}; unquantized ops run at inference precision {hint}"
                     + ("; 7-bit weights on every layer (NNCF overflow fix: this CPU has no VNNI/AMX)"
                        if overflow == nncf.OverflowFix.ENABLE else "")
                     + ("; SmoothQuant off, so every size of the bundle shares one copy of the INT8 weights"
                        if ctx.shares_weights else ""))
    elif precision == "fp16":
        hint = half_hint(device)
        notes.append(f"FP16 weights; inference precision hint {hint} on {device}")
    factored = factor_attention_bias(model, FOLD_LIMIT)
    if factored:
        notes.append(f"{factored} attention bias constants stored factored ([heads, N, N] bias, [nW, N] window "
                     "regions); OpenVINO folds them when it compiles the model")
    xml = ctx.workdir / f"openvino-{precision}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    files = [xml, xml.with_suffix(".bin")]
    config = {"device": device, "inference_precision": hint, **({"recipe": recipe} if precision == "int8" else {})}
    return Artifact("openvino", precision, files, xml, build_s=times, runtime_config=config, notes=notes)


TARGET = Target(name="openvino", precisions=PRECISIONS, build=build, backend="openvino", sdk="openvino",
                install=INSTALL, order=20, options=OpenVinoOptions, keeps=("int8",),
                first_last=("int8",), recipes={"int8": recipe_candidates})
