"""BatchedT1DPatient against the reference simulator simglucose 0.2.11 (T1DPatient, dopri5).

The replay contract: for any action sequence, glucose within 0.5 mg/dL of simglucose's Gsub at
every minute. simglucose costs about 6 s per patient-day, so CI checks two full days, three
adversarial 6-hour scenarios on a rotating trio of patients (one per age group; the rotation
moves daily, or is pinned with FEDTWIN_ORACLE_ROTATION=k, k in 0-9, so ten runs cover all 30
subjects), and hypothesis-drawn random actions. ``bench/simulator_throughput.py`` checks a full
adversarial day of every subject.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cohorts_reference import ReferenceRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtwin.cohorts import (
    AgeGroup,
    BatchedT1DPatient,
    VirtualPatientParams,
    all_patient_names,
    names_in_group,
)

TOLERANCE_MG_DL = 0.5
DAY_MIN = 1440
FIVE_HOURS = 300
Actions = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


def rotation() -> int:
    pinned = os.environ.get("FEDTWIN_ORACLE_ROTATION")
    return int(pinned) % 10 if pinned else dt.date.today().toordinal() % 10


def therapy(name: str) -> tuple[float, float]:
    params = VirtualPatientParams.select([name])
    return float(params.basal_u_per_min[0]), float(params.carb_ratio_g_per_u[0])


def day_actions(
    name: str, meals: list[tuple[int, float]], suspend: tuple[int, int] | None = None
) -> Actions:
    """Basal all day, meal boluses (carbs / CR), optional pump suspension."""
    basal, ratio = therapy(name)
    cho = np.zeros(DAY_MIN)
    insulin = np.full(DAY_MIN, basal)
    for minute, grams in meals:
        cho[minute] += grams
        insulin[minute] += grams / ratio
    if suspend is not None:
        insulin[suspend[0] : suspend[1]] = 0.0
    return cho, insulin


def big_meals_and_stacking(name: str) -> Actions:
    basal, ratio = therapy(name)
    cho, insulin = np.zeros(FIVE_HOURS), np.full(FIVE_HOURS, basal)
    for minute, grams in ((30, 150.0), (200, 120.0), (210, 60.0)):
        cho[minute] += grams
        insulin[minute] += 2.0 * grams / ratio
    for minute, units in ((220, 10.0), (230, 10.0), (240, 5.0)):
        insulin[minute] += units
    return cho, insulin


def overdose_then_hypo(name: str) -> Actions:
    basal, _ = therapy(name)
    cho, insulin = np.zeros(FIVE_HOURS), np.full(FIVE_HOURS, basal)
    insulin[30] += 25.0
    insulin[60:180] = 0.0
    insulin[180:] = 5.0 * basal
    return cho, insulin


def zero_basal_fasting(name: str) -> Actions:
    cho = np.zeros(FIVE_HOURS)
    cho[60] = 200.0
    return cho, np.zeros(FIVE_HOURS)


ADVERSARIAL = {
    "big_meals_and_stacking": (big_meals_and_stacking, 0),
    "overdose_then_hypo": (overdose_then_hypo, 3),
    "zero_basal_fasting": (zero_basal_fasting, 6),
}


def run_batched(names: list[str], cho: npt.NDArray[np.float64], insulin: npt.NDArray[np.float64]):  # type: ignore[no-untyped-def]
    """Our simulator, BG before each step, for a batch of [B, T] actions."""
    patient = BatchedT1DPatient(VirtualPatientParams.select(names))
    out = np.empty(cho.shape)
    cho_t, insulin_t = torch.from_numpy(cho), torch.from_numpy(insulin)
    for t in range(cho.shape[1]):
        out[:, t] = patient.bg_mg_dl.numpy()
        patient.step(cho_t[:, t], insulin_t[:, t])
    return out


@pytest.mark.slow
def test_a_full_day_and_a_half_day_in_one_batch_match_simglucose(
    reference_gsub: ReferenceRunner,
) -> None:
    cases = {
        "adolescent#001": day_actions(
            "adolescent#001", [(420, 50.0), (720, 75.0), (900, 15.0), (1080, 90.0)], (120, 240)
        ),
        "child#001": day_actions("child#001", [(100, 40.0), (101, 10.0), (500, 60.0)]),
    }
    names = list(cases)
    ours = run_batched(
        names, np.stack([c for c, _ in cases.values()]), np.stack([i for _, i in cases.values()])
    )
    horizons = {"adolescent#001": DAY_MIN, "child#001": DAY_MIN // 2}
    for row, name in enumerate(names):
        horizon = horizons[name]
        cho, insulin = cases[name]
        expected = reference_gsub(name, cho[:horizon], insulin[:horizon])
        assert expected.max() - expected.min() > 50.0  # the day is not flat
        assert np.abs(ours[row, :horizon] - expected).max() < TOLERANCE_MG_DL, name


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(ADVERSARIAL))
def test_adversarial_actions_match_simglucose(kind: str, reference_gsub: ReferenceRunner) -> None:
    build, offset = ADVERSARIAL[kind]
    names = [names_in_group(g)[(rotation() + offset) % 10] for g in AgeGroup]
    actions = [build(name) for name in names]
    ours = run_batched(names, np.stack([a[0] for a in actions]), np.stack([a[1] for a in actions]))
    for row, name in enumerate(names):
        expected = reference_gsub(name, *actions[row])
        assert np.abs(ours[row] - expected).max() < TOLERANCE_MG_DL, name


@st.composite
def action_sequences(draw: st.DrawFn) -> tuple[str, Actions]:
    name = draw(st.sampled_from(all_patient_names()))
    minutes = draw(st.integers(60, 240))
    basal, _ = therapy(name)
    cho = np.zeros(minutes)
    insulin = np.zeros(minutes)
    for _ in range(draw(st.integers(0, 3))):
        cho[draw(st.integers(0, minutes - 1))] += draw(st.floats(1.0, 200.0))
    start = 0
    while start < minutes:
        length = draw(st.integers(1, 90))
        rate = draw(st.sampled_from([0.0, basal, 2 * basal, 5 * basal]))
        insulin[start : start + length] = rate
        start += length
    for _ in range(draw(st.integers(0, 2))):
        insulin[draw(st.integers(0, minutes - 1))] += draw(st.sampled_from([0.05, 1.0, 10.0, 30.0]))
    return name, (cho, insulin)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=action_sequences())
def test_random_actions_match_simglucose(
    case: tuple[str, Actions], reference_gsub: ReferenceRunner
) -> None:
    name, (cho, insulin) = case
    ours = run_batched([name], cho[None], insulin[None])[0]
    assert np.abs(ours - reference_gsub(name, cho, insulin)).max() < TOLERANCE_MG_DL


def test_four_substeps_change_a_meal_by_less_than_five_hundredths() -> None:
    cho, insulin = day_actions("adolescent#001", [(30, 80.0)])
    params = VirtualPatientParams.select(["adolescent#001"])
    default, finer = BatchedT1DPatient(params), BatchedT1DPatient(params, substeps=4)
    worst = 0.0
    for t in range(180):
        c, i = torch.tensor([cho[t]]), torch.tensor([insulin[t]])
        default.step(c, i)
        finer.step(c, i)
        worst = max(worst, abs(float(default.bg_mg_dl[0] - finer.bg_mg_dl[0])))
    assert worst < 0.05
