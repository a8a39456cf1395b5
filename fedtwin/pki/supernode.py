"""A site's SuperNode authentication key pair, in exactly the form Flower 1.42 takes.

``flower-supernode --auth-supernode-private-key`` loads the private key with
``cryptography``'s ``load_ssh_private_key`` and requires an elliptic-curve key;
``flwr supernode register`` loads the public key with ``load_ssh_public_key`` and requires a
NIST curve. fedtwin fixes the choice: ECDSA P-384, private key in OpenSSH format (unencrypted,
``0600``), public key as one OpenSSH line (``ecdsa-sha2-nistp384 ... <site-id>``).

Invariant: :func:`load_supernode_public_key` accepts only a P-384 OpenSSH public key, so a key
the SuperLink would refuse (or a key of another kind) is refused before it reaches Flower.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedtwin.errors import ConfigError
from fedtwin.pki._files import read_private, read_public, write_private, write_public

CURVE = ec.SECP384R1


@dataclass(frozen=True)
class SupernodeKeyFiles:
    """Where a SuperNode key pair was written, and the public key's fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


def openssh_fingerprint(public_line: bytes) -> str:
    """``SHA256:`` and the unpadded base64 SHA-256 of the key blob (as ``ssh-keygen -l``)."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ConfigError("not an OpenSSH public key line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as error:
        raise ConfigError("OpenSSH public key is not base64") from error
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def generate_supernode_keys(
    private_path: Path, public_path: Path, comment: str
) -> SupernodeKeyFiles:
    """Create a fresh P-384 key pair; the private key ``0600``, neither file overwritten."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public + b" " + comment.encode() + b"\n"
    write_private(private_path, private)
    write_public(public_path, line)
    return SupernodeKeyFiles(private_path, public_path, openssh_fingerprint(public))


def _check_curve(key: object, path: Path) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an ECDSA key (SuperNode keys are ECDSA P-384)")
    if not isinstance(key.curve, CURVE):
        raise ConfigError(f"{path}: ECDSA key on {key.curve.name}, expected secp384r1")


def _public_line(key: object, path: Path) -> bytes:
    _check_curve(key, path)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path}: not an ECDSA key")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def load_supernode_public_key(path: Path) -> bytes:
    """The OpenSSH public key line of ``path`` after checking it is a P-384 key."""
    data = read_public(path, "SuperNode public key")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"{path}: not an OpenSSH public key") from error
    _check_curve(key, path)
    return data.strip()


def check_supernode_private_key(path: Path) -> str:
    """Check a SuperNode private key (mode 0600, OpenSSH, P-384); return its fingerprint."""
    data = read_private(path)
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"{path}: not an unencrypted OpenSSH private key") from error
    return openssh_fingerprint(_public_line(key, path))


def supernode_public_key_fingerprint(path: Path) -> str:
    """Fingerprint of a SuperNode public key file (after checking it)."""
    return openssh_fingerprint(load_supernode_public_key(path))
