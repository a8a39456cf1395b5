"""Bedside oncology twin: one new day observed, then a what-if of 100 plans × 28 days.

:class:`fedtwin.twins.OncologyPatientTwin` keeps only the encoder's receptive field of days
plus running totals, so a day's update and the next comparison cost the same whatever the
length of the patient's history. The baseline is what a twin without that state does: re-read
the whole history and forecast from it (:meth:`OncologyTwin.forecast` on ``days`` days, every
plan in one batch), in the same process. The twin is the default architecture
(``OncologyTwinConfig()``) with seeded random weights (latency does not depend on them); the
history is ``--days`` seeded days. Timings are the best of ``--repeat`` runs, wall clock and
process CPU time (``*_cpu_s``, what to read on a shared machine); ``ratio`` is
baseline / stateful CPU time. The forecasts of both paths are checked to agree first.

Example: ``python bench/oncology_observe.py --days 365 --plans 100 --horizon-days 28``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedtwin.twins import (
    OncologyPatientTwin,
    OncologyPlan,
    OncologyTwin,
    OncologyTwinConfig,
    PatientTypeInput,
    TumourSeries,
    load_oncology_twin,
    save_oncology_twin,
)


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, float]:
    """Fastest wall-clock and process CPU time of ``repeat`` runs, seconds."""
    walls, cpus = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return min(walls), min(cpus)


def plans(count: int, horizon: int) -> list[OncologyPlan]:
    """Chemo every 1-7 days and 0-5 radio fractions a week (deterministic)."""
    return [
        OncologyPlan(
            name=f"plan {k:03d}",
            chemo_days=tuple(range(1, horizon + 1, 1 + k % 7)),
            radio_days=tuple(d for d in range(1, horizon + 1) if (d - 1) % 7 < k % 6),
        )
        for k in range(count)
    ]


def main() -> None:
    """Print one JSON line: stateful and full-history latency and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--plans", type=int, default=100)
    parser.add_argument("--horizon-days", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    twin = OncologyTwin(OncologyTwinConfig())
    for parameter in twin.parameters():
        parameter.data.normal_(0.0, 0.05)
    rng = np.random.default_rng(0)
    total = args.days + args.repeat  # each stateful run observes one more day
    all_volume = 30.0 * np.exp(np.cumsum(rng.normal(0.0, 0.03, total)))
    all_chemo = 5.0 * (rng.random(total) < 0.2)
    all_radio = 2.0 * (rng.random(total) < 0.2)
    volume, chemo, radio = (x[: args.days + 1] for x in (all_volume, all_chemo, all_radio))
    candidates = plans(args.plans, args.horizon_days)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "twin.safetensors"
        save_oncology_twin(path, twin.eval(), patient_type=PatientTypeInput.OBSERVED)
        model = load_oncology_twin(path)
    patient = OncologyPatientTwin(model, patient_type=2)
    patient.observe(volume[:-1], chemo[:-1], radio[:-1])

    def stateful() -> object:
        day = patient.days_observed
        patient.observe(all_volume[day], all_chemo[day], all_radio[day])
        return patient.forecast_plans(candidates, args.horizon_days)

    count, horizon = len(candidates), args.horizon_days
    plan_chemo = torch.zeros(count, horizon, dtype=torch.bool)
    plan_radio = torch.zeros_like(plan_chemo)
    plan_chemo[:, 0], plan_radio[:, 0] = bool(chemo[-1]), bool(radio[-1])
    for row, plan in enumerate(candidates):
        plan_chemo[row, [d for d in plan.chemo_days if d < horizon]] = True
        plan_radio[row, [d for d in plan.radio_days if d < horizon]] = True

    def full_history() -> object:
        series = TumourSeries(
            torch.tensor(volume, dtype=torch.float32).expand(count, -1),
            torch.tensor(chemo > 0).expand(count, -1),
            torch.tensor(radio > 0).expand(count, -1),
            torch.full((count,), 2, dtype=torch.long),
        )
        return twin.forecast(series, plan_chemo, plan_radio)

    check = OncologyPatientTwin(model, patient_type=2)
    check.observe(volume, chemo, radio)
    ours = check.forecast_plans(candidates, horizon)
    theirs = full_history()
    assert isinstance(theirs, type(ours))
    max_diff = float((ours.mean_log - theirs.mean_log).abs().max())
    assert max_diff < 1e-4, max_diff
    with torch.inference_mode():
        stateful_s, stateful_cpu_s = best_of(args.repeat, stateful)
        full_s, full_cpu_s = best_of(args.repeat, full_history)
    print(
        json.dumps(
            {
                "bench": "oncology_observe",
                "days": args.days,
                "plans": count,
                "horizon_days": horizon,
                "stateful_s": round(stateful_s, 4),
                "stateful_cpu_s": round(stateful_cpu_s, 4),
                "full_history_s": round(full_s, 4),
                "full_history_cpu_s": round(full_cpu_s, 4),
                "ratio": round(full_cpu_s / max(stateful_cpu_s, 1e-9), 2),
                "max_abs_log_diff": max_diff,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
