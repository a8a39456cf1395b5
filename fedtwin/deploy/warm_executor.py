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


def _reap_children() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _run_task(runtime_api_address: str, token: str, parent_pid: int, site_config: Path) -> int:
    from fedtwin.deploy.app_gate import run_gated_clientapp

    return run_gated_clientapp(runtime_api_address, token, parent_pid, site_config)


def serve(runtime_api_address: str, poll_interval_s: float, site_config: Path) -> None:
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
        _reap_children()
        time.sleep(poll_interval_s)


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
    print(f"fedtwin warm executor: libraries imported in {time.monotonic() - started:.1f} s")
    signal.signal(signal.SIGTERM, _stop)
    serve(args.runtime_api_address, args.poll_interval, args.site_config.resolve())


if __name__ == "__main__":
    main()
