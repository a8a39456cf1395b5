"""Benchmark: batched UVA/Padova simulator vs simglucose on the same patients and actions.

Every one of the 30 published subjects gets a seeded day of actions (random meals with carb-ratio
boluses, a 150 g meal, stacked correction boluses, a 3-hour pump suspension, a high temporary
basal). simglucose's ``T1DPatient`` steps each patient-day minute by minute; our simulator runs
the same 30 days inside a batch of ``30 x replicas`` patient-days (replicas get their own seeded
actions). Prints one JSON line: patient-days per second of both, their ratio, and the largest
|ΔBG| between the two over every minute of the 30 checked days.

Example: ``python bench/simulator_throughput.py --replicas 100``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import numpy.typing as npt
import torch

from fedtwin.cohorts import (
    DEFAULT_SUBSTEPS,
    OpenLoopPlan,
    VirtualPatientParams,
    all_patient_names,
    replay,
)

MINUTES = 1440
Array = npt.NDArray[np.float64]


def day_actions(params: VirtualPatientParams, row: int, seed: int) -> tuple[Array, Array]:
    """One patient-day of actions: meals and boluses plus adversarial episodes."""
    rng = np.random.default_rng(seed)
    basal = float(params.basal_u_per_min[row])
    ratio = float(params.carb_ratio_g_per_u[row])
    cho = np.zeros(MINUTES)
    insulin = np.full(MINUTES, basal)
    for mean_min, grams in ((420, 45.0), (720, 70.0), (1080, 80.0), (570, 10.0), (900, 10.0)):
        minute = int(np.clip(rng.normal(mean_min, 40), 0, MINUTES - 1))
        size = max(0.0, rng.normal(grams, 10.0))
        cho[minute] += size
        if rng.random() > 0.1:  # 10 % of meal boluses are forgotten
            insulin[min(MINUTES - 1, minute + int(rng.integers(0, 20)))] += size / ratio
    big = int(rng.integers(60, 300))
    cho[big] += 150.0
    insulin[big] += 150.0 / ratio
    stack = int(rng.integers(600, 660))
    for k in range(3):
        insulin[stack + 10 * k] += 0.4 * 45.0 / ratio
    suspend = int(rng.integers(1150, 1200))
    insulin[suspend : suspend + 180] = 0.0
    insulin[0:60] = 3.0 * basal
    return cho, insulin


def simglucose_gsub(name: str, cho: Array, insulin: Array) -> Array:
    """Step simglucose's T1DPatient; Gsub before each minute's action."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.patient.t1dpatient import Action, T1DPatient

        patient = T1DPatient.withName(name)
        out = np.empty(len(cho))
        for t in range(len(cho)):
            out[t] = patient.observation.Gsub
            patient.step(Action(CHO=float(cho[t]), insulin=float(insulin[t])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=100, help="action sets per patient")
    parser.add_argument("--oracle-patients", type=int, default=30, help="days checked (<= 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--substeps", type=int, default=DEFAULT_SUBSTEPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names = list(all_patient_names())
    batch_names = [n for _ in range(args.replicas) for n in names]
    params = VirtualPatientParams.select(batch_names)
    actions = [day_actions(params, i, args.seed * 1_000_003 + i) for i in range(len(batch_names))]
    cho = torch.from_numpy(np.stack([a[0] for a in actions]))
    insulin = torch.from_numpy(np.stack([a[1] for a in actions]))
    plan = OpenLoopPlan(cho, insulin)

    start = time.perf_counter()
    ours = replay(params, plan, step_min=1, substeps=args.substeps).bg_mg_dl.numpy()
    ours_seconds = time.perf_counter() - start

    checked = names[: args.oracle_patients]
    start = time.perf_counter()
    reference = [simglucose_gsub(n, actions[i][0], actions[i][1]) for i, n in enumerate(checked)]
    reference_seconds = time.perf_counter() - start
    errors = [float(np.abs(ours[i] - reference[i]).max()) for i in range(len(checked))]
    worst = int(np.argmax(errors))

    ours_rate = len(batch_names) / ours_seconds
    reference_rate = len(checked) / reference_seconds
    print(
        json.dumps(
            {
                "bench": "simulator_throughput",
                "batch_patient_days": len(batch_names),
                "threads": args.threads,
                "substeps": args.substeps,
                "dtype": "float64",
                "seconds": round(ours_seconds, 2),
                "patient_days_per_s": round(ours_rate, 1),
                "ms_per_simulated_minute": round(1000 * ours_seconds / MINUTES, 3),
                "baseline": "simglucose 0.2.11 T1DPatient (scipy dopri5), same actions",
                "baseline_patient_days": len(checked),
                "baseline_patient_days_per_s": round(reference_rate, 4),
                "ratio": round(ours_rate / reference_rate, 1),
                "max_abs_delta_bg_mg_dl": round(errors[worst], 4),
                "worst_patient": checked[worst],
                "bg_range_mg_dl": [
                    round(float(np.min(reference)), 1),
                    round(float(np.max(reference)), 1),
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
