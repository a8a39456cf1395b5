"""``fedtwin twin oncology-*`` end to end in a subprocess: train, forecast, what-if, bad input.

One small generated oncology site (seeded) trains a twin for 2 epochs (seed 0); every command
then runs as a clinician would run it. Bad input exits 2 with one line and leaves no output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtwin.cohorts.generate import GenerateConfig, generate_cohort
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig
from fedtwin.twins.runfile import write_twin_run

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]
HEADER = "day,tumour_volume_cm3,chemo_dose_mg,radio_dose_gy"
PLANS = {
    "horizon_days": 14,
    "plans": [
        {"name": "none"},
        {"name": "weekly chemo", "chemo_days": [1, 8]},
        {"name": "radio", "radio_days": [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]},
    ],
}


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"}
    return subprocess.run(
        [*FEDTWIN, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )


def _history(path: Path, days: int = 30, *, negative_radio_on: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    volume = 40.0 * np.exp(np.cumsum(rng.normal(-0.02, 0.03, days)))
    rows = [HEADER]
    for day in range(days):
        chemo = 5 if day % 7 == 1 else 0
        radio = -2 if day == negative_radio_on else (2 if day % 7 in (2, 3) else 0)
        rows.append(f"{100 + day},{volume[day]:.5g},{chemo},{radio}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site export, a twin trained on it, a glucose run, history and plans files."""
    root = tmp_path_factory.mktemp("oncology-cli")
    config = GenerateConfig(kind="oncology", sites=1, patients=24, days=40, seed=5)
    generate_cohort(config, root / "cohort")
    (site,) = [p for p in (root / "cohort").iterdir() if p.name != "ground_truth"]
    trained = _run(
        "twin", "oncology-train", "--cohort", site, "--out", "onc", "--epochs", "2", "--seed", "0",
        cwd=root,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    glucose = GlucoseTwinConfig(history_steps=12, horizon_steps=6, channels=8, dilations=(1, 2))
    write_twin_run(root / "glucose", GlucoseTwin(glucose))
    _history(root / "history.csv")
    (root / "plans.json").write_text(json.dumps(PLANS), encoding="utf-8")
    (root / "plan.json").write_text(json.dumps(PLANS["plans"][1]), encoding="utf-8")
    return root


def test_train_writes_a_card_accounting_for_every_patient(workdir: Path) -> None:
    card = json.loads((workdir / "onc" / "model_card.json").read_text())
    training = card["training"]
    assert card["model_kind"] == "oncology-twin" and card["patient_type"] == "unknown"
    accounted = (
        training["patients_used"]
        + training["patients_denied_by_consent"]
        + training["patients_too_short"]
    )
    assert accounted == 24 and training["patients_used"] >= 2


def test_train_refuses_to_overwrite_a_model(workdir: Path) -> None:
    before = (workdir / "glucose" / "model.safetensors").read_bytes()
    done = _run(
        "twin", "oncology-train", "--cohort", next((workdir / "cohort").glob("site-*")),
        "--out", "glucose", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 2 and "--out: glucose already holds a model" in done.stderr
    assert (workdir / "glucose" / "model.safetensors").read_bytes() == before


def test_forecast_writes_the_days_after_the_history_with_bands(workdir: Path) -> None:
    done = _run(
        "twin", "oncology-forecast", "--model", "onc", "--history", "history.csv",
        "--horizon-days", "10", "--plan", "plan.json", "--out", "forecast.csv", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with (workdir / "forecast.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["day"]) for r in rows] == list(range(130, 140))
    assert all(
        0 < float(r["lower_cm3"]) < float(r["tumour_volume_cm3"]) < float(r["upper_cm3"])
        for r in rows
    )
    assert [float(r["chemo_dose_mg"]) for r in rows][:8] == [5, 0, 0, 0, 0, 0, 0, 5]


def test_what_if_prints_the_ranking_and_writes_the_plot(workdir: Path) -> None:
    done = _run(
        "twin", "oncology-what-if", "--model", "onc/model.safetensors", "--history",
        "history.csv", "--plans", "plans.json", "--png", "what-if.png", cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "from day 129" in done.stdout
    assert all(name in done.stdout for name in ("none", "weekly chemo", "radio"))
    assert (workdir / "what-if.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(workdir.glob("*.partial"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("short", "history-short.csv: 3 day(s) of history; this twin needs at least 6"),
        ("negative", "history-negative.csv:14: radio_dose_gy: -2 is negative"),
        ("plan", "--plans: plans-bad.json: plans.1.chemo_dayz: Extra inputs are not permitted"),
        ("glucose", "model_card.json: model_kind is 'glucose-twin', this command needs an"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(
    workdir: Path, case: str, message: str
) -> None:
    history, plans, model = "history.csv", "plans.json", "onc"
    if case == "short":
        history = "history-short.csv"
        _history(workdir / history, days=3)
    elif case == "negative":
        history = "history-negative.csv"
        _history(workdir / history, negative_radio_on=12)
    elif case == "plan":
        plans = "plans-bad.json"
        bad = {"plans": [{"name": "a"}, {"name": "b", "chemo_dayz": [1]}]}
        (workdir / plans).write_text(json.dumps(bad), encoding="utf-8")
    else:
        model = "glucose"
    done = _run(
        "twin", "oncology-what-if", "--model", model, "--history", history, "--plans", plans,
        "--png", f"{case}.png", cwd=workdir,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("fedtwin: error: ") and message in lines[0]
    assert not (workdir / f"{case}.png").exists()


def test_glucose_forecast_refuses_an_oncology_model(workdir: Path) -> None:
    done = _run(
        "twin", "forecast", "--model", "onc", "--history", "history.csv", "--out", "g.csv",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 2 and "model_kind is 'oncology-twin'" in done.stderr
    assert not (workdir / "g.csv").exists()


def test_glucose_forecast_names_the_kind_of_a_bare_oncology_model_file(workdir: Path) -> None:
    done = _run(
        "twin", "forecast", "--model", "onc/model.safetensors", "--history", "history.csv",
        "--out", "g2.csv", cwd=workdir,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1
    assert "a model file holding a 'oncology-twin', not a run directory" in lines[0]
    assert "needs the run directory of a 'glucose-twin' model" in lines[0]
    assert not (workdir / "g2.csv").exists()
