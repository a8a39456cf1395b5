"""A site cosigns the coordinator's checkpoints along one history only."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from fedtwin.audit import AuditLog, AuditSigner, Cosigner, SiteJoined
from fedtwin.audit.note import verify_cosignature
from fedtwin.errors import VerificationError

Clock = Callable[[], datetime]
ORIGIN = "fedtwin/run-1/coordinator"


def _grow(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.record(
            SiteJoined,
            run_id="run-1",
            site_id=f"site-{i}",
            identity_fingerprint="sha256:" + "0" * 64,
        )


def test_consistent_checkpoints_are_cosigned_and_remembered(
    tmp_path: Path, clock: Clock, signers: dict[str, AuditSigner]
) -> None:
    cosigner = Cosigner(tmp_path / "state.json", signers["site-a"], clock)
    key = signers["coordinator"].verifier_key
    with AuditLog.open(tmp_path / "logs", "coordinator", clock=clock) as log:
        _grow(log, 3)
        first = log.checkpoint(signers["coordinator"], ORIGIN)
        line = cosigner.cosign(first, [], key)
        _grow(log, 4)
        second = log.checkpoint(signers["coordinator"], ORIGIN)
        later = cosigner.cosign(second, log.consistency_proof(3), key)
    note = second.note.with_signature(later)
    assert verify_cosignature(note, later, signers["site-a"].verifier_key) > 0
    assert line != later
    remembered = cosigner.last_cosigned(ORIGIN)
    assert remembered is not None and remembered.size == 7
    assert remembered.root == second.checkpoint.root
    assert json.loads((tmp_path / "state.json").read_text())["logs"][ORIGIN]["size"] == 7
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


def test_a_split_view_is_refused_and_not_remembered(
    tmp_path: Path, clock: Clock, signers: dict[str, AuditSigner]
) -> None:
    cosigner = Cosigner(tmp_path / "state.json", signers["site-a"], clock)
    key = signers["coordinator"].verifier_key
    with AuditLog.open(tmp_path / "shown-to-site", "coordinator", clock=clock) as honest:
        _grow(honest, 3)
        cosigner.cosign(honest.checkpoint(signers["coordinator"], ORIGIN), [], key)
    with AuditLog.open(tmp_path / "shown-to-others", "coordinator", clock=clock) as fork:
        _grow(fork, 5)  # a different history under the same origin and key
        forked = fork.checkpoint(signers["coordinator"], ORIGIN)
        proof = fork.consistency_proof(3)
    with pytest.raises(VerificationError, match="split view"):
        cosigner.cosign(forked, proof, key)
    remembered = cosigner.last_cosigned(ORIGIN)
    assert remembered is not None and remembered.size == 3


def test_a_rollback_is_refused(
    tmp_path: Path, clock: Clock, signers: dict[str, AuditSigner]
) -> None:
    cosigner = Cosigner(tmp_path / "state.json", signers["site-a"], clock)
    key = signers["coordinator"].verifier_key
    with AuditLog.open(tmp_path / "logs", "coordinator", clock=clock) as log:
        _grow(log, 2)
        old = log.checkpoint(signers["coordinator"], ORIGIN)
        _grow(log, 2)
        cosigner.cosign(log.checkpoint(signers["coordinator"], ORIGIN), [], key)
    with pytest.raises(VerificationError, match="rollback"):
        cosigner.cosign(old, [], key)


def test_a_checkpoint_signed_by_another_key_is_refused(
    tmp_path: Path, clock: Clock, signers: dict[str, AuditSigner]
) -> None:
    cosigner = Cosigner(tmp_path / "state.json", signers["site-a"], clock)
    with AuditLog.open(tmp_path / "logs", "coordinator", clock=clock) as log:
        _grow(log, 2)
        signed = log.checkpoint(signers["coordinator"], ORIGIN)
        cosigner.cosign(signed, [], signers["coordinator"].verifier_key)
        _grow(log, 1)
        by_intruder = log.checkpoint(signers["intruder"], ORIGIN)
    with pytest.raises(VerificationError, match="no signature by coordinator"):
        cosigner.cosign(
            by_intruder, log.consistency_proof(2, 3), signers["coordinator"].verifier_key
        )
    with pytest.raises(VerificationError, match="another key"):
        cosigner.cosign(by_intruder, [], signers["intruder"].verifier_key)
