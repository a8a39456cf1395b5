import math

import numpy as np
import pytest
import torch

from fedtwin.twins import GlucoseTwin, PatientBatch, cut_windows
from fedtwin.twins.alerts import (
    AlertPerformance,
    HypoAlertConfig,
    alert_performance,
    hypo_alarms,
    hypo_probability,
)

CONFIG = HypoAlertConfig()


def _series(*segments: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(steps, value) for value, steps in segments])


def test_probability_is_the_largest_marginal_probability_within_30_min() -> None:
    mean = torch.tensor([[100.0, 90.0, 70.0, 80.0, 90.0, 100.0, 20.0]])
    std = torch.full_like(mean, 10.0)
    # Step 3 (15 min) sits on the threshold: P = 0.5; step 7 (35 min) is beyond 30 min.
    assert float(hypo_probability(mean, std, CONFIG)[0]) == pytest.approx(0.5, abs=1e-6)


def test_alarm_threshold_on_the_probability_is_configurable() -> None:
    mean = torch.tensor([[85.0] * 6])
    std = torch.full_like(mean, 10.0)  # P(G < 70) = Φ(-1.5) ≈ 0.067 at every step
    assert not bool(hypo_alarms(mean, std, CONFIG)[0])
    assert bool(hypo_alarms(mean, std, HypoAlertConfig(probability=0.05))[0])


def test_an_alarm_in_the_30_min_before_onset_detects_the_event() -> None:
    cgm = _series((120.0, 20), (60.0, 4), (120.0, 20))
    alarm = np.zeros(len(cgm), dtype=bool)
    alarm[15] = True  # 25 min before the onset at bin 20
    result = alert_performance(cgm, alarm, np.ones(len(cgm), dtype=bool), CONFIG)
    assert (result.events, result.detected) == (1, 1)
    assert (result.episodes, result.false_episodes) == (1, 0)
    assert result.sensitivity == 1.0 and result.false_alarm_rate == 0.0


def test_an_alarm_earlier_than_30_min_before_onset_is_a_miss_and_a_false_alarm() -> None:
    cgm = _series((120.0, 20), (60.0, 4), (120.0, 20))
    alarm = np.zeros(len(cgm), dtype=bool)
    alarm[12] = True  # 40 min before the onset
    result = alert_performance(cgm, alarm, np.ones(len(cgm), dtype=bool), CONFIG)
    assert (result.events, result.detected) == (1, 0)
    assert (result.episodes, result.false_episodes) == (1, 1)


def test_short_dips_are_not_events() -> None:
    cgm = _series((120.0, 20), (65.0, 2), (120.0, 20))
    result = alert_performance(
        cgm, np.zeros(len(cgm), dtype=bool), np.ones(len(cgm), dtype=bool), CONFIG
    )
    assert result.events == 0 and math.isnan(result.sensitivity)


def test_consecutive_alarms_count_as_one_episode_and_alarms_in_hypo_are_ignored() -> None:
    cgm = _series((120.0, 20), (60.0, 6), (120.0, 20))
    alarm = np.zeros(len(cgm), dtype=bool)
    alarm[16:26] = True  # before and during the event
    result = alert_performance(cgm, alarm, np.ones(len(cgm), dtype=bool), CONFIG)
    assert result.episodes == 1 and result.false_episodes == 0
    assert result.evaluated_origins == len(cgm) - 6


def test_performance_adds_across_patients() -> None:
    total = AlertPerformance(2, 1, 3, 1, 288) + AlertPerformance(1, 1, 1, 1, 288)
    assert (total.sensitivity, total.false_alarm_rate) == (pytest.approx(2 / 3), 0.5)
    assert total.false_alarms_per_day == pytest.approx(1.0)


def test_twin_alarms_catch_hypoglycaemia_better_than_chance(
    trained_twin: GlucoseTwin, twin_patients: dict[str, PatientBatch]
) -> None:
    batch = twin_patients["test"]
    length, horizon = batch.history_steps, batch.horizon_steps
    totals, random_totals = AlertPerformance(), AlertPerformance()
    generator = np.random.default_rng(0)
    for row in range(len(batch)):
        anchors = torch.nonzero(batch.valid_anchor[row]).flatten()
        windows = cut_windows(
            batch.cgm_mg_dl, batch.insulin_u, batch.carbs_g,
            torch.full_like(anchors, row), anchors, length, horizon,
        )  # fmt: skip
        with torch.no_grad():
            forecast = trained_twin.forecast(windows.history, windows.plan)
        alarm = np.zeros(batch.cgm_mg_dl.shape[1], dtype=bool)
        alarm[anchors.numpy()] = hypo_alarms(forecast.mean_mg_dl, forecast.std_mg_dl, CONFIG)
        evaluated = batch.valid_anchor[row].numpy()
        cgm = batch.cgm_mg_dl[row].double().numpy()
        cgm[cgm == 0.0] = np.nan  # the batch zero-fills sensor drop-outs
        totals = totals + alert_performance(cgm, alarm, evaluated, CONFIG)
        rate = alarm.sum() / max(evaluated.sum(), 1)
        chance = evaluated & (generator.random(len(alarm)) < rate)
        random_totals = random_totals + alert_performance(cgm, chance, evaluated, CONFIG)
    assert totals.events >= 5
    assert totals.sensitivity >= 0.6
    assert totals.sensitivity > random_totals.sensitivity
    assert totals.false_alarm_rate < random_totals.false_alarm_rate
