"""Bundle manifest: what was built, from what, and the sha256 of every artefact file."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from runtime.errors import UserError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_hashes(root: Path, files: list[Path]) -> dict[str, str]:
    """``relative path -> sha256`` for each file under ``root``."""
    return {str(Path(f).relative_to(root)): sha256_file(Path(f)) for f in sorted(set(files))}


def read_manifest(bundle: Path) -> dict:
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise UserError(f"bundle not found: {bundle}")
    if not path.is_file():
        raise UserError(f"{bundle} is not a bundle: it has no {MANIFEST}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}")


def verify_files(bundle: Path, hashes: dict[str, str]) -> None:
    """Refuse a bundle whose files are missing or differ from the manifest's sha256."""
    for rel, digest in hashes.items():
        p = Path(bundle) / rel
        if not p.is_file():
            raise UserError(f"bundle file missing: {rel}")
        actual = sha256_file(p)
        if actual != digest:
            raise UserError(f"sha256 mismatch for {rel}: manifest {digest[:12]}…, file {actual[:12]}… (tampered or corrupt)")
