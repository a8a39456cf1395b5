"""Supervision with real processes: a parent that spawns a child, as Flower's do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedtwin.deploy import ManagedProcess, ProcessState
from fedtwin.errors import ConfigError

# Writes its child's pid to argv[1], then sleeps; the child sleeps too.
PARENT = (
    "import subprocess, sys, time; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "open(sys.argv[1], 'w').write(str(c.pid)); time.sleep(120)"
)
# Starts a child and exits at once, leaving the child in its process group.
ORPHANING = (
    "import subprocess, sys; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "open(sys.argv[1], 'w').write(str(c.pid))"
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def _start(process: ManagedProcess, code: str, child_file: Path) -> int:
    return process.start(
        [sys.executable, "-c", code, str(child_file)],
        dict(os.environ),
        cwd=child_file.parent,
    )


def test_stop_terminates_the_process_and_everything_it_spawned(tmp_path: Path) -> None:
    process = ManagedProcess("parent", tmp_path / "state")
    pid = _start(process, PARENT, tmp_path / "child.pid")
    child = _wait_for(tmp_path / "child.pid")
    try:
        assert process.status().state is ProcessState.RUNNING
        assert process.status().pid == pid
        assert process.stop(grace_s=5)
        assert not _alive(pid) and not _alive(child)
        assert process.status().state is ProcessState.STOPPED
        assert not process.pid_path.exists()
    finally:
        for leftover in (pid, child):
            if _alive(leftover):
                os.kill(leftover, 9)


def test_status_and_stop_work_from_another_invocation(tmp_path: Path) -> None:
    starter = ManagedProcess("parent", tmp_path / "state")
    pid = _start(starter, PARENT, tmp_path / "child.pid")
    child = _wait_for(tmp_path / "child.pid")
    try:
        other = ManagedProcess("parent", tmp_path / "state")
        assert other.status().pid == pid
        assert other.stop(grace_s=5)
        starter.exit_code()  # reap our own child
        assert not _alive(child)
    finally:
        for leftover in (pid, child):
            if _alive(leftover):
                os.kill(leftover, 9)


def test_a_running_name_cannot_be_started_twice(tmp_path: Path) -> None:
    process = ManagedProcess("parent", tmp_path / "state")
    _start(process, PARENT, tmp_path / "child.pid")
    _wait_for(tmp_path / "child.pid")
    try:
        with pytest.raises(ConfigError, match="already running"):
            _start(process, PARENT, tmp_path / "other.pid")
    finally:
        process.stop(grace_s=5)


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        process = ManagedProcess("superlink", tmp_path / "state")
        process.pid_path.parent.mkdir(parents=True)
        # Same pid, another start time: the pid was reused.
        process.pid_path.write_text(json.dumps({"pid": stranger.pid, "start_ticks": 1}))
        assert process.status().state is ProcessState.EXITED
        assert process.stop() is False
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_children_left_by_an_exited_leader_are_stopped(tmp_path: Path) -> None:
    process = ManagedProcess("orphaning", tmp_path / "state")
    leader = _start(process, ORPHANING, tmp_path / "child.pid")
    child = _wait_for(tmp_path / "child.pid")
    try:
        deadline = time.monotonic() + 30
        while process.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(child)
        assert process.stop(grace_s=5)
        assert not _alive(child)
    finally:
        for leftover in (leader, child):
            if _alive(leftover):
                os.kill(leftover, 9)


def test_output_goes_to_the_named_log(tmp_path: Path) -> None:
    process = ManagedProcess("echo", tmp_path / "state")
    process.start(
        [sys.executable, "-c", "print('hello from the process')"],
        dict(os.environ),
        cwd=tmp_path,
    )
    assert process.wait_until(lambda: "hello" in process.log_since(0), 30)
    assert process.tail(1) == ["hello from the process"]
