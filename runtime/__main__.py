"""``python -m runtime``: predict, time, or build a TensorRT engine from a bundle, without torch.

    python -m runtime BUNDLE IMG [IMG...] [--topk K] [--json] [--target T] [--precision P]
                                   (a classifier's top-k; an embedding model's embedding; a segmenter's classes)
    python -m runtime bench BUNDLE [--runs N] [--target T] [--precision P] [--throughput]
    python -m runtime build BUNDLE [--precision fp16|int8]     (TensorRT engine, on the device)
    python -m runtime verify BUNDLE [--target T] [--precision P] [--all] [--no-repair]
    python -m runtime pack BUNDLE --out DIR [--target T] [--precision P] [--size S] [--sign-key KEY]

A multi-size bundle (``--img-size 224,384`` at export): predict serves each image with its size's artefact (else
the nearest declared size, said on its line); bench and verify go through every size; ``--size`` picks one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

import runtime
from runtime import signing, values
from runtime.backends import backends
from runtime.backends.openvino import CACHE_ENV
from runtime.backends.tensorrt import build_bundle_engine, build_size_set_engines
from runtime.cli import run_cli
from runtime.errors import UserError
from runtime.latency import measure, measure_throughput, throughput
from runtime.pack import describe, pack
from runtime.signing import trust_flag
from runtime.sizes import SizedSession, read_sizes, size_name
from runtime.verify import verify_main


def _common(p: argparse.ArgumentParser) -> None:
    names = list(backends())
    p.add_argument("--target", choices=names, default=None,
                   help=f"backend (default: the best one that runs here, in this order: {', '.join(names)})")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                   help="artefact precision (default: the fastest in the bundle)")
    p.add_argument("--device", default=None, help="OpenVINO device (CPU, GPU, NPU)")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--size", type=values.img_sizes, default=None, metavar="SIZE",
                   help="a multi-size bundle: use only this input size's artefacts (384 or HxW; default: each "
                        "input its own size's, else the nearest, and said so)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help=f"OpenVINO's compiled-model cache: the first start compiles and stores the compiled model "
                        f"in DIR, later starts load it (default: ${CACHE_ENV}; unset, no cache)")


def _proof_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify", choices=("auto", "always", "never"), default="auto",
                   help="golden check before use: auto (when this machine differs from the one the artefact was "
                        "proven on and no verdict is recorded here; default), always, or never")
    p.add_argument("--allow-unverified", action="store_true",
                   help="serve an artefact that failed its gates or cannot be proven here (not recommended)")
    p.add_argument("--no-repair", action="store_true",
                   help="do not try the backend's safe runtime configurations when the golden check fails")
    trust_flag(p)


def _open(a, **kw):
    if getattr(a, "cache_dir", None) is not None:  # an empty one is refused where it is read, one line
        os.environ[CACHE_ENV] = a.cache_dir  # read where OpenVINO compiles (runtime/backends/openvino.py)
    return runtime.open(a.bundle, target=kw.pop("target", a.target), precision=kw.pop("precision", a.precision),
                        device=a.device, threads=a.threads, verify=a.verify, allow_unverified=a.allow_unverified,
                        repair=not a.no_repair, trust=a.trust, size=kw.pop("size", _one_size(a.size)), **kw)


def _one_size(sizes):
    if sizes is not None and len(sizes) != 1:
        raise UserError("--size names one size")
    return sizes[0] if sizes else None


def _predict(argv) -> int:
    p = values.Parser(prog="python -m runtime", description="Top-k predictions from a bundle.")
    p.add_argument("bundle")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=values.TOPK, default=5)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    _common(p)
    _proof_flags(p)
    a = p.parse_args(argv)
    with _open(a) as s:
        task = _task_of(s)
        if task == "segmentation":
            return _print_segments(s, a)
        if task == "embedding":
            return _print_embeddings(s, a)
        preds = s.predict(a.images, topk=a.topk)
    for img, pred in zip(a.images, preds):
        if a.json:
            print(json.dumps({"image": img, "target": s.target, "precision": s.precision, **pred.to_dict()}))
        else:
            tops = ", ".join(f"{lab} {sc:.3f}" for lab, sc in zip(pred.labels, pred.scores))
            print(f"{img}: {tops}" + (f"  [{pred.served}]" if pred.served else ""))
    return 0


def _task_of(opened) -> str:
    """The task of an opened bundle (a session, or a size set: its first size's)."""
    if isinstance(opened, SizedSession):
        return opened.session(opened.sizes[0]).manifest.task
    return opened.manifest.task


SHOWN = 8  # embedding values printed per image without --json


def _print_embeddings(s, a) -> int:
    """An embedding bundle: each image's embedding, its width, L2 norm and first values (``--json``: all of it)."""
    for img, e in zip(a.images, s.embed(a.images)):
        if a.json:
            print(json.dumps({"image": img, "target": s.target, "precision": s.precision, "dim": int(e.size),
                              "embedding": [float(v) for v in e]}))
        else:
            head = " ".join(f"{v:.4f}" for v in e[:SHOWN])
            print(f"{img}: embedding [{e.size}], L2 norm {float(np.linalg.norm(e)):.4f}: {head}"
                  + (" ..." if e.size > SHOWN else ""))
    return 0


def _print_segments(s, a) -> int:
    """A segmentation bundle: each image's classes by share of its pixels, the largest ``--topk``."""
    for img, mask in zip(a.images, s.segment(a.images)):
        ids, counts = np.unique(mask, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:a.topk]
        shares = {(s.labels[ids[i]] if s.labels else str(int(ids[i]))): round(float(counts[i] / mask.size), 4)
                  for i in order}
        if a.json:
            print(json.dumps({"image": img, "target": s.target, "precision": s.precision,
                              "mask_shape": list(mask.shape), "class_shares": shares}))
        else:
            print(f"{img}: {list(mask.shape)} mask; " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in shares.items()))
    return 0


