"""What-if latency: 100 treatment plans rolled 24 h ahead for one patient, on the CPU.

:func:`fedtwin.twins.whatif.compare_plans` rolls every plan in one batch (one network pass per
chained forecast for all plans) and scores them with 200 joint draws. The baseline is the same
comparison run plan by plan (100 calls, one plan each) in the same process. The twin is the
federation's default architecture (``GlucoseTwinConfig()``: 3 h of history, 120-min horizon,
so 24 chained forecasts per day) with seeded random weights (latency does not depend on the
weights); ``batched_s_120min`` repeats the batched run for a 120-min-horizon twin (12 chained
forecasts). Goal: ``batched_s <= 1``. Timings are the best of ``--repeat`` runs, as wall
clock and as process CPU time (``*_cpu_s``, what to read on a shared machine).

Example: ``python bench/whatif_latency.py --plans 100 --hours 24``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig
from fedtwin.twins.whatif import Bolus, Carbs, GlucosePlan, compare_plans


def plans(count: int) -> list[GlucosePlan]:
    """Bolus sizes × timings × basal rates around a 60 g meal (deterministic)."""
    out = []
    for k in range(count):
        boluses = (Bolus(at_min=5 * (k % 7), units=0.5 * (k % 13)),)
        out.append(
            GlucosePlan(
                name=f"plan {k:03d}",
                basal_u_per_h=0.5 + 0.1 * (k % 11),
                boluses=boluses,
                carbs=(Carbs(at_min=0, grams=60.0), Carbs(at_min=360, grams=40.0 + k % 30)),
            )
        )
    return out


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, float]:
    """Fastest wall-clock and process CPU time of ``repeat`` runs, seconds.

    On a shared machine the CPU time is the figure to read: wall time there includes waiting
    for a core.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return min(walls), min(cpus)


def main() -> None:
    """Print one JSON line: batched and plan-by-plan latency and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", type=int, default=100)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GlucoseTwinConfig()
    model = GlucoseTwin(config).eval()
    for parameter in model.parameters():
        parameter.data.normal_(0.0, 0.05)
    long_config = GlucoseTwinConfig(horizon_steps=24)
    long_model = GlucoseTwin(long_config).eval()
    g = torch.Generator().manual_seed(1)
    history = torch.stack(
        [
            140.0 + 30.0 * torch.rand(config.history_steps, generator=g),
            torch.full((config.history_steps,), 0.08),
            torch.zeros(config.history_steps),
        ]
    )
    candidates = plans(args.plans)
    horizon_min = 60 * args.hours

    def batched(twin: GlucoseTwin = model) -> object:
        return compare_plans(
            twin, history, candidates, current_basal_u_per_h=1.0, horizon_min=horizon_min
        )

    def one_by_one() -> object:
        return [
            compare_plans(
                model, history, [plan], current_basal_u_per_h=1.0, horizon_min=horizon_min
            )
            for plan in candidates
        ]

    batched_s, batched_cpu_s = best_of(args.repeat, batched)
    baseline_s, baseline_cpu_s = best_of(args.repeat, one_by_one)
    long_s, long_cpu_s = best_of(args.repeat, lambda: batched(long_model))
    print(
        json.dumps(
            {
                "bench": "whatif_latency",
                "plans": args.plans,
                "horizon_h": args.hours,
                "batched_s": round(batched_s, 4),
                "one_by_one_s": round(baseline_s, 4),
                "speedup_vs_one_by_one": round(baseline_s / batched_s, 2),
                "batched_cpu_s": round(batched_cpu_s, 4),
                "one_by_one_cpu_s": round(baseline_cpu_s, 4),
                "batched_s_120min": round(long_s, 4),
                "batched_cpu_s_120min": round(long_cpu_s, 4),
                "goal_s": 1.0,
                "meets_goal": batched_s <= 1.0,
                "meets_goal_cpu": batched_cpu_s <= 1.0,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
