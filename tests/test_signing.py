"""Signed bundles: ``--sign-key`` writes an OpenSSF model-signing signature that our runtime and model-signing's
own verifier accept; with a trust key (``trust=`` / ``--trust`` / ``$VITDEPLOY_TRUST``) an unsigned, re-signed
or edited bundle is refused in one line, exit 2, even when the manifest's sha256 table was edited to match."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.errors import UserError
from runtime.signing import SIGNATURE, TRUST_ENV, sign_bundle
from tests.conftest import cli_in_process, run_cli

pytest.importorskip("model_signing", reason="signed bundles need model-signing: pip install 'vitdeploy[sign]'")
ROOT = Path(__file__).resolve().parents[1]


def key_pair(folder: Path, name: str, curve=None) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(curve or ec.SECP256R1())
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"ours": key_pair(d, "ours"), "theirs": key_pair(d, "theirs")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    """digits_vit through ONNX Runtime FP32, exported with ``--sign-key`` (the CLI path, in-process)."""
    from exporters.__main__ import main
    out = tmp_path_factory.mktemp("signed")
    assert main([str(a) for a in ("digits_vit", "--out", out, "--runs", "5", "--quiet",
                                  "--sign-key", keys["ours"][0])]) == 0
    return out / "digits_vit"


def copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def forge(bundle: Path) -> None:
    """What an attacker with write access does: change the model and make the manifest's sha256 table agree."""
    onnx = bundle / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF
    onnx.write_bytes(bytes(data))
    m = json.loads((bundle / "manifest.json").read_text())
    m["sha256"]["model.onnx"] = hashlib.sha256(bytes(data)).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


def model_signing_verify(bundle: Path, public: Path) -> subprocess.CompletedProcess:
    """model-signing's own command-line verifier, as a user of that tool runs it."""
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(bundle), "--signature",
                           str(bundle / SIGNATURE), "--public_key", str(public)], capture_output=True, text=True,
                          timeout=120)


def test_signed_bundle_verifies_with_our_runtime_and_with_model_signing(signed, keys):
    m = json.loads((signed / "manifest.json").read_text())
    assert m["signed_by"] and (signed / SIGNATURE).is_file()
    with runtime.open(signed, trust=keys["ours"][1], verify="never") as s:
        assert s.signed_by == m["signed_by"]
        assert s.predict([np.zeros((8, 8, 3), "uint8")], topk=1)[0].labels
    proc = model_signing_verify(signed, keys["ours"][1])
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stderr
    assert json.loads((signed / "report.json").read_text())["signed_by"] == m["signed_by"]
    assert f"key id `{m['signed_by'][:16]}" in (signed / "report.md").read_text()


def test_forged_bundle_is_refused_with_a_trust_key_only(signed, keys, tmp_path, capsys):
    bad = copy(signed, tmp_path / "forged")
    forge(bad)
    with runtime.open(bad, verify="never"):  # the sha256 table alone cannot catch this: the attacker updated it
        pass
    with pytest.raises(UserError, match=r"fails its signature check .*changed: manifest.json, model.onnx"):
        runtime.open(bad, trust=keys["ours"][1])
    code, out, err = cli_in_process(capsys, "runtime", "verify", bad, "--trust", keys["ours"][1])
    assert code == 2 and "fails its signature check" in err and len(err.strip().splitlines()) == 1, err
    assert model_signing_verify(bad, keys["ours"][1]).returncode != 0  # model-signing agrees


def test_trust_from_the_environment_refuses_an_unsigned_bundle(signed, keys, tmp_path, monkeypatch, capsys):
    unsigned = copy(signed, tmp_path / "unsigned")
    (unsigned / SIGNATURE).unlink()
    monkeypatch.setenv(TRUST_ENV, str(keys["ours"][1]))
    code, _, err = cli_in_process(capsys, "runtime", "bench", unsigned, "--runs", "2")
    assert code == 2 and "is not signed" in err and "Traceback" not in err, err
    for blank in ("", "  "):  # set but blank is an error, never "no check": unset the variable instead
        monkeypatch.setenv(TRUST_ENV, blank)
        code, out, err = cli_in_process(capsys, "runtime", "bench", unsigned, "--runs", "2", "--warmup", "1")
        assert code == 2 and "VITDEPLOY_TRUST is set but empty" in err and "Traceback" not in err, err
    monkeypatch.delenv(TRUST_ENV)
    code, out, err = cli_in_process(capsys, "runtime", "bench", unsigned, "--runs", "2", "--warmup", "1")
    assert code == 0, err


