"""The record of verdicts reached on this machine: a hint that spares the golden check, never proof by itself.

A verdict reached here (``runtime.open()`` or ``python -m runtime verify``) is recorded outside the bundle, which
stays read-only, in a user cache: ``$VITDEPLOY_CACHE``, else ``$XDG_CACHE_HOME/vitdeploy``, else
``~/.cache/vitdeploy``. The cache is state anyone with the user's rights can write, so an entry stands only when
all of this holds, and is otherwise ignored (the golden check runs again):

- it is bound to the bundle's manifest (its whole sha256, which covers every file's), the artefact, this
  machine's fingerprint, the runtime configuration it was reached under and the options of the run that reached
  it (``repair``, ``device``): a verdict reached with repair off never stands for a run with repair on;
- it is authenticated: an HMAC-SHA256 over the verdict and what it is bound to, with a per-user key kept outside
  the cache (``$VITDEPLOY_VERDICT_KEY``, else ``$XDG_CONFIG_HOME/vitdeploy/verdict.key``, else
  ``~/.config/vitdeploy/verdict.key``; 32 random bytes, created with mode 0600 on first use). A hand-edited
  entry, or one copied from another user or machine, fails it;
- it validates strictly (booleans are booleans, lists are lists).

Where the key can be neither read nor created, nothing is recorded or read: every open runs the golden check.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from runtime.environment import fingerprint_key
from runtime.manifest import MANIFEST, ArtifactEntry

CACHE_ENV = "VITDEPLOY_CACHE"
KEY_ENV = "VITDEPLOY_VERDICT_KEY"
_KEY_BYTES = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class VerdictRecord(_Strict):
    """A ``runtime.proof.Verdict`` as recorded: every field typed, nothing coerced."""

    target: str
    precision: str
    passed: bool
    config: dict
    source: str
    values: dict
    failures: list[str]
    attempts: list[dict]
    repaired: bool
    fingerprint: dict
    differs: list[str]


class Entry(_Strict):
    verdict: VerdictRecord
    bound: dict  # manifest sha256, artefact, fingerprint, options: what the verdict holds for
    mac: str


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitdeploy"


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "vitdeploy" / "verdict.key"


_warned: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _warned:
        _warned.add(line)
        print(f"warning: {line}", file=sys.stderr)


def verdict_key() -> bytes | None:
    """This user's key for authenticating records, created on first use; None when it can't be read or made."""
    path = key_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = _create_key(path)
    except OSError as exc:
        _warn_once(f"cannot read the verdict key {path} ({exc.strerror or exc}): verdicts are not recorded, "
                   "the golden check runs at every open")
        return None
    if data is not None and len(data) != _KEY_BYTES:
        _warn_once(f"the verdict key {path} is not {_KEY_BYTES} bytes: verdicts are not recorded or read "
                   "(delete it to make a new one)")
        return None
    return data


def _create_key(path: Path) -> bytes | None:
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    except FileExistsError:  # reason: another process made it between our read and our create
        return path.read_bytes()
    except OSError as exc:
        _warn_once(f"cannot create the verdict key {path} ({exc.strerror or exc}): verdicts are not recorded, "
                   "the golden check runs at every open")
        return None


def manifest_sha256(bundle: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which holds every file's sha256."""
    return hashlib.sha256((Path(bundle) / MANIFEST).read_bytes()).hexdigest()


def _art_key(art: ArtifactEntry) -> str:
    return f"{art.target}/{art.precision}/{art.primary}"


def bound_to(bundle: Path, art: ArtifactEntry, here: dict, config: dict, options: dict) -> dict:
    """What a verdict holds for: this manifest, this artefact, this machine, this configuration, these options."""
    return {"manifest_sha256": manifest_sha256(bundle), "artefact": _art_key(art), "fingerprint": here,
            "config": config, "options": options}


def _mac(key: bytes, verdict: dict, bound: dict) -> str:
    body = json.dumps({"verdict": verdict, "bound": bound}, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _path(bundle: Path, here: dict) -> Path:
    return cache_root() / "verify" / manifest_sha256(bundle)[:20] / f"{fingerprint_key(here)}.json"


def _slot(art: ArtifactEntry, options: dict) -> str:
    return _art_key(art) + "|" + json.dumps(options, sort_keys=True)


def lookup(bundle: Path, art: ArtifactEntry, here: dict, options: dict) -> dict | None:
    """The recorded verdict (as a dict of ``Verdict`` fields) for ``art`` on this machine under ``options``, when
    one stands: authentic, strictly valid and bound to exactly this manifest, machine and options; else None."""
    key = verdict_key()
    if key is None:
        return None
    try:
        raw = json.loads(_path(bundle, here).read_text())[_slot(art, options)]
        entry = Entry.model_validate(raw)
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return None
    verdict = entry.verdict.model_dump()
    if not hmac.compare_digest(entry.mac, _mac(key, raw.get("verdict"), entry.bound)):
        return None
    if entry.bound != bound_to(bundle, art, here, verdict["config"], options) or verdict["fingerprint"] != here:
        return None
    return verdict


def store(bundle: Path, art: ArtifactEntry, verdict: dict, options: dict) -> Path | None:
    """Record ``verdict`` (``Verdict`` fields) for ``art`` under ``options``, atomically; None when not written."""
    key = verdict_key()
    if key is None:
        return None
    here = verdict["fingerprint"]
    verdict = VerdictRecord.model_validate(json.loads(json.dumps(verdict, default=str))).model_dump()
    bound = bound_to(bundle, art, here, verdict["config"], options)
    path = _path(bundle, here)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[_slot(art, options)] = {"verdict": verdict, "bound": bound, "mac": _mac(key, verdict, bound)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, default=str)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        print(f"warning: cannot record the verification in {path.parent} ({exc.strerror or exc}); it will run again",
              file=sys.stderr)
        return None
    return path
