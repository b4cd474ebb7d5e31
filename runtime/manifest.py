"""The bundle manifest: one schema (pydantic), read and written by this module only.

``read_manifest(bundle) -> Manifest`` validates ``manifest.json``; ``Manifest.write(folder)`` writes
it. Every path in a manifest is relative, has no ``..`` and resolves inside the bundle (symlinks
included); every file the runtime opens is listed in ``sha256`` and checked before use.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from runtime.errors import UserError
from runtime.values import check_labels

MANIFEST = "manifest.json"
FORMAT = "vitdeploy-bundle/1"
Precision = Literal["fp32", "fp16", "int8"]


SIZES = "sizes.json"  # a bundle of several sizes: one sub-bundle a size (runtime/sizes.py)
SHARED = "../shared/"  # the one path out of a size sub-bundle: weights all sizes share (exporters.pipeline.shared_weights)
SHARED_ONNX_DATA = "onnx.data"  # in SHARED: the external data of every shared ONNX model


def _relative(p: str) -> str:
    pp = PurePosixPath(p.removeprefix(SHARED))
    if not p or "\\" in p or pp.is_absolute() or ".." in pp.parts or p.startswith("~"):
        raise ValueError(f"'{p}' must be a relative path inside the bundle (no '..', no absolute path)")
    return p


RelPath = Annotated[str, AfterValidator(_relative)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def write_json(self, path: Path) -> Path:
        """This model as indented JSON at ``path`` (the one writer of manifest.json and sizes.json)."""
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2))
        return Path(path)


class Gates(_Model):
    """The limits an artefact passed at build, as the golden check applies them (``runtime.proof.tolerance_gates``
    writes them): every field typed and in range, so a malformed table is refused when the manifest is read."""

    cosine_min: Annotated[float, Field(ge=-1, le=1)]
    top1_agreement: Annotated[float, Field(ge=0, le=1)]
    top1_drop: Annotated[float, Field(ge=0, le=100)]
    gate_agreement: StrictBool
    golden_max_flips: Annotated[int, Field(ge=0)]
    pixel_agreement: Annotated[float, Field(ge=0, le=1)] | None = None  # a segmentation model's gates
    mean_iou: Annotated[float, Field(ge=0, le=1)] | None = None
    dense_classes: Annotated[int, Field(gt=0)] | None = None
    golden_max_pixels_differing: Annotated[int, Field(ge=0)] | None = None


def _gates(value: dict) -> dict:
    return Gates.model_validate(value).model_dump(exclude_none=True)


class Verification(_Model):
    """An artefact's proof: whether it passed its gates, on which machine and with which runtime configuration.

    ``gates`` are the limits (``cosine_min``, ``top1_agreement``, ``top1_drop``, whether agreement is gated,
    and ``golden_max_flips``: top-1 flips the golden set may show, the eval set's allowance); ``values`` what
    was measured on the evaluation set; ``golden`` what the golden set gave on the machine that built it.
    """

    passed: StrictBool
    kind: Literal["direct", "proxy"] = "direct"  # a proxy verdict proves nothing about the device
    gates: Annotated[dict, AfterValidator(_gates)]
    values: dict
    failures: list[str] = Field(default_factory=list)
    runtime_config: dict = Field(default_factory=dict)
    proven_on: dict  # runtime.environment.fingerprint() of the machine that reached the verdict
    golden: dict | None = None
    repaired: StrictBool = False  # the verdict holds for a repaired runtime configuration (see checks.repair in the report)


class ArtifactEntry(_Model):
    target: str
    precision: Precision
    status: Literal["built", "deferred"]
    primary: RelPath | None
    files: list[RelPath]
    runtime_config: dict = Field(default_factory=dict)
    weights_file: RelPath | None = None  # an IR's weights when they are not beside it (shared by a bundle's sizes)
    engine: dict | None = None  # set by `python -m runtime build`
    verification: Verification | None = None  # None: never proven (an older bundle, an engine built on the device)

    @model_validator(mode="after")
    def _primary_is_listed(self):
        # a file among ``files``, or a package folder (Core ML) whose files are listed
        if self.primary is not None and self.primary not in self.files and not any(
                f.startswith(self.primary.rstrip("/") + "/") for f in self.files):
            raise ValueError(f"primary '{self.primary}' is not among the artefact's files")
        return self


def _dimension(d: int) -> int:
    if d == 0 or d < -1:
        raise ValueError(f"a dimension must be positive, or -1 for a dynamic one (got {d})")
    return d


class TensorSpec(_Model):
    name: str
    shape: list[Annotated[int, AfterValidator(_dimension)]]
    dtype: Literal["float32", "float16"]
    dynamic_batch: bool = False
    layout: str | None = None


class PreprocessingSpec(_Model):
    input_size: Annotated[list[Annotated[int, Field(gt=0, le=8192)]], Field(min_length=2, max_length=2)]
    mean: Annotated[list[float], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
    crop_pct: Annotated[float, Field(gt=0, le=4)]
    crop_mode: Literal["center", "squash"] = "center"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    resize_size: Annotated[int, Field(gt=0, le=16384)] | None = None


class GoldenSpec(_Model):
    """The golden set: uint8 pixels ``[N, H, W, 3]`` after resize and crop (before normalisation) and the
    PyTorch reference outputs on them (whole, or output maps reduced: ``form``), in one ``.npz`` hashed like every
    file."""

    file: RelPath
    samples: Annotated[int, Field(gt=0)]
    bytes: Annotated[int, Field(gt=0)]
    form: Literal["full", "reduced"] = "full"  # reduced: output maps pooled and cropped (runtime/golden.py)
    chosen: str = ""  # how the samples were chosen
    reference: str = ""  # what produced the reference logits


class Manifest(_Model):
    format: Literal["vitdeploy-bundle/1"] = FORMAT
    model: str
    source: str
    weights: str
    input: TensorSpec
    output: TensorSpec
    outputs: list[TensorSpec] | None = None  # a backbone's feature maps, in order (output is the first)
    task: Literal["classification", "embedding", "features", "segmentation"] = "classification"  # what output holds
    preprocessing: PreprocessingSpec
    labels: list[str] | None = None
    onnx: RelPath | None = None  # the exported ONNX; None in a pack that kept no artefact reading it
    artifacts: list[ArtifactEntry]
    sha256: dict[RelPath, Sha256]
    rewrites: dict | None = None
    graph: dict | None = None
    calibration: dict | None = None
    evaluation: dict | None = None
    versions: dict = Field(default_factory=dict)
    created: str = ""
    selection: dict | None = None  # --precision auto: the fastest artefact that passed, and what it was timed on
    golden: GoldenSpec | None = None  # a small set any machine can prove its artefacts on (runtime verify)
    signed_by: str | None = None  # the signing key's id (runtime/signing.py key_id) when model.sig was written
    packed: dict | None = None  # python -m runtime pack: the source manifest's sha256, what was kept and left out

    @model_validator(mode="after")
    def _consistent(self):
        if self.labels is not None:
            try:
                check_labels(self.labels, "labels", unique=False)  # bundles of earlier versions: ImageNet's "crane" twice
            except UserError as exc:
                raise ValueError(str(exc)) from None
        seen = set()
        for art in self.artifacts:
            key = (art.target, art.precision, art.status)
            if key in seen:
                raise ValueError(f"two {art.status} {art.target} {art.precision} artefacts: which one runs is ambiguous")
            seen.add(key)
        classes = (self.output.shape[1] if self.task == "segmentation" else self.output.shape[-1]) \
            if self.output.shape else -1
        if self.labels is not None and classes > 0 and len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels for {classes} output classes")
        for art in self.artifacts:
            unhashed = [f for f in art.files if f not in self.sha256]
            if unhashed:
                raise ValueError(f"{art.target} {art.precision}: no sha256 for {unhashed[0]}")
        if self.golden is not None and self.golden.file not in self.sha256:
            raise ValueError(f"golden set: no sha256 for {self.golden.file}")
        return self

    def write(self, folder: Path) -> Path:
        return self.write_json(Path(folder) / MANIFEST)

    def verify(self, bundle: Path, files: list[str]) -> None:
        """Refuse any of ``files`` that is unlisted, outside the bundle, missing or not matching its sha256."""
        for rel in files:
            if rel not in self.sha256:
                raise UserError(f"the manifest has no sha256 for {rel}: refusing to open it")
            p = resolve_inside(Path(bundle), rel)
            if not p.is_file():
                raise UserError(f"bundle file missing: {rel}")
            if sha256_file(p) != self.sha256[rel]:
                raise UserError(f"sha256 mismatch for {rel}: the file differs from the manifest (tampered or corrupt)")


def resolve_inside(bundle: Path, rel: str) -> Path:
    """``bundle / rel``, refusing a path (or a symlink on it) that leaves the bundle. ``../shared/NAME`` names the
    weights a size's sub-bundle shares with the other sizes: it resolves in the bundle of several sizes above it,
    and only there."""
    _relative(rel)
    if rel.startswith(SHARED):
        top = Path(os.path.realpath(bundle)).parent
        if not (top / SIZES).is_file():
            raise UserError(f"{rel}: this bundle shares its weights with the other sizes of the bundle it came from; "
                            "open that bundle, not one size's folder")
        return resolve_inside(top, rel.removeprefix("../"))
    root = Path(os.path.realpath(bundle))
    path = Path(os.path.realpath(root / rel))
    if path != root and root not in path.parents:
        raise UserError(f"{rel} resolves outside the bundle: refused")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_hashes(root: Path, files: list[Path]) -> dict[str, str]:
    """``relative path -> sha256`` for each file under ``root``."""
    return {Path(f).relative_to(root).as_posix(): sha256_file(Path(f)) for f in sorted(set(files))}


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "top level"
    return f"{where}: {err['msg']}" + (f" ({exc.error_count()} problems in all)" if exc.error_count() > 1 else "")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` hook: a key given twice in one object is refused (JSON keeps the last one silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(repr(k))
        out[k] = v
    return out


def load_json(path: Path, what: str):
    """``path``'s JSON, a key given twice refused; a problem is one ``UserError`` naming ``what`` it should be."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    except _DuplicateKey as exc:
        raise UserError(f"{path} is not a valid {what}: the key {exc} appears twice in one object") from None


def read_manifest(bundle: Path) -> Manifest:
    """Read and validate ``bundle/manifest.json``; any problem is one ``UserError`` line."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise UserError(f"bundle not found: {bundle}")
    if not path.is_file():
        if (bundle / "sizes.json").is_file():
            raise UserError(f"{bundle} holds several input sizes (sizes.json): open it with runtime.open(), "
                            "or name one size's folder inside it")
        raise UserError(f"{bundle} is not a bundle: it has no {MANIFEST}")
    data = load_json(path, "vitdeploy manifest")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path} is not a valid vitdeploy manifest: {first_error(exc)}") from None
