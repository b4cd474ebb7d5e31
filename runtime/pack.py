"""``python -m runtime pack BUNDLE --out DIR``: a bundle with only what runs, for a device with little storage.

A bundle holds every artefact an export built (FP32 and FP16 IRs beside the INT8 one, the ONNX they came from) and
its reports. A pack keeps the artefact the runtime would serve (the export's measured choice, else the best one
that passed its gates at build, by the runtime's own preference), or those ``--target``/``--precision`` name, or,
in a bundle of several sizes, those of ``--size``; and with them everything the runtime needs to prove them: the
golden set, the manifest (labels and preprocessing are in it) with each kept artefact's verdict. Every kept file is
checked against the source manifest's sha256 before it is copied and listed with it in the pack's manifest, so the
hash chain stays whole (``sizes.json`` names each size's new manifest). The reports, plots and unselected artefacts
are left out, and the manifest says what was (``packed``).

A signature covers the source's files, not the pack's: ``--sign-key`` signs the pack; without it, a signed source
gives an unsigned pack and one warning line saying so. The pack is written in a staging folder and committed
atomically; what sits at ``DIR`` is replaced only if it is a bundle of ours.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from runtime.errors import UserError
from runtime.golden import GOLDEN
from runtime.manifest import (
    MANIFEST,
    SHARED,
    SHARED_ONNX_DATA,
    ArtifactEntry,
    Manifest,
    read_manifest,
    resolve_inside,
    sha256_file,
)
from runtime.session import preferred, standing
from runtime.signing import SIGNATURE, Checked, read_trusted, sign_bundle, signing_key, trusted
from runtime.sizes import SizeEntry, SizeSet, read_sizes, size_name
from runtime.staging import staged_bundle


def kept(manifest: Manifest, target: str | None = None, precision: str | None = None) -> list[ArtifactEntry]:
    """The artefacts a pack keeps: those ``target``/``precision`` name (a deferred TensorRT artefact included: its
    ONNX is what the device builds from); else the one the runtime serves: the export's measured choice, else the
    best that passed its gates at build. Whether its backend's SDK is installed here does not matter: a pack is made
    for another machine."""
    arts = [a for a in manifest.artifacts if (target is None or a.target == target)
            and (precision is None or a.precision == precision)]
    if target or precision:
        if not arts:
            have = ", ".join(f"{a.target} {a.precision}" for a in manifest.artifacts) or "none"
            raise UserError(f"the bundle has no {target or ''} {precision or ''} artefact to keep; it has: {have}"
                            .replace("  ", " "))
        return arts
    passed = [a for a in arts if a.status == "built" and a.primary and standing(a) == "passed"]
    if not passed:
        raise UserError("no artefact of the bundle passed its gates at build, so none is worth shipping; name one "
                        "with --target and --precision")
    return preferred(manifest, passed)[:1]


def files_of(manifest: Manifest, arts: list[ArtifactEntry]) -> list[str]:
    """Every file the runtime may open for ``arts``: theirs, the ONNX a device-side engine build reads, the golden
    set."""
    files = [f for a in arts for f in a.files]
    files += [a.runtime_config["onnx"] for a in arts
              if isinstance(a.runtime_config.get("onnx"), str) and a.runtime_config["onnx"] in manifest.sha256]
    if manifest.golden is not None:
        files.append(manifest.golden.file)
    data = SHARED + SHARED_ONNX_DATA
    if data in manifest.sha256 and any(f.startswith(SHARED) and f.endswith(".onnx") for f in files):
        files.append(data)
    return list(dict.fromkeys(files))


def pack_into(src: Path, dst: Path, manifest: Manifest, arts: list[ArtifactEntry]) -> Manifest:
    """Copy ``arts`` of the bundle at ``src`` and what proves them into the folder ``dst``; return the new manifest
    (written there). Each file's sha256 is checked before it is copied."""
    files = files_of(manifest, arts)
    manifest.verify(src, files)
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolve_inside(src, rel), target)
    names = {(a.target, a.precision) for a in arts}
    selection = manifest.selection if manifest.selection and (
        manifest.selection.get("target"), manifest.selection.get("precision")) in names else None
    new = manifest.model_copy(update={
        "artifacts": arts, "sha256": {f: manifest.sha256[f] for f in files}, "selection": selection,
        "onnx": manifest.onnx if manifest.onnx in files else None, "signed_by": None,
        "packed": {"from_manifest_sha256": sha256_file(src / MANIFEST), "kept": sorted(" ".join(n) for n in names),
                   "left_out": sorted(f"{a.target} {a.precision}" for a in manifest.artifacts
                                      if (a.target, a.precision) not in names)}})
    new = Manifest.model_validate(new.model_dump())  # the same checks as any manifest read
    new.write(dst)
    return new


