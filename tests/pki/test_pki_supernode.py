"""SuperNode keys are checked against Flower's own loaders (the code the SuperLink and the
SuperNode run), not against a copy of their rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from fedtwin.errors import ConfigError
from fedtwin.pki import (
    PkiLayout,
    check_supernode_private_key,
    load_supernode_public_key,
    supernode_public_key_fingerprint,
)


def test_flwr_supernode_register_accepts_the_enrolled_public_key(consortium: PkiLayout) -> None:
    raw = try_load_public_key(consortium.supernode_public_key("site-a"))
    key = bytes_to_public_key(raw)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp384r1"


def test_flower_supernode_can_load_the_private_key_and_it_matches_the_public_one(
    consortium: PkiLayout,
) -> None:
    bundle = consortium.bundle("site-a")
    # What `flower-supernode --auth-supernode-private-key` does with the file.
    private = serialization.load_ssh_private_key(bundle.supernode_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert consortium.supernode_public_key("site-a").read_bytes().startswith(public)
    assert check_supernode_private_key(bundle.supernode_key) == (
        supernode_public_key_fingerprint(consortium.supernode_public_key("site-a"))
    )


def test_a_group_readable_supernode_key_is_refused(consortium: PkiLayout, tmp_path: Path) -> None:
    copy = tmp_path / "supernode.key"
    copy.write_bytes(consortium.bundle("site-b").supernode_key.read_bytes())
    copy.chmod(0o640)
    with pytest.raises(ConfigError, match="accessible by others"):
        check_supernode_private_key(copy)


def test_a_p256_key_is_refused_although_flower_would_take_it(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "p256.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    with pytest.raises(ConfigError, match="expected secp384r1"):
        load_supernode_public_key(public)


def test_fingerprint_is_the_ssh_keygen_form(consortium: PkiLayout) -> None:
    fingerprint = supernode_public_key_fingerprint(consortium.supernode_public_key("site-a"))
    assert fingerprint.startswith("SHA256:") and "=" not in fingerprint
    assert len(fingerprint) == len("SHA256:") + 43
