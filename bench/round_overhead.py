"""Per-round wall time of the deployed run (HTTPS, SuperNode auth) vs Flower's simulation engine.

Same data and model in the same run: the demo's sites (``fedtwin.demo.generate_sites``, seeded,
regenerated identically for each engine so every run starts with empty ledgers), the project's
own ServerApp and ClientApp, ``flwr run`` in both cases. Measured:

* ``deployed_s_per_round``: a real SuperLink on 127.0.0.1 with TLS and SuperNode
  authentication, one SuperNode process per site, fedtwin's warm ClientApp executor and a
  0.1 s SuperExec task poll (what ``fedtwin site start`` uses by default);
* ``deployed_flower_default_s_per_round``: the same deployment with Flower 1.42's own
  ClientApp executor (a fresh ``flwr-clientapp`` process per message, 1 s SuperExec poll); the
  app's packed arrays and the sites' prompt SuperNode polls apply to both deployed variants;
* ``simulated_s_per_round`` (the baseline): ``flwr run`` on a local simulation SuperLink
  (Ray), same sites;
* ``simulated_s_per_round_by_sites``: simulation rounds with 3, 10 and 30 sites, to show how the
  cost grows with the number of sites.

A round's time is Flower's own "Strategy execution finished in X s" divided by the rounds (the
strategy starts once every node is online). The three engines alternate, ``--repeat`` times,
and each keeps its best run (the machine's load drifts over minutes). Prints one JSON line;
``ratio`` = deployed / simulated (goal: <= 1.5). Seeded (``--seed``, default 0). Run from the
repository root with the project's venv; it takes tens of minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from fedtwin.deploy import ManagedProcess
from fedtwin.deploy.commands import flower_bin, flower_environment
from fedtwin.deploy.config import ClientAppExecutor
from fedtwin.deploy.coordinator import copy_flower_app
from fedtwin.deploy.flwr_cli import run_config_toml
from fedtwin.deploy.local import back_to_back_rounds, build_local_deployment, flower_app_dir

STRATEGY_DONE = re.compile(r"Strategy execution finished in ([0-9.]+)s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sites(root: Path, sites: int, patients: int, days: float, rounds: int, seed: int) -> list[Any]:
    from fedtwin.demo import DemoConfig, generate_sites

    # DemoConfig caps --sites at 12 for the demo; the scaling runs go beyond it on purpose.
    config = DemoConfig.model_construct(
        **{
            **DemoConfig().model_dump(),
            "sites": sites,
            "patients_per_site": patients,
            "days": days,
            "rounds": rounds,
            "seed": seed,
        }
    )
    generated = generate_sites(config, root)
    back_to_back_rounds(root / "consortium", [site.state_dir.parent for site in generated])
    return list(generated)


def _seconds_per_round(log_text: str, rounds: int) -> float:
    match = STRATEGY_DONE.search(log_text)
    if match is None:
        raise RuntimeError("the run's log has no 'Strategy execution finished' line")
    return float(match.group(1)) / rounds


def deployed(
    root: Path, sites: list[Any], rounds: int, executor: ClientAppExecutor, poll: float
) -> float:
    documents = [site.model_dump(mode="json") for site in sites]
    deployment = build_local_deployment(
        root,
        documents,
        root / "data" / "consortium",
        rounds,
        executor=executor,
        task_poll_interval_s=poll,
    )
    lines: list[str] = []
    with deployment.running():
        outcome = deployment.coordinator.run("bench", on_line=lines.append)
    if not outcome.info.completed:
        raise RuntimeError(f"deployed run {outcome.info.status}: {outcome.info.details}")
    return _seconds_per_round("\n".join(lines), rounds)


def simulated(root: Path, sites: list[Any], rounds: int) -> float:
    from fedtwin.federation import write_sites_manifest

    write_sites_manifest(root / "data" / "sites", sites)
    project = copy_flower_app(flower_app_dir(), root / "project")
    home = root / "flwr-home"
    home.mkdir()
    http_port, control_port = _free_port(), _free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 3\n"
        "options.backend.client-resources.num-cpus = 1\n"
        "options.backend.client-resources.num-gpus = 0.0\n"
    )
    env = flower_environment(home, 1.0)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(http_port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    # Start the simulation SuperLink ourselves (as `flwr` would) so that we own its process.
    superlink = ManagedProcess("simulation-superlink", root / "state")
    superlink.start(
        [
            str(flower_bin() / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--control-api-address",
            f"127.0.0.1:{control_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--database",
            str(home / "state.db"),
        ],
        env,
        cwd=root,
    )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).is_success
            except httpx.HTTPError:
                return False

        # `flwr` starts (and leaves running) its own SuperLink unless ours already answers.
        if not superlink.wait_until(healthy, 120):
            raise RuntimeError("the simulation SuperLink did not start")
        config_file = root / "run-config.toml"
        config_file.write_text(
            run_config_toml(
                {
                    "num-server-rounds": rounds,
                    "min-sites": len(sites),
                    "seed": 0,
                    "out-dir": str(root / "out"),
                    "data-root": str(root / "data" / "sites"),
                    "consortium-dir": str(root / "data" / "consortium"),
                    "run-id": "bench-simulation",
                }
            )
        )
        done = subprocess.run(
            [
                str(flower_bin() / "flwr"),
                "run",
                ".",
                "local",
                "--federation-config",
                f"num-supernodes={len(sites)}",
                "--run-config",
                str(config_file),
                "--stream",
            ],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=7200,
            check=False,
        )
        return _seconds_per_round(done.stdout + done.stderr, rounds)
    finally:
        superlink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patients-per-site", type=int, default=40)
    parser.add_argument("--days", type=float, default=0.5)
    parser.add_argument("--scaling", default="3,10,30", help="site counts for simulation")
    parser.add_argument("--scaling-rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per engine (best kept)")
    args = parser.parse_args()
    scale = [int(n) for n in args.scaling.split(",") if n]
    result: dict[str, Any] = {"bench": "round_overhead"}
    with tempfile.TemporaryDirectory(prefix="fedtwin-round-overhead-") as tmp:
        work = Path(tmp)

        def fresh(name: str, sites: int, rounds: int) -> tuple[Path, list[Any]]:
            root = work / name
            made = _sites(
                root / "data", sites, args.patients_per_site, args.days, rounds, args.seed
            )
            return root, made

        def note(what: str, seconds: float) -> float:
            print(f"{what}: {seconds:.2f} s per round", file=sys.stderr, flush=True)
            return seconds

        # Engines alternate and each keeps its best of --repeat runs: on a shared machine the
        # load drifts over minutes, and the best run is the one least disturbed by it.
        measured: dict[str, list[float]] = {"simulated": [], "warm": [], "default": []}
        for repeat in range(args.repeat):
            root, made = fresh(f"simulated-r{repeat}", args.sites, args.rounds)
            measured["simulated"].append(note("simulated", simulated(root, made, args.rounds)))
            root, made = fresh(f"deployed-r{repeat}", args.sites, args.rounds)
            seconds = deployed(root, made, args.rounds, "warm", 0.1)
            measured["warm"].append(note("deployed", seconds))
            root, made = fresh(f"deployed-default-r{repeat}", args.sites, args.rounds)
            seconds = deployed(root, made, args.rounds, "subprocess", 1.0)
            measured["default"].append(note("deployed, Flower defaults", seconds))
        baseline, warm, default = (min(measured[k]) for k in ("simulated", "warm", "default"))
        scaling = {}
        for count in scale:
            root, made = fresh(f"simulated-{count}", count, args.scaling_rounds)
            seconds = simulated(root, made, args.scaling_rounds)
            scaling[str(count)] = round(note(f"simulated, {count} sites", seconds), 2)
            shutil.rmtree(root, ignore_errors=True)
    result.update(
        {
            "sites": args.sites,
            "rounds": args.rounds,
            "patients_per_site": args.patients_per_site,
            "deployed_s_per_round": round(warm, 2),
            "deployed_flower_default_s_per_round": round(default, 2),
            "baseline": "same rounds in Flower's simulation engine (flwr run, local SuperLink)",
            "simulated_s_per_round": round(baseline, 2),
            "ratio": round(warm / baseline, 3),
            "ratio_flower_default": round(default / baseline, 3),
            "goal_ratio": 1.5,
            "repeat": args.repeat,
            "all_runs_s_per_round": {k: [round(v, 2) for v in vs] for k, vs in measured.items()},
            "simulated_s_per_round_by_sites": scaling,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