def test_resigned_with_another_key_or_an_edited_signature_is_refused(signed, keys, tmp_path):
    resigned = copy(signed, tmp_path / "resigned")
    forge(resigned)
    sign_bundle(resigned, keys["theirs"][0])  # the attacker's own key: a valid signature, not ours
    with pytest.raises(UserError, match="signed with another key"):
        runtime.open(resigned, trust=keys["ours"][1])
    with runtime.open(resigned, trust=keys["theirs"][1], verify="never"):
        pass  # whoever trusts the attacker's key gets the attacker's bundle: trust is the key, not the format
    edited = copy(signed, tmp_path / "edited-sig")
    sig = json.loads((edited / SIGNATURE).read_text())
    sig["dsseEnvelope"]["signatures"][0]["sig"] = sig["dsseEnvelope"]["signatures"][0]["sig"][::-1]
    (edited / SIGNATURE).write_text(json.dumps(sig))
    with pytest.raises(UserError, match="fails its signature check"):
        runtime.open(edited, trust=keys["ours"][1])


def test_an_added_file_is_refused(signed, keys, tmp_path):
    extra = copy(signed, tmp_path / "extra")
    (extra / "notes.txt").write_text("not signed")
    with pytest.raises(UserError, match="added: notes.txt"):
        runtime.open(extra, trust=keys["ours"][1])


