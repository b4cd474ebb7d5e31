"""ONNX Runtime target: FP32 (the embedded default) and static QDQ INT8 on the CPU.

INT8 uses ``onnxruntime.quantization.quantize_static`` on the shared calibration set. Only
the inputs of MatMul/Gemm/Conv are quantized; LayerNorm, Softmax, GELU and the residual
adds stay FP32. The activation/weight types are the ones measured fastest on x86 (see
``DEFAULT_INT8`` and docs/BENCHMARKS.md).
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass

from exporters.graph.onnx import first_last_compute_nodes
from exporters.targets import Artifact, BuildContext, Target, recipe_field, recipe_of
from runtime.backends import require
from runtime.backends.onnxruntime import INSTALL
from runtime.environment import int8_may_saturate

PRECISIONS = ("fp32", "int8")
# Measured on the 2-core CPU (docs/BENCHMARKS.md, `python -m benchmarks ort-int8`): unsigned activations
# with signed per-channel weights (U8S8) are fastest; signed activations (S8S8) were slower, as the
# issue reported. "reduce_range": None means "decide from the CPU": see _reduce_range().
DEFAULT_INT8 = {"activation": "uint8", "weight": "int8", "per_channel": True, "method": "minmax",
                "op_types": ("MatMul", "Gemm", "Conv"), "reduce_range": None, "keep_first_last": True}


# INT8 recipes (RECIPE_NAMES, the names every CPU INT8 target shares); `--recipe auto` measures them here
RECIPES = {
    "mixed": "unsigned activations with a zero point (U8S8, asymmetric), signed symmetric per-channel weights; "
             "every MatMul/Gemm/Conv input quantized, attention matmuls included",
    "symmetric": "signed symmetric activations (S8S8): no zero point (slower than U8S8 on the x86 CPUs measured "
                 "so far, docs/BENCHMARKS.md section 17; kept as a candidate because that depends on the CPU)",
    "projections": "U8S8 on the projections and the MLP only: the attention matmuls (QK^T, AV, both inputs "
                   "activations) stay FP32, without their Q/DQ pairs",
}


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    recipe: str = recipe_field(RECIPES)


def recipe_candidates(options: OnnxRuntimeOptions) -> list[tuple[str, dict]]:
    """``--recipe auto``: each recipe once (the runtime configuration does not change between them)."""
    return [(r, {"recipe": r}) for r in RECIPES]


def attention_matmuls(proto) -> list[str]:
    """MatMul nodes whose inputs are both activations (QK^T and AV), not weights."""
    consts = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not consts.intersection(n.input)]


def _reduce_range(opts: dict) -> bool:
    """7-bit weights on x86 without VNNI/AMX.

    # reason: ONNX Runtime's U8S8 kernels on AVX2/AVX-512 without VNNI use vpmaddubsw, whose int16
    # accumulation can saturate (ORT's docs recommend reduce_range there). Measured on this AVX2 CPU
    # (docs/BENCHMARKS.md, `python -m benchmarks ort-int8`): digits_swin cosine_min 0.999 with
    # reduce_range against 0.973 at full range (both keep top-1), for ~4% more latency on swin_t;
    # without the first/last-layer exclusion, full range lost 1.5 top-1 points and cosine fell to 0.77.
    """
    if opts["reduce_range"] is not None:
        return bool(opts["reduce_range"])
    return int8_may_saturate()


@contextlib.contextmanager
def quiet_root_logger():
    """Hide warnings logged on the root logger for the duration of one call, then restore.

    # reason: onnxruntime.quantization logs "consider pre-processing" through logging.warning on the
    # root logger on every call; we measured that pre-processing and chose not to use it.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class _Reader:
    """``CalibrationDataReader`` over the shared calibration set, one static batch at a time."""

    def __init__(self, calib, input_name: str, batch: int):
        self._it = iter([{input_name: b} for b in calib.batches(batch)])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - ORT only calls it for some methods
        pass


