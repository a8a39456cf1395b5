"""Long-running processes (SuperLink, SuperNode, warm executor) started and stopped by name.

Invariants:

* each process runs in its own session and process group, so stopping it stops everything it
  spawned (Flower's SuperExec, ServerApp and ClientApp processes) and a terminal's Ctrl-C does
  not reach it;
* its pid and start time live in ``<state>/run/<name>.pid`` (JSON, written atomically) so
  ``stop`` and ``status`` work from another invocation; a pid file whose process is gone, or
  whose pid now belongs to another process (another start time), reads as *stopped* and is
  never signalled;
* ``stop`` sends SIGTERM to the group, waits, then SIGKILL; the pid file is removed only when
  no process of the group is left;
* its output goes to ``<state>/logs/<name>.log`` (appended), never to the caller's terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedtwin.errors import ConfigError, FederationError


class ProcessState(StrEnum):
    """What a named process is doing."""

    RUNNING = "running"
    STOPPED = "stopped"
    EXITED = "exited"


@dataclass(frozen=True)
class ProcessStatus:
    """A named process's state, pid and log file."""

    name: str
    state: ProcessState
    pid: int | None
    log_path: Path


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22).

    With the pid it identifies a process for good: a reused pid has another start time.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            # A zombie has exited; only its parent has not reaped it yet.
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class ManagedProcess:
    """One named, supervised process whose pid file and log live under ``state_dir``.

    Parameters
    ----------
    name : str
        File-name-safe name (``superlink``, ``supernode``, ``warm-executor``).
    state_dir : Path
        Folder holding ``run/<name>.pid`` and ``logs/<name>.log``.
    """

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.pid_path = state_dir / "run" / f"{name}.pid"
        self.log_path = state_dir / "logs" / f"{name}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    def _record(self) -> dict[str, object] | None:
        try:
            record = json.loads(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _orphaned_group(self) -> int | None:
        record = self._record()
        if record is None or not isinstance(record.get("pid"), int):
            return None
        pgid = int(str(record["pid"]))
        return pgid if not _alive(pgid) and _group_alive(pgid) else None

    def _live_pid(self) -> int | None:
        record = self._record()
        if record is None or not isinstance(record.get("pid"), int):
            return None
        pid = int(str(record["pid"]))
        if not _alive(pid):
            return None
        recorded = record.get("start_ticks")
        if isinstance(recorded, int) and _start_ticks(pid) not in (None, recorded):
            return None  # the pid was reused by another program
        return pid

    def status(self) -> ProcessStatus:
        """Running (with its pid), exited (pid file left behind) or stopped."""
        pid = self._live_pid()
        if pid is not None:
            return ProcessStatus(self.name, ProcessState.RUNNING, pid, self.log_path)
        state = ProcessState.EXITED if self.pid_path.exists() else ProcessState.STOPPED
        return ProcessStatus(self.name, state, None, self.log_path)

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> int:
        """Start ``argv`` detached; refuse if this name is already running."""
        if self._live_pid() is not None:
            raise ConfigError(f"{self.name} is already running (pid file {self.pid_path})")
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- fedtwin: starting {self.name} at {time.ctime()} ---\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise ConfigError(f"cannot start {argv[0]}: {error.strerror}") from error
        record = {
            "pid": self._popen.pid,
            "start_ticks": _start_ticks(self._popen.pid),
            "argv0": argv[0],
            "started": time.time(),
        }
        partial = self.pid_path.with_name(f".{self.pid_path.name}.partial")
        partial.write_text(json.dumps(record))
        partial.replace(self.pid_path)
        return self._popen.pid

    def exit_code(self) -> int | None:
        """The exit code, when this object started the process and it has exited."""
        return None if self._popen is None else self._popen.poll()

    def wait_until(
        self, ready: Callable[[], bool], timeout_s: float, interval_s: float = 0.2
    ) -> bool:
        """Poll ``ready`` until it is true (→ True), the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return True
            ended = (
                self.exit_code() is not None
                if self._popen is not None
                else self._live_pid() is None
            )
            if ended:
                return ready()
            time.sleep(interval_s)
        return False

    def stop(self, grace_s: float = 10.0) -> bool:
        """SIGTERM the process group, then SIGKILL after ``grace_s``; True if it was running."""
        pid = self._live_pid()
        if pid is None and self._popen is not None and self._popen.poll() is None:
            pid = self._popen.pid  # our own child, whatever its pid file says
        if pid is None:
            # The leader is gone; members of its group (e.g. a SuperExec) may outlive it.
            pid = self._orphaned_group()
        if pid is None:
            self._reap()
            self.pid_path.unlink(missing_ok=True)
            return False
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            if self._wait_group_gone(pid, wait_s):
                break
        self._reap()
        if _group_alive(pid):
            raise FederationError(f"{self.name} (process group {pid}) did not stop")
        self.pid_path.unlink(missing_ok=True)
        return True

    def _wait_group_gone(self, pgid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._reap()
            if not _group_alive(pgid):
                return True
            time.sleep(0.1)
        return False

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()

    def tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the log (empty if there is none)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - 64 * 1024))
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def log_size(self) -> int:
        """Current size of the log in bytes (to read only what comes after)."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the log gained after ``offset`` bytes."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""
