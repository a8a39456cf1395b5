"""``fedtwin audit`` as an auditor runs it: a real subprocess, exit codes 0 / 1 / 2, one line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from fedtwin.audit import read_checkpoint
from fedtwin.audit.merkle import leaf_hash, root_of, verify_consistency, verify_inclusion

FEDTWIN = [sys.executable, "-m", "fedtwin.cli", "audit"]
Lines = Callable[[Path], list[bytes]]


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*FEDTWIN, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert lines[0].startswith("fedtwin: error: ")
    return lines[0]


def test_verify_an_intact_log_with_its_cosigners_exits_0(run: Any, tmp_path: Path) -> None:
    keys = run.layout.root / "keys"
    result = _run(
        "verify", run.log("coordinator"),
        "--key", keys / "coordinator.vkey",
        "--cosigner", keys / "site-a.vkey",
        "--cosigner", keys / "site-b.vkey",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("coordinator.audit.jsonl: intact: 22 entries, root ")
    assert "4 cosigned by site-a, 4 cosigned by site-b" in result.stdout


def test_verify_a_tampered_log_exits_1_naming_the_entry(
    run: Any, lines_of: Lines, tmp_path: Path
) -> None:
    lines = lines_of(run.log("site-a"))
    lines[6], lines[7] = lines[7], lines[6]
    run.log("site-a").write_bytes(b"".join(line + b"\n" for line in lines))
    key = (run.layout.root / "keys" / "site-a.vkey").read_text().strip()
    result = _run("verify", run.log("site-a"), "--key", key, cwd=tmp_path)
    assert result.returncode == 1
    assert _one_error_line(result) == (
        "fedtwin: error: site-a.audit.jsonl: tampered: entry 6: reordered: position 6 holds "
        "entry 7; entry 6 is at position 7"
    )


def test_verify_a_crashed_write_exits_0_and_says_so(run: Any, tmp_path: Path) -> None:
    with run.log("site-b").open("ab") as handle:
        handle.write(b'{"actor":"site-b","se')
    result = _run("verify", run.log("site-b"), "--key", run.layout.key_path("site-b"), cwd=tmp_path)
    assert result.returncode == 0
    assert "crashed: partial last line at entry 16 (crashed write, not tampering)" in result.stdout


@pytest.mark.slow
def test_verify_unusable_input_exits_2_with_one_line(run: Any, tmp_path: Path) -> None:
    key = run.layout.key_path("coordinator")
    cases = [
        (["verify", tmp_path / "none.audit.jsonl", "--key", key], "cannot read audit log"),
        (["verify", run.log("coordinator"), "--key", "not-a-key"], "verifier key"),
        (["prove", run.log("coordinator")], "--index"),
    ]  # fmt: skip
    for args, says in cases:
        result = _run(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert says in _one_error_line(result)


def test_root_prints_the_checkpointed_size_and_root(run: Any, tmp_path: Path) -> None:
    result = _run("root", run.log("coordinator"), cwd=tmp_path)
    assert result.returncode == 0
    size, root = result.stdout.split()
    head = read_checkpoint(run.checkpoints("coordinator") / "22.note").checkpoint
    assert (int(size), bytes.fromhex(root)) == (head.size, head.root)


def test_prove_prints_proofs_that_verify_against_the_checkpoints(
    run: Any, lines_of: Lines, tmp_path: Path
) -> None:
    inclusion = json.loads(
        _run("prove", run.log("coordinator"), "--index", "7", cwd=tmp_path).stdout
    )
    lines = lines_of(run.log("coordinator"))
    assert base64.b64decode(inclusion["leafHash"]) == leaf_hash(lines[7])
    head = read_checkpoint(run.checkpoints("coordinator") / "22.note").checkpoint
    proof = [base64.b64decode(p) for p in inclusion["proof"]]
    verify_inclusion(leaf_hash(lines[7]), 7, 22, proof, head.root)
    result = _run("prove", run.log("coordinator"), "--from", "6", "--to", "22", cwd=tmp_path)
    consistency = json.loads(result.stdout)
    old = read_checkpoint(run.checkpoints("coordinator") / "6.note").checkpoint
    proof = [base64.b64decode(p) for p in consistency["proof"]]
    verify_consistency(6, 22, proof, old.root, head.root)
    assert base64.b64decode(consistency["root2"]) == root_of([leaf_hash(ln) for ln in lines])


def test_report_writes_the_page_and_exits_1_if_a_log_is_tampered(run: Any, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = _run("report", run.run_dir, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 logs verified" in result.stdout and out.read_text().startswith("<!DOCTYPE html>")
    run.log("site-a").write_bytes(run.log("site-a").read_bytes().replace(b'"seq":3,', b'"seq":4,'))
    result = _run("report", run.run_dir, "--out", out, cwd=tmp_path)
    assert result.returncode == 1
    assert "logs failing verification: site-a (tampered)" in _one_error_line(result)
    assert "site-a" in out.read_text()


def test_export_fhir_writes_a_valid_bundle_and_refuses_a_tampered_log(
    run: Any, tmp_path: Path
) -> None:
    out = tmp_path / "bundle.json"
    key = run.layout.key_path("site-a")
    result = _run("export-fhir", run.log("site-a"), "--out", out, "--key", key, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bundle = Bundle.model_validate_json(out.read_text())
    assert bundle.entry is not None and len(bundle.entry) == 17
    out.unlink()
    data = run.log("site-a").read_bytes()
    run.log("site-a").write_bytes(
        data.replace(b'"patients_permitted":90', b'"patients_permitted":99', 1)
    )
    result = _run("export-fhir", run.log("site-a"), "--out", out, cwd=tmp_path)
    assert result.returncode == 1
    assert "altered" in _one_error_line(result)
    assert not out.exists()
