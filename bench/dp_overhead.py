"""Time per training step of the glucose twin with Opacus (patient-level DP-SGD) vs without.

Same model, same batch size, same data, same process. The baseline is the non-private step
(plain Adam on a plain DataLoader over the same patient dataset). Prints one JSON line with
``dp_ms_per_step``, ``baseline_ms_per_step`` and ``ratio``. Seeded (seed 0); cohort of
simulated adults.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from fedtwin.cohorts import AgeGroup, names_in_group, simulate_cohort
from fedtwin.privacy import DpSgdConfig, train_private_round
from fedtwin.twins import GlucoseTwin
from fedtwin.twins.training import PatientWindowDataset, train_non_private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    names = [names_in_group(AgeGroup.ADULT)[i % 10] for i in range(args.patients)]
    cohort = simulate_cohort(names, days=1.0, seed=0)

    def dataset() -> PatientWindowDataset:
        return PatientWindowDataset(
            cohort.cgm_mg_dl,
            cohort.insulin_u,
            cohort.carbs_g,
            36,
            12,
            torch.Generator().manual_seed(0),
        )

    def time_private() -> float:
        config = DpSgdConfig(local_steps=args.steps, expected_batch_patients=args.batch)
        started = time.perf_counter()
        train_private_round(GlucoseTwin(), dataset(), 1.0, config, torch.Generator())
        return (time.perf_counter() - started) / args.steps

    def time_plain() -> float:
        started = time.perf_counter()
        train_non_private(GlucoseTwin(), dataset(), args.steps, args.batch, 1e-2, torch.Generator())
        return (time.perf_counter() - started) / args.steps

    time_private(), time_plain()  # warm-up
    dp = min(time_private() for _ in range(3))
    plain = min(time_plain() for _ in range(3))
    print(
        json.dumps(
            {
                "bench": "dp_overhead",
                "patients": args.patients,
                "expected_batch_patients": args.batch,
                "dp_ms_per_step": round(1000 * dp, 2),
                "baseline": "same model and batch without Opacus",
                "baseline_ms_per_step": round(1000 * plain, 2),
                "ratio": round(dp / plain, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
