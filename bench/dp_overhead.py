"""Time per training step of the glucose twin with Opacus (patient-level DP-SGD) vs without.

Same model (the default twin), same expected batch of patients, same windows per patient, same
data, same process. The baseline is the non-private step (plain Adam on a plain DataLoader over
the same patient dataset). Every Opacus grad-sample mode the engine offers is timed (all are
exact: see tests/privacy/test_privacy_engine.py); prints one JSON line with ms per step per mode,
the baseline and the ratio of the fastest mode. Seeded (seed 0); cohort of simulated adults.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import get_args

import torch

from fedtwin.cohorts import AgeGroup, names_in_group, simulate_cohort
from fedtwin.privacy import DpSgdConfig, train_private_round
from fedtwin.privacy.engine import GradSampleMode
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch
from fedtwin.twins.training import PatientWindowDataset, train_non_private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--windows-per-patient", type=int, default=DpSgdConfig().windows_per_patient
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    twin = GlucoseTwinConfig()
    names = [names_in_group(AgeGroup.ADULT)[i % 10] for i in range(args.patients)]
    cohort = simulate_cohort(names, days=1.0, seed=0)

    def dataset() -> PatientWindowDataset:
        batch = PatientBatch.from_arrays(
            cohort.patient_names,
            cohort.cgm_mg_dl,
            cohort.insulin_u,
            cohort.carbs_g,
            None,
            None,
            twin.history_steps,
            twin.horizon_steps,
        )
        return PatientWindowDataset(
            batch, torch.Generator().manual_seed(0), args.windows_per_patient
        )

    def time_private(mode: GradSampleMode) -> float:
        config = DpSgdConfig(
            local_steps=args.steps,
            expected_batch_patients=args.batch,
            windows_per_patient=args.windows_per_patient,
            grad_sample_mode=mode,
        )
        started = time.perf_counter()
        train_private_round(GlucoseTwin(twin), dataset(), 1.0, config, torch.Generator())
        return (time.perf_counter() - started) / args.steps

    def time_plain() -> float:
        started = time.perf_counter()
        train_non_private(
            GlucoseTwin(twin), dataset(), args.steps, args.batch, 1e-2, torch.Generator()
        )
        return (time.perf_counter() - started) / args.steps

    modes: tuple[GradSampleMode, ...] = get_args(GradSampleMode)
    for mode in modes:
        time_private(mode)  # warm-up
    time_plain()
    per_mode = {mode: min(time_private(mode) for _ in range(args.repeats)) for mode in modes}
    plain = min(time_plain() for _ in range(args.repeats))
    fastest = min(per_mode, key=per_mode.__getitem__)
    print(
        json.dumps(
            {
                "bench": "dp_overhead",
                "patients": args.patients,
                "expected_batch_patients": args.batch,
                "windows_per_patient": args.windows_per_patient,
                "dp_ms_per_step": {m: round(1000 * t, 2) for m, t in per_mode.items()},
                "fastest_mode": fastest,
                "default_mode": DpSgdConfig().grad_sample_mode,
                "baseline": "same model, batch and windows without Opacus",
                "baseline_ms_per_step": round(1000 * plain, 2),
                "ratio": round(per_mode[fastest] / plain, 3),
                "ratio_per_mode": {m: round(t / plain, 3) for m, t in per_mode.items()},
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
