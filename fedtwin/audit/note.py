r"""C2SP signed notes (c2sp.org/signed-note) and timestamped cosignatures (tlog-cosignature).

A note is UTF-8 text ending in a newline, a blank line, then one or more signature lines
``— <key name> <base64(4-byte key id || signature)>``. Invariants:

* :func:`parse_note` accepts only well-formed notes (valid UTF-8, no control characters but
  newline, at least one and at most :data:`MAX_SIGNATURES` signature lines) and
  :meth:`SignedNote.encode` gives back the exact bytes it parsed;
* verification follows the spec: signatures whose (name, key id) does not match the trusted key
  are ignored, a matching signature must verify, and a note with no verified signature from the
  key is rejected;
* a cosignature (type ``0x04``) signs ``cosignature/v1\\ntime <t>\\n`` followed by the note
  text, and carries the 8-byte big-endian timestamp before the 64-byte Ed25519 signature.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from fedtwin.audit.keys import SIGNATURE_SIZE, AuditSigner, VerifierKey
from fedtwin.errors import VerificationError

MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec asks verifiers to accept at least 16)."""
EM_DASH = "\u2014"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SIGNATURE_LINE = re.compile(r"\u2014 ([^\s+]+) ([A-Za-z0-9+/=]+)")
_TIMESTAMP_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes
    """What follows the key id: an Ed25519 signature, or timestamp and signature (cosign)."""

    def line(self) -> str:
        """The signature line, newline included."""
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{EM_DASH} {self.name} {blob}\n"

    @classmethod
    def from_line(cls, line: str) -> NoteSignature:
        """Parse one signature line (as :meth:`line` writes it; the newline is optional).

        Raises
        ------
        VerificationError
            If the line is not a well-formed signature line.
        """
        match = _SIGNATURE_LINE.fullmatch(line.removesuffix("\n"))
        if not match:
            raise VerificationError(f"malformed signature line {line[:60]!r}")
        try:
            blob = base64.b64decode(match.group(2), validate=True)
        except binascii.Error as error:
            raise VerificationError("signature is not base64") from error
        if base64.b64encode(blob).decode() != match.group(2):
            raise VerificationError("signature is not canonical base64")
        if len(blob) < 5:
            raise VerificationError("signature is too short")
        return cls(match.group(1), blob[:4], blob[4:])


@dataclass(frozen=True)
class SignedNote:
    """A note text and its signatures, in file order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> str:
        """The note as it is written to disk."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signature(self, signature: NoteSignature) -> SignedNote:
        """The note with one more signature line (an identical line is not repeated)."""
        if signature in self.signatures:
            return self
        if len(self.signatures) >= MAX_SIGNATURES:
            raise VerificationError(f"a note carries at most {MAX_SIGNATURES} signatures")
        return SignedNote(self.text, (*self.signatures, signature))


def parse_note(data: bytes) -> SignedNote:
    """Parse a signed note, strictly.

    Raises
    ------
    VerificationError
        If the bytes are not a well-formed signed note.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise VerificationError("note is not valid UTF-8") from error
    if _CONTROL.search(text):
        raise VerificationError("note contains a control character")
    if not text.endswith("\n"):
        raise VerificationError("note does not end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise VerificationError("note has no blank line before its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    lines = block.split("\n")[:-1]
    if not lines:
        raise VerificationError("note has no signature")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError(f"note has more than {MAX_SIGNATURES} signatures")
    return SignedNote(body, tuple(NoteSignature.from_line(line) for line in lines))


def sign_note(text: str, signer: AuditSigner) -> NoteSignature:
    """An Ed25519 note signature (type ``0x01``) of ``text`` by ``signer``."""
    key = signer.verifier_key
    return NoteSignature(key.name, key.key_id, signer.sign(text.encode("utf-8")))


def verify_note(note: SignedNote, key: VerifierKey) -> None:
    """Check that ``key`` signed ``note`` (type ``0x01``); other keys' lines are ignored.

    Raises
    ------
    VerificationError
        If no line is from ``key``, or a line from ``key`` does not verify.
    """
    mine = [s for s in note.signatures if s.name == key.name and s.key_id == key.key_id]
    if not mine:
        present = ", ".join(sorted({s.name for s in note.signatures}))
        raise VerificationError(
            f"no signature by {key.name} (key id {key.key_id.hex()}); signed by {present}"
        )
    message = note.text.encode("utf-8")
    for signature in mine:
        if not key.verifies(message, signature.signature):
            raise VerificationError(f"signature by {key.name} does not verify")


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def cosign_note(text: str, signer: AuditSigner, timestamp: int) -> NoteSignature:
    """A timestamped Ed25519 cosignature (type ``0x04``) of a checkpoint text."""
    if not 0 <= timestamp <= _TIMESTAMP_LIMIT:
        raise ValueError("cosignature timestamp must be between 0 and 2**63 - 1")
    key = signer.verifier_key
    signature = signer.sign(_cosigned_message(text, timestamp))
    return NoteSignature(key.name, key.cosigner_key_id, timestamp.to_bytes(8, "big") + signature)


def cosignatures_by(note: SignedNote, key: VerifierKey) -> list[NoteSignature]:
    """The note's signature lines that claim to be cosignatures by ``key``."""
    return [s for s in note.signatures if s.name == key.name and s.key_id == key.cosigner_key_id]


def verify_cosignature(note: SignedNote, signature: NoteSignature, key: VerifierKey) -> int:
    """Check one cosignature line by ``key`` over ``note``; return its timestamp.

    Raises
    ------
    VerificationError
        If the line is not ``key``'s or does not verify.
    """
    if signature.name != key.name or signature.key_id != key.cosigner_key_id:
        raise VerificationError(f"not a cosignature by {key.name}")
    if len(signature.signature) != 8 + SIGNATURE_SIZE:
        raise VerificationError(f"cosignature by {key.name} has the wrong length")
    timestamp = int.from_bytes(signature.signature[:8], "big")
    if timestamp > _TIMESTAMP_LIMIT:
        raise VerificationError(f"cosignature by {key.name} has an invalid timestamp")
    if not key.verifies(_cosigned_message(note.text, timestamp), signature.signature[8:]):
        raise VerificationError(f"cosignature by {key.name} does not verify")
    return timestamp
