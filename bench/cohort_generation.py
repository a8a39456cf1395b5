"""Benchmark: 3 sites x 1,000 sampled virtual patients x 14 days, simulated (and written).

Each site has its own age mix (paediatric, adolescent, adult), sampled patients, daily-life
scenarios (meals, carb counting, missed boluses, CGM noise and drop-outs, exercise) and
closed-loop basal-bolus therapy, streamed in patient batches by ``simulate_site``. The
baseline is simglucose's ``T1DPatient`` measured in the same run on a basal-plus-meals day
and projected to the same number of patient-days (patient model only: no scenario, sensor or
controller, which favours the baseline). Prints one JSON line with the wall time, the peak
resident memory and the ratio.

``--mode simulate`` (default) times the simulation alone; ``--mode generate`` times the whole
``fedtwin cohort generate --kind t1d --split age`` path (:func:`generate_cohort`: the same
three sites, consents, FHIR NDJSON written, ground truth written) into a temporary folder,
and adds the resources and bytes written. Run each mode in its own process: the peak RSS is
the process's.

Example: ``python bench/cohort_generation.py --patients 1000 --days 14 --mode generate``.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from fedtwin.cohorts import (
    AgeGroup,
    ExerciseHabit,
    ScenarioConfig,
    SensorDropout,
    SiteSpec,
    VirtualPatientParams,
    simulate_site,
)

SITES = (
    ("site-paediatric", {AgeGroup.CHILD: 0.8, AgeGroup.ADOLESCENT: 0.2}),
    ("site-adolescent", {AgeGroup.ADOLESCENT: 0.7, AgeGroup.CHILD: 0.15, AgeGroup.ADULT: 0.15}),
    ("site-adult", {AgeGroup.ADULT: 0.9, AgeGroup.ADOLESCENT: 0.1}),
)


def simglucose_seconds_per_patient_day(name: str, minutes: int) -> float:
    """Wall time of simglucose per patient-day, from a basal-plus-meals run of ``minutes``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.patient.t1dpatient import Action, T1DPatient

        params = VirtualPatientParams.select([name])
        basal = float(params.basal_u_per_min[0])
        ratio = float(params.carb_ratio_g_per_u[0])
        meals = {60: 45.0, 300: 70.0}
        patient = T1DPatient.withName(name)
        start = time.perf_counter()
        for minute in range(minutes):
            cho = meals.get(minute, 0.0)
            patient.step(Action(CHO=cho, insulin=basal + cho / ratio))
        return (time.perf_counter() - start) * 1440.0 / minutes


def show_progress(site_id: str, fraction: float) -> None:
    """One status line on stderr."""
    print(f"\r{site_id} {100 * fraction:5.1f} %", end="", file=sys.stderr)


def generate_sites(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``generate_cohort`` (simulation, consents, FHIR export, ground truth)."""
    from fedtwin.cohorts.generate import GenerateConfig, generate_cohort

    config = GenerateConfig(
        kind="t1d",
        sites=3,
        patients=args.patients,
        days=args.days,
        seed=args.seed,
        split="age",
        batch_patients=args.batch_patients,
    )
    parent = Path(tempfile.mkdtemp(prefix="fedtwin-bench-"))
    done_at: dict[str, float] = {}

    def progress(site: str, fraction: float, number: int, count: int) -> None:
        if fraction >= 1.0:  # the last call of a site comes once its export is written
            done_at[site] = time.perf_counter()
        print(f"\r{site} {100 * fraction:5.1f} %", end="", file=sys.stderr)

    try:
        start = time.perf_counter()
        generated = generate_cohort(config, parent / "cohort", progress=progress)
        seconds = time.perf_counter() - start
        ends = [start, *done_at.values()]
        per_site: dict[str, dict[str, Any]] = {
            site: {"seconds": round(end - begin, 1)}
            for site, begin, end in zip(done_at, ends, ends[1:], strict=False)
        }
        print(file=sys.stderr)
        written = sum(f.stat().st_size for f in (parent / "cohort").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    for site in generated:
        per_site[site.plan.site_id]["resources"] = site.counts
    return {"per_site": per_site, "bytes_written": written, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000, help="patients per site")
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--batch-patients", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mode",
        choices=("simulate", "generate"),
        default="simulate",
        help="simulation only, or the whole cohort generate path with the FHIR write",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenario = ScenarioConfig(
        dropout=SensorDropout(episodes_per_day=0.3, mean_duration_min=45.0),
        exercise=ExerciseHabit(sessions_per_week=2.0),
    )
    started = time.perf_counter()
    per_site: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if args.mode == "generate":
        extra = generate_sites(args)
        per_site = extra.pop("per_site")
    for site_id, mix in SITES if args.mode == "simulate" else ():
        spec = SiteSpec(
            site_id=site_id,
            n_patients=args.patients,
            age_mix=mix,
            days=args.days,
            scenario=scenario,
            seed=args.seed,
        )
        site_start = time.perf_counter()
        readings = 0
        for batch in simulate_site(
            spec,
            batch_patients=args.batch_patients,
            progress=functools.partial(show_progress, site_id),
        ):
            readings += int((~torch.isnan(batch.trajectory.cgm_mg_dl)).sum())
        per_site[site_id] = {
            "seconds": round(time.perf_counter() - site_start, 1),
            "cgm_readings": readings,
        }
        print(file=sys.stderr)
    # generate mode: the generation alone (not the clean-up of what it wrote)
    seconds = extra.pop("seconds", time.perf_counter() - started)
    patient_days = 3 * args.patients * args.days
    baseline = simglucose_seconds_per_patient_day("adult#001", 360)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "bench": "cohort_generation",
                "mode": args.mode,
                "sites": 3,
                "patients_per_site": args.patients,
                "days": args.days,
                "batch_patients": args.batch_patients,
                "threads": args.threads,
                "seconds": round(seconds, 1),
                "patient_days_per_s": round(patient_days / seconds, 1),
                "per_site": per_site,
                **extra,
                "peak_rss_mib": round(peak_mib, 0),
                "baseline": "simglucose 0.2.11 T1DPatient, projected from a 6 h run",
                "baseline_seconds_per_patient_day": round(baseline, 2),
                "baseline_projected_hours": round(baseline * patient_days / 3600, 1),
                "ratio": round(baseline * patient_days / seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
