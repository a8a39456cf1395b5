"""Signed checkpoints of an audit log (c2sp.org/tlog-checkpoint) and their files.

A checkpoint is a signed note whose text is exactly three lines: the log's origin, its tree
size in decimal, and the base64 RFC 9162 root hash at that size. Invariants:

* fedtwin writes no extension lines and :meth:`Checkpoint.parse` refuses them, along with any
  leading zero, non-canonical base64 or root that is not 32 bytes;
* a party's checkpoints live next to its log in ``<party>.checkpoints/<size>.note``, written to
  a temporary name, fsynced and renamed (a crash never leaves half a checkpoint); a second,
  different checkpoint for a size already signed is refused (a log never signs two views);
* cosignatures are added to the coordinator's checkpoint file as extra signature lines, only
  after they verify against the cosigner's key.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path

from fedtwin.audit._files import atomic_write
from fedtwin.audit.keys import AuditSigner, VerifierKey
from fedtwin.audit.merkle import HASH_SIZE
from fedtwin.audit.note import (
    NoteSignature,
    SignedNote,
    cosignatures_by,
    parse_note,
    sign_note,
    verify_cosignature,
    verify_note,
)
from fedtwin.errors import VerificationError

CHECKPOINT_SUFFIX = ".note"
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Checkpoint:
    """The tree head a checkpoint commits to."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The note text: origin, size and base64 root, one per line."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (strict; no extension lines).

        Raises
        ------
        VerificationError
            If the text is not a well-formed checkpoint body.
        """
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise VerificationError("checkpoint text must be exactly origin, size and root")
        origin, size, root = lines[:3]
        if not origin or any(c.isspace() or c == "+" for c in origin):
            raise VerificationError("checkpoint origin must be non-empty, without spaces or '+'")
        if not _SIZE.fullmatch(size):
            raise VerificationError(f"checkpoint size {size[:30]!r} is not a decimal number")
        try:
            raw = base64.b64decode(root, validate=True)
        except binascii.Error as error:
            raise VerificationError("checkpoint root is not base64") from error
        if len(raw) != HASH_SIZE or base64.b64encode(raw).decode() != root:
            raise VerificationError("checkpoint root is not a canonical base64 SHA-256 hash")
        return cls(origin=origin, size=int(size), root=raw)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with the signed note that carries it."""

    checkpoint: Checkpoint
    note: SignedNote

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedCheckpoint:
        """Parse a checkpoint file's bytes (the signatures are *not* verified here)."""
        note = parse_note(data)
        return cls(Checkpoint.parse(note.text), note)

    def encode(self) -> bytes:
        """The bytes of the checkpoint file."""
        return self.note.encode().encode("utf-8")

    def verify(self, key: VerifierKey) -> None:
        """Check the log's signature by ``key`` (raises :class:`VerificationError`)."""
        verify_note(self.note, key)

    def add_cosignature(self, signature: NoteSignature, cosigner: VerifierKey) -> SignedCheckpoint:
        """The checkpoint with ``signature`` added, after checking it is ``cosigner``'s."""
        verify_cosignature(self.note, signature, cosigner)
        return SignedCheckpoint(self.checkpoint, self.note.with_signature(signature))


def sign_checkpoint(checkpoint: Checkpoint, signer: AuditSigner) -> SignedCheckpoint:
    """Sign a checkpoint with the log's key."""
    if any(c.isspace() or c == "+" for c in checkpoint.origin) or not checkpoint.origin:
        raise ValueError("checkpoint origin must be non-empty, without spaces or '+'")
    text = checkpoint.body()
    note = SignedNote(text, (sign_note(text, signer),))
    return SignedCheckpoint(checkpoint, note)


def checkpoint_path(directory: Path, size: int) -> Path:
    """Where the checkpoint of ``size`` lives: ``<directory>/<size>.note``."""
    return directory / f"{size}{CHECKPOINT_SUFFIX}"


def write_checkpoint(signed: SignedCheckpoint, directory: Path) -> Path:
    """Write (or extend with new signature lines) the checkpoint file for its size.

    Raises
    ------
    VerificationError
        If a checkpoint with the same size but a different body already exists.
    """
    path = checkpoint_path(directory, signed.checkpoint.size)
    if path.exists():
        existing = read_checkpoint(path)
        if existing.note.text != signed.note.text:
            raise VerificationError(
                f"{path}: a different checkpoint of size {signed.checkpoint.size} exists"
            )
        note = existing.note
        for signature in signed.note.signatures:
            note = note.with_signature(signature)
        signed = SignedCheckpoint(existing.checkpoint, note)
    atomic_write(path, signed.encode())
    return path


def read_checkpoint(path: Path) -> SignedCheckpoint:
    """Read and parse one checkpoint file (signatures are not verified).

    Raises
    ------
    VerificationError
        If the file is not a well-formed checkpoint (the message names the file).
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise VerificationError(f"{path.name}: cannot read ({error.strerror})") from error
    try:
        return SignedCheckpoint.from_bytes(data)
    except VerificationError as error:
        raise VerificationError(f"{path.name}: {error}") from error


def checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory`` ordered by the size their name states."""
    found = []
    for path in directory.glob(f"*{CHECKPOINT_SUFFIX}"):
        stem = path.name[: -len(CHECKPOINT_SUFFIX)]
        if _SIZE.fullmatch(stem):
            found.append((int(stem), path))
    return [path for _, path in sorted(found)]


def last_cosigned_size(directory: Path, cosigner: VerifierKey) -> int | None:
    """The largest checkpoint size in ``directory`` carrying a valid cosignature by ``cosigner``.

    The coordinator proves consistency to a site from this size (None: nothing cosigned yet).
    """
    for path in reversed(checkpoint_files(directory) if directory.is_dir() else []):
        note = read_checkpoint(path).note
        for line in cosignatures_by(note, cosigner):
            try:
                verify_cosignature(note, line, cosigner)
            except VerificationError:
                continue
            return int(path.name.removesuffix(CHECKPOINT_SUFFIX))
    return None


def add_cosignature(
    directory: Path, size: int, signature: NoteSignature, cosigner: VerifierKey
) -> SignedCheckpoint:
    """Verify a site's cosignature of the checkpoint of ``size`` and store it in the file."""
    path = checkpoint_path(directory, size)
    signed = read_checkpoint(path).add_cosignature(signature, cosigner)
    atomic_write(path, signed.encode())
    return signed
