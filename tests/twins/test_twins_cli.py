"""``fedtwin twin forecast`` and ``what-if`` as a clinician runs them: real subprocesses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtwin.cohorts import CohortSeries
from fedtwin.errors import ConfigError
from fedtwin.twins.runfile import load_twin_run

FEDTWIN = [sys.executable, "-m", "fedtwin.cli", "twin"]
START = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*FEDTWIN, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def _test_patient(series: CohortSeries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in range(144, 160) if not torch.isnan(series.cgm_mg_dl[r]).any()]
    row = rows[0]
    return (
        series.cgm_mg_dl[row].double().numpy(),
        series.insulin_u[row].double().numpy(),
        series.carbs_g[row].double().numpy(),
    )


@pytest.fixture
def history_csv(
    tmp_path: Path, twin_series: CohortSeries, write_device_csv: Callable[..., Path]
) -> Path:
    cgm, insulin, carbs = _test_patient(twin_series)
    return write_device_csv(tmp_path / "history.csv", cgm, insulin, carbs)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_rolling_forecast_has_one_forecast_per_row_after_warm_up_and_beats_persistence(
    tmp_path: Path, twin_run_dir: Path, history_csv: Path, twin_series: CohortSeries
) -> None:
    result = _run(
        "forecast", "--model", str(twin_run_dir), "--history", str(history_csv),
        "--horizon-min", "30", "--out", "forecast.csv", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = _read(tmp_path / "forecast.csv")
    assert list(rows[0]) == ["origin", "time", "glucose_mg_dl", "lower_mg_dl", "upper_mg_dl"]
    cgm, _, _ = _test_patient(twin_series)
    length = load_twin_run(twin_run_dir).config.history_steps
    origins = sorted({row["origin"] for row in rows})
    assert len(origins) == len(cgm) - length and len(rows) == 6 * len(origins)
    start = datetime.fromisoformat(origins[0])
    by_time = {start + timedelta(minutes=5 * k): value for k, value in enumerate(cgm[length:])}
    errors, persistence = [], []
    for row in rows:
        origin, time = datetime.fromisoformat(row["origin"]), datetime.fromisoformat(row["time"])
        mean = float(row["glucose_mg_dl"])
        assert float(row["lower_mg_dl"]) <= mean <= float(row["upper_mg_dl"])
        assert (time - origin) % timedelta(minutes=5) == timedelta(0)
        if time - origin == timedelta(minutes=30) and time in by_time:
            errors.append(mean - by_time[time])
            persistence.append(by_time[origin] - by_time[time])
    assert np.sqrt(np.mean(np.square(errors))) < np.sqrt(np.mean(np.square(persistence)))


@pytest.mark.slow
def test_last_writes_only_the_latest_origin(
    tmp_path: Path, twin_run_dir: Path, history_csv: Path
) -> None:
    result = _run(
        "forecast", "--model", str(twin_run_dir), "--history", str(history_csv),
        "--horizon-min", "60", "--out", "last.csv", "--last", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = _read(tmp_path / "last.csv")
    last_time = _read(history_csv)[-1]["time"]
    assert len(rows) == 12 and {row["origin"] for row in rows} == {last_time}


def test_history_too_short_exits_2_with_one_line_and_no_output(
    tmp_path: Path,
    twin_run_dir: Path,
    twin_series: CohortSeries,
    write_device_csv: Callable[..., Path],
) -> None:
    cgm, insulin, carbs = _test_patient(twin_series)
    short = write_device_csv(tmp_path / "short.csv", cgm[:20], insulin[:20], carbs[:20])
    result = _run(
        "forecast", "--model", str(twin_run_dir), "--history", str(short), "--out", "f.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "history too short" in result.stderr
    assert not any(tmp_path.glob("f.csv*"))


def test_a_model_of_another_twin_kind_is_refused_before_any_output(
    tmp_path: Path, twin_run_dir: Path, history_csv: Path
) -> None:
    from fedtwin.cli.twin_forecast import run_forecast_command

    other = tmp_path / "other-run"
    other.mkdir()
    card = json.loads((twin_run_dir / "model_card.json").read_text())
    (other / "model_card.json").write_text(json.dumps({**card, "model_kind": "oncology-twin"}))
    (other / "model.safetensors").write_bytes((twin_run_dir / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="model_kind is 'oncology-twin'"):
        run_forecast_command(
            other, history_csv, tmp_path / "f.csv", 30, last=False, basal_only=False
        )
    assert not any(tmp_path.glob("f.csv*"))


def test_unknown_plan_fields_exit_2_naming_the_field(
    tmp_path: Path, twin_run_dir: Path, history_csv: Path
) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"plans": [{"name": "a", "bolus_u": 4}]}))
    result = _run(
        "what-if", "--model", str(twin_run_dir), "--history", str(history_csv),
        "--plans", str(plans), "--plot", "p.png", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "plans.0.bolus_u: Extra inputs are not permitted" in result.stderr
    assert not any(tmp_path.glob("p.png*"))


@pytest.mark.slow
def test_what_if_prints_the_ranking_and_writes_a_png(
    tmp_path: Path, twin_run_dir: Path, history_csv: Path
) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(
        json.dumps(
            {
                "horizon_min": 480,
                "plans": [
                    {"name": "meal, no bolus", "carbs": [{"at_min": 0, "grams": 70}]},
                    {
                        "name": "meal + 7 U",
                        "carbs": [{"at_min": 0, "grams": 70}],
                        "boluses": [{"at_min": 0, "units": 7}],
                    },
                ],
            }
        )
    )
    result = _run(
        "what-if", "--model", str(twin_run_dir), "--history", str(history_csv),
        "--plans", str(plans), "--plot", "plans.png", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ranked = [line for line in lines if "meal" in line]
    assert "meal + 7 U" in ranked[0] and "no bolus" in ranked[1]
    assert (tmp_path / "plans.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_gap_longer_than_the_twin_bridges_is_refused_naming_the_lines(
    tmp_path: Path,
    twin_run_dir: Path,
    twin_series: CohortSeries,
    write_device_csv: Callable[..., Path],
) -> None:
    from fedtwin.cli.twin_forecast import run_forecast_command

    cgm, insulin, carbs = _test_patient(twin_series)
    gapped = cgm.copy()
    gapped[100:106] = np.nan  # readings at CSV lines 101 and 108 (line 1 is the header)
    history = write_device_csv(tmp_path / "gap.csv", gapped, insulin, carbs)
    with pytest.raises(ConfigError, match="between the glucose readings at line 101 and line 108"):
        run_forecast_command(
            twin_run_dir, history, tmp_path / "f.csv", 30, last=False, basal_only=False
        )
    assert not any(tmp_path.glob("f.csv*"))


@pytest.mark.parametrize(("horizon_min", "message"), [(32, "multiple of 5"), (65, "exceeds")])
def test_horizon_not_a_multiple_of_5_or_past_the_model_is_refused(
    tmp_path: Path, twin_run_dir: Path, history_csv: Path, horizon_min: int, message: str
) -> None:
    from fedtwin.cli.twin_forecast import run_forecast_command

    with pytest.raises(ConfigError, match=message):
        run_forecast_command(
            twin_run_dir, history_csv, tmp_path / "f.csv", horizon_min, last=False,
            basal_only=False,
        )  # fmt: skip
    assert not any(tmp_path.glob("f.csv*"))


def test_no_insulin_in_the_history_is_refused(
    tmp_path: Path,
    twin_run_dir: Path,
    twin_series: CohortSeries,
    write_device_csv: Callable[..., Path],
) -> None:
    from fedtwin.cli.twin_forecast import run_forecast_command

    cgm, _, carbs = _test_patient(twin_series)
    history = write_device_csv(tmp_path / "h.csv", cgm, np.full(len(cgm), np.nan), carbs)
    history.write_text(history.read_text().replace(",nan,", ",,"))
    with pytest.raises(ConfigError, match="no insulin_u value"):
        run_forecast_command(
            twin_run_dir, history, tmp_path / "f.csv", 30, last=False, basal_only=False
        )


def _forecasts(
    tmp_path: Path,
    run_dir: Path,
    write_device_csv: Callable[..., Path],
    series: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    basal_only: bool,
) -> dict[datetime, list[dict[str, str]]]:
    """Rolling 30-min forecasts of ``series``, grouped by origin."""
    from fedtwin.cli.twin_forecast import run_forecast_command

    name = f"h{len(list(tmp_path.iterdir()))}"
    history = write_device_csv(tmp_path / f"{name}.csv", *series, start=START)
    run_forecast_command(
        run_dir, history, tmp_path / f"{name}-out.csv", 30, last=False, basal_only=basal_only
    )
    grouped: dict[datetime, list[dict[str, str]]] = {}
    for row in _read(tmp_path / f"{name}-out.csv"):
        grouped.setdefault(datetime.fromisoformat(row["origin"]), []).append(row)
    return grouped


@pytest.mark.parametrize("basal_only", [False, True])
def test_forecasts_never_read_glucose_after_their_origin(
    tmp_path: Path,
    twin_run_dir: Path,
    twin_series: CohortSeries,
    write_device_csv: Callable[..., Path],
    basal_only: bool,
) -> None:
    cgm, insulin, carbs = _test_patient(twin_series)
    changed = cgm.copy()
    changed[150:] = 300.0
    plain = _forecasts(tmp_path, twin_run_dir, write_device_csv, (cgm, insulin, carbs),
                       basal_only=basal_only)  # fmt: skip
    altered = _forecasts(tmp_path, twin_run_dir, write_device_csv, (changed, insulin, carbs),
                         basal_only=basal_only)  # fmt: skip
    cut = START + timedelta(minutes=5 * 150)
    assert all(altered[o] == rows for o, rows in plain.items() if o < cut)
    assert any(altered[o] != rows for o, rows in plain.items() if o >= cut)


def test_basal_mode_reads_no_treatment_after_the_origin_row(
    tmp_path: Path,
    twin_run_dir: Path,
    twin_series: CohortSeries,
    write_device_csv: Callable[..., Path],
) -> None:
    cgm, insulin, carbs = _test_patient(twin_series)
    changed = carbs.copy()
    changed[151:] += 40.0
    kinds = {}
    for basal_only in (False, True):
        plain = _forecasts(tmp_path, twin_run_dir, write_device_csv, (cgm, insulin, carbs),
                           basal_only=basal_only)  # fmt: skip
        altered = _forecasts(tmp_path, twin_run_dir, write_device_csv, (cgm, insulin, changed),
                             basal_only=basal_only)  # fmt: skip
        origin = START + timedelta(minutes=5 * 150)
        kinds[basal_only] = altered[origin] == plain[origin]
    assert kinds == {True: True, False: False}  # recorded mode conditions on logged carbs
