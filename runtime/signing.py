"""Signed bundles, in the OpenSSF model-signing format (the ``model-signing`` package, an EC key pair, offline).

The manifest's sha256 table catches accidents; whoever can edit a bundle can edit that table too. A signature
over every file of the bundle, checked against a public key the user trusts, catches that:

    python -m exporters digits_vit --sign-key signing.pem          # writes BUNDLE/model.sig
    python -m runtime BUNDLE img.png --trust signing.pub.pem       # or VITDEPLOY_TRUST=signing.pub.pem
    python -m model_signing verify key BUNDLE --signature BUNDLE/model.sig --public_key signing.pub.pem \
        --no-ignore-git-paths

The signature covers every file in the bundle except itself (model-signing's file serialization, sha256 per
file), git's files included; an added, missing or changed file fails the check. model-signing's own verifier
leaves ``.git/``, ``.github/``, ``.gitignore`` and ``.gitattributes`` out unless told ``--no-ignore-git-paths``;
the runtime never does, and refuses a bundle that holds any of them. Keys are PEM EC keys on P-256, P-384 or P-521
(model-signing's set); ``openssl ecparam -name prime256v1 -genkey -noout -out signing.pem`` and
``openssl ec -in signing.pem -pubout -out signing.pub.pem`` make a pair. An encrypted private key takes its
password from ``VITDEPLOY_SIGN_PASSWORD``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from pathlib import Path

from runtime.errors import UserError
from runtime.manifest import read_manifest

SIGNATURE = "model.sig"
TRUST_ENV = "VITDEPLOY_TRUST"
PASSWORD_ENV = "VITDEPLOY_SIGN_PASSWORD"
_NOT_SIGNED = (SIGNATURE,)  # the signature covers every other file: nothing is ignored, git's files included
# reason: model-signing ignores these by default (git's files, and the exporter's staging lock that signatures of
# earlier versions left out), so a file hidden under them would pass a signature that was made with its defaults;
# a bundle never holds them, so one that does is refused
_NEVER_IN_A_BUNDLE = (".git", ".gitattributes", ".github", ".gitignore", ".owner")
INSTALL = "pip install 'vitdeploy[sign]'"


def _model_signing():
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise UserError(f"signed bundles need the model-signing package ({exc.name} is missing): {INSTALL}") from None
    return model_signing


def _pem(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the {what} {p}: {exc.strerror or exc}") from None


def _check_curve(public, path: Path, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in (
            "secp256r1", "secp384r1", "secp521r1"):
        raise UserError(f"{path} is not an EC {what} on P-256, P-384 or P-521 (what model-signing accepts)")


def key_id(public_key) -> str:
    """The key's id as model-signing writes it into a signature (its ``publicKey.hint``): the sha256 of the PEM
    SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def signing_key(path: str | Path):
    """Load and check a private signing key before any work; returns it (``key_id(k.public_key())`` names it)."""
    _model_signing()
    from cryptography.hazmat.primitives import serialization
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(_pem(path, "signing key"), password.encode() if password else None)
    except TypeError:  # reason: cryptography raises TypeError both for a missing and for an unneeded password
        if password:
            raise UserError(f"the signing key {path} is not encrypted but {PASSWORD_ENV} is set: unset it") from None
        raise UserError(f"the signing key {path} is encrypted: set {PASSWORD_ENV}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not a usable PEM private key ({str(exc).splitlines()[0][:120]})") from None
    _check_curve(key.public_key(), Path(path), "private key")
    return key


def trust_key(path: str | Path):
    """Load and check the public key a bundle must be signed with."""
    _model_signing()
    from cryptography.hazmat.primitives import serialization
    try:
        key = serialization.load_pem_public_key(_pem(path, "trust key"))
    except ValueError:
        raise UserError(f"the trust key {path} is not a PEM public key (give the .pub.pem, not the private key)") \
            from None
    _check_curve(key, Path(path), "public key")
    return key


def trust_from(trust: str | Path | None) -> Path | None:
    """The trust key asked for: the argument, else ``$VITDEPLOY_TRUST``, else none (signatures not required). An
    empty or blank value, given or in the environment, is an error, never "no check": unset the variable instead."""
    if trust is None:
        env = os.environ.get(TRUST_ENV)
        if env is None:
            return None
        if not env.strip():
            raise UserError(f"${TRUST_ENV} is set but empty: name a public key, or unset it to open bundles without "
                            "a signature check")
        return Path(env)
    if not isinstance(trust, (str, os.PathLike)):
        raise UserError(f"trust must be the path of a PEM public key (got {type(trust).__name__})")
    if not str(trust).strip():
        raise UserError("--trust is empty: name a public key (PUBLIC_KEY.pem); leave it out to open bundles without "
                        "a signature check")
    return Path(trust)


