"""Bundles are staged in a temporary folder and renamed into place only when complete."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from runtime.errors import UserError


def check_writable(out: Path) -> None:
    """Fail early, with one line, when ``out`` can't hold a bundle."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}")


@contextlib.contextmanager
def staged_bundle(out: Path, slug: str):
    """Yield a temporary folder inside ``out``; on success it replaces ``out/slug``, on failure it vanishes."""
    check_writable(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{slug}.tmp-", dir=out))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = out / slug
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{slug}.old-", dir=out))
        os.rename(final, old / slug)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