@pytest.mark.parametrize("case, match", [
    ("missing", "cannot read the signing key"),
    ("public", "not a usable PEM private key"),
    ("p224", "not an EC private key on P-256, P-384 or P-521"),
    ("encrypted", "is encrypted: set VITDEPLOY_SIGN_PASSWORD"),
])
def test_a_bad_signing_key_fails_before_any_work(case, match, keys, tmp_path, capsys, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    monkeypatch.delenv("VITDEPLOY_SIGN_PASSWORD", raising=False)
    key = {"missing": tmp_path / "nope.pem", "public": keys["ours"][1]}.get(case)
    if case == "p224":
        key, _ = key_pair(tmp_path, "small", ec.SECP224R1())
    if case == "encrypted":
        raw = ec.generate_private_key(ec.SECP256R1())
        key = tmp_path / "enc.pem"
        key.write_bytes(raw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pw")))
    out = tmp_path / "out"
    code, _, err = run_cli(["digits_vit", "--out", out, "--quiet", "--sign-key", key], capsys)
    assert code == 2 and match in err and "Traceback" not in err, err
    assert not (out / "digits_vit").exists()


def test_a_private_key_given_as_trust_key_is_one_line(signed, keys, capsys):
    code, _, err = cli_in_process(capsys, "runtime", "verify", signed, "--trust", keys["ours"][0])
    assert code == 2 and "not a PEM public key" in err, err


def test_device_build_checks_the_signature_before_building(signed, keys, tmp_path, capsys):
    bad = copy(signed, tmp_path / "forged-build")
    forge(bad)
    code, _, err = cli_in_process(capsys, "runtime", "build", bad, "--trust", keys["ours"][1])
    assert code == 2 and "fails its signature check" in err, err
    assert not (bad / "engines").exists()


def test_encrypted_key_signs_with_its_password(keys, signed, tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    raw = ec.generate_private_key(ec.SECP384R1())
    key, pub = tmp_path / "enc.pem", tmp_path / "enc.pub.pem"
    key.write_bytes(raw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"s3cret")))
    pub.write_bytes(raw.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    monkeypatch.setenv("VITDEPLOY_SIGN_PASSWORD", "s3cret")
    b = copy(signed, tmp_path / "p384")
    sign_bundle(b, key)
    assert not list(tmp_path.glob(".p384.*tmp*"))  # the signature went in whole, nothing left beside
    with runtime.open(b, trust=pub, verify="never"):
        pass


def test_an_empty_trust_value_is_an_error_not_an_off_switch(signed, keys, tmp_path, capsys):
    unsigned = copy(signed, tmp_path / "unsigned")
    (unsigned / SIGNATURE).unlink()
    for blank in ("", " "):
        code, _, err = cli_in_process(capsys, "runtime", "bench", unsigned, "--trust", blank, "--runs", "2")
        assert code == 2 and "--trust is empty" in err and "Traceback" not in err, err
        with pytest.raises(UserError, match="--trust is empty"):
            runtime.open(unsigned, trust=blank)


@pytest.mark.parametrize("hidden", [".github/model.onnx", ".git/objects/model.onnx", ".gitignore", ".gitattributes",
                                    ".owner"])
def test_a_file_hidden_where_model_signing_looks_away_is_refused(hidden, signed, keys, tmp_path):
    extra = copy(signed, tmp_path / "extra")
    target = extra / hidden
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(signed / "model.onnx", target)
    with pytest.raises(UserError, match=f"holds {hidden.split('/')[0]}"):
        runtime.open(extra, trust=keys["ours"][1])
    proc = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(extra), "--signature",
                           str(extra / SIGNATURE), "--public_key", str(keys["ours"][1]), "--no-ignore-git-paths"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout  # model-signing agrees once told not to look away


def test_a_signature_covers_git_files_too(signed, keys, tmp_path):
    """Signed with nothing ignored but the signature itself: a .gitignore present when the bundle was signed is
    covered, so losing it fails model-signing's own check (told not to look away from git's files); our runtime
    refuses a bundle holding one whatever its signature says."""
    from runtime.signing import check_signature
    b = copy(signed, tmp_path / "with-git")
    (b / ".gitignore").write_text("*.tmp\n")
    sign_bundle(b, keys["ours"][0])
    with pytest.raises(UserError, match="holds .gitignore"):
        check_signature(b, keys["ours"][1])
    (b / ".gitignore").unlink()
    proc = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(b), "--signature",
                           str(b / SIGNATURE), "--public_key", str(keys["ours"][1]), "--no-ignore-git-paths"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and ".gitignore" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_password_for_an_unencrypted_key_is_named(keys, monkeypatch):
    from runtime.signing import signing_key
    monkeypatch.setenv("VITDEPLOY_SIGN_PASSWORD", "pw")
    with pytest.raises(UserError, match="is not encrypted but VITDEPLOY_SIGN_PASSWORD is set"):
        signing_key(keys["ours"][0])


def test_a_bundle_reached_through_a_symlink_verifies(signed, keys, tmp_path, capsys):
    link = tmp_path / "current"
    link.symlink_to(signed, target_is_directory=True)
    with runtime.open(link, trust=keys["ours"][1], verify="never") as s:
        assert s.signed_by
    code, _, err = cli_in_process(capsys, "runtime", "verify", link, "--trust", keys["ours"][1])
    assert code == 0, err


def test_a_pack_of_a_signed_bundle_is_unsigned_unless_signed_again(signed, keys, tmp_path, capsys):
    code, _, err = cli_in_process(capsys, "runtime", "pack", signed, "--out", tmp_path / "p", "--trust",
                                  keys["ours"][1])
    assert code == 0 and "the pack is unsigned" in err, err
    assert not (tmp_path / "p" / SIGNATURE).exists()
    with pytest.raises(UserError, match="is not signed"):
        runtime.open(tmp_path / "p", trust=keys["ours"][1])
    code, _, err = cli_in_process(capsys, "runtime", "pack", signed, "--out", tmp_path / "s", "--sign-key",
                                  keys["ours"][0])
    assert code == 0 and "unsigned" not in err, err
    with runtime.open(tmp_path / "s", trust=keys["ours"][1], verify="never") as s:
        assert s.signed_by
    assert model_signing_verify(tmp_path / "s", keys["ours"][1]).returncode == 0
    forged = copy(signed, tmp_path / "forged")
    forge(forged)
    code, _, err = cli_in_process(capsys, "runtime", "pack", forged, "--out", tmp_path / "f", "--trust",
                                  keys["ours"][1])
    assert code == 2 and "fails its signature check" in err and not (tmp_path / "f").exists()
