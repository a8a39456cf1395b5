"""One patient's oncology twin: observe in O(new days), same forecasts as the full history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtwin.errors import ConfigError
from fedtwin.twins import OncologyTwin, OncologyTwinConfig, RegimenObjective
from fedtwin.twins.oncology import TumourSeries
from fedtwin.twins.oncology_files import (
    OncologyModel,
    PatientTypeInput,
    load_oncology_twin,
    save_oncology_twin,
)
from fedtwin.twins.oncology_patient import OncologyPatientTwin, OncologyPlan, OncologyPlansFile

SMALL = OncologyTwinConfig(
    horizon_days=4, treatment_lag_days=3, channels=8, hidden=16, dilations=(1, 2)
)
DAYS = 30


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OncologyModel:
    torch.manual_seed(0)
    twin = OncologyTwin(SMALL)
    for head in (twin.growth, twin.response, twin.scale):
        torch.nn.init.normal_(head.weight, std=0.3)
    path = tmp_path_factory.mktemp("model") / "twin.safetensors"
    save_oncology_twin(path, twin.eval(), patient_type=PatientTypeInput.OBSERVED)
    return load_oncology_twin(path)


def _patient(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volumes (cm^3), chemo (mg) and radio (Gy) of ``DAYS`` days."""
    rng = np.random.default_rng(seed)
    volume = 20.0 * np.exp(np.cumsum(rng.normal(0.0, 0.05, DAYS)))
    chemo = 5.0 * (rng.random(DAYS) < 0.3)
    radio = 2.0 * (rng.random(DAYS) < 0.3)
    return volume, chemo, radio


def _observed(model: OncologyModel, cuts: tuple[int, ...]) -> OncologyPatientTwin:
    volume, chemo, radio = _patient()
    twin = OncologyPatientTwin(model, patient_type=3)
    for start, end in zip((0, *cuts), (*cuts, DAYS), strict=True):
        twin.observe(volume[start:end], chemo[start:end], radio[start:end])
    return twin


PLAN = OncologyPlan(name="a", chemo_days=(1, 3, 8), radio_days=(2, 9))


def test_observed_twin_forecasts_as_the_model_on_the_full_history(model: OncologyModel) -> None:
    twin = _observed(model, (7, 19, 23))
    volume, chemo, radio = _patient()
    full = TumourSeries(
        torch.tensor(volume[None], dtype=torch.float32),
        torch.tensor(chemo[None] > 0),
        torch.tensor(radio[None] > 0),
        torch.tensor([3]),
    )
    horizon = 10
    plan_chemo = torch.zeros(1, horizon, dtype=torch.bool)
    plan_radio = torch.zeros_like(plan_chemo)
    plan_chemo[0, [0, 1, 3, 8]] = torch.tensor([chemo[-1] > 0, True, True, True])
    plan_radio[0, [0, 2, 9]] = torch.tensor([radio[-1] > 0, True, True])
    expected = model.twin.forecast(full, plan_chemo, plan_radio)
    got = twin.forecast_plans([PLAN], horizon)
    assert twin.days_observed == DAYS and twin.window_days < DAYS  # old days were folded
    torch.testing.assert_close(got.mean_log, expected.mean_log, atol=1e-5, rtol=0.0)
    torch.testing.assert_close(got.std_log, expected.std_log, atol=1e-5, rtol=0.0)


def test_observing_in_one_call_or_many_gives_the_same_forecast(model: OncologyModel) -> None:
    once = _observed(model, ()).forecast(PLAN, 12)
    daily = _observed(model, tuple(range(1, DAYS))).forecast(PLAN, 12)
    np.testing.assert_allclose(daily.volume_cm3, once.volume_cm3, rtol=1e-5)
    np.testing.assert_allclose(daily.upper_cm3, once.upper_cm3, rtol=1e-5)


