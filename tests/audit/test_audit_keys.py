"""Audit keys: the C2SP key id and encoding (Go reference vector), safe storage on disk."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from fedtwin.audit import AuditSigner, VerifierKey, load_verifier_key, write_verifier_key
from fedtwin.errors import ConfigError

# golang.org/x/mod/sumdb/note, note_test.go: the PeterNeumann key pair and its signature.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)


def test_key_id_encoding_and_signature_match_the_go_reference() -> None:
    signer = AuditSigner.from_seed("PeterNeumann", GO_SEED)
    assert signer.verifier_key.encode() == GO_VKEY
    assert VerifierKey.parse(GO_VKEY) == signer.verifier_key
    blob = base64.b64encode(signer.verifier_key.key_id + signer.sign(GO_TEXT)).decode()
    assert blob == GO_SIGNATURE


@pytest.mark.parametrize(
    "mangled",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # key id of another key
        GO_VKEY.replace("PeterNeumann", "PeterNeumanm"),  # name does not match the id
        GO_VKEY.replace("+ARpc", "+AhRpc"),  # not base64 of 33 bytes
        GO_VKEY.replace("+ARpc", "+Apc"),  # type 0x02 (ECDSA), not Ed25519
        GO_VKEY[:-4],
        "PeterNeumann",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_mangled_verifier_keys_are_refused(mangled: str) -> None:
    with pytest.raises(ConfigError):
        VerifierKey.parse(mangled)


def test_cosigner_key_id_differs_from_the_signing_key_id() -> None:
    key = VerifierKey.parse(GO_VKEY)
    assert key.cosigner_key_id != key.key_id
    assert key.fingerprint.startswith("sha256:") and len(key.fingerprint) == 71


def test_private_key_is_written_0600_once_and_loads_back(tmp_path: Path) -> None:
    signer = AuditSigner.generate("site-a")
    path = tmp_path / "keys" / "site-a.pem"
    signer.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    loaded = AuditSigner.load(path, "site-a")
    assert loaded.verifier_key == signer.verifier_key
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        AuditSigner.generate("site-a").save(path)
    assert AuditSigner.load(path, "site-a").verifier_key == signer.verifier_key
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site-a.pem"
    AuditSigner.generate("site-a").save(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        AuditSigner.load(path, "site-a")


def test_verifier_key_file_or_string_both_load(tmp_path: Path) -> None:
    key = AuditSigner.generate("coordinator").verifier_key
    path = tmp_path / "coordinator.vkey"
    write_verifier_key(key, path)
    assert load_verifier_key(path) == key == load_verifier_key(key.encode())
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match=r"coordinator\.vkey"):
        load_verifier_key(path)
