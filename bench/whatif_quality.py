"""Benchmark: how often the glucose twin's what-if picks the truly best plan (issue 9).

New virtual adults (never seen in training) live one day under their usual therapy (three meals
and snacks, loosely counted, 30 % of meal boluses missed), then, fasting since midnight, eat a
meal of 40-100 g at 04:00 the next morning. Six plans for that meal, in units of the bolus
their carb ratio calls for (``D``, rounded by the pump): no bolus, 0.5 D, D (the usual therapy:
the *factual* plan), 1.5 D, 2 D, and D given 30 min late. The simulator replays every patient
from the same checkpoint under each plan — the true counterfactuals — and the twin ranks the
plans with
:func:`fedtwin.twins.whatif.compare_plans` from the patient's last hours (CGM, insulin, carbs),
as ``fedtwin twin what-if`` does, once with the shared twin alone and once with a personal head
fitted on-site on that patient's previous day (:func:`fedtwin.twins.personalise.personalise`;
the day holds the patient's own meal responses, which the fasting hours before the meal do
not). The objective is the twin's default: time in 70-180 mg/dL
minus 3 × time below 70 over the horizon (higher is better), of the true glucose.

Figures (one JSON line; ``personalised`` holds the same figures with the personal heads):

* ``picks_best``: share of patients whose truly best plan the twin ranks first, among those
  where the best plan beats the runner-up by at least ``--margin`` (clear-cut cases); goal
  ≥ 0.80. ``picks_near_best``: share of all patients where the twin's choice is within
  ``--margin`` of the best. ``regret``: mean true score lost by following the twin's choice.
* the same for the baseline rule "always the usual bolus D" (``baseline_*``), and the ratios.
* ``rmse_factual`` / ``rmse_counterfactual``: RMSE of the twin's mean course against the
  CGM the simulator produced under the factual plan / under the five others (and ``*_bg``:
  against the noise-free glucose); goal: counterfactual ≤ 1.5 × factual. Per plan too.

The twin is trained here (``--train-patients`` adults, 1 day each, who miss 30 % of their meal
boluses and count carbohydrate loosely, so the data hold meals with and without insulin; plain
Adam, seeded) or loaded from a run directory (``--model RUN_DIR``, e.g. a demo's run). Seeds:
``--seed`` drives the cohorts, the meals, the initialisation and the sampling.

Example: ``python bench/whatif_quality.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedtwin.cohorts import (
    BasalBolusPlan,
    BehaviourNoise,
    OpenLoopPlan,
    ScenarioConfig,
    SiteSpec,
    draw_scenario,
    replay,
    simulate_site,
    site_population,
)
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch, batch_windows
from fedtwin.twins.calibration import CalibrationScales, abs_z_histogram, fit_calibration
from fedtwin.twins.personalise import PersonalHead, personalise
from fedtwin.twins.runfile import load_twin_run
from fedtwin.twins.training import PatientWindowDataset, train_non_private, usable_rows
from fedtwin.twins.whatif import Bolus, Carbs, GlucosePlan, Objective, compare_plans

DAY_MIN = 1440
ANCHOR_MIN = DAY_MIN + 240
FACTUAL = "bolus D"
BEHAVIOUR = BehaviourNoise(carb_count_log_sd=0.3, missed_bolus_probability=0.3)
# name -> (multiple of D, minutes after the meal)
PLANS: dict[str, tuple[float, int]] = {
    "no bolus": (0.0, 0),
    "bolus 0.5 D": (0.5, 0),
    FACTUAL: (1.0, 0),
    "bolus 1.5 D": (1.5, 0),
    "bolus 2 D": (2.0, 0),
    "bolus D, 30 min late": (1.0, 30),
}


def train_twin(args: argparse.Namespace) -> tuple[GlucoseTwin, CalibrationScales]:
    """A twin trained without privacy on simulated adults (seeded), with its calibration."""
    spec = SiteSpec(
        site_id="whatif-train",
        n_patients=args.train_patients,
        days=1.0,
        seed=args.seed,
        scenario=ScenarioConfig(behaviour=BEHAVIOUR),
    )
    (site,) = simulate_site(spec, batch_patients=args.train_patients, substeps=1)
    trajectory = site.trajectory
    config = GlucoseTwinConfig()
    cgm = trajectory.cgm_mg_dl.float()
    n_calibration = max(8, args.train_patients // 10)
    batches = {}
    for name, rows in (
        ("train", range(n_calibration, args.train_patients)),
        ("calibration", range(n_calibration)),
    ):
        index = torch.as_tensor(list(rows))
        batches[name] = PatientBatch.from_arrays(
            [trajectory.names[i] for i in rows],
            cgm[index],
            trajectory.insulin_u.float()[index],
            trajectory.carbs_announced_g.float()[index],
            ~torch.isnan(cgm[index]),
            None,
            config.history_steps,
            config.horizon_steps,
        )
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train = batches["train"].select(usable_rows(batches["train"], 4))
    model = GlucoseTwin(config)
    dataset = PatientWindowDataset(train, generator, windows_per_patient=4)
    train_non_private(
        model, dataset, steps=args.steps, batch_size=64, learning_rate=4e-3, generator=generator
    )
    model.eval()
    windows = batch_windows(batches["calibration"], stride=2)
    return model, fit_calibration(abs_z_histogram(model, windows))


def counterfactuals(args: argparse.Namespace, config: GlucoseTwinConfig) -> dict[str, Any]:
    """The test patients' days, meals, doses and true courses under every plan."""
    horizon = args.horizon_min
    spec = SiteSpec(
        site_id="whatif-test", n_patients=args.test_patients, days=2.0, seed=args.seed + 1
    )
    params = site_population(spec)
    scenario = draw_scenario(
        params,
        ScenarioConfig(behaviour=BEHAVIOUR),
        minutes=ANCHOR_MIN + horizon + 5,
        seed=args.seed + 1,
    )
    before = replay(
        params, BasalBolusPlan(), scenario=scenario, until_minute=ANCHOR_MIN, substeps=1
    )
    generator = torch.Generator().manual_seed(args.seed + 2)
    meals = 40.0 + 60.0 * torch.rand(params.batch_size, generator=generator, dtype=torch.float64)
    pump = BasalBolusPlan().pump
    basal = BasalBolusPlan().basal_u_per_min(params.basal_u_per_min)
    truth: dict[str, Any] = {}
    doses: dict[str, torch.Tensor] = {}
    for name, (multiple, delay) in PLANS.items():
        dose = pump.bolus_u(multiple * meals / params.carb_ratio_g_per_u)
        carbs = torch.zeros(params.batch_size, horizon + 5, dtype=torch.float64)
        insulin = basal[:, None].repeat(1, horizon + 5)
        carbs[:, 0] = meals
        insulin[:, delay] = insulin[:, delay] + dose
        truth[name] = replay(
            params,
            OpenLoopPlan(carbs, insulin, start_minute=ANCHOR_MIN),
            scenario=scenario,
            start=before.final,
            substeps=1,
        )
        doses[name] = dose
    cgm = before.cgm_mg_dl.float()
    days = PatientBatch.from_arrays(
        [f"test-{row}" for row in range(params.batch_size)],
        cgm,
        before.insulin_u.float(),
        before.carbs_announced_g.float(),
        ~torch.isnan(cgm),
        None,
        config.history_steps,
        config.horizon_steps,
    )
    return {
        "before": before,
        "days": days,
        "truth": truth,
        "doses": doses,
        "meals": meals,
        "basal_u_per_h": 60.0 * basal,
        "history_steps": config.history_steps,
    }


