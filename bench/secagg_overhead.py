"""Time factor of SecAgg+ over plain FedAvg: the training phase of a round, same sites and seeds.

The demo's sites (``fedtwin.demo.generate_sites``, seeded, a fresh copy per run so every run
starts with empty ledgers) run the same run twice in Flower's simulation engine
(``run_simulation``, in process): once plain (the Message-API FedAvg stack), once with
``RunConfig.secure_aggregation`` (SecAgg+ on Flower's legacy path: setup, key sharing, masked
vectors, unmasking). Measured per round, from the coordinator's strategy: the training phase
(sending the global model until the aggregate exists), which on the SecAgg+ path holds all four
protocol stages. Plain rounds also evaluate and cosign; that phase is not counted, as SecAgg+
runs have no federated evaluation. Prints one JSON line: ``plain_train_s_per_round`` (the
baseline), ``secagg_train_s_per_round`` and ``ratio`` = SecAgg+ / plain. Seeded (``--seed``).
Run from the repository root with the project's venv (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _timed_rounds(secure: bool) -> tuple[list[float], Any]:
    """Patch the coordinator's strategy so the training phase of each round is timed."""
    from fedtwin.federation import secagg, server

    durations: list[float] = []
    started: list[float] = []
    if secure:
        cls: Any = secagg.SecureFedAvg
        begin, end = "configure_fit", "aggregate_fit"
    else:
        cls = server.ResumableStrategy
        begin, end = "configure_train", "aggregate_train"
    original_begin, original_end = getattr(cls, begin), getattr(cls, end)

    def timed_begin(self: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(time.perf_counter())
        return original_begin(self, *args, **kwargs)

    def timed_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_end(self, *args, **kwargs)
        durations.append(time.perf_counter() - started[-1])
        return result

    setattr(cls, begin, timed_begin)
    setattr(cls, end, timed_end)

    def restore() -> None:
        setattr(cls, begin, original_begin)
        setattr(cls, end, original_end)

    return durations, restore


def one_run(pristine: Path, work: Path, config: Any, secure: bool) -> list[float]:
    """Copy the pristine sites, run the rounds, return the training phase of each round."""
    from flwr.simulation import run_simulation

    from fedtwin.demo import calendar_for, coordinator_setup, run_config_for
    from fedtwin.federation import make_client_app, make_server_app, simulation_sites
    from fedtwin.federation.sites import load_sites_manifest

    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    sites = load_sites_manifest(work / "sites.json")
    run = run_config_for(config, "bench-secagg").model_copy(update={"secure_aggregation": secure})
    clock = calendar_for(config).round_at
    durations, restore = _timed_rounds(secure)
    try:
        run_simulation(
            server_app=make_server_app(run, coordinator_setup(work, work / "out", "bench")),
            client_app=make_client_app(simulation_sites(sites), clock=clock),
            num_supernodes=len(sites),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    finally:
        restore()
    if len(durations) != config.rounds:
        raise RuntimeError(f"expected {config.rounds} timed rounds, got {len(durations)}")
    return durations


def main() -> None:
    """Run plain and SecAgg+ alternately ``--repeat`` times; print the best of each."""
    from fedtwin.demo import DemoConfig, generate_sites
    from fedtwin.federation import write_sites_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--patients-per-site", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    config = DemoConfig(
        sites=args.sites,
        patients_per_site=args.patients_per_site,
        days=0.5,
        rounds=args.rounds,
        local_steps=5,
        min_eligible_patients=5,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pristine = Path(tmp) / "pristine"
        write_sites_manifest(pristine, generate_sites(config, pristine))
        best: dict[bool, float] = {}
        for _ in range(args.repeat):
            for secure in (False, True):
                rounds = one_run(pristine, Path(tmp) / "work", config, secure)
                per_round = sum(rounds) / len(rounds)
                best[secure] = min(best.get(secure, per_round), per_round)
    print(
        json.dumps(
            {
                "bench": "secagg_overhead",
                "sites": args.sites,
                "rounds": args.rounds,
                "plain_train_s_per_round": round(best[False], 3),
                "secagg_train_s_per_round": round(best[True], 3),
                "ratio": round(best[True] / best[False], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
