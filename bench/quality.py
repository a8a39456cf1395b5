"""Benchmark: forecast quality of pooled, federated, federated-DP and local-only glucose twins.

Same data, same run: 3 simulated sites (paediatric, adolescent and adult age mixes, as in
``bench/cohort_generation.py``) × ``--patients`` virtual patients × ``--days`` days; each
site's patients are split 80/20 into training and held-out patients by the keyed hash the
sites use (:func:`fedtwin.federation.sitedata.is_heldout`). Configurations, all from the same
initial twin and the same optimiser settings:

* ``pooled``: every site's training patients in one place, non-private, ``R·S`` steps of
  ``3·B`` patients (the federation's compute: R rounds × S local steps × B patients × 3 sites);
* ``federated``: ``R`` rounds of FedAvg (weights = training patients, as Flower's FedAvg with
  ``num-examples``); each site runs ``S`` Adam steps of ``B`` patients from the global model;
* ``federated-dp``: the same rounds, each site's ``S`` steps by
  :func:`fedtwin.privacy.train_private_round` (Opacus DP-SGD, one record = one patient,
  Poisson sampling) at the σ that :func:`fedtwin.privacy.calibrate_noise_multiplier` gives
  for ε = ``--epsilon`` per patient over all ``R·S`` steps (PRV accountant, δ = 1e-5) —
  the computation :mod:`fedtwin.federation.site_round` runs;
* ``local-only``: each site alone, non-private, ``R·S`` steps of ``B`` patients;
* ``persistence`` and ``linear AR``: closed-form baselines fitted per site on its training
  windows (:mod:`fedtwin.twins.baselines`).

Federated training runs the FedAvg loop in-process over the real site training code (dataset,
DP engine, accountant), not through Flower's simulation engine: the arithmetic is the same
(Flower's FedAvg is this weighted mean), without its process start-up and transport, which
this benchmark does not measure. The data path is the simulator's arrays as the FHIR export
holds them (CGM with gaps, insulin delivered, carbohydrate *announced*), not a FHIR round trip.

Every configuration is scored on the same held-out windows with
:func:`fedtwin.twins.evaluation.evaluate_forecasters` (CGM targets), and also against the
simulator's noise-free glucose (``*_true_bg``) to show how much of the error is sensor noise.
Prints one JSON line per configuration, then one ``summary`` line with the goals of issue 9
(pooled RMSE30 ≤ 9.4 mg/dL, the CRNN of Li et al. 2020; federated/pooled ≤ 1.05;
federated-DP/pooled ≤ 1.15; every site's federated model beats its local-only model; Clarke
A+B ≥ 99 %). Seeds: ``--seed`` drives the cohorts, the split, every initialisation, sampling
and DP noise.

Example: ``python bench/quality.py --patients 400 --rounds 10`` (about 15 min on one core).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from fedtwin.cohorts import AgeGroup, SiteSpec, simulate_site, site_age_groups
from fedtwin.cohorts.fhir_export import demographics
from fedtwin.federation.sitedata import is_heldout
from fedtwin.privacy import (
    AccountantKind,
    DpSgdConfig,
    calibrate_noise_multiplier,
    poisson_sample_rate,
    train_private_round,
)
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch, batch_windows
from fedtwin.twins.baselines import LinearArForecaster, PersistenceForecaster
from fedtwin.twins.evaluation import (
    Candidate,
    EvaluationResult,
    GroupKind,
    SiteWindows,
    evaluate_forecasters,
)
from fedtwin.twins.training import PatientWindowDataset, fit_steps, repeat_batches, usable_rows
from fedtwin.twins.windows import ForecastWindows

SITES = (
    ("site-paediatric", {AgeGroup.CHILD: 0.8, AgeGroup.ADOLESCENT: 0.2}),
    ("site-adolescent", {AgeGroup.ADOLESCENT: 0.7, AgeGroup.CHILD: 0.15, AgeGroup.ADULT: 0.15}),
    ("site-adult", {AgeGroup.ADULT: 0.9, AgeGroup.ADOLESCENT: 0.1}),
)
DELTA = 1e-5
HELDOUT_FRACTION = 0.2
EVAL_STRIDE = 3
GOAL_POOLED_RMSE30 = 9.4
GOAL_FED_RATIO = 1.05
GOAL_FED_DP_RATIO = 1.15
GOAL_CLARKE_AB = 99.0


@dataclass(frozen=True, eq=False)
class Site:
    """One simulated site: training patients, held-out windows (CGM and true-glucose targets)."""

    site_id: str
    train: PatientBatch
    heldout: SiteWindows
    heldout_true_bg: SiteWindows
    sensor_rms_mg_dl: float
    noise_floor_rmse30_mg_dl: float


def _site(site_id: str, mix: dict[AgeGroup, float], args: argparse.Namespace) -> Site:
    spec = SiteSpec(
        site_id=site_id, n_patients=args.patients, age_mix=mix, days=args.days, seed=args.seed
    )
    cgm, bg, insulin, carbs = [], [], [], []
    ages: list[float] = []
    ids: list[str] = []
    start = None
    for batch in simulate_site(spec, batch_patients=500):
        trajectory = batch.trajectory
        cgm.append(trajectory.cgm_mg_dl.float())
        bg.append(trajectory.bg_mg_dl.float())
        insulin.append(trajectory.insulin_u.float())
        carbs.append(trajectory.carbs_announced_g.float())  # what the patient logged
        ages += batch.params.age_years.tolist()
        ids += list(batch.patient_ids)
        start = batch.start
    assert start is not None
    cgm_all, bg_all = torch.cat(cgm), torch.cat(bg)
    insulin_all, carbs_all = torch.cat(insulin), torch.cat(carbs)
    secret = hashlib.sha256(f"bench-quality/{args.seed}/{site_id}".encode()).digest()
    held = [is_heldout(secret, patient, HELDOUT_FRACTION) for patient in ids]
    twin = GlucoseTwinConfig()

    def batch_of(rows: list[int], series: torch.Tensor) -> PatientBatch:
        index = torch.tensor(rows)
        return PatientBatch.from_arrays(
            [ids[r] for r in rows],
            series[index],
            insulin_all[index],
            carbs_all[index],
            torch.isfinite(cgm_all[index]),  # same validity for CGM and true-glucose targets
            None,
            twin.history_steps,
            twin.horizon_steps,
        )

    train_rows = [r for r, h in enumerate(held) if not h]
    held_rows = [r for r, h in enumerate(held) if h]
    train = batch_of(train_rows, cgm_all)
    train = train.select(usable_rows(train, args.windows_per_patient))
    groups = site_age_groups(spec)  # the simulator's own group of each patient
    labels = [groups[r].value for r in held_rows]
    sexes = [demographics(ids[r], ages[r], start, args.seed)[1] for r in held_rows]
    heldout = SiteWindows.from_batch(
        site_id, batch_of(held_rows, cgm_all), labels, sexes, EVAL_STRIDE
    )
    truth = SiteWindows.from_batch(site_id, batch_of(held_rows, bg_all), labels, sexes, EVAL_STRIDE)
    # Forecast inputs are always CGM; only the targets differ.
    true_targets = ForecastWindows(
        heldout.windows.history, heldout.windows.plan, truth.windows.target_mg_dl
    )
    heldout_true_bg = SiteWindows(
        site_id, true_targets, heldout.patient_row, heldout.age_groups, heldout.sexes
    )
    return Site(site_id, train, heldout, heldout_true_bg, *_sensor_noise(heldout, truth))


def _sensor_noise(heldout: SiteWindows, truth: SiteWindows) -> tuple[float, float]:
    """RMS of CGM − true glucose, and the 30-min CGM error floor it implies.

    The floor is the residual RMS of the best linear prediction of the sensor error 30 min
    ahead from the error at the anchor: what even a forecaster that knew the true glucose
    trajectory and the current sensor error exactly could not explain of a CGM reading.
    """
    now = (heldout.windows.history[:, 0, -1] - truth.windows.history[:, 0, -1]).double()
    ahead = (heldout.windows.target_mg_dl[:, 5] - truth.windows.target_mg_dl[:, 5]).double()
    design = torch.stack([now, torch.ones_like(now)], dim=1)
    coefficients = torch.linalg.lstsq(design, ahead.unsqueeze(1)).solution
    residual = ahead - (design @ coefficients).squeeze(1)
    return float(ahead.pow(2).mean().sqrt()), float(residual.pow(2).mean().sqrt())


def _pooled_batch(sites: list[Site]) -> PatientBatch:
    parts = [s.train for s in sites]
    steps = max(int(p.cgm_mg_dl.shape[1]) for p in parts)
    if any(int(p.cgm_mg_dl.shape[1]) != steps for p in parts):
        raise ValueError("sites must share one series length")
    return PatientBatch(
        pseudonyms=tuple(name for p in parts for name in p.pseudonyms),
        cgm_mg_dl=torch.cat([p.cgm_mg_dl for p in parts]),
        insulin_u=torch.cat([p.insulin_u for p in parts]),
        carbs_g=torch.cat([p.carbs_g for p in parts]),
        valid_anchor=torch.cat([p.valid_anchor for p in parts]),
        history_steps=parts[0].history_steps,
        horizon_steps=parts[0].horizon_steps,
    )


def _train_plain(
    model: GlucoseTwin,
    batch: PatientBatch,
    steps: int,
    batch_patients: int,
    args: argparse.Namespace,
    seed: int,
) -> float:
    generator = torch.Generator().manual_seed(seed)
    dataset = PatientWindowDataset(batch, generator, args.windows_per_patient)
    loader = DataLoader(dataset, batch_size=batch_patients, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    return fit_steps(model, optimizer, repeat_batches(loader), steps).mean_loss


def _fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Flower's FedAvg: the mean of the site models weighted by their training patients."""
    total = float(sum(weights))
    averaged = {}
    for key in states[0]:
        averaged[key] = (
            torch.stack(
                [s[key].double() * (w / total) for s, w in zip(states, weights, strict=True)]
            )
            .sum(dim=0)
            .to(states[0][key].dtype)
        )
    return averaged


