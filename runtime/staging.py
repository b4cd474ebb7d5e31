"""Bundles are written in a staging folder and committed atomically; only a bundle of ours is replaced (the exporter
and `python -m runtime pack` write through here).

- ``OUT/<model>`` is replaced only when it is a vitdeploy bundle (a folder whose ``manifest.json``
  says ``format: vitdeploy-bundle/...``); anything else there is refused with one line, untouched.
- The commit swaps the staged folder and the old bundle in one ``renameat2(RENAME_EXCHANGE)`` on
  Linux, so a reader sees the old bundle or the new one, never neither and never half of one.
  Where the exchange is not available (other systems, some file systems) it falls back to two
  renames, and there is a moment without ``OUT/<model>``; docs/guide/bundles.md says so.
- Each staging folder has an owner file beside it (``.<slug>.tmp-XXXX.owner``: host and pid), outside the
  bundle, so nothing that is not the bundle's is ever inside it (or under its signature); a later run removes
  staging folders whose process is gone (a run killed by SIGKILL), and never those of a live run.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from runtime.errors import UserError
from runtime.manifest import FORMAT, MANIFEST
from runtime.sizes import SIZES, SIZES_FORMAT

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
STAGING = ".{slug}.tmp-"
OWNER = ".owner"


def check_writable(out: Path) -> None:
    """Fail early, with one line, when ``out`` can't hold a bundle. Creates nothing: a folder that does not exist yet
    is made when the bundle is staged, so a refused run leaves no empty folder behind."""
    out = Path(out)
    base = out
    while not (base.exists() or base.is_symlink()) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"output directory {out} is not writable: {base} is not a folder")
    if base != out:
        if not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"output directory {out} is not writable: cannot create it in {base}")
        return
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}") from None


@contextlib.contextmanager
def output_folder(out: Path):
    """Make ``out`` (and missing parents) for the length of the block; on failure, remove those it made that are
    still empty, so a refused or failed run leaves nothing behind."""
    out = Path(out)
    made = []
    p = out
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    try:
        yield out
    except BaseException:
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise


def is_bundle(path: Path) -> bool:
    """True when ``path`` is a folder holding a vitdeploy manifest, or a multi-size bundle's ``sizes.json`` (the
    only things we ever replace)."""
    if path.is_symlink() or not path.is_dir():
        return False
    for name, fmt in ((MANIFEST, FORMAT), (SIZES, SIZES_FORMAT)):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("format", "")).startswith(fmt.split("/")[0] + "/"):
            return True
    return False


def check_replaceable(out: Path, slug: str) -> None:
    """Refuse, before any work, to replace something at ``out/slug`` that is not a bundle of ours."""
    final = Path(out) / slug
    if (final.exists() or final.is_symlink()) and not is_bundle(final):
        kind = "a file" if final.is_file() else "a symlink" if final.is_symlink() else "a folder"
        raise UserError(f"{final} exists and is {kind} that is not a vitdeploy bundle; refusing to replace it "
                        f"(move it away or choose another --out)")


def owner_file(staging: Path) -> Path:
    """The file naming the run that owns a staging folder: beside it, never inside the bundle."""
    return staging.with_name(staging.name + OWNER)


def _owner_alive(staging: Path, grace_s: float = 60.0) -> bool:
    try:
        host, pid = owner_file(staging).read_text().split()
    except (OSError, ValueError):
        # the owner file is written right after the folder is made: a young folder without one may be
        # a run between those two steps, an old one is a leftover
        try:
            return time.time() - staging.stat().st_mtime < grace_s
        except OSError:
            return True
    if host != socket.gethostname():
        return True  # another machine's run (shared file system): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def clean_stale(out: Path, slug: str) -> list[Path]:
    """Remove staging folders of ``slug`` left by runs that no longer exist; return what was removed."""
    removed = []
    for p in Path(out).glob(STAGING.format(slug=slug) + "*"):
        if p.is_dir() and not p.is_symlink() and not _owner_alive(p):
            shutil.rmtree(p, ignore_errors=True)
            owner_file(p).unlink(missing_ok=True)
            removed.append(p)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def commit(staged: Path, final: Path) -> None:
    """Put ``staged`` at ``final``; the bundle it replaces (ours, checked) ends up at ``staged`` and is removed."""
    for _ in range(100):  # reason: concurrent commits of one bundle can interleave between the check and the move
        if not (final.exists() or final.is_symlink()):
            try:
                os.rename(staged, final)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # another run committed first: replace its bundle
        check_replaceable(final.parent, final.name)
        if _exchange(staged, final):
            shutil.rmtree(staged, ignore_errors=True)  # the previous bundle now lives here
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        try:
            os.rename(final, old / final.name)  # fallback: a moment without final
        except FileNotFoundError:
            shutil.rmtree(old, ignore_errors=True)
            continue
        try:
            os.rename(staged, final)
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    raise UserError(f"could not commit {final}: other runs kept replacing it")


@contextlib.contextmanager
def staged_bundle(out: Path, slug: str):
    """Yield a staging folder inside ``out``; on success it replaces ``out/slug``, on any failure it vanishes."""
    out = Path(out)
    check_writable(out)
    check_replaceable(out, slug)
    with output_folder(out):
        clean_stale(out, slug)
        tmp = Path(tempfile.mkdtemp(prefix=STAGING.format(slug=slug), dir=out))
        try:
            os.chmod(tmp, 0o755)  # reason: mkdtemp makes 0700 folders; a bundle is meant to be copied and shared
            owner_file(tmp).write_text(f"{socket.gethostname()} {os.getpid()}\n")
            yield tmp
            # reason: the owner file stays until the commit, or a concurrent run would take this folder for a
            # leftover and remove it under us
            commit(tmp, out / slug)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            owner_file(tmp).unlink(missing_ok=True)