def personal_heads(
    model: GlucoseTwin, calibration: CalibrationScales | None, days: PatientBatch
) -> list[PersonalHead]:
    """Each test patient's head, fitted on that patient's day before the what-if."""
    return [
        personalise(model, batch_windows(days.select([row]), stride=2), calibration=calibration)
        for row in range(len(days))
    ]


def evaluate(
    model: GlucoseTwin,
    calibration: CalibrationScales | None,
    cases: dict[str, Any],
    args: argparse.Namespace,
    heads: list[PersonalHead] | None = None,
) -> dict[str, Any]:
    objective, margin = Objective(), args.margin
    before, truth, length = cases["before"], cases["truth"], cases["history_steps"]
    steps = args.horizon_min // 5
    names = list(PLANS)
    squared: dict[str, list[float]] = {n: [] for n in names}
    squared_bg: dict[str, list[float]] = {n: [] for n in names}
    clear, picked, near, regret = 0, 0, 0, 0.0
    base_picked, base_near, base_regret = 0, 0, 0.0
    patients = before.bg_mg_dl.shape[0]
    started = time.perf_counter()
    for row in range(patients):
        cgm = torch.cat(
            [before.cgm_mg_dl[row, -(length - 1) :], truth[FACTUAL].cgm_mg_dl[row, :1]]
        ).float()
        if torch.isnan(cgm).any():
            cgm = torch.where(torch.isnan(cgm), torch.nanmean(cgm), cgm)  # sensor gap: carry
        history = torch.stack(
            [
                cgm,
                before.insulin_u[row, -length:].float(),
                before.carbs_announced_g[row, -length:].float(),
            ]
        )
        meal = (Carbs(at_min=0, grams=float(cases["meals"][row])),)
        plans = [
            GlucosePlan(
                name=name,
                carbs=meal,
                boluses=(Bolus(at_min=delay, units=float(cases["doses"][name][row])),),
            )
            for name, (_, delay) in PLANS.items()
        ]
        comparison = compare_plans(
            model,
            history,
            plans,
            current_basal_u_per_h=float(cases["basal_u_per_h"][row]),
            horizon_min=args.horizon_min,
            calibration=calibration,
            head=heads[row] if heads is not None else None,
            samples=0,
        )
        forecast = {o.name: torch.as_tensor(o.mean_mg_dl) for o in comparison.outcomes}
        score = {}
        for name in names:
            course = truth[name]
            bg = course.bg_mg_dl[row, 1 : steps + 1]
            seen = course.cgm_mg_dl[row, 1 : steps + 1]
            score[name] = float(objective.score(bg.float()))
            ok = ~torch.isnan(seen)
            squared[name].extend(((forecast[name] - seen)[ok] ** 2).tolist())
            squared_bg[name].extend(((forecast[name] - bg) ** 2).tolist())
        ranked = sorted(names, key=lambda n: -score[n])
        best, choice = ranked[0], comparison.best.name
        regret += score[best] - score[choice]
        base_regret += score[best] - score[FACTUAL]
        near += score[choice] >= score[best] - margin
        base_near += score[FACTUAL] >= score[best] - margin
        if score[best] - score[ranked[1]] >= margin:
            clear += 1
            picked += choice == best
            base_picked += best == FACTUAL
    seconds = time.perf_counter() - started

    def rmse(values: list[float]) -> float:
        return math.sqrt(sum(values) / len(values))

    others = [v for n in names if n != FACTUAL for v in squared[n]]
    others_bg = [v for n in names if n != FACTUAL for v in squared_bg[n]]
    factual, counterfactual = rmse(squared[FACTUAL]), rmse(others)
    picks = picked / clear if clear else math.nan
    base_picks = base_picked / clear if clear else math.nan
    return {
        "patients": patients,
        "plans": len(names),
        "horizon_min": args.horizon_min,
        "margin": margin,
        "clear_cut_patients": clear,
        "picks_best": round(picks, 3),
        "picks_near_best": round(near / patients, 3),
        "regret": round(regret / patients, 4),
        "baseline": "always the usual bolus D",
        "baseline_picks_best": round(base_picks, 3),
        "baseline_picks_near_best": round(base_near / patients, 3),
        "baseline_regret": round(base_regret / patients, 4),
        "ratio_picks_best": round(picks / base_picks, 3) if base_picks else None,
        "rmse_factual": round(factual, 2),
        "rmse_counterfactual": round(counterfactual, 2),
        "ratio_counterfactual_factual": round(counterfactual / factual, 3),
        "rmse_factual_bg": round(rmse(squared_bg[FACTUAL]), 2),
        "rmse_counterfactual_bg": round(rmse(others_bg), 2),
        "rmse_by_plan": {n: round(rmse(squared[n]), 2) for n in names},
        "goals": {"picks_best": 0.8, "ratio_counterfactual_factual": 1.5},
        "compare_s_per_patient": round(seconds / patients, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a glucose twin's run directory")
    parser.add_argument("--train-patients", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--test-patients", type=int, default=120)
    parser.add_argument("--horizon-min", type=int, default=360)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    if args.model is not None:
        run = load_twin_run(args.model)
        model, calibration, source = run.model, run.calibration, str(args.model)
    else:
        model, calibration = train_twin(args)
        source = f"trained here: {args.train_patients} adults, {args.steps} steps"
    trained = time.perf_counter() - started
    cases = counterfactuals(args, model.config)
    result: dict[str, Any] = {"bench": "whatif_quality", "model": source, "seed": args.seed}
    result.update(evaluate(model, calibration, cases, args))
    heads = personal_heads(model, calibration, cases["days"])
    result["personalised"] = evaluate(model, calibration, cases, args, heads)
    result["setup_s"] = round(trained, 1)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