LocalTrain = Callable[[GlucoseTwin, Site, int, int], None]


def _federate(
    initial: GlucoseTwin, sites: list[Site], rounds: int, local: LocalTrain
) -> GlucoseTwin:
    global_model = copy.deepcopy(initial)
    for server_round in range(1, rounds + 1):
        states, weights = [], []
        for index, site in enumerate(sites):
            model = copy.deepcopy(global_model)
            local(model, site, server_round, index)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(site.train))
        global_model.load_state_dict(_fedavg(states, weights))
    return global_model


def plain_local(args: argparse.Namespace) -> LocalTrain:
    """A site's non-private round: ``S`` Adam steps of ``B`` patients (seeded per round/site)."""

    def plain(model: GlucoseTwin, site: Site, server_round: int, index: int) -> None:
        _train_plain(
            model,
            site.train,
            args.local_steps,
            args.batch_patients,
            args,
            _round_seed(args.seed, server_round, index),
        )

    return plain


def private_local(
    args: argparse.Namespace, sites: list[Site], epsilon: float
) -> tuple[LocalTrain, dict[str, float]]:
    """A site's DP-SGD round at the σ that keeps all ``R·S`` steps within ``epsilon``, and σ."""
    dp = DpSgdConfig(
        local_steps=args.local_steps,
        expected_batch_patients=args.batch_patients,
        max_grad_norm=args.max_grad_norm,
        learning_rate=args.learning_rate,
        windows_per_patient=args.windows_per_patient,
        accountant=AccountantKind.PRV,
    )
    sigmas = {
        site.site_id: calibrate_noise_multiplier(
            target_epsilon=epsilon,
            delta=DELTA,
            sample_rate=poisson_sample_rate(len(site.train), args.batch_patients),
            steps=args.rounds * args.local_steps,
            accountant=AccountantKind.PRV,
        )
        for site in sites
    }

    def private(model: GlucoseTwin, site: Site, server_round: int, index: int) -> None:
        generator = torch.Generator().manual_seed(_round_seed(args.seed, server_round, index))
        dataset = PatientWindowDataset(site.train, generator, args.windows_per_patient)
        train_private_round(model, dataset, sigmas[site.site_id], dp, generator)

    return private, sigmas