def sign_bundle(bundle: Path, key_path: str | Path) -> Path:
    """Write ``bundle/model.sig`` over every file of ``bundle`` (but the signature itself); returns its path.

    The signature is written beside and renamed into place, so a bundle never holds half a signature."""
    ms = _model_signing()
    signing_key(key_path)  # one line for a bad key, not model-signing's traceback
    bundle = Path(bundle)
    tmp = bundle.parent / f".{bundle.name}.{SIGNATURE}.tmp-{os.getpid()}"
    password = os.environ.get(PASSWORD_ENV)
    try:
        # reason: model-signing 1.1 types the password as str but hands it to cryptography, which wants bytes
        ms.signing.Config().use_elliptic_key_signer(
            private_key=Path(key_path), password=password.encode() if password else None,
        ).set_hashing_config(_hashing(ms)).sign(bundle, tmp)
        os.replace(tmp, bundle / SIGNATURE)
    finally:
        tmp.unlink(missing_ok=True)
    return bundle / SIGNATURE


def _hashing(ms):
    """model-signing's file serialization with nothing ignored but the signature (its default leaves git's out)."""
    return ms.hashing.Config().set_ignored_paths(paths=list(_NOT_SIGNED), ignore_git_paths=False)


def check_signature(bundle: Path, trust: str | Path) -> str:
    """Refuse (``UserError``, one line) a bundle that is not signed by ``trust``'s key or whose files differ from
    what was signed, an added file anywhere included; returns the key id it was signed with. A bundle reached
    through a symlink is checked at the folder it resolves to."""
    ms = _model_signing()
    bundle = Path(os.path.realpath(bundle))
    public = trust_key(trust)
    sig = bundle / SIGNATURE
    if not sig.is_file():
        raise UserError(f"{bundle} is not signed (no {SIGNATURE}) and a trust key is set ({trust}): refused")
    hidden = [n for n in _NEVER_IN_A_BUNDLE if (bundle / n).exists() or (bundle / n).is_symlink()]
    if hidden:
        raise UserError(f"{bundle} holds {', '.join(hidden)}, which is never part of a bundle (and which "
                        "model-signing's defaults leave out of a signature): refused")
    try:
        # reason: model-signing prints a warning for signatures of its pre-1.0 format on stdout, where our
        # commands print their results
        with contextlib.redirect_stdout(io.StringIO()):
            ms.verifying.Config().use_elliptic_key_verifier(public_key=Path(trust)).set_hashing_config(
                _hashing(ms)).verify(bundle, sig)
    except Exception as exc:  # reason: model-signing raises ValueError, cryptography's InvalidSignature, json errors
        raise UserError(f"{bundle} fails its signature check with {trust}: {_why(exc)}; refused") from None
    return key_id(public)


def _why(exc: Exception) -> str:
    """model-signing's reason in one short phrase (its hash mismatches carry raw digests)."""
    text = str(exc)
    if "Key mismatch" in text:
        return "signed with another key"
    if text.startswith("Signature mismatch"):
        parts = []
        for kind, label in (("Extra files found", "added"), ("Missing files", "missing")):
            m = re.search(kind + r" in model '[^']*': ([^\"\]]+?)(?:'|\"|,\s*'Hash|\]|$)", text)
            if m:
                parts.append(f"{label}: {m.group(1)[:200]}")
        changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)
        if changed:
            parts.append("changed: " + ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else ""))
        return "files differ from what was signed (" + "; ".join(parts or ["contents"]) + ")"
    if type(exc).__name__ == "InvalidSignature":
        return "the signature does not match its contents (forged or corrupt)"
    return (text.splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__


def trust_flag(parser) -> None:
    """``--trust`` for every command that reads a bundle."""
    parser.add_argument("--trust", default=None, metavar="PUBLIC_KEY.pem",
                        help="refuse the bundle unless it is signed with this key's private key and unchanged since "
                             f"(default: ${TRUST_ENV}; unset: signatures are not required)")


class Checked(str):
    """A key id meaning: the folder enclosing this bundle was checked with it (a multi-size bundle's signature
    covers the single-size bundles inside it, which have no signature of their own)."""


def trusted(bundle: str | Path, trust: str | Path | None = None) -> str | None:
    """The signature check when a trust key is given or ``$VITDEPLOY_TRUST`` is set: the key id it was signed with,
    or None when no key is in play; a bundle that fails is one ``UserError`` (``check_signature``)."""
    if isinstance(trust, Checked):
        return str(trust)
    key = trust_from(trust)
    return check_signature(Path(bundle), key) if key is not None and Path(bundle).is_dir() else None


def read_trusted(bundle: str | Path, trust: str | Path | None = None):
    """``read_manifest(bundle)``, after the signature check when a trust key is given or ``$VITDEPLOY_TRUST`` is
    set; returns ``(manifest, key id or None)``. Every reader of a bundle opens it through here."""
    signer = trusted(bundle, trust)
    return read_manifest(Path(bundle)), signer
