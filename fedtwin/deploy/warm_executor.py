"""A warm ClientApp executor for a SuperNode started with ``--isolation process``.

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process that
its SuperExec starts, so each train or evaluate message pays for a new interpreter importing
torch, Opacus, Flower and fedtwin (seconds on a small machine). With ``--isolation process``
the SuperNode starts no executor and waits for an external one to take its tasks. This module is
that executor: it imports the libraries once, then for each task forks a child that runs
Flower's own ``run_clientapp`` with the task's token, exactly what ``flwr-clientapp`` runs.

Invariants:

* a task runs in its own child process (a crash, a leak or a global set by one message never
  reaches the next), which exits with ``run_clientapp``'s own exit code;
* only library modules are imported before the fork (:data:`PRELOAD`); the Flower app's
  modules (``client.app`` of the run's FAB) are never pre-imported, so every task loads the
  code of the FAB it was sent, as Flower's own executor would;
* it talks only to the SuperNode's local Runtime API (loopback, plain HTTP as with Flower's own
  SuperExec in this mode), never to the coordinator;
* a task asks the SuperNode again for a message object not there yet after 50 ms, doubling to
  1 s (:func:`~fedtwin.deploy.flower_tuning.prompt_object_pulls`; Flower: 1 s doubling to
  10 s, which made a task wait 1–3 s for objects that arrived within milliseconds);
* the parent reads the site's export and verifies its stored σ values (:func:`warm_site_state`)
  at start and when idle, so that tasks inherit them; a task still checks both itself (a
  changed export is re-read, a σ is used only with a passed accountant evaluation);
* every task passes the site's app-hash gate (:mod:`.app_gate`): a FAB whose digest the site
  policy does not approve is neither installed nor imported, and the task is refused.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

PRELOAD = ("fedtwin.federation", "torch._dynamo")
"""Imported once before any fork: torch, Opacus, Flower and fedtwin's site code, and
``torch._dynamo``, which torch's optimizers import on first construction (1–3 s per task)."""


REFRESH_INTERVAL_S = 10.0
"""While no task runs, the parent re-checks the site's export at most this often."""


def _reap_children(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def warm_site_state(site_config: Path) -> tuple[str, int]:
    """Read the site's export and verify its stored σ values in this (parent) process.

    Forked tasks inherit both: ``load_site_data``'s in-process cache (which a task still
    checks against the export's files, re-reading a changed export itself) and the σ values
    whose accountant evaluation already passed (:func:`~fedtwin.privacy.sigma_store.verify_stored`).
    Nothing here can make a task use what it would not have used: a problem is reported
    and left for the task, which reads and checks everything itself. Returns a status line
    and how many stored σ passed their check now.
    """
    from fedtwin.federation import load_site_config
    from fedtwin.federation.sitedata import load_site_data
    from fedtwin.privacy.sigma_store import verify_stored

    try:
        site = load_site_config(site_config)
        data = load_site_data(site)
        verified = verify_stored(site.state_dir)
    except Exception as error:  # the task meets, and reports, the same problem itself
        return f"site state not preloaded, each task reads it itself: {error}", 0
    line = f"site export ready ({len(data.train)} training, {len(data.heldout)} held-out patients)"
    return line, verified


def _run_task(runtime_api_address: str, token: str, parent_pid: int, site_config: Path) -> int:
    from fedtwin.deploy.app_gate import run_gated_clientapp

    return run_gated_clientapp(runtime_api_address, token, parent_pid, site_config)


def _note_state(site_config: Path, last: str) -> str:
    """Warm the site's state; log its line if it changed or a σ was verified. Returns the line."""
    line, verified = warm_site_state(site_config)
    if line != last or verified:
        _note(f"{line}, {verified} stored σ verified" if verified else line)
    return line


def serve(
    runtime_api_address: str, poll_interval_s: float, site_config: Path, state_line: str = ""
) -> None:
    """Take ClientApp tasks from the SuperNode forever, one forked child per task."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    print(f"fedtwin warm executor: taking ClientApp tasks from {runtime_api_address}", flush=True)
    children: set[int] = set()
    refreshed = time.monotonic()
    while True:
        response = client.AcquireTask(request)
        if response.HasField("task") and response.token:
            started = time.monotonic()
            child = os.fork()
            if child == 0:
                code = 1
                try:
                    code = _run_task(runtime_api_address, response.token, os.getppid(), site_config)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            print(
                f"{time.strftime('%m/%d/%Y %H:%M:%S')} fedtwin warm executor: task "
                f"{response.task.task_id} in child {child} "
                f"(fork {1000 * (time.monotonic() - started):.0f} ms)",
                flush=True,
            )
            children.add(child)
        _reap_children(children)
        if not children and time.monotonic() - refreshed >= REFRESH_INTERVAL_S:
            # Idle: pick up a changed export or newly stored σ before the next task needs them.
            state_line = _note_state(site_config, state_line)
            refreshed = time.monotonic()
        time.sleep(poll_interval_s)


def _note(line: str) -> None:
    print(f"{time.strftime('%m/%d/%Y %H:%M:%S')} fedtwin warm executor: {line}", flush=True)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """``python -m fedtwin.deploy.warm_executor --runtime-api-address HOST:PORT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument(
        "--site-config", type=Path, required=True, help="site.toml (its policy approves apps)"
    )
    args = parser.parse_args(argv)
    if not 0.01 <= args.poll_interval <= 60:
        parser.error("--poll-interval must be between 0.01 and 60 seconds")
    started = time.monotonic()
    for module in PRELOAD:
        importlib.import_module(module)
    from fedtwin.deploy.flower_tuning import prompt_object_pulls

    # Children inherit it: a task's message objects, still on their way from the SuperLink to
    # the SuperNode, are asked for again after 50 ms instead of Flower's 1 s doubling to 10 s.
    prompt_object_pulls()
    print(f"fedtwin warm executor: libraries imported in {time.monotonic() - started:.1f} s")
    state_line = _note_state(args.site_config.resolve(), "")
    signal.signal(signal.SIGTERM, _stop)
    serve(args.runtime_api_address, args.poll_interval, args.site_config.resolve(), state_line)


if __name__ == "__main__":
    main()
