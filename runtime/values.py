"""One validation layer for values: argparse ``type=`` functions for every numeric flag of the three CLIs, and
the same rules for the Python APIs (``check``), so a value is checked once, at the edge, before any work.

Every number must be finite and inside its documented range; the message names the flag and the range. A
parser built with ``parser()`` turns every argparse error into one ``UserError`` line (exit 2) instead of a
usage block.
"""
from __future__ import annotations

import argparse
import math
import os

from runtime.errors import UserError

MAX_BATCH = 1024  # beyond this an input batch of even a 224 px model is over 600 MB before the model runs;
# below it, exporters/models/memory.py refuses a batch whose measured activations cannot fit in this machine's memory
MAX_RUNS = 100_000
MAX_SECONDS = 3600.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``UserError`` line (exit 2), the same as every other bad input."""

    def error(self, message: str):
        raise UserError(message)


def _describe(lo, hi, lo_open: bool = False) -> str:
    lo, hi = (f"{x:g}" if isinstance(x, float) else x for x in (lo, hi))
    if hi is None:
        return f"{'above' if lo_open else 'at least'} {lo}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}]"


def integer(lo: int, hi: int | None = None, name: str = "value"):
    """``type=`` for a whole number in ``[lo, hi]``."""
    def parse(text) -> int:
        try:
            v = int(str(text).strip(), 10) if not isinstance(text, int) else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number {_describe(lo, hi)} (got {text!r})") from None
        if isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_describe(lo, hi)} (got {text})")
        return v
    parse.__name__, parse.lo, parse.hi, parse.lo_open, parse.whole = name, lo, hi, False, True
    return parse


def real(lo: float, hi: float | None = None, lo_open: bool = False, name: str = "value"):
    """``type=`` for a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and infinities refused."""
    def parse(text) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a number {_describe(lo, hi, lo_open)} (got {text!r})") from None
        if isinstance(text, bool) or not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a finite number {_describe(lo, hi, lo_open)} (got {text})")
        return v
    parse.__name__, parse.lo, parse.hi, parse.lo_open, parse.whole = name, lo, hi, lo_open, False
    return parse


MAX_THREADS = 4096


def threads(text) -> int:
    """Threads: 1 to 4096; above this machine's usable cores, clamped to them with a warning (more only
    oversubscribes: one step was measured 35x slower with 1000 threads on 2 cores)."""
    import sys
    n = integer(1, MAX_THREADS, "threads")(text)
    cores = usable_cores()
    if n > cores:
        print(f"warning: {n} threads asked for, {cores} usable core(s) here: using {cores}", file=sys.stderr)
        return cores
    return n


threads.lo, threads.hi, threads.lo_open, threads.whole = 1, MAX_THREADS, False, True


# the flags every CLI shares, by name: one definition, one range
BATCH = integer(1, MAX_BATCH, "batch")
RUNS = integer(1, MAX_RUNS, "runs")
WARMUP = integer(0, MAX_RUNS, "warmup")
SAMPLES = integer(1, 10_000_000, "samples")
SECONDS = real(0.0, MAX_SECONDS, lo_open=True, name="seconds")
TOPK = integer(1, 1000, "topk")
CLASSES = integer(0, 1_000_000, "classes")  # 0: no classifier, the pooled embedding (timm's num_classes=0)
IMG_SIZE = integer(1, 8192, "img_size")  # what the architecture takes is checked when the model is built
MAX_SIZES = 16  # input sizes in one bundle


def img_sizes(value) -> list[tuple[int, int]]:
    """``--img-size``: ``384``, ``224,384`` or ``800x1344`` (height x width), or from Python an int, an
    ``(h, w)`` pair or a list of either -> ``[(h, w), ...]``, each side in ``IMG_SIZE``'s range, no repeats."""
    if isinstance(value, (int, str)):
        parts = [p.strip() for p in str(value).split(",")] if isinstance(value, str) else [value]
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            raise argparse.ArgumentTypeError(f"must be a size, HxW, or a list of them (got {value!r})") from None
    out = []
    for p in parts:
        if isinstance(p, str) and "x" in p.lower():
            hw = tuple(p.lower().split("x", 1))
        elif isinstance(p, (tuple, list)) and len(p) == 2:
            hw = tuple(p)
        else:
            hw = (p, p)
        size = (IMG_SIZE(hw[0]), IMG_SIZE(hw[1]))
        if size in out:
            raise argparse.ArgumentTypeError(f"lists {size[0]}x{size[1]} twice (got {value!r})")
        out.append(size)
    if not out:
        raise argparse.ArgumentTypeError(f"must name at least one size (got {value!r})")
    if len(out) > MAX_SIZES:
        raise argparse.ArgumentTypeError(f"names {len(out)} sizes; one bundle holds at most {MAX_SIZES} (each is a "
                                         "whole export)")
    return out


img_sizes.__name__ = "img_size"


def indices(value) -> list[int]:
    """``--features``: ``0,1,2,3`` (or from Python a list of ints) -> distinct whole numbers from 0."""
    parts = str(value).split(",") if isinstance(value, (str, int)) else list(value)
    found = [integer(0, 1000, "index")(p) for p in parts]
    if not found or len(set(found)) != len(found):
        raise argparse.ArgumentTypeError(f"must list distinct indices, e.g. 0,1,2,3 (got {value!r})")
    return found
POINTS = real(0.0, 100.0, name="points")  # top-1 points
COSINE = real(0.0, 1.0, lo_open=True, name="cosine")


def check(flag: str, value, kind) -> object:
    """The Python APIs' edge: ``kind(value)`` as the CLI would parse it; ``None`` passes; else one ``UserError``
    naming the argument."""
    if value is None:
        return None
    try:
        return kind(value)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{flag} {exc}") from None


def check_labels(names: list, where: str, unique: bool = True) -> list[str]:
    """Label names as the runtime prints them, one per class: strings, non-empty, unique, without control
    characters (a newline would split the one-line-per-image output). One ``UserError`` naming ``where``.
    ``unique=False`` for manifests written before names had to be unique (ImageNet's own descriptions repeat one)."""
    import unicodedata
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise UserError(f"{where}: label {i} is {type(name).__name__}, not a name")
        name = str(name)
        if not name.strip():
            raise UserError(f"{where}: label {i} is empty")
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise UserError(f"{where}: label {i} ({name!r}) holds a control character (a newline, a tab...)")
        out.append(name)
    seen: dict[str, int] = {}
    for i, name in enumerate(out if unique else []):
        if name in seen:
            raise UserError(f"{where}: label {name!r} is given twice (classes {seen[name]} and {i}); names must be unique")
        seen[name] = i
    return out
