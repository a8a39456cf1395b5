"""The coordinator's use of the ``flwr`` CLI: register sites, submit a run, read its status.

Flower's CLI is the supported client of the SuperLink's Control API; fedtwin runs it as a
subprocess with the coordinator's own ``FLWR_HOME`` (a connection named ``fedtwin`` with the
consortium CA) and ``--format json``.

Invariants:

* ``--format json`` exits 0 even when the command failed: every reply is parsed and a
  ``"success": false`` becomes a :class:`~fedtwin.errors.FederationError` naming Flower's
  message (never a silent success);
* registering is idempotent: a key the SuperLink already holds (Flower's code 23) counts as
  registered, any other refusal is an error;
* a run's outcome is read from ``flwr ls --run-id`` (``finished:completed``), never from the
  exit code of ``flwr run``/``flwr log``.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtwin.deploy.commands import CONNECTION_NAME, flower_bin
from fedtwin.errors import FederationError

ALREADY_REGISTERED = "[code: 23]"
"""Flower 1.42's reply to registering a public key the SuperLink already holds."""
RUN_COMPLETED = "finished:completed"


@dataclass(frozen=True)
class Registration:
    """Outcome of registering one site's SuperNode key."""

    site_id: str
    node_id: int | None
    newly_registered: bool


@dataclass(frozen=True)
class RunInfo:
    """One run as ``flwr ls`` reports it."""

    run_id: int
    status: str
    details: str
    elapsed_s: float

    @property
    def finished(self) -> bool:
        """True once the run stopped, whatever the outcome."""
        return self.status.startswith("finished")

    @property
    def completed(self) -> bool:
        """True only for a run that finished without error."""
        return self.status == RUN_COMPLETED


class FlwrCli:
    """Runs ``flwr`` with one environment (the coordinator's ``FLWR_HOME``).

    Parameters
    ----------
    env : Mapping[str, str]
        Environment of every call (see :func:`fedtwin.deploy.commands.flower_environment`).
    timeout_s : float
        Limit of one short call (register, list, submit).
    """

    def __init__(self, env: Mapping[str, str], timeout_s: float = 120.0) -> None:
        self.env = dict(env)
        self.timeout_s = timeout_s

    def _call(self, args: Sequence[str], cwd: Path | None = None) -> dict[str, Any]:
        command = [str(flower_bin() / "flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(
                command,
                cwd=cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise FederationError(
                f"flwr {args[0]}: no answer within {self.timeout_s:.0f} s"
            ) from error
        text = done.stdout.strip()
        start = text.find("{")
        try:
            reply = json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            last = (done.stderr.strip() or text or "no output").splitlines()[-1]
            raise FederationError(f"flwr {' '.join(args[:2])}: {last}")
        if not reply.get("success", False):
            message = str(reply.get("error-message", "failed")).strip().splitlines()
            raise FederationError(
                f"flwr {' '.join(args[:2])}: {message[-1] if message else 'failed'}"
            )
        return reply

    def register(self, site_id: str, public_key: Path) -> Registration:
        """Register a site's SuperNode public key (idempotent)."""
        try:
            reply = self._call(
                ["supernode", "register", str(public_key), CONNECTION_NAME, "--name", site_id]
            )
        except FederationError as error:
            if ALREADY_REGISTERED in str(error) or "already in use" in str(error):
                return Registration(site_id, None, newly_registered=False)
            raise
        return Registration(site_id, int(reply["node-id"]), newly_registered=True)

    def unregister(self, node_id: int) -> None:
        """Remove a SuperNode from the federation (revocation)."""
        self._call(["supernode", "unregister", str(node_id), CONNECTION_NAME])

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls``: every registered node with its status."""
        reply = self._call(["supernode", "ls", CONNECTION_NAME])
        return list(reply.get("nodes", []))

    def submit(self, project_dir: Path, run_config_file: Path) -> int:
        """``flwr run`` (not streamed) with a run-config TOML file: return the run's id."""
        args = ["run", ".", CONNECTION_NAME, "--run-config", str(run_config_file)]
        reply = self._call(args, cwd=project_dir)
        run_id = reply.get("run-id")
        if run_id is None:
            raise FederationError("flwr run: the SuperLink returned no run id")
        return int(run_id)

    def run_info(self, run_id: int) -> RunInfo:
        """``flwr ls --run-id``: the run's status and details."""
        reply = self._call(["ls", CONNECTION_NAME, "--run-id", str(run_id)])
        runs = reply.get("runs", [])
        if not runs:
            raise FederationError(f"run {run_id} is unknown to the SuperLink")
        run = runs[0]
        return RunInfo(
            run_id=int(run["run-id"]),
            status=str(run.get("status", "")),
            details=str(run.get("status-details", "")),
            elapsed_s=float(run.get("elapsed", 0.0) or 0.0),
        )

    def follow_logs(self, run_id: int, on_line: Callable[[str], None], timeout_s: float) -> None:
        """Stream the run's logs (``flwr log --stream``) line by line until the run ends.

        The stream is killed after ``timeout_s`` whatever it is doing (a watchdog thread), so a
        stalled run never blocks the caller forever.
        """
        command = [str(flower_bin() / "flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"]
        with subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as stream:
            watchdog = threading.Timer(timeout_s, stream.kill)
            watchdog.start()
            try:
                if stream.stdout is not None:
                    for line in stream.stdout:
                        on_line(line.rstrip("\n"))
                stream.wait()
            finally:
                watchdog.cancel()
                if stream.poll() is None:
                    stream.kill()
                    stream.wait()


def run_config_toml(run_config: Mapping[str, str | int | float | bool]) -> str:
    """Run-config overrides as a flat TOML document (what ``--run-config FILE.toml`` reads)."""
    lines = []
    for key, value in run_config.items():
        if not key.replace("-", "").replace("_", "").isalnum():
            raise FederationError(f"run-config key {key!r} is not a bare TOML key")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            # A JSON string literal is a valid TOML basic string.
            text = json.dumps(str(value), ensure_ascii=False)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