def _bench(argv) -> int:
    p = values.Parser(prog="python -m runtime bench", description="Latency of a bundle's artefact, "
                                "measured as the exporter's report measures it.")
    p.add_argument("bundle")
    p.add_argument("--runs", type=values.RUNS, default=50)
    p.add_argument("--warmup", type=values.WARMUP, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--throughput", action="store_true",
                   help="also open the artefact in throughput mode (several inferences in flight) and report img/s")
    p.add_argument("--seconds", type=values.SECONDS, default=5.0, help="length of the throughput measurement (default 5)")
    _common(p)
    _proof_flags(p)
    a = p.parse_args(argv)

    opened = _open(a)
    with opened:
        for hw in opened.sizes if isinstance(opened, SizedSession) else [None]:
            _bench_one(a, opened if hw is None else opened.session(hw), hw)
    return 0


def _bench_one(a, s, hw: tuple[int, int] | None) -> None:
    """Latency (and throughput) of one opened session (``hw``: its size in a multi-size bundle); one line, or one
    JSON object."""
    import numpy as np

    size = size_name(hw) if hw else None
    shape = [s.batch, *s.runner.input_shape[1:]]
    feeds = {s.runner.input_name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    lat = measure(s.runner, feeds, runs=a.runs, warmup=a.warmup)
    res = {"target": s.target, "precision": s.precision, "batch": shape[0], "latency_ms": lat.to_dict(),
           "throughput_ips": throughput(lat, shape[0]), "runtime": s.runner.describe(),
           **({"input_size": size} if size else {})}
    if a.throughput:
        with _open(a, target=s.target, precision=s.precision, mode="throughput", **({"size": hw} if hw else {})) as t:
            res["throughput_mode"] = measure_throughput(t.runner, feeds, seconds=a.seconds).to_dict()
    if a.json:
        print(json.dumps(res, default=str))
        return
    print((f"{size} " if size else "") + f"{s.target} {s.precision} batch {shape[0]}: p50 {lat.p50:.2f} ms, "
          f"p90 {lat.p90:.2f} ms, p99 {lat.p99:.2f} ms, mean {lat.mean:.2f} ms, {res['throughput_ips']:.1f} img/s "
          f"({lat.runs} runs)")
    if a.throughput:
        tp = res["throughput_mode"]
        print(f"throughput mode: {tp['images_per_s']:.1f} img/s with {tp['streams']} in flight "
              f"({tp['images']} images in {tp['seconds']:.1f} s)")


def _build(argv) -> int:
    p = values.Parser(prog="python -m runtime build", description="Build the TensorRT engine from the "
                                "bundle's TensorRT-ready ONNX, on this device, and record it in the manifest.")
    p.add_argument("bundle")
    p.add_argument("--precision", choices=("fp16", "int8"), default=None)
    p.add_argument("--workspace-gb", type=values.real(0.0, 1024.0, lo_open=True, name="gigabytes"), default=4.0)
    p.add_argument("--library", choices=("tensorrt", "tensorrt_rtx"), default="tensorrt",
                   help="full TensorRT (Jetson, data-centre GPUs; default) or TensorRT-RTX, for this GPU")
    p.add_argument("--sign-key", default=None, metavar="KEY.pem",
                   help="sign the bundle again once the engine is recorded (the engine and the manifest change)")
    p.add_argument("--size", type=values.img_sizes, default=None, metavar="SIZE",
                   help="a multi-size bundle: build only this input size's engine (default: every size's)")
    trust_flag(p)
    a = p.parse_args(argv)
    if a.sign_key:
        signing.signing_key(a.sign_key)  # a bad key fails before the build
    sizes, only = read_sizes(a.bundle), _one_size(a.size)
    if sizes is None and only is not None:
        raise UserError("--size is for a bundle of several sizes (sizes.json); this one has one")
    paths = [build_bundle_engine(a.bundle, precision=a.precision, workspace_gb=a.workspace_gb, lib=a.library,
                                 trust=a.trust)] if sizes is None else \
        build_size_set_engines(a.bundle, sizes, only, precision=a.precision, workspace_gb=a.workspace_gb,
                               lib=a.library, trust=a.trust)
    for path in paths:
        print(f"engine: {path}")
    if a.sign_key:
        signing.sign_bundle(Path(a.bundle), a.sign_key)
        print(f"signed again: {Path(a.bundle) / signing.SIGNATURE}")
    elif (Path(a.bundle) / signing.SIGNATURE).is_file():
        print(f"warning: {signing.SIGNATURE} no longer covers the bundle (the engine and the manifest changed): "
              "sign it again with --sign-key, or a --trust check will refuse it", file=sys.stderr)
    return 0


def _pack(argv) -> int:
    p = values.Parser(prog="python -m runtime pack",
                      description="Copy only what runs into a new bundle: the artefact the runtime serves (or those "
                                  "--target/--precision/--size name), its golden set and the manifest, each file's "
                                  "sha256 checked; reports, plots and the other artefacts are left out.")
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="the pack's folder (replaced only if it is a vitdeploy bundle)")
    p.add_argument("--target", choices=_backend_names(), default=None)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None)
    p.add_argument("--size", type=values.img_sizes, default=None, metavar="SIZE[,SIZE...]",
                   help="a multi-size bundle: keep only these sizes (default: every size)")
    p.add_argument("--sign-key", default=None, metavar="KEY.pem", help="sign the pack (the source's signature does "
                                                                      "not cover it)")
    trust_flag(p)
    a = p.parse_args(argv)
    out = pack(a.bundle, a.out, a.target, a.precision, a.size, a.trust, a.sign_key)
    print(f"packed {out}:\n{describe(out)}")
    return 0


def _backend_names() -> list[str]:
    return list(backends())


def main(argv: list[str] | None = None) -> int:
    """Exit codes (runtime/cli.py): 0 ok, 2 bad input or refused artefact, 3 internal error (log named)."""
    return run_cli("python -m runtime", _dispatch, argv)


def _verify(argv) -> int:
    return verify_main(argv)


SUBCOMMANDS = {"bench": _bench, "build": _build, "verify": _verify, "pack": _pack}


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return _predict(argv)


if __name__ == "__main__":
    raise SystemExit(main())
