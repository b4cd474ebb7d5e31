"""Exit codes and the one error line, the same for ``python -m exporters``, ``runtime`` and ``benchmarks``.

    0  ok
    1  an accuracy gate failed (the artefact is kept)
    2  bad input or a refused artefact (a ``UserError``), or the machine refused a write (disk full...)
    3  internal error: one ``error:`` line naming the log file that holds the traceback
       (``--debug`` prints the traceback instead)
  130  interrupted (Ctrl-C), 143 terminated (SIGTERM); staged bundles are removed either way
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

from runtime.errors import UserError

OK, GATE_FAILED, BAD_INPUT, INTERNAL = 0, 1, 2, 3
_ENVIRONMENT = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so staging folders are cleaned up like on Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


_KEPT: list = []  # callables -> str: what the running command keeps on purpose when it stops early


def keep(describe) -> None:
    """Say what a command deliberately keeps if it is stopped (``describe()`` -> one phrase, read at that moment),
    so the error line does not claim "nothing was written" (benchmarks eval keeps finished shards to resume)."""
    _KEPT.append(describe)


def _outcome() -> str:
    kept = []
    for describe in _KEPT:
        try:
            kept.append(describe())
        except Exception:  # reason: the line must come out whatever state the command was stopped in
            continue
    return "kept: " + "; ".join(kept) if kept else "nothing was written"


def _default_sigterm_in_child() -> None:
    """In a process forked while our handler is installed, SIGTERM goes back to its default (terminate).

    # reason: OpenVINO's telemetry (run by ov.convert_model and NNCF) sends each event from a multiprocessing
    # fork child and terminate()s it after a timeout; with no network, the child of a threaded parent can
    # deadlock in getaddrinfo. It inherited our Python-level handler, which a thread stuck in C never runs,
    # so terminate() did nothing and the exporter hung at exit joining it (seen in the test suite).
    """
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


def _log_dir(argv: list[str]) -> Path:
    """The ``--out`` folder when one was given and exists, else the system's temporary folder."""
    values = [b for a, b in zip(argv, argv[1:]) if a == "--out"] + [a[6:] for a in argv if a.startswith("--out=")]
    for value in values:
        if Path(value).is_dir() and os.access(value, os.W_OK):
            return Path(value)
    return Path(tempfile.gettempdir())


def run_cli(prog: str, main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and turn every outcome into the documented exit code and one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # reason: only the main thread may set handlers (e.g. when called from a worker)
        previous = None
    _KEPT.clear()
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print(f"error: interrupted; {_outcome()}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"error: terminated (SIGTERM); {_outcome()}", file=sys.stderr)
        return 143
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT or debug:
            return _internal(prog, argv, exc, debug)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; {_outcome()}", file=sys.stderr)
        return BAD_INPUT
    except Exception as exc:  # reason: the last line of defence: one line and a log, never a bare traceback
        return _internal(prog, argv, exc, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _internal(prog: str, argv: list[str], exc: BaseException, debug: bool) -> int:
    text = "".join(traceback.format_exception(exc))
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if debug:
        print(text, file=sys.stderr, end="")
        print(f"error: internal error: {type(exc).__name__}: {first}", file=sys.stderr)
        return INTERNAL
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = _log_dir(argv) / f"vitdeploy-error-{stamp}-{os.getpid()}.log"
    try:
        log.write_text(f"{prog} {' '.join(argv)}\n\n{text}")
        where = f"traceback in {log}"
    except OSError:
        where = "run again with --debug for the traceback"
    print(f"error: internal error: {type(exc).__name__}: {first} ({where})", file=sys.stderr)
    return INTERNAL