def quantize_qdq(src, dst, calib, batch: int, opts: dict) -> None:
    """Static QDQ quantization of ``src`` on the calibration set; ``opts`` as in ``DEFAULT_INT8``.

    The one quantizer behind ONNX Runtime INT8 and TensorRT's explicit Q/DQ ONNX; ``opts["extra_options"]``
    adds ONNX Runtime quantizer options to the symmetric-weight defaults.
    """
    ort_q = require("onnxruntime.quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    import onnx

    # reason: ORT recommends quant_pre_process, but measured on swin_t (interleaved, one run) its output
    # quantized to a slower graph (68.7 ms against 62.6 ms without it), so the export is quantized as is
    proto = onnx.load(str(src), load_external_data=False)
    exclude = first_last_compute_nodes(proto) if opts["keep_first_last"] else []
    keep = opts.get("keep_tensors") or frozenset()
    exclude += [n.name for n in proto.graph.node if n.op_type in opts["op_types"] and keep.intersection(n.output)]
    if opts.get("attention") is False:
        exclude += attention_matmuls(proto)
    with contextlib.redirect_stdout(io.StringIO()), quiet_root_logger():
        ort_q.quantize_static(
            str(src), str(dst), _Reader(calib, "input", batch), quant_format=QuantFormat.QDQ,
            activation_type=types[opts["activation"]], weight_type=types[opts["weight"]],
            per_channel=opts["per_channel"], calibrate_method=methods[opts["method"]],
            op_types_to_quantize=list(opts["op_types"]), reduce_range=opts["reduce_range"],
            nodes_to_exclude=list(dict.fromkeys(exclude)), **_cache(opts.get("calibration_cache")),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": opts["activation"] == "int8",
                           **opts.get("extra_options", {})})


def _cache(path) -> dict:
    """``quantize_static``'s calibration cache (ONNX Runtime 1.32+), where it has one.

    # reason: the recipes of one `--recipe auto` differ only after calibration (zero points, excluded nodes), so
    # they share its ranges; the first recipe (mixed) quantizes the most tensors, so its cache covers the others
    """
    import inspect

    from onnxruntime.quantization import quantize_static
    if path is None or "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return {}
    return {"calibration_cache_path": str(path)}


FP16_REFUSAL = ("onnxruntime --fp16 is not offered on the CPU: ONNX Runtime's CPU provider has no fast FP16 "
                "kernels for these ops; use --target openvino --fp16 (bf16/f16 on this CPU) or --target tensorrt --fp16")


def build(ctx: BuildContext, precision: str, options=None) -> Artifact:
    if precision == "fp32":
        return Artifact("onnxruntime", "fp32", [ctx.onnx_path], ctx.onnx_path,
                        runtime_config={"providers": ["CPUExecutionProvider"]})
    opts = dict(DEFAULT_INT8)
    recipe = recipe_of(options)
    if recipe == "symmetric":
        opts["activation"] = "int8"
    opts["attention"] = recipe != "projections"
    opts["reduce_range"] = _reduce_range(opts)
    opts["keep_tensors"] = ctx.keep_tensors
    opts["calibration_cache"] = ctx.calibration_cache
    calib = ctx.calib()
    dst = ctx.workdir / "model.ort-int8.onnx"
    t0 = time.perf_counter()
    quantize_qdq(ctx.onnx_path, dst, calib, ctx.batch, opts)
    return Artifact("onnxruntime", "int8", [dst], dst, build_s={"quantize": time.perf_counter() - t0},
                    runtime_config={"providers": ["CPUExecutionProvider"], "recipe": recipe},
                    notes=[f"recipe {recipe}; static QDQ: activations {opts['activation']} per-tensor, "
                           f"weights {opts['weight']} "
                           f"{'per-channel' if opts['per_channel'] else 'per-tensor'} symmetric"
                           f"{' 7-bit (reduce_range: this CPU has no VNNI/AMX)' if opts['reduce_range'] else ''}, "
                           f"{opts['method']} "
                           f"calibration on {len(calib)} samples; quantized ops: {', '.join(opts['op_types'])}"
                           + ("" if opts["attention"] else " but the attention matmuls")
                           + ("; patch embedding and head kept FP32" if opts["keep_first_last"] else "")
                           + ("; more layers kept FP32 by the accuracy budget" if ctx.keep_tensors else "")])


TARGET = Target(name="onnxruntime", precisions=PRECISIONS, build=build, backend="onnxruntime",
                sdk="onnxruntime", install=INSTALL, order=10, refusals=(("fp16", FP16_REFUSAL),), keeps=("int8",),
                first_last=("int8",), options=OnnxRuntimeOptions, recipes={"int8": recipe_candidates})
