"""``python -m exporters MODEL [options]``: export, build, verify and time; write a bundle and report."""
from __future__ import annotations

import argparse
from pathlib import Path

from exporters.pipeline.options import RunOptions
from exporters.pipeline.stages import run
from exporters.report.render import results_table
from exporters.targets import option_fields, targets
from runtime import values
from runtime.cli import GATE_FAILED, OK, run_cli


def _target_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field of every target's options dataclass; only flags the user gives are kept."""
    for flag, owners in option_fields().items():
        _, f = owners[0]
        names = " and ".join(t for t, _ in owners)
        kw = {"action": "store_true"} if f.type in (bool, "bool") else {"choices": f.metadata.get("choices")}
        p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, **kw,
                       help=f"[{names}] {f.metadata.get('help', '')}")


def _target_list(text: str) -> list[str]:
    """``--target``: a registered target, a comma list of them, or ``all``; anything else names the choices."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = [*targets(), "all"]
    bad = [t for t in names if t not in known]
    if not names or bad or ("all" in names and len(names) > 1) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(known)}, or a comma list)")
    return names


def parser() -> argparse.ArgumentParser:
    p = values.Parser(
        prog="python -m exporters",
        description="Export a ViT/Swin classifier with export-friendly rewrites, build artefacts for a target, "
                    "verify them against PyTorch and time them. Writes OUT/<model>/ with manifest.json, "
                    "report.json and report.md.")
    p.add_argument("model", help="zoo name (vit_ti, vit_s, vit_b, deit_t, swin_t, swin_s, swin_b, digits_vit, "
                                 "digits_swin), timm:<name>, tv:swin_t|swin_s|swin_b|vit_b_16, local-dir:PATH "
                                 "(a folder saved by timm: config.json + model.safetensors) or hf-hub:ORG/NAME "
                                 "(from the local Hugging Face cache)")
    p.add_argument("--target", default="onnxruntime", type=_target_list, metavar="{" + ",".join([*targets(), "all"]) + "}",
                   help="runtime(s) to build for, one or a comma list (default onnxruntime, FP32 on the CPU); "
                        "'all' builds every target and precision available here")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_const", const="fp16", dest="precision",
                      help="half precision (OpenVINO: FP16 weights, bf16/f16 inference where the CPU has it)")
    prec.add_argument("--int8", action="store_const", const="int8", dest="precision",
                      help="post-training INT8, calibrated on --calib")
    prec.add_argument("--fp32", action="store_const", const="fp32", dest="precision",
                      help="FP32 (the default for onnxruntime/openvino; Core ML builds FP16 unless this is given)")
    prec.add_argument("--precision", choices=("fp32", "fp16", "int8", "auto"), dest="precision",
                      help="the same as the flags above, or auto: build every precision of the target(s) and "
                           "record the fastest that passed its gate as the bundle's default (the runtime's choice)")
    p.add_argument("--data", default="digits",
                   help="evaluation images: an image folder (class subfolders optional), a .npy/.npz, a .txt "
                        "list, or 'digits' (the built-in hold-out; default)")
    p.add_argument("--calib", default=None,
                   help="calibration source, same forms as --data (default: --data; digits uses its train split)")
    p.add_argument("--calib-size", type=values.SAMPLES, default=128, help="calibration samples, chosen with a fixed seed "
                                                               "(default 128)")
    p.add_argument("--eval-size", type=values.SAMPLES, default=None,
                   help="evaluation samples (default: all for models <= 64 px, else 64)")
    p.add_argument("--weights", default=None, help="checkpoint: .safetensors or a torch file (timm or "
                                                   "torchvision key layout)")
    p.add_argument("--pretrained", action="store_true", help="download the library's pretrained weights "
                                                             "(needs network)")
    p.add_argument("--num-classes", type=values.CLASSES, default=None,
                   help="classes of a fine-tuned checkpoint (default: read from its classifier, stated in the report); "
                        "0: no classifier, the pooled embedding is exported (an embedding model, gated by cosine)")
    p.add_argument("--img-size", type=values.img_sizes, default=None, metavar="SIZE[,SIZE...]",
                   help="input resolution of a timm Swin or ViT: 384, 800x1344 (height x width), or several "
                        "(224,384: one bundle, an artefact per size; the runtime serves each input with its own). "
                        "Swin windows are kept or scaled with the grid, never padded; ViT position embeddings "
                        "resampled")
    p.add_argument("--features", nargs="?", const=True, default=None, type=values.indices, metavar="INDICES",
                   help="export the backbone's feature maps instead of logits (detection/segmentation): a Swin's "
                        "stages or a ViT's blocks (default: every Swin stage; four ViT blocks, the last included), "
                        "e.g. 0,1,2,3; any --img-size, padded to the window grid (every target)")
    p.add_argument("--labels", default=None, help="label names: a file with one per line, or a JSON list")
    p.add_argument("--out", default="out", help="output folder; the bundle is OUT/<model>/ (default out)")
    p.add_argument("--batch", type=values.BATCH, default=1, help="batch size for export, verification and timing "
                                                        "(default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    p.add_argument("--runs", type=values.RUNS, default=50, help="timed runs after 10 warm-up runs (default 50)")
    p.add_argument("--threads", type=values.threads, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--max-drop", type=values.POINTS, default=None, metavar="POINTS",
                   help="accuracy budget for INT8/FP16 (every target's precisions in Target.keeps): largest top-1 drop "
                        "against PyTorch, in points, on labelled --data; blocks are kept in higher precision until it holds")
    p.add_argument("--min-cosine", type=values.COSINE, default=None, metavar="C",
                   help="accuracy budget for INT8/FP16: smallest per-sample cosine to PyTorch's logits (no labels needed)")
    p.add_argument("--throughput", action="store_true", help="also measure images/s with each artefact opened in "
                   "throughput mode (OpenVINO THROUGHPUT hint and streams; ONNX Runtime concurrent runs)")
    p.add_argument("--no-repair", action="store_true",
                   help="fail fast: a row that fails its gate is not repaired (by default the backend's safe runtime "
                        "configurations are tried, then blocks are kept in higher precision with the gate as budget)")
    p.add_argument("--sign-key", default=None, metavar="KEY.pem",
                   help="sign the bundle with this PEM EC private key (P-256/384/521) in the OpenSSF model-signing "
                        "format: BUNDLE/model.sig; an encrypted key reads its password from VITDEPLOY_SIGN_PASSWORD")
    p.add_argument("--keep", choices=("all", "selected"), default="all",
                   help="all (default): every artefact built stays in the bundle; selected: only the one the runtime "
                        "serves (the fastest that passed under --precision auto), its golden set and the reports "
                        "(python -m runtime pack does the same to an existing bundle)")
    p.add_argument("--no-rewrites", action="store_true", help="export the model as is, without the "
                                                              "export-friendly rewrites (for comparison)")
    _target_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes (runtime/cli.py): 0 ok, 1 a gate failed, 2 bad input, 3 internal error (log named)."""
    return run_cli("python -m exporters", _main, argv)


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    names = list(targets()) if args.target == ["all"] else args.target
    given = {f.name: getattr(args, f.name) for owners in option_fields().values() for _, f in owners[:1]
             if hasattr(args, f.name)}
    opts = RunOptions(model=args.model, targets=names, precision=args.precision, data=args.data,
                      calib=args.calib, calib_size=args.calib_size, eval_size=args.eval_size, weights=args.weights,
                      pretrained=args.pretrained, num_classes=args.num_classes, img_size=args.img_size,
                      labels=args.labels, features=args.features, out=Path(args.out), batch=args.batch, runs=args.runs,
                      threads=args.threads, rewrites=not args.no_rewrites, dynamic_batch=args.dynamic_batch,
                      max_drop=args.max_drop, min_cosine=args.min_cosine, throughput=args.throughput,
                      options=given, quiet=args.quiet, repair=not args.no_repair,
                      sign_key=Path(args.sign_key) if args.sign_key else None, keep=args.keep)
    report = run(opts)
    print(results_table(report["results"]))
    print(f"\nreport: {report['bundle']}/report.md")
    failed = [r for r in report["results"] if r.get("passed") is False]
    return GATE_FAILED if failed else OK


if __name__ == "__main__":
    raise SystemExit(main())
