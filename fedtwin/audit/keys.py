"""Ed25519 audit signing keys: generate, store, load, and the C2SP verifier-key encoding.

Safe recipes only (no algorithm choice is offered): a party's audit key is one Ed25519 key
named by a C2SP key name (non-empty, no spaces, no ``+``). The same key signs the party's own
checkpoints (signed-note type ``0x01``) and, for a site, its cosignatures of the coordinator's
checkpoints (tlog-cosignature type ``0x04``); the two key ids differ by that type byte, so the
two uses never collide. Invariants:

* a private key is written once, as unencrypted PKCS#8 PEM with mode ``0600``, created under a
  temporary name and linked into place, so an existing key is never overwritten and a crash
  never leaves half a key; loading refuses a key file that group or others may read;
* a verifier key is the C2SP string ``<name>+<8 hex key id>+<base64(0x01 || public key)>``;
  parsing recomputes the key id and refuses any mismatch, so a key string is self-checking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedtwin.audit._files import write_new_file
from fedtwin.errors import ConfigError

SIGNATURE_TYPE_ED25519 = 0x01
"""Signed-note signature type of an Ed25519 note signature (C2SP signed-note)."""
SIGNATURE_TYPE_COSIGNATURE_V1 = 0x04
"""Signature type of a timestamped Ed25519 cosignature (C2SP tlog-cosignature)."""
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

_KEY_NAME = re.compile(r"[\x21-\x2a\x2c-\x7e]+")
"""Printable ASCII without space or ``+`` (C2SP allows more; fedtwin keeps names simple)."""


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid key name, else raise :class:`ConfigError`."""
    if not _KEY_NAME.fullmatch(name):
        raise ConfigError(
            f"key name {name!r} must be non-empty printable ASCII without spaces or '+'"
        )
    return name


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public key)[:4]``, the C2SP key id."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key)
    return digest.digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    """A party's public audit key with its C2SP name.

    Parameters
    ----------
    name : str
        The key name that appears on signature lines.
    public_key : bytes
        The 32-byte Ed25519 public key (RFC 8032 encoding).
    """

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise ConfigError(f"key {self.name}: an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        """Key id of this key's checkpoint signatures (type ``0x01``)."""
        return key_id(self.name, SIGNATURE_TYPE_ED25519, self.public_key)

    @property
    def cosigner_key_id(self) -> bytes:
        """Key id of this key's cosignatures (type ``0x04``)."""
        return key_id(self.name, SIGNATURE_TYPE_COSIGNATURE_V1, self.public_key)

    @property
    def fingerprint(self) -> str:
        """``sha256:`` and the hex SHA-256 of the raw public key: what audit events record."""
        return "sha256:" + hashlib.sha256(self.public_key).hexdigest()

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``message``."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def encode(self) -> str:
        """The C2SP verifier key string ``<name>+<hex key id>+<base64(0x01 || key)>``."""
        material = base64.b64encode(bytes([SIGNATURE_TYPE_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse a C2SP verifier key string; any inconsistency raises :class:`ConfigError`."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise ConfigError("verifier key must look like <name>+<key id>+<base64 key>")
        name, hex_id, material = parts
        check_key_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise ConfigError(f"verifier key {name}: key id must be 8 lower-case hex digits")
        try:
            raw = base64.b64decode(material, validate=True)
        except binascii.Error as error:
            raise ConfigError(f"verifier key {name}: key material is not base64") from error
        if base64.b64encode(raw).decode() != material:
            raise ConfigError(f"verifier key {name}: key material is not canonical base64")
        if len(raw) != 1 + PUBLIC_KEY_SIZE or raw[0] != SIGNATURE_TYPE_ED25519:
            raise ConfigError(f"verifier key {name}: not an Ed25519 (type 0x01) key")
        key = cls(name=name, public_key=raw[1:])
        if key.key_id.hex() != hex_id:
            raise ConfigError(f"verifier key {name}: key id {hex_id} does not match the key")
        return key


class AuditSigner:
    """A party's private audit key: signs its checkpoints and cosignatures.

    Parameters
    ----------
    name : str
        The key name (conventionally the party id).
    private_key : Ed25519PrivateKey
        The Ed25519 private key.
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = check_key_name(name)
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.verifier_key = VerifierKey(name=name, public_key=raw)

    def __repr__(self) -> str:
        return f"AuditSigner({self.verifier_key.encode()!r})"

    @classmethod
    def generate(cls, name: str) -> AuditSigner:
        """A fresh key from the operating system's secure random source."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> AuditSigner:
        """A key from a 32-byte RFC 8032 seed (for test vectors; use :meth:`generate`)."""
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of exactly ``message``."""
        return self._private_key.sign(message)

    def save(self, path: Path) -> None:
        """Write the private key as PKCS#8 PEM, mode 0600; never overwrite an existing file."""
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_new_file(path, pem, mode=0o600)
        except FileExistsError as error:
            raise ConfigError(f"{path}: already exists; refusing to overwrite a key") from error

    @classmethod
    def load(cls, path: Path, name: str) -> AuditSigner:
        """Read a private key written by :meth:`save` (refused if others may read it)."""
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"{path}: cannot read private key ({error.strerror})") from error
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: private key is accessible by others (chmod 600 it)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{path}: not an unencrypted PKCS#8 PEM private key") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key")
        return cls(name, key)


def write_verifier_key(key: VerifierKey, path: Path) -> None:
    """Write a verifier key file (one line, mode 0644); never overwrite an existing file."""
    try:
        write_new_file(path, (key.encode() + "\n").encode(), mode=0o644)
    except FileExistsError as error:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a key") from error


def load_verifier_key(source: str | Path) -> VerifierKey:
    """A verifier key from a file holding one, or from the key string itself."""
    path = Path(source)
    if isinstance(source, Path) or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read verifier key") from error
        try:
            return VerifierKey.parse(text)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error
    return VerifierKey.parse(str(source))
