"""The writer: canonical chained lines, durable appends, crash recovery, refusing bad states."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import rfc8785

from fedtwin.audit import (
    AuditLog,
    AuditSigner,
    LogRecovered,
    SiteJoined,
    UpdateSent,
    read_checkpoint,
)
from fedtwin.errors import ConfigError, VerificationError

Clock = Callable[[], datetime]


def _join(log: AuditLog, site: str = "site-a") -> int:
    return log.record(
        SiteJoined, run_id="run-1", site_id=site, identity_fingerprint="sha256:" + "0" * 64
    )


def _independent_root(lines: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 written out again, over the raw line bytes."""
    if len(lines) == 1:
        return hashlib.sha256(b"\x00" + lines[0]).digest()
    k = 1 << ((len(lines) - 1).bit_length() - 1)
    return hashlib.sha256(
        b"\x01" + _independent_root(lines[:k]) + _independent_root(lines[k:])
    ).digest()


def test_lines_are_rfc8785_json_chained_by_leaf_hash(
    tmp_path: Path, clock: Clock, lines_of: Callable[[Path], list[bytes]]
) -> None:
    with AuditLog.open(tmp_path, "coordinator", clock=clock) as log:
        assert [_join(log, s) for s in ("site-a", "site-b", "site-c")] == [0, 1, 2]
    lines = lines_of(tmp_path / "coordinator.audit.jsonl")
    records = [json.loads(line) for line in lines]
    assert [rfc8785.dumps(r) for r in records] == lines
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert records[0]["prev"] is None
    for before, after in zip(lines, records[1:], strict=False):
        assert after["prev"] == hashlib.sha256(b"\x00" + before).hexdigest()
    assert records[0]["time"] == "2025-03-01T08:00:01Z"
    assert {r["actor"] for r in records} == {"coordinator"}


def test_checkpoint_root_is_the_rfc9162_root_of_the_line_bytes(
    tmp_path: Path,
    clock: Clock,
    signers: dict[str, AuditSigner],
    lines_of: Callable[[Path], list[bytes]],
) -> None:
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        for n in range(13):
            log.record(
                UpdateSent,
                run_id="run-1",
                round=1 + n // 5,
                site_id="site-a",
                sha256=f"sha256:{n:064x}",
                num_examples=n,
            )
        signed = log.checkpoint(signers["site-a"], "fedtwin/run-1/site-a")
    lines = lines_of(tmp_path / "site-a.audit.jsonl")
    stored = read_checkpoint(tmp_path / "site-a.checkpoints" / "13.note")
    assert stored == signed
    assert stored.checkpoint.root == _independent_root(lines)
    assert stored.note.text == (
        f"fedtwin/run-1/site-a\n13\n{base64.b64encode(_independent_root(lines)).decode()}\n"
    )


def test_a_batch_writes_at_once_and_syncs_once(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr("fedtwin.audit.log.os.fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        _join(log)
        assert len(syncs) == 1
        with log.batch():
            for _ in range(50):
                _join(log)
            assert len(syncs) == 1
            assert (tmp_path / "site-a.audit.jsonl").read_bytes().count(b"\n") == 51
        assert len(syncs) == 2


def test_a_torn_last_line_is_cut_off_and_recorded_on_reopen(
    tmp_path: Path, clock: Clock, lines_of: Callable[[Path], list[bytes]]
) -> None:
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        _join(log)
        _join(log)
    path = tmp_path / "site-a.audit.jsonl"
    torn = b'{"actor":"site-a","seq":2,"ti'
    with path.open("ab") as handle:
        handle.write(torn)
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        assert log.size == 3
    recovered = json.loads(lines_of(path)[2])
    assert recovered["type"] == LogRecovered.model_fields["type"].default
    assert recovered["discarded_bytes"] == len(torn)
    assert recovered["discarded_sha256"] == "sha256:" + hashlib.sha256(torn).hexdigest()
    assert recovered["run_id"] == "run-1"
    assert path.read_bytes().endswith(b"\n")


def test_a_second_writer_is_refused(tmp_path: Path, clock: Clock) -> None:
    with (
        AuditLog.open(tmp_path, "site-a", clock=clock),
        pytest.raises(ConfigError, match="another process"),
    ):
        AuditLog.open(tmp_path, "site-a", clock=clock)


def test_a_tampered_log_is_never_extended(
    tmp_path: Path, clock: Clock, lines_of: Callable[[Path], list[bytes]]
) -> None:
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        for _ in range(4):
            _join(log)
    path = tmp_path / "site-a.audit.jsonl"
    lines = lines_of(path)
    path.write_bytes(b"\n".join([lines[0], lines[2], lines[1], lines[3]]) + b"\n")
    with pytest.raises(VerificationError, match="entry 1: reordered"):
        AuditLog.open(tmp_path, "site-a", clock=clock)
    assert lines_of(path) == [lines[0], lines[2], lines[1], lines[3]]


def test_a_log_rewritten_under_its_checkpoint_is_never_extended(
    tmp_path: Path, clock: Clock, signers: dict[str, AuditSigner]
) -> None:
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        for _ in range(3):
            _join(log)
        log.checkpoint(signers["site-a"], "fedtwin/run-1/site-a")
    path = tmp_path / "site-a.audit.jsonl"
    path.write_bytes(b"")  # an emptied log is self-consistent, but its checkpoint says 3
    with pytest.raises(VerificationError, match="checkpoint of size 3"):
        AuditLog.open(tmp_path, "site-a", clock=clock)


def test_events_of_another_party_and_bad_party_ids_are_refused(
    tmp_path: Path, clock: Clock
) -> None:
    with pytest.raises(ConfigError, match="party id"):
        AuditLog.open(tmp_path, "../etc", clock=clock)
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        event = SiteJoined(
            actor="site-b",
            time=clock(),
            run_id="run-1",
            site_id="site-b",
            identity_fingerprint="sha256:" + "0" * 64,
        )
        with pytest.raises(ValueError, match="actor is site-a"):
            log.append(event)
        assert log.size == 0


def test_one_log_keeps_one_origin(
    tmp_path: Path, clock: Clock, signers: dict[str, AuditSigner]
) -> None:
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        _join(log)
        log.checkpoint(signers["site-a"], "fedtwin/run-1/site-a")
    with AuditLog.open(tmp_path, "site-a", clock=clock) as log:
        _join(log)
        with pytest.raises(ValueError, match="origin"):
            log.checkpoint(signers["site-a"], "fedtwin/run-2/site-a")
        log.checkpoint(signers["site-a"], "fedtwin/run-1/site-a")
        assert log.size == 2
