from pathlib import Path

import numpy as np
import pytest
import torch

from fedtwin.cohorts import CohortSeries
from fedtwin.errors import ConfigError
from fedtwin.twins import cut_windows
from fedtwin.twins.calibration import gaussian_quantile
from fedtwin.twins.runfile import load_twin_run
from fedtwin.twins.twin import Twin
from fedtwin.twins.whatif import Bolus, Carbs, GlucosePlan


def _patient(series: CohortSeries, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cgm = series.cgm_mg_dl[row].double().numpy()
    return cgm, series.insulin_u[row].double().numpy(), series.carbs_g[row].double().numpy()


def _complete_row(series: CohortSeries) -> int:
    complete = ~torch.isnan(series.cgm_mg_dl).any(dim=1)
    return int(torch.nonzero(complete)[-1])


def test_observing_in_one_call_or_row_by_row_gives_the_same_forecast(
    twin_run_dir: Path, twin_series: CohortSeries
) -> None:
    cgm, insulin, carbs = _patient(twin_series, _complete_row(twin_series))
    run = load_twin_run(twin_run_dir)
    at_once, row_by_row = Twin(run), Twin(run)
    at_once.observe(cgm[:100], insulin[:100], carbs[:100])
    for k in range(100):
        row_by_row.observe(cgm[k], insulin[k], carbs[k])
    assert torch.equal(at_once.history(), row_by_row.history())
    assert np.array_equal(at_once.forecast().mean_mg_dl, row_by_row.forecast().mean_mg_dl)


def test_state_after_observing_is_the_window_the_model_was_trained_on(
    twin_run_dir: Path, twin_series: CohortSeries
) -> None:
    row = _complete_row(twin_series)
    cgm, insulin, carbs = _patient(twin_series, row)
    twin = Twin.from_run_dir(twin_run_dir)
    twin.observe(cgm[:80], insulin[:80], carbs[:80])
    config = twin.config
    window = cut_windows(
        twin_series.cgm_mg_dl, twin_series.insulin_u, twin_series.carbs_g,
        torch.tensor([row]), torch.tensor([79]), config.history_steps, config.horizon_steps,
    )  # fmt: skip
    assert torch.equal(twin.history(), window.history[0])
    recorded = GlucosePlan(
        name="as recorded",
        basal_u_per_h=0.0,
        boluses=tuple(Bolus(at_min=5 * j, units=float(u)) for j, u in enumerate(insulin[79:91])),
        carbs=tuple(Carbs(at_min=5 * j, grams=float(g)) for j, g in enumerate(carbs[79:91])),
    )
    with torch.no_grad():
        expected = twin.run.model.forecast(window.history, window.plan).mean_mg_dl[0]
    assert np.allclose(twin.forecast(recorded).mean_mg_dl, expected.double().numpy(), atol=1e-3)


def test_band_uses_the_calibration_of_the_model_card(
    twin_run_dir: Path, twin_series: CohortSeries
) -> None:
    cgm, insulin, carbs = _patient(twin_series, _complete_row(twin_series))
    twin = Twin.from_run_dir(twin_run_dir)
    twin.observe(cgm[:60], insulin[:60], carbs[:60])
    forecast = twin.forecast()
    assert twin.run.calibration is not None
    plan = twin.default_plan(twin.config.horizon_steps)
    with torch.no_grad():
        raw = twin.run.model.forecast(twin.history()[None], plan[None]).std_mg_dl[0].double()
    scale = torch.tensor(twin.run.calibration.std_scale, dtype=torch.float64)
    assert np.allclose(forecast.std_mg_dl, (raw * scale).numpy(), rtol=1e-5)
    half_width = gaussian_quantile(0.9) * forecast.std_mg_dl
    assert np.allclose(forecast.upper_mg_dl - forecast.mean_mg_dl, half_width)


def test_a_short_gap_is_filled_linearly(twin_run_dir: Path, twin_series: CohortSeries) -> None:
    cgm, insulin, carbs = _patient(twin_series, _complete_row(twin_series))
    gapped = cgm[:60].copy()
    gapped[50:53] = np.nan
    twin = Twin.from_run_dir(twin_run_dir)
    twin.observe(gapped, insulin[:60], carbs[:60])
    history = twin.history()[0].double().numpy()
    offset = 60 - twin.config.history_steps
    filled = history[50 - offset : 53 - offset]
    expected = cgm[49] + (cgm[53] - cgm[49]) * np.array([1, 2, 3]) / 4
    assert np.allclose(filled, expected, atol=1e-4)


def test_a_long_gap_empties_the_history_until_it_refills(
    twin_run_dir: Path, twin_series: CohortSeries
) -> None:
    cgm, insulin, carbs = _patient(twin_series, _complete_row(twin_series))
    gapped = cgm[:100].copy()
    gapped[50:54] = np.nan  # 4 missing readings: 25 min between readings
    twin = Twin.from_run_dir(twin_run_dir)
    length = twin.config.history_steps
    twin.observe(gapped[: 54 + length - 1], insulin[: 54 + length - 1], carbs[: 54 + length - 1])
    assert not twin.ready
    with pytest.raises(ConfigError, match="needs"):
        twin.forecast()
    twin.observe(gapped[54 + length - 1 : 54 + length], insulin[54 + length - 1 : 54 + length],
                 carbs[54 + length - 1 : 54 + length])  # fmt: skip
    assert twin.ready


def test_forecast_past_the_model_horizon_chains_and_starts_like_one_forecast(
    twin_run_dir: Path, twin_series: CohortSeries
) -> None:
    cgm, insulin, carbs = _patient(twin_series, _complete_row(twin_series))
    twin = Twin.from_run_dir(twin_run_dir)
    twin.observe(cgm[:60], insulin[:60], carbs[:60])
    one = twin.forecast()
    long = twin.forecast(horizon_min=240)
    steps = twin.config.horizon_steps
    assert len(long.mean_mg_dl) == 48 and long.minutes_ahead[-1] == 240
    assert np.allclose(long.mean_mg_dl[:steps], one.mean_mg_dl, atol=1e-4)
    assert np.all(np.diff(long.std_mg_dl[steps - 1 :: steps]) > 0)  # uncertainty accumulates


def test_bad_treatment_values_are_refused(twin_run_dir: Path) -> None:
    twin = Twin.from_run_dir(twin_run_dir)
    with pytest.raises(ConfigError, match="insulin_u"):
        twin.observe([120.0], [-1.0], [0.0])
    with pytest.raises(ConfigError, match="equal length"):
        twin.observe([120.0, 121.0], [0.1], [0.0])
