"""Checkpoints as C2SP signed notes: exact format, strict parsing, signatures and cosignatures."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.audit import AuditSigner, Checkpoint, SignedCheckpoint, add_cosignature
from fedtwin.audit.checkpoint import (
    checkpoint_files,
    last_cosigned_size,
    read_checkpoint,
    sign_checkpoint,
    write_checkpoint,
)
from fedtwin.audit.note import (
    NoteSignature,
    SignedNote,
    cosign_note,
    parse_note,
    verify_cosignature,
)
from fedtwin.errors import VerificationError

ROOT = bytes(range(32))


def test_checkpoint_note_has_the_c2sp_layout(signers: dict[str, AuditSigner]) -> None:
    signed = sign_checkpoint(
        Checkpoint("fedtwin/run-1/coordinator", 42, ROOT), signers["coordinator"]
    )
    text = signed.encode().decode()
    body, signature_line = text.split("\n\n")
    assert body.split("\n") == ["fedtwin/run-1/coordinator", "42", base64.b64encode(ROOT).decode()]
    assert signature_line.startswith("\u2014 coordinator ") and signature_line.endswith("\n")
    blob = base64.b64decode(signature_line.split(" ")[2])
    assert blob[:4] == signers["coordinator"].verifier_key.key_id and len(blob) == 68
    assert SignedCheckpoint.from_bytes(signed.encode()) == signed
    signed.verify(signers["coordinator"].verifier_key)


@pytest.mark.parametrize(
    "body",
    [
        "origin\n042\n{root}\n",  # leading zero
        "origin\n-1\n{root}\n",
        "origin\n42\n{root}\nextension\n",  # extension lines are not written, so refused
        "origin with space\n42\n{root}\n",
        "origin\n42\nAAAA\n",  # root is not 32 bytes
        "origin\n42\n{root}",  # no final newline
    ],
)
def test_malformed_checkpoint_bodies_are_refused(body: str) -> None:
    with pytest.raises(VerificationError):
        Checkpoint.parse(body.format(root=base64.b64encode(ROOT).decode()))


@given(st.data())
def test_any_changed_byte_of_a_checkpoint_file_is_refused(
    signers: dict[str, AuditSigner], data: st.DataObject
) -> None:
    signed = sign_checkpoint(
        Checkpoint("fedtwin/run-1/coordinator", 42, ROOT), signers["coordinator"]
    )
    raw = bytearray(signed.encode())
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = (raw[position] + data.draw(st.integers(1, 255))) % 256
    with pytest.raises(VerificationError):
        SignedCheckpoint.from_bytes(bytes(raw)).verify(signers["coordinator"].verifier_key)


def test_signatures_of_unknown_keys_are_ignored_but_a_bad_known_one_fails(
    signers: dict[str, AuditSigner],
) -> None:
    signed = sign_checkpoint(Checkpoint("o", 1, ROOT), signers["coordinator"])
    other = sign_checkpoint(Checkpoint("o", 1, ROOT), signers["intruder"])
    both = SignedCheckpoint(signed.checkpoint, signed.note.with_signature(other.note.signatures[0]))
    both.verify(signers["coordinator"].verifier_key)
    with pytest.raises(VerificationError, match="no signature by site-a"):
        both.verify(signers["site-a"].verifier_key)
    original = signed.note.signatures[0]
    flipped = bytes([original.signature[0] ^ 1]) + original.signature[1:]
    forged = SignedCheckpoint(
        signed.checkpoint,
        SignedNote(signed.note.text, (NoteSignature(original.name, original.key_id, flipped),)),
    )
    with pytest.raises(VerificationError, match="does not verify"):
        SignedCheckpoint.from_bytes(forged.encode()).verify(signers["coordinator"].verifier_key)


def test_cosignature_is_timestamped_and_bound_to_the_checkpoint(
    signers: dict[str, AuditSigner],
) -> None:
    signed = sign_checkpoint(Checkpoint("o", 5, ROOT), signers["coordinator"])
    line = cosign_note(signed.note.text, signers["site-a"], timestamp=1_740_816_000)
    assert line.key_id == signers["site-a"].verifier_key.cosigner_key_id
    note = signed.note.with_signature(line)
    assert verify_cosignature(note, line, signers["site-a"].verifier_key) == 1_740_816_000
    other = sign_checkpoint(Checkpoint("o", 5, bytes(32)), signers["coordinator"])
    moved = other.note.with_signature(line)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignature(moved, line, signers["site-a"].verifier_key)
    with pytest.raises(VerificationError, match="not a cosignature by site-b"):
        verify_cosignature(note, line, signers["site-b"].verifier_key)


def test_note_round_trips_byte_for_byte(signers: dict[str, AuditSigner]) -> None:
    signed = sign_checkpoint(Checkpoint("o", 3, ROOT), signers["coordinator"])
    cosigned = signed.note.with_signature(cosign_note(signed.note.text, signers["site-a"], 7))
    data = cosigned.encode().encode()
    assert parse_note(data).encode().encode() == data


def test_checkpoint_files_never_hold_two_views_of_one_size(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    signed = sign_checkpoint(Checkpoint("o", 3, ROOT), signers["coordinator"])
    path = write_checkpoint(signed, tmp_path)
    assert path.name == "3.note"
    assert write_checkpoint(signed, tmp_path) == path
    other = sign_checkpoint(Checkpoint("o", 3, bytes(32)), signers["coordinator"])
    with pytest.raises(VerificationError, match="different checkpoint of size 3"):
        write_checkpoint(other, tmp_path)
    write_checkpoint(sign_checkpoint(Checkpoint("o", 10, ROOT), signers["coordinator"]), tmp_path)
    assert [p.name for p in checkpoint_files(tmp_path)] == ["3.note", "10.note"]


def test_only_a_verifying_cosignature_is_stored(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    signed = sign_checkpoint(Checkpoint("o", 3, ROOT), signers["coordinator"])
    write_checkpoint(signed, tmp_path)
    line = cosign_note(signed.note.text, signers["site-a"], 99)
    with pytest.raises(VerificationError):
        add_cosignature(tmp_path, 3, line, signers["site-b"].verifier_key)
    add_cosignature(tmp_path, 3, line, signers["site-a"].verifier_key)
    stored = read_checkpoint(tmp_path / "3.note")
    assert stored.note.signatures == (*signed.note.signatures, line)


def test_a_cosignature_travels_as_one_line_and_the_newest_cosigned_size_is_found(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    site_a, site_b = signers["site-a"].verifier_key, signers["site-b"].verifier_key
    for size in (3, 7):
        write_checkpoint(
            sign_checkpoint(Checkpoint("o", size, ROOT), signers["coordinator"]), tmp_path
        )
    assert last_cosigned_size(tmp_path, site_a) is None
    text = read_checkpoint(tmp_path / "3.note").note.text
    line = cosign_note(text, signers["site-a"], 5).line()
    add_cosignature(tmp_path, 3, NoteSignature.from_line(line), site_a)
    assert NoteSignature.from_line(line).line() == line
    assert last_cosigned_size(tmp_path, site_a) == 3
    assert last_cosigned_size(tmp_path, site_b) is None
    with pytest.raises(VerificationError, match="malformed signature line"):
        NoteSignature.from_line("— site-a not base64!")