def _round_seed(seed: int, server_round: int, site_index: int) -> int:
    return seed * 1_000_003 + server_round * 101 + site_index


def _line(
    name: str, result: EvaluationResult, truth: EvaluationResult, extra: dict[str, Any]
) -> dict[str, Any]:
    overall, true_overall = result.scores(name), truth.scores(name)
    site_rows = [
        row for row in result.groups if row.forecaster == name and row.kind is GroupKind.SITE
    ]
    return {
        "bench": "quality",
        "config": name,
        "rmse30_mg_dl": round(overall.at(30).rmse_mg_dl, 3),
        "rmse60_mg_dl": round(overall.at(60).rmse_mg_dl, 3),
        **(
            {"rmse120_mg_dl": round(overall.at(120).rmse_mg_dl, 3)}
            if 120 in result.horizons_min
            else {}
        ),
        "mae30_mg_dl": round(overall.at(30).mae_mg_dl, 3),
        "clarke_ab30_pct": round(overall.at(30).clarke_ab_pct, 2),
        "clarke_ab60_pct": round(overall.at(60).clarke_ab_pct, 2),
        "coverage90_pct": round(overall.coverage90_pct, 1),
        "tir_error_pct": round(overall.tir_error_pct, 2),
        "rmse30_true_bg_mg_dl": round(true_overall.at(30).rmse_mg_dl, 3),
        "rmse30_per_site": {row.group: round(row.at(30).rmse_mg_dl, 3) for row in site_rows},
        "heldout_patients": overall.patients,
        "heldout_windows": overall.windows,
        **extra,
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
    parser.add_argument("--epsilon", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Opacus notes that its RNG is not cryptographically secure: a seeded benchmark wants that.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    timings: dict[str, float] = {}

    started = time.perf_counter()
    sites = [_site(site_id, mix, args) for site_id, mix in SITES]
    timings["simulate_s"] = time.perf_counter() - started
    print(f"simulated {timings['simulate_s']:.0f} s", file=sys.stderr)
    steps = args.rounds * args.local_steps
    torch.manual_seed(args.seed)
    initial = GlucoseTwin(GlucoseTwinConfig())
    models: dict[str, Candidate] = {}
    extras: dict[str, dict[str, Any]] = {}

    started = time.perf_counter()
    pooled = copy.deepcopy(initial)
    _train_plain(pooled, _pooled_batch(sites), steps, 3 * args.batch_patients, args, args.seed)
    models["pooled"] = pooled
    timings["pooled_s"] = time.perf_counter() - started
    print(f"pooled {timings['pooled_s']:.0f} s", file=sys.stderr)

    started = time.perf_counter()
    models["federated"] = _federate(initial, sites, args.rounds, plain_local(args))
    timings["federated_s"] = time.perf_counter() - started
    print(f"federated {timings['federated_s']:.0f} s", file=sys.stderr)

    private, sigmas = private_local(args, sites, args.epsilon)

    started = time.perf_counter()
    models["federated-dp"] = _federate(initial, sites, args.rounds, private)
    timings["federated_dp_s"] = time.perf_counter() - started
    print(f"federated-dp {timings['federated_dp_s']:.0f} s", file=sys.stderr)
    extras["federated-dp"] = {
        "epsilon_per_patient": args.epsilon,
        "delta": DELTA,
        "noise_multiplier": {k: round(v, 3) for k, v in sigmas.items()},
    }

    started = time.perf_counter()
    local_models = {}
    for index, site in enumerate(sites):
        model = copy.deepcopy(initial)
        _train_plain(
            model, site.train, steps, args.batch_patients, args, _round_seed(args.seed, 0, index)
        )
        local_models[site.site_id] = model
    models["local-only"] = local_models
    timings["local_s"] = time.perf_counter() - started

    started = time.perf_counter()
    fitted = {site.site_id: batch_windows(site.train, stride=EVAL_STRIDE) for site in sites}
    models["persistence"] = {k: PersistenceForecaster.fit(w) for k, w in fitted.items()}
    models["linear AR"] = {k: LinearArForecaster.fit(w) for k, w in fitted.items()}
    timings["baselines_s"] = time.perf_counter() - started

    started = time.perf_counter()
    result = evaluate_forecasters(models, [s.heldout for s in sites])
    truth = evaluate_forecasters(models, [s.heldout_true_bg for s in sites])
    timings["evaluate_s"] = time.perf_counter() - started

    lines = {name: _line(name, result, truth, extras.get(name, {})) for name in models}
    pooled_rmse = float(lines["pooled"]["rmse30_mg_dl"])
    for line in lines.values():
        line["ratio_to_pooled_rmse30"] = round(float(line["rmse30_mg_dl"]) / pooled_rmse, 4)
        print(json.dumps(line))
    local_rows = {
        row.group: row.at(30).rmse_mg_dl
        for row in result.groups
        if row.forecaster == "local-only" and row.kind is GroupKind.SITE
    }

    def beats_local(name: str) -> dict[str, bool]:
        return {
            row.group: row.at(30).rmse_mg_dl < local_rows[row.group]
            for row in result.groups
            if row.forecaster == name and row.kind is GroupKind.SITE
        }

    fed_ratio = float(lines["federated"]["ratio_to_pooled_rmse30"])
    dp_ratio = float(lines["federated-dp"]["ratio_to_pooled_rmse30"])
    windows = sum(len(s.heldout.windows) for s in sites)
    sensor = math.sqrt(sum(s.sensor_rms_mg_dl**2 * len(s.heldout.windows) for s in sites) / windows)
    floor = math.sqrt(
        sum(s.noise_floor_rmse30_mg_dl**2 * len(s.heldout.windows) for s in sites) / windows
    )
    summary = {
        "bench": "quality",
        "config": "summary",
        "sites": len(sites),
        "patients_per_site": args.patients,
        "days": args.days,
        "train_patients": {s.site_id: len(s.train) for s in sites},
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "batch_patients_per_site": args.batch_patients,
        "windows_per_patient": args.windows_per_patient,
        "federation": "in-process FedAvg over fedtwin's site training code (not Flower's engine)",
        "target": result.target,
        "history_min": 5 * GlucoseTwinConfig().history_steps,
        "horizon_min": 5 * GlucoseTwinConfig().horizon_steps,
        "sensor_noise_rms_mg_dl": round(sensor, 3),
        "cgm_noise_floor_rmse30_mg_dl": round(floor, 3),
        "goal_pooled_rmse30_le_9_4": pooled_rmse <= GOAL_POOLED_RMSE30,
        "pooled_rmse30_minus_goal_mg_dl": round(pooled_rmse - GOAL_POOLED_RMSE30, 3),
        "federated_over_pooled": fed_ratio,
        "goal_federated_over_pooled_le_1_05": fed_ratio <= GOAL_FED_RATIO,
        "federated_dp_over_pooled": dp_ratio,
        "goal_federated_dp_over_pooled_le_1_15": dp_ratio <= GOAL_FED_DP_RATIO,
        "federated_beats_local_per_site": beats_local("federated"),
        "federated_dp_beats_local_per_site": beats_local("federated-dp"),
        "goal_clarke_ab30_ge_99": {
            name: float(line["clarke_ab30_pct"]) >= GOAL_CLARKE_AB for name, line in lines.items()
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "threads": args.threads,
        "seed": args.seed,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
