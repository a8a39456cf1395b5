"""A run directory is audited as a whole: every log, every cosignature, every cosigned view."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from fedtwin.audit import AuditSigner, Checkpoint, audit_run
from fedtwin.audit.checkpoint import sign_checkpoint, write_checkpoint
from fedtwin.audit.merkle import root_of
from fedtwin.errors import ConfigError

Lines = Callable[[Path], list[bytes]]


def _leaf(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def test_every_log_of_the_run_verifies_and_events_are_merged_in_time_order(run: Any) -> None:
    audit = audit_run(run.run_dir)
    assert [(log.party, log.verdict) for log in audit.logs] == [
        ("coordinator", "intact"),
        ("site-a", "intact"),
        ("site-b", "intact"),
    ]
    assert audit.all_intact
    coordinator = audit.logs[0].report
    assert coordinator is not None and coordinator.cosigned == {"site-a": 4, "site-b": 4}
    events = audit.events()
    assert len(events) == 22 + 17 + 16
    assert [e.time for e in events] == sorted(e.time for e in events)


def test_a_coordinator_that_rewrites_and_resigns_everything_is_exposed_by_the_sites(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    records = [json.loads(line) for line in lines_of(run.log("coordinator"))]
    records[8]["num_examples"] = 7
    lines: list[bytes] = []
    for seq, record in enumerate(records):
        record.update(seq=seq, prev=_leaf(lines[-1]).hex() if lines else None)
        lines.append(rfc8785.dumps(record))
    run.log("coordinator").write_bytes(b"".join(line + b"\n" for line in lines))
    directory = run.checkpoints("coordinator")
    for note in directory.iterdir():
        note.unlink()
    head = Checkpoint("fedtwin/run-0001/coordinator", 22, root_of([_leaf(ln) for ln in lines]))
    write_checkpoint(sign_checkpoint(head, signers["coordinator"]), directory)

    audit = audit_run(run.run_dir)
    coordinator = audit.logs[0]
    assert coordinator.verdict == "tampered"
    assert "split view: site-a cosigned size 12" in coordinator.summary()
    assert [log.verdict for log in audit.logs[1:]] == ["intact", "intact"]
    assert not any(e.actor == "coordinator" for e in audit.events())


def test_a_log_without_its_public_key_is_unverifiable(run: Any) -> None:
    run.layout.key_path("site-b").unlink()
    audit = audit_run(run.run_dir)
    site_b = audit.logs[2]
    assert site_b.verdict == "unverifiable" and not site_b.trusted
    assert "no usable public key" in site_b.summary()
    assert not audit.all_intact


def test_a_folder_without_logs_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \*\.audit\.jsonl"):
        audit_run(tmp_path)
