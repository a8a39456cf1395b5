"""Benchmark: 30-min RMSE of the federated glucose twin against the privacy budget per patient.

The privacy–utility curve of issue 8: the same 3 simulated sites (paediatric, adolescent and
adult age mixes) × ``--patients`` virtual patients, the same held-out patients, the same
initial twin and optimiser settings as ``bench/quality.py`` (whose site builder, FedAvg loop and
scoring this script reuses), federated for ``R`` rounds of ``S`` local steps per site with
patient-level DP-SGD (:func:`fedtwin.privacy.train_private_round`: Opacus, one record = one
patient, Poisson sampling) at ε ∈ ``--epsilons`` per patient (δ = 1e-5, PRV accountant; σ from
:func:`fedtwin.privacy.calibrate_noise_multiplier` over all ``R·S`` steps, exactly what
:mod:`fedtwin.federation.site_round` plans), plus ε = ∞ (the same federation without DP) and
the pooled non-private baseline (every site's training patients in one place, the federation's
compute). The federation is fedtwin's site training code in an in-process FedAvg loop (Flower's
FedAvg is the same weighted mean), not Flower's engine.

Prints one JSON line per ε (RMSE30 on CGM targets, its ratio to pooled non-private, σ per
site) and a ``summary`` line with the curve. Seeded: ``--seed`` drives the cohorts, the split,
the initialisation, sampling and DP noise.

Example: ``python bench/privacy_utility.py --patients 300 --epsilons 1,2,4,8``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from typing import Any

import torch
from quality import (
    DELTA,
    SITES,
    Site,
    _federate,
    _pooled_batch,
    _site,
    _train_plain,
    plain_local,
    private_local,
)

from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig
from fedtwin.twins.evaluation import Candidate, evaluate_forecasters


def _rmse30(models: dict[str, Candidate], sites: list[Site]) -> dict[str, dict[str, float]]:
    result = evaluate_forecasters(models, [s.heldout for s in sites])
    return {
        name: {
            "rmse30_mg_dl": result.scores(name).at(30).rmse_mg_dl,
            "coverage90_pct": result.scores(name).coverage90_pct,
        }
        for name in models
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000, help="patients per site")
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=20, help="R")
    parser.add_argument("--local-steps", type=int, default=30, help="S")
    parser.add_argument("--batch-patients", type=int, default=64, help="B, per site")
    parser.add_argument("--windows-per-patient", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--epsilons", default="1,2,4,8", help="finite ε per patient")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    if not epsilons or any(not (e > 0 and math.isfinite(e)) for e in epsilons):
        parser.error("--epsilons: finite values > 0, comma-separated")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")

    started = time.perf_counter()
    sites = [_site(site_id, mix, args) for site_id, mix in SITES]
    print(f"simulated {time.perf_counter() - started:.0f} s", file=sys.stderr)
    steps = args.rounds * args.local_steps
    torch.manual_seed(args.seed)
    initial = GlucoseTwin(GlucoseTwinConfig())
    models: dict[str, Candidate] = {}
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    pooled = copy.deepcopy(initial)
    _train_plain(pooled, _pooled_batch(sites), steps, 3 * args.batch_patients, args, args.seed)
    models["pooled"] = pooled
    seconds["pooled"] = time.perf_counter() - started

    started = time.perf_counter()
    models["eps=inf"] = _federate(initial, sites, args.rounds, plain_local(args))
    seconds["eps=inf"] = time.perf_counter() - started
    print(f"federated non-private {seconds['eps=inf']:.0f} s", file=sys.stderr)

    sigmas: dict[float, dict[str, float]] = {}
    for epsilon in epsilons:
        private, sigmas[epsilon] = private_local(args, sites, epsilon)
        started = time.perf_counter()
        models[f"eps={epsilon:g}"] = _federate(initial, sites, args.rounds, private)
        seconds[f"eps={epsilon:g}"] = time.perf_counter() - started
        print(f"federated ε={epsilon:g} {seconds[f'eps={epsilon:g}']:.0f} s", file=sys.stderr)

    scores = _rmse30(models, sites)
    pooled_rmse = scores["pooled"]["rmse30_mg_dl"]
    curve: dict[str, float] = {}
    for name in models:
        if name == "pooled":
            continue
        epsilon_value = name.removeprefix("eps=")
        rmse = scores[name]["rmse30_mg_dl"]
        curve[epsilon_value] = round(rmse, 3)
        line: dict[str, Any] = {
            "bench": "privacy_utility",
            "epsilon_per_patient": epsilon_value,
            "delta": DELTA if epsilon_value != "inf" else None,
            "rmse30_mg_dl": round(rmse, 3),
            "ratio_to_pooled_non_private": round(rmse / pooled_rmse, 4),
            "coverage90_pct": round(scores[name]["coverage90_pct"], 1),
            "noise_multiplier_per_site": (
                {k: round(v, 3) for k, v in sigmas[float(epsilon_value)].items()}
                if epsilon_value != "inf"
                else None
            ),
            "seconds": round(seconds[name], 1),
        }
        print(json.dumps(line))
    print(
        json.dumps(
            {
                "bench": "privacy_utility",
                "config": "summary",
                "baseline": "pooled non-private",
                "pooled_rmse30_mg_dl": round(pooled_rmse, 3),
                "rmse30_by_epsilon": curve,
                "ratio_by_epsilon": {k: round(v / pooled_rmse, 4) for k, v in curve.items()},
                "sites": len(sites),
                "patients_per_site": args.patients,
                "train_patients": {s.site_id: len(s.train) for s in sites},
                "days": args.days,
                "rounds": args.rounds,
                "local_steps": args.local_steps,
                "batch_patients_per_site": args.batch_patients,
                "accountant": "prv",
                "federation": "in-process FedAvg over fedtwin's site training code",
                "threads": args.threads,
                "seed": args.seed,
            }
        )
    )


if __name__ == "__main__":
    main()
