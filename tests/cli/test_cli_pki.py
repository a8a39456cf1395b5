"""``fedtwin pki`` as the consortium runs it: a real subprocess, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(
        [*FEDTWIN, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def _private_key_lines(root: Path) -> list[str]:
    """Base64 lines of every private key under ``root``."""
    lines = []
    for path in root.rglob("*"):
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
            lines += [line for line in path.read_text().splitlines() if "-----" not in line]
    return lines


def test_init_enroll_show_print_fingerprints_and_never_a_private_key(tmp_path: Path) -> None:
    init = _run(
        "pki", "init", "--consortium", "Test", "--out", "pki", "--host", "localhost", cwd=tmp_path
    )
    enroll = _run("pki", "enroll-site", "site-a", "--pki", "pki", cwd=tmp_path)
    show = _run("pki", "show", "--pki", "pki", cwd=tmp_path)
    assert (init.returncode, enroll.returncode, show.returncode) == (0, 0, 0), show.stderr
    output = init.stdout + enroll.stdout + show.stdout + show.stderr
    secrets = _private_key_lines(tmp_path / "pki")
    assert len(secrets) >= 5
    assert not any(line in output for line in secrets)
    assert "PRIVATE" not in output
    assert "site-a SuperNode key" in show.stdout and "SHA256:" in show.stdout
    assert "bundle of site-a still here" in show.stdout


def test_show_warns_when_the_tls_certificate_has_under_30_days(tmp_path: Path) -> None:
    _run("pki", "init", "--consortium", "Short", "--out", "pki", "--tls-days", "10", cwd=tmp_path)
    show = _run("pki", "show", "--pki", "pki", cwd=tmp_path)
    assert show.returncode == 0
    assert "warning: coordinator TLS certificate expires in 9 days" in show.stdout


def test_show_fails_on_a_key_others_can_read_and_enrolling_twice_exits_2(
    tmp_path: Path,
) -> None:
    _run("pki", "init", "--consortium", "Exposed", "--out", "pki", cwd=tmp_path)
    (tmp_path / "pki" / "coordinator" / "tls.key").chmod(0o644)
    show = _run("pki", "show", "--pki", "pki", cwd=tmp_path)
    again = _run("pki", "init", "--consortium", "Exposed", "--out", "pki", cwd=tmp_path)
    assert show.returncode == 1
    assert show.stderr.strip().splitlines() == [
        "fedtwin: error: pki/coordinator/tls.key: coordinator TLS key is exposed"
    ]
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr
