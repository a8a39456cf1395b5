"""Resources per second of the FHIR ingest (validating) vs a bare ``json.loads`` loop.

Generates a site with :func:`fedtwin.fhir.write_site` (default 1,000 patients × 14 days of
5-minute CGM ≈ 4 million Observations, plus carbohydrate Observations and insulin
MedicationAdministrations; values synthetic but plausible, seeded with ``--seed``, default 0),
then in the same process times

* the floor: read every NDJSON line of the same files and ``json.loads`` it, nothing else;
* the ingest: :func:`fedtwin.fhir.read_site` (streaming, validating every resource with
  fhir.resources or its exact validated-shape cache, gridding every patient).

Both are timed in process CPU time (``time.process_time``), so other load on a shared machine
skews the ratio less; floor and ingest run ``--repeat`` times, alternating, and the best of each
is used (the per-repeat ratios are printed too, as a measure of the noise). The ingest's wall
time is printed as well. Prints one JSON line: resources/s of each, their ratio (ingest time /
floor time; the goal is ≤ 3) and the peak RSS of the process (``resource.getrusage``), after
the first floor and after everything.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from fedtwin.fhir import (
    GlucoseHistory,
    IngestOptions,
    IngestPolicy,
    read_site,
    write_site,
)

STEPS_PER_DAY = 288


def synthetic_patients(count: int, days: int, seed: int) -> Iterator[GlucoseHistory]:
    """Plausible T1D histories: smooth glucose with meals, three boluses a day, a basal profile."""
    rng = np.random.default_rng(seed)
    steps = days * STEPS_PER_DAY
    minutes = np.arange(steps) * 5.0
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for index in range(count):
        carbs = np.zeros(steps)
        bolus = np.zeros(steps)
        for day in range(days):
            for hour, grams in ((7.5, 45.0), (12.5, 70.0), (19.0, 80.0)):
                k = day * STEPS_PER_DAY + int((hour * 60 + rng.normal(0, 20)) // 5)
                carbs[k] = round(max(5.0, grams + rng.normal(0, 10)), 0)
                bolus[k] = round(carbs[k] / 10.0, 1)
        response = np.convolve(carbs, np.exp(-np.arange(36) / 12.0), mode="full")[:steps]
        glucose = 110 + 20 * np.sin(2 * np.pi * minutes / 1440) + 1.2 * response
        glucose += np.cumsum(rng.normal(0, 1.5, steps)) * 0.2 + rng.normal(0, 4, steps)
        glucose = np.clip(np.round(glucose, 1), 40, 400)
        glucose[rng.random(steps) < 0.02] = np.nan
        hours = (minutes // 60) % 24
        basal = np.where(hours < 6, 0.7, np.where(hours < 12, 1.0, 0.85)) * (
            0.8 + 0.4 * (index % 5) / 4
        )
        yield GlucoseHistory(
            patient_id=f"pt{index:05d}",
            birth_date=date(1960 + index % 40, 1 + index % 12, 1 + index % 28),
            sex="female" if index % 2 else "male",
            start=start,
            cgm_mg_dl=glucose,
            carbs_g=carbs,
            bolus_u=bolus,
            basal_u_per_h=np.round(basal, 2),
            weight_kg=round(float(55 + 30 * rng.random()), 1),
        )


def json_floor(folder: Path) -> tuple[int, float]:
    """Lines parsed and seconds taken by a bare json.loads loop over the export's files."""
    count = 0
    started = time.process_time()
    for path in sorted(folder.glob("*.ndjson")):
        with path.open("rb") as handle:
            for line in handle:
                json.loads(line)
                count += 1
    return count, time.process_time() - started


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="floor+ingest pairs; best of each")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedtwin-ingest-", dir=args.work_dir))
    try:
        site = work / "site"
        started = time.perf_counter()
        written = write_site(site, synthetic_patients(args.patients, args.days, args.seed))
        write_s = time.perf_counter() - started
        print(f"generated {written.counts} in {write_s:.0f} s", file=sys.stderr)
        rss_after_floor = 0.0
        floors: list[float] = []
        ingests: list[float] = []
        walls: list[float] = []
        for _ in range(args.repeat):
            lines, floor_s = json_floor(site)
            floors.append(floor_s)
            if len(floors) == 1:
                rss_after_floor = peak_rss_mib()
            started = time.process_time()
            wall_started = time.perf_counter()
            export = read_site(
                site,
                secret=bytes(32),
                options=IngestOptions(policy=IngestPolicy.strict()),
            )
            ingests.append(time.process_time() - started)
            walls.append(time.perf_counter() - wall_started)
            report = export.report
            assert report.read == lines and report.rejected == 0, report.model_dump_json()
            assert report.patients_usable == args.patients
            del export
        floor_s, ingest_s = min(floors), min(ingests)
        print(
            json.dumps(
                {
                    "bench": "ingest_throughput",
                    "patients": args.patients,
                    "days": args.days,
                    "resources": lines,
                    "observations": report.resources["Observation"].read,
                    "ingest_resources_per_s": round(lines / ingest_s),
                    "baseline": "bare json.loads loop over the same files, same process",
                    "baseline_resources_per_s": round(lines / floor_s),
                    "ratio": round(ingest_s / floor_s, 3),
                    "ingest_cpu_s": round(ingest_s, 2),
                    "baseline_cpu_s": round(floor_s, 2),
                    "ingest_wall_s": round(min(walls), 2),
                    "repeats": args.repeat,
                    "ratios_per_repeat": [
                        round(i / f, 3) for i, f in zip(ingests, floors, strict=True)
                    ],
                    "peak_rss_mib_after_baseline": round(rss_after_floor, 1),
                    "peak_rss_mib": round(peak_rss_mib(), 1),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
