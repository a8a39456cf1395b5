"""Every attack on a real run's logs is caught, naming the first bad entry and why.

The run (conftest ``run``) has a coordinator log of 22 entries with checkpoints at sizes 6, 12,
16, 20 and 22, the first four cosigned by both sites.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.audit import AuditSigner, Checkpoint, Verdict, verify_log
from fedtwin.audit.checkpoint import sign_checkpoint, write_checkpoint
from fedtwin.audit.merkle import root_of
from fedtwin.errors import ConfigError, IngestError

Lines = Callable[[Path], list[bytes]]
ORIGIN = "fedtwin/run-0001/coordinator"


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _leaf(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def _rechain(records: list[dict[str, Any]]) -> list[bytes]:
    """What a careful forger does: renumber and relink every entry after an edit."""
    lines: list[bytes] = []
    for seq, record in enumerate(records):
        record = {**record, "seq": seq, "prev": _leaf(lines[-1]).hex() if lines else None}
        lines.append(rfc8785.dumps(record))
    return lines


def _verify(
    run: Any, signers: dict[str, AuditSigner], party: str = "coordinator", **kw: Any
) -> Any:
    return verify_log(run.log(party), signers[party].verifier_key, **kw)


def test_the_untouched_run_is_intact_with_its_cosignatures(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    cosigners = [signers["site-a"].verifier_key, signers["site-b"].verifier_key]
    report = _verify(run, signers, cosigner_keys=cosigners)
    assert report.verdict is Verdict.INTACT, report.summary()
    assert (report.entries, report.attested) == (22, 22)
    assert [c.size for c in report.checkpoints] == [6, 12, 16, 20, 22]
    assert report.cosigned == {"site-a": 4, "site-b": 4}
    assert len(report.events) == 22
    for site in ("site-a", "site-b"):
        assert _verify(run, signers, site).verdict is Verdict.INTACT


@pytest.mark.parametrize("index", [0, 5, 13, 20])
def test_one_edited_byte_names_its_entry(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines, index: int
) -> None:
    lines = lines_of(run.log("coordinator"))
    position = lines[index].index(b'"time":"2025-') + len(b'"time":"2025-')
    edited = bytearray(lines[index])
    edited[position + 1] = ord("9") if edited[position + 1] != ord("9") else ord("8")
    lines[index] = bytes(edited)
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert report.verdict is Verdict.TAMPERED
    assert report.failure.index == index, report.summary()
    assert report.failure.reason.startswith("altered")
    assert report.summary().startswith(f"tampered: entry {index}: altered")


def test_an_edit_to_the_last_entry_is_caught_by_the_signed_root(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    assert b'"type":"checkpoint_cosigned"' in lines[21]
    lines[21] = lines[21].replace(b'"cosigner":"site-b"', b'"cosigner":"site-a"')
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (6, 21)
    assert "differs from checkpoint 22.note" in report.failure.reason


def test_an_edit_that_breaks_the_json_names_its_entry(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    lines[9] = lines[9].replace(b'":', b'";', 1)
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (2, 9)
    assert "not valid JSON" in report.failure.reason


def test_an_edited_hash_link_names_the_entry_that_holds_it(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    record = json.loads(lines[10])
    record["prev"] = "0" * 64
    lines[10] = rfc8785.dumps(record)
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert report.failure.index == 10
    assert "both break" in report.failure.reason


def test_an_edited_link_of_the_last_entry_names_the_last_entry(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    record = json.loads(lines[21])
    record["prev"] = "f" * 64
    lines[21] = rfc8785.dumps(record)
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert (report.failure.index, report.failure.reason) == (
        21,
        "altered: its hash link was changed",
    )


def test_an_edit_of_the_entry_before_the_last_names_that_entry(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    lines[20] = lines[20].replace(b'"cosigner":"site-a"', b'"cosigner":"site-b"')
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert report.failure.index == 20
    assert report.failure.reason.startswith("altered: its hash differs from the one entry 21")


def test_a_deleted_entry_is_named_as_removed(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    del lines[5]
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (3, 5)
    assert report.failure.reason.startswith("removed")


def test_swapped_entries_are_named_as_reordered(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    lines[4], lines[9] = lines[9], lines[4]
    _write(run.log("coordinator"), lines)
    report = _verify(run, signers)
    assert report.failure.index == 4
    assert report.failure.reason == "reordered: position 4 holds entry 9; entry 4 is at position 9"


def test_an_inserted_entry_is_named_even_when_it_links_correctly(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    forged = json.loads(lines[7])
    forged.update(seq=7, prev=_leaf(lines[6]).hex(), num_examples=1)
    _write(run.log("coordinator"), [*lines[:7], rfc8785.dumps(forged), *lines[7:]])
    report = _verify(run, signers)
    assert report.failure.index == 7
    assert report.failure.reason == "inserted: the next entry links past it"


def test_a_copied_entry_is_named_as_inserted(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    _write(run.log("coordinator"), [*lines[:12], lines[3], *lines[12:]])
    report = _verify(run, signers)
    assert report.failure.index == 12
    assert report.failure.reason == "inserted: position 12 repeats entry 3"


def test_a_truncated_tail_names_the_first_missing_entry(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    _write(run.log("coordinator"), lines[:19])
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (6, 19)
    assert report.failure.reason.startswith("truncated")


def test_a_forged_entry_appended_after_the_last_checkpoint_is_unattested(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    forged = json.loads(lines[2])
    forged.update(seq=22, prev=_leaf(lines[21]).hex(), site_id="site-z")
    _write(run.log("coordinator"), [*lines, rfc8785.dumps(forged)])
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (8, 22)
    assert report.failure.reason.startswith("unattested")


def test_a_rechained_rewrite_is_caught_by_the_signed_root(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    records = [json.loads(line) for line in lines_of(run.log("coordinator"))]
    records[14]["num_examples"] = 1
    _write(run.log("coordinator"), _rechain(records))
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (6, 15)
    assert "entries 12..15 were rewritten" in report.failure.reason


def test_a_replaced_checkpoint_signature_is_caught(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    path = run.checkpoints("coordinator") / "12.note"
    text = path.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("\u2014 coordinator "))
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[10] ^= 0x40
    path.write_text(text.replace(line, f"\u2014 coordinator {base64.b64encode(blob).decode()}"))
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.checkpoint) == (4, "12.note")
    assert (
        report.summary() == "tampered: checkpoint 12.note: signature by coordinator does not verify"
    )


def test_a_checkpoint_signed_with_another_key_is_caught(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    impostor = AuditSigner.from_seed("coordinator", bytes([99]) * 32)
    lines = lines_of(run.log("coordinator"))
    forged = sign_checkpoint(Checkpoint(ORIGIN, 22, root_of([_leaf(ln) for ln in lines])), impostor)
    (run.checkpoints("coordinator") / "22.note").write_bytes(forged.encode())
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.checkpoint) == (4, "22.note")
    assert "no signature by coordinator" in report.failure.reason


def test_a_checkpoint_inconsistent_with_a_cosigned_one_is_a_split_view(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    records = [json.loads(line) for line in lines_of(run.log("coordinator"))]
    records[8]["num_examples"] = 7  # another history from entry 8 on
    forked = _rechain(records)
    _write(run.log("coordinator"), forked)
    for size in (16, 20, 22):  # re-signed with the real key; 6 and 12 keep their cosignatures
        (run.checkpoints("coordinator") / f"{size}.note").unlink()
        head = Checkpoint(ORIGIN, size, root_of([_leaf(ln) for ln in forked[:size]]))
        write_checkpoint(
            sign_checkpoint(head, signers["coordinator"]), run.checkpoints("coordinator")
        )
    cosigners = [signers["site-a"].verifier_key, signers["site-b"].verifier_key]
    report = _verify(run, signers, cosigner_keys=cosigners)
    assert (report.failure.step, report.failure.index) == (6, 11)
    assert report.failure.reason.endswith("cosigned by site-a, site-b: split view")


def test_a_cosignature_moved_to_another_checkpoint_is_caught(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    directory = run.checkpoints("coordinator")
    donor = [ln for ln in (directory / "6.note").read_text().splitlines() if "site-a" in ln]
    target = directory / "20.note"
    kept = [ln for ln in target.read_text().splitlines() if "site-a" not in ln]
    target.write_text("\n".join([*kept, *donor]) + "\n")
    report = _verify(run, signers, cosigner_keys=[signers["site-a"].verifier_key])
    assert (report.failure.step, report.failure.checkpoint) == (5, "20.note")
    assert "cosignature by site-a does not verify" in report.failure.reason


def test_a_required_cosigner_without_any_cosignature_fails(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    report = _verify(run, signers, "site-a", cosigner_keys=[signers["site-b"].verifier_key])
    assert report.failure.step == 5
    assert "no checkpoint carries a cosignature by site-b" in report.failure.reason


def test_a_partial_last_line_is_a_crashed_write_not_tampering(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    with run.log("coordinator").open("ab") as handle:
        handle.write(b'{"actor":"coordinator","seq":22,"ti')
    report = _verify(run, signers)
    assert report.verdict is Verdict.CRASHED and report.ok
    assert report.summary().startswith(
        "crashed: partial last line at entry 22 (crashed write, not tampering)"
    )
    assert len(report.events) == 22


def test_a_crash_after_unattested_entries_is_still_a_crash_and_says_so(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    lines = lines_of(run.log("coordinator"))
    extra = json.loads(lines[21])
    extra.update(seq=22, prev=_leaf(lines[21]).hex())
    _write(run.log("coordinator"), [*lines, rfc8785.dumps(extra)])
    with run.log("coordinator").open("ab") as handle:
        handle.write(b'{"act')
    report = _verify(run, signers)
    assert report.verdict is Verdict.CRASHED
    assert "entries 22..22 are not covered by a checkpoint" in report.summary()


def test_cutting_a_checkpointed_line_in_half_is_truncation(
    run: Any, signers: dict[str, AuditSigner]
) -> None:
    path = run.log("coordinator")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    report = _verify(run, signers)
    assert (report.failure.step, report.failure.index) == (6, 21)
    assert "entry 21 is a partial line, yet checkpoint 22.note covers it" in report.failure.reason


def test_an_entry_outside_the_schema_is_named(
    run: Any, signers: dict[str, AuditSigner], lines_of: Lines
) -> None:
    records = [json.loads(line) for line in lines_of(run.log("site-a"))]
    records[3]["patient_id"] = "p-123"  # the writer is made to log a forbidden field
    lines = _rechain(records)
    _write(run.log("site-a"), lines)
    directory = run.checkpoints("site-a")
    for note in directory.iterdir():
        note.unlink()
    head = Checkpoint("fedtwin/run-0001/site-a", len(lines), root_of([_leaf(ln) for ln in lines]))
    write_checkpoint(sign_checkpoint(head, signers["site-a"]), directory)
    report = _verify(run, signers, "site-a")
    assert (report.failure.step, report.failure.index) == (9, 3)
    assert "patient_id" in report.failure.reason


def test_missing_checkpoints_fail_closed(run: Any, signers: dict[str, AuditSigner]) -> None:
    for note in run.checkpoints("site-b").iterdir():
        note.unlink()
    report = _verify(run, signers, "site-b")
    assert report.failure.step == 4
    assert "nothing attests the log" in report.failure.reason


def test_unusable_input_is_not_reported_as_tampering(
    run: Any, signers: dict[str, AuditSigner], tmp_path: Path
) -> None:
    key = signers["coordinator"].verifier_key
    with pytest.raises(IngestError, match="cannot read audit log"):
        verify_log(tmp_path / "nobody.audit.jsonl", key)
    with pytest.raises(ConfigError, match="no such checkpoints folder"):
        verify_log(run.log("coordinator"), key, checkpoints_dir=tmp_path / "missing")


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_any_single_tampering_names_the_entry_it_touched(
    pristine_run: Path, signers: dict[str, AuditSigner], data: st.DataObject
) -> None:
    source = pristine_run / "audit" / "coordinator.audit.jsonl"
    lines = source.read_bytes().split(b"\n")[:-1]
    n = len(lines)
    operation = data.draw(st.sampled_from(["edit", "delete", "swap", "truncate", "copy", "append"]))
    if operation == "edit":
        index = data.draw(st.integers(0, n - 1))
        digits = [i for i, c in enumerate(lines[index]) if chr(c) in "0123456789abcdef"]
        position = data.draw(st.sampled_from(digits))
        new = data.draw(
            st.sampled_from([c for c in b"0123456789abcdef" if c != lines[index][position]])
        )
        edited = bytearray(lines[index])
        edited[position] = new
        lines[index] = bytes(edited)
    elif operation == "delete":
        index = data.draw(st.integers(0, n - 1))
        del lines[index]
    elif operation == "swap":
        index = data.draw(st.integers(0, n - 2))
        other = data.draw(st.integers(index + 1, n - 1))
        lines[index], lines[other] = lines[other], lines[index]
    elif operation == "truncate":
        index = data.draw(st.integers(0, n - 1))
        lines = lines[:index]
    elif operation == "copy":
        index = data.draw(st.integers(0, n))
        source = data.draw(st.integers(0, n - 1))
        lines.insert(index, lines[source])
        if source == index:  # two identical lines side by side: the second is the repeat
            index += 1
    else:
        index = n
        lines.append(lines[-1])
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "coordinator.audit.jsonl"
        _write(log, lines)
        report = verify_log(
            log,
            signers["coordinator"].verifier_key,
            checkpoints_dir=pristine_run / "audit" / "coordinator.checkpoints",
        )
    assert report.verdict is Verdict.TAMPERED
    assert report.failure is not None and report.failure.index == index, (
        operation,
        report.summary(),
    )
