"""One copy of the weights in a bundle of several sizes.

Each size's sub-bundle is written whole by the single-size pipeline; the sizes share nearly every weight (a Swin's
relative-position bias at scaled windows and a ViT's resampled position embeddings are what differ). Once every
size is built, ``share_weights`` stores each weight once, in the bundle's ``shared/`` folder, each backend's own
way:

- OpenVINO: one ``shared/openvino-<precision>.bin`` for the IRs of every size; each size's ``.xml`` keeps its own
  graph with its constants' offsets pointing into it (an IR names its weights file when it is read);
- ONNX: every ONNX file (the exported model, ONNX Runtime's INT8 model) moves to ``shared/<name>-<size>.onnx`` with
  its initializers as external data in one ``shared/onnx.data`` (ONNX Runtime, OpenVINO and TensorRT read external
  data only from the model's own folder, so the models move, not only their data).

Weights are matched by their bytes (sha256), never by name. Each size's manifest then names the moved files as
``../shared/NAME`` (runtime/manifest.py resolves that path only inside the bundle of several sizes) with their
sha256, so the hash chain stays whole; no artefact's bytes change, only where they sit.
"""
from __future__ import annotations

import functools
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

from runtime.manifest import SHARED, SHARED_ONNX_DATA, Manifest, read_manifest, sha256_file

FOLDER = "shared"
ALIGN = 64  # each stored weight starts on a 64-byte boundary
MIN_BYTES = 1024  # smaller ONNX initializers stay inside their model


class Store:
    """An append-only weights file that stores each distinct byte string once: ``offset = store.put(bytes)``."""

    def __init__(self, path: Path):
        self.path, self.offsets, self.size = path, {}, 0
        self.file = open(path, "wb")

    def put(self, blob: bytes) -> int:
        key = hashlib.sha256(blob).digest()
        if key not in self.offsets:
            pad = -self.size % ALIGN
            self.file.write(b"\0" * pad + blob)
            self.offsets[key] = self.size + pad
            self.size += pad + len(blob)
        return self.offsets[key]

    def close(self) -> None:
        self.file.close()


def _share_ir(xml: Path, store: Store) -> None:
    """Move the constants of the IR ``xml`` (weights beside it, ``.bin``) into ``store``; rewrite its offsets."""
    blob = xml.with_suffix(".bin").read_bytes()
    tree = ET.parse(xml)
    for data in tree.iter("data"):
        if "offset" in data.attrib and "size" in data.attrib:
            start, size = int(data.attrib["offset"]), int(data.attrib["size"])
            data.set("offset", str(store.put(blob[start:start + size])))
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    xml.with_suffix(".bin").unlink()


def _share_onnx(src: Path, dst: Path, store: Store) -> None:
    """Save the ONNX ``src`` as ``dst`` (beside ``store``) with its larger initializers in ``store``."""
    import onnx
    from onnx.external_data_helper import set_external_data
    model = onnx.load(str(src), load_external_data=True)
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= MIN_BYTES:
            raw = t.raw_data
            set_external_data(t, location=store.path.name, offset=store.put(raw), length=len(raw))
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(dst))
    src.unlink()


def _onnx_files(manifest: Manifest) -> list[str]:
    """Every single-file ONNX model the manifest lists (an ONNX saved with its own external data is left alone)."""
    return [f for f in manifest.sha256 if f.endswith(".onnx") and not f.startswith(SHARED)
            and f + ".data" not in manifest.sha256]


def share_weights(work: Path, folders: list[str]) -> dict:
    """Store the weights of the sub-bundles ``work/<folder>`` once, in ``work/shared``, and rewrite their
    manifests; returns ``{"before": bytes, "after": bytes}``: the files involved (ONNX models, IRs with their
    weights) before and after."""
    manifests = {f: read_manifest(work / f) for f in folders}
    irs = {}  # precision -> [(folder, xml rel)]
    for f, m in manifests.items():
        for a in m.artifacts:
            if a.target == "openvino" and a.status == "built" and a.primary and a.weights_file is None:
                irs.setdefault(a.precision, []).append((f, a.primary))
    onnx_files = {f: _onnx_files(m) for f, m in manifests.items()}
    if len(folders) < 2 or not (any(len(v) > 1 for v in irs.values()) or sum(map(len, onnx_files.values())) > 1):
        return {"before": 0, "after": 0}
    (work / FOLDER).mkdir()
    moved = {f: {} for f in folders}  # folder -> {old rel: [new rels]}
    before = 0
    for precision, members in irs.items():
        store = Store(work / FOLDER / f"openvino-{precision}.bin")
        for f, xml in members:
            before += (work / f / xml).stat().st_size + (work / f / xml).with_suffix(".bin").stat().st_size
            _share_ir(work / f / xml, store)
            moved[f][Path(xml).with_suffix(".bin").as_posix()] = [SHARED + store.path.name]
        store.close()
    store = Store(work / FOLDER / SHARED_ONNX_DATA)
    for f, files in onnx_files.items():
        for rel in files:
            before += (work / f / rel).stat().st_size
            name = f"{Path(rel).stem}-{f}.onnx"
            _share_onnx(work / f / rel, work / FOLDER / name, store)
            moved[f][rel] = [SHARED + name, SHARED + store.path.name]
    store.close()
    digest = functools.cache(sha256_file)  # each shared file is hashed once, not once per size listing it
    for f, m in manifests.items():
        _relist(m, moved[f], work / f, digest).write(work / f)
    after = sum(p.stat().st_size for p in (work / FOLDER).iterdir())
    after += sum((work / f / xml).stat().st_size for members in irs.values() for f, xml in members)
    return {"before": before, "after": after}


def _relist(m: Manifest, moved: dict[str, list[str]], folder: Path, digest) -> Manifest:
    """``m`` naming the moved files where they now are, each with its sha256 (``digest(path)``)."""
    def new(rel: str) -> list[str]:
        return moved.get(rel, [rel])

    arts = []
    for a in m.artifacts:
        files = list(dict.fromkeys(n for f in a.files for n in new(f)))
        bins = [n for f in a.files if f.endswith(".bin") and f in moved for n in moved[f]]
        config = {k: (new(v)[0] if isinstance(v, str) and v in moved else v) for k, v in a.runtime_config.items()}
        arts.append(a.model_copy(update={"files": files, "primary": new(a.primary)[0] if a.primary else None,
                                         "runtime_config": config, "weights_file": bins[0] if bins else None}))
    sha = {}
    for rel, old in m.sha256.items():
        for n in new(rel):
            sha[n] = old if n == rel else digest((folder / n).resolve())
    sha.update({rel: digest(folder / rel) for a in arts if a.target == "openvino" and a.weights_file
                for rel in a.files if rel.endswith(".xml")})  # the IRs' offsets changed
    return Manifest.model_validate(m.model_copy(update={
        "artifacts": arts, "sha256": sha, "onnx": new(m.onnx)[0] if m.onnx else None}).model_dump())


__all__ = ["share_weights", "Store"]
