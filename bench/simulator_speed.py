"""Benchmark: batched cohort simulation against simglucose's T1DPatient (one patient-day).

Prints one JSON line. Example: ``python bench/simulator_speed.py --patients 600 --days 2``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from fedtwin.cohorts import VirtualPatientParams, all_patient_names, simulate_cohort

MINUTES_PER_DAY = 1440


def simglucose_patient_day_seconds(name: str) -> float:
    """Wall time of simglucose stepping one patient through one day (basal + three meals)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.patient.t1dpatient import Action, T1DPatient

        params = VirtualPatientParams.select([name])
        basal = float(params.basal_u_per_min[0])
        cr = float(params.carb_ratio_g_per_u[0])
        meals = {420: 45.0, 720: 70.0, 1080: 80.0}
        patient = T1DPatient.withName(name)
        start = time.perf_counter()
        for minute in range(MINUTES_PER_DAY):
            cho = meals.get(minute, 0.0)
            patient.step(Action(CHO=cho, insulin=basal + cho / cr))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=300, help="batch size")
    parser.add_argument("--days", type=float, default=1.0, help="simulated days")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-patient", default="adolescent#001")
    args = parser.parse_args()

    names = [all_patient_names()[i % 30] for i in range(args.patients)]
    start = time.perf_counter()
    simulate_cohort(names, args.days, seed=args.seed)
    seconds = time.perf_counter() - start
    baseline = simglucose_patient_day_seconds(args.baseline_patient)
    patient_days_per_s = args.patients * args.days / seconds
    print(
        json.dumps(
            {
                "bench": "simulator_speed",
                "patients": args.patients,
                "days": args.days,
                "seconds": round(seconds, 3),
                "patient_days_per_s": round(patient_days_per_s, 2),
                "baseline": "simglucose T1DPatient one patient-day",
                "baseline_seconds": round(baseline, 3),
                "ratio": round(patient_days_per_s * baseline, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