def keep_only(folder: Path, manifest: Manifest, arts: list[ArtifactEntry]) -> Manifest:
    """In a bundle being written (``--keep selected`` at export): remove the files of every artefact but ``arts``
    (what they and the golden set need stays; the reports stay too) and return the manifest that lists the rest."""
    files = set(files_of(manifest, arts))
    for rel in set(manifest.sha256) - files:
        resolve_inside(folder, rel).unlink(missing_ok=True)
    names = {(a.target, a.precision) for a in arts}
    return Manifest.model_validate(manifest.model_copy(update={
        "artifacts": arts, "sha256": {f: v for f, v in manifest.sha256.items() if f in files},
        "onnx": manifest.onnx if manifest.onnx in files else None,
        "packed": {"kept": sorted(" ".join(n) for n in names),
                   "left_out": sorted(f"{a.target} {a.precision}" for a in manifest.artifacts
                                      if (a.target, a.precision) not in names)}}).model_dump())


def _sizes_kept(size_set: SizeSet, sizes: list[tuple[int, int]] | None) -> list[SizeEntry]:
    if not sizes:
        return list(size_set.sizes)
    return [size_set.entry(hw) for hw in sizes]


def pack(bundle: str | Path, out: str | Path, target: str | None = None, precision: str | None = None,
         sizes: list[tuple[int, int]] | None = None, trust=None, sign_key=None) -> Path:
    """Pack ``bundle`` into the folder ``out``: only the artefacts kept, with what the runtime needs to prove them.

    Args:
        bundle: The bundle folder (one size, or several with ``sizes.json``).
        out: The pack's folder, outside the bundle, written atomically (what sits there is replaced only if it
            is a bundle of ours).
        target: Keep this target's artefacts (default: the one the runtime would serve: the export's measured
            choice, else the best that passed its gates).
        precision: Keep this precision's artefacts (with ``target``, or alone).
        sizes: Of a bundle of several sizes, keep these ``(h, w)`` sizes (default: all).
        trust: A public key (path or PEM) the bundle's signature must verify against before anything is copied.
        sign_key: A PEM EC private key to sign the pack with; an unsigned pack of a signed bundle says its
            signature no longer applies.

    Returns:
        ``out``, which ``runtime verify`` and ``runtime.open`` take like the bundle itself.

    Raises:
        UserError: One line: no bundle, an ``out`` inside it, nothing that matches, a tampered file, a bad key.
    """
    src, out = Path(bundle), Path(out)
    if not src.is_dir():
        raise UserError(f"bundle not found: {src}")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} is the bundle or inside it: write the pack elsewhere")
    if sign_key is not None:
        signing_key(sign_key)  # a bad key fails before any copy
    signer = trusted(src, trust)
    size_set = read_sizes(src)
    if size_set is None and sizes:
        raise UserError("--size is for a bundle of several sizes (sizes.json); this one has one")
    with staged_bundle(out.parent, out.name) as work:
        if size_set is None:
            manifest, _ = read_trusted(src, Checked(signer) if signer else None)
            pack_into(src, work, manifest, kept(manifest, target, precision))
        else:
            entries = []
            for e in _sizes_kept(size_set, sizes):
                folder = size_set.folder(src, e.input_size)
                manifest = read_manifest(folder)
                pack_into(folder, work / e.bundle, manifest, kept(manifest, target, precision))
                entries.append(SizeEntry(input_size=e.input_size, bundle=e.bundle,
                                         manifest_sha256=sha256_file(work / e.bundle / MANIFEST)))
            size_set.model_copy(update={"sizes": entries, "signed_by": None}).write(work)
        if sign_key is not None:
            sign_bundle(work, sign_key)
    if sign_key is None and (src / SIGNATURE).is_file():
        print(f"warning: {src / SIGNATURE} covers the source's files, not the pack's: the pack is unsigned (sign it "
              "with --sign-key)", file=sys.stderr)
    return out


def describe(out: Path) -> str:
    """One line per size: what the pack holds and its bytes."""
    size_set = read_sizes(out)
    folders = [(None, out)] if size_set is None else [(size_name(e.input_size), out / e.bundle)
                                                      for e in size_set.sizes]
    lines = []
    for size, folder in folders:
        m = read_manifest(folder)
        total = sum((folder / f).stat().st_size for f in m.sha256) + (folder / MANIFEST).stat().st_size
        lines.append((f"{size}: " if size else "") + f"{', '.join(m.packed['kept'])} and {GOLDEN}: "
                     f"{total / 1e6:.1f} MB in {len(m.sha256) + 1} files")
    return "\n".join(lines)


__all__ = ["pack", "kept", "files_of", "pack_into", "keep_only", "describe"]
