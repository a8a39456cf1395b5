"""Wall time of the default ``fedtwin demo`` (3 sites x 1000 patients, 5 rounds).

Baseline, measured in the same run: the same demo with one round and one local step, i.e. the
fixed cost (simulating the cohorts, starting Ray and Flower, writing outputs). Prints one JSON
line: ``seconds`` (default demo), ``baseline_seconds`` and ``ratio`` (= seconds / baseline).
Seeded (seed 0); run from the repository root with the project's venv.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _time_demo(*flags: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fedtwin.cli", "demo", "--out", out, *flags],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    seconds = _time_demo()
    baseline = _time_demo("--rounds", "1")
    print(
        json.dumps(
            {
                "bench": "demo_time",
                "seconds": round(seconds, 2),
                "baseline": "same demo with --rounds 1 (fixed cost)",
                "baseline_seconds": round(baseline, 2),
                "ratio": round(seconds / baseline, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