def test_forecast_is_dated_after_the_last_day_with_the_plan_doses(model: OncologyModel) -> None:
    twin = OncologyPatientTwin(model, patient_type=1)
    twin.observe([10.0, 11.0, 12.0], first_day=40)
    result = twin.forecast(PLAN, 9)
    assert result.days.tolist() == list(range(43, 52))
    assert result.chemo_mg.tolist() == [5.0, 0, 5.0, 0, 0, 0, 0, 5.0, 0]
    assert result.radio_gy[1] == 2.0 and result.radio_gy.sum() == 4.0
    assert np.all(result.lower_cm3 < result.volume_cm3) and np.all(
        result.volume_cm3 < result.upper_cm3
    )


@pytest.mark.parametrize(
    ("first_day", "message"),
    [(35, "day 35: leaves a gap after the history"), (20, "day 20: overlaps the history")],
)
def test_new_days_must_continue_the_history(
    model: OncologyModel, first_day: int, message: str
) -> None:
    twin = _observed(model, ())
    before = twin.forecast(PLAN, 10).volume_cm3
    with pytest.raises(ConfigError, match=message):
        twin.observe([10.0], first_day=first_day)
    assert twin.last_day == DAYS - 1
    np.testing.assert_array_equal(twin.forecast(PLAN, 10).volume_cm3, before)


@pytest.mark.parametrize(
    ("volume", "chemo", "radio", "message"),
    [
        ([10.0, -1.0], [0, 0], [0, 0], "day 31: tumour_volume_cm3 must be finite and > 0"),
        ([10.0, 9.0], [0, -5.0], [0, 0], "day 31: chemo_mg -5 is negative"),
        ([10.0, 9.0], [0, 0], [-2.0, 0], "day 30: radio_gy -2 is negative"),
        ([10.0, 9.0], [3.0, 0], [0, 0], "day 30: chemo_mg 3 is neither 0 nor the protocol dose"),
        ([10.0, 9.0], [0], [0, 0], "chemo_mg has 1 days"),
    ],
)
def test_bad_days_are_refused_and_leave_the_state(
    model: OncologyModel, volume: list[float], chemo: list[float], radio: list[float], message: str
) -> None:
    twin = _observed(model, ())
    with pytest.raises(ConfigError, match=message):
        twin.observe(volume, chemo, radio)
    assert twin.days_observed == DAYS


def test_patient_type_is_required_by_a_twin_trained_with_types(model: OncologyModel) -> None:
    with pytest.raises(ConfigError, match="needs the patient type"):
        OncologyPatientTwin(model)


def test_compare_ranks_by_the_objective_with_intervals(model: OncologyModel) -> None:
    twin = _observed(model, ())
    plans = [
        OncologyPlan(name="none"),
        PLAN,
        OncologyPlan(name="radio", radio_days=(1, 2, 3, 4, 5)),
    ]
    ranking = twin.compare(plans, 10, RegimenObjective(chemo_dose_weight=2.0))
    assert [row.rank for row in ranking] == [1, 2, 3]
    assert [row.objective for row in ranking] == sorted(row.objective for row in ranking)
    assert all(r.objective_low < r.objective < r.objective_high for r in ranking)
    by_name = {row.name: row for row in ranking}
    assert by_name["radio"].radio_gy == 10.0 and by_name["a"].chemo_doses == 3


def test_plan_treating_after_the_horizon_is_refused(model: OncologyModel) -> None:
    with pytest.raises(ConfigError, match="treats on day 9, after the horizon of 5 days"):
        _observed(model, ()).forecast(PLAN, 5)


def test_plans_file_refuses_unknown_fields_and_repeated_names() -> None:
    with pytest.raises(ValueError, match=r"chemo_dayz\n  Extra inputs"):
        OncologyPlansFile.model_validate({"plans": [{"name": "a", "chemo_dayz": [1]}]})
    with pytest.raises(ValueError, match="'a' repeats"):
        OncologyPlansFile.model_validate({"plans": [{"name": "a"}, {"name": "a"}]})


def test_patient_type_is_refused_by_a_twin_trained_without_types(
    model: OncologyModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("blind") / "twin.safetensors"
    save_oncology_twin(path, model.twin, patient_type=PatientTypeInput.UNKNOWN)
    blind = load_oncology_twin(path)
    with pytest.raises(ConfigError, match="trained without patient types"):
        OncologyPatientTwin(blind, patient_type=1)
    assert OncologyPatientTwin(blind).patient_type == 2
