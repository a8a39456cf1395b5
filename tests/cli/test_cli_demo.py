"""The ``fedtwin`` command as a user runs it: a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [*FEDTWIN, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--rounds", "0"], "--rounds"),
        (["--epsilon-cap", "-1"], "--epsilon-cap"),
        (["--patients-per-site", "5"], "--patients-per-site"),
        (["--rounds", "many"], "--rounds"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flag_exits_2_with_one_clear_line(args: list[str], names: str, tmp_path: Path) -> None:
    result = _run("demo", *args, "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fedtwin: error: ")
    assert names in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tiny_demo_completes_and_writes_its_run_directory(tmp_path: Path) -> None:
    result = _run(
        "demo",
        "--rounds", "2",
        "--patients-per-site", "40",
        "--days", "0.5",
        "--out", str(tmp_path / "runs"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    [run_dir] = [p for p in (tmp_path / "runs").iterdir()]
    assert run_dir.name.startswith("demo-")
    for name in (
        "model.safetensors",
        "model_card.json",
        "metrics.json",
        "run_config.json",
        "report.html",
        "audit/coordinator.audit.jsonl",
        "audit/site-adult.audit.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    assert "coordinator intact" in result.stdout
    assert "tampered" not in result.stdout
    card = json.loads((run_dir / "model_card.json").read_text())
    assert len(card["contributors"]) == 3
    assert "held-out patients after round 2" in result.stdout
    assert str(run_dir) in result.stdout.replace("\n", "")
