"""BatchedT1DPatient against the reference simulator simglucose 0.2.11 (T1DPatient, dopri5)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cohorts_reference import ReferenceRunner, simglucose_gsub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtwin.cohorts import BatchedT1DPatient, VirtualPatientParams, all_patient_names

TOLERANCE_MG_DL = 1.0
DAY_MIN = 1440


def day_actions(
    name: str, meals: list[tuple[int, float]], suspend: tuple[int, int] | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Basal all day, meal boluses (carbs / CR), optional pump suspension."""
    params = VirtualPatientParams.select([name])
    basal = float(params.basal_u_per_min[0])
    cr = float(params.carb_ratio_g_per_u[0])
    cho = np.zeros(DAY_MIN)
    insulin = np.full(DAY_MIN, basal)
    for minute, grams in meals:
        cho[minute] += grams
        insulin[minute] += grams / cr
    if suspend is not None:
        insulin[suspend[0] : suspend[1]] = 0.0
    return cho, insulin


def run_batched(
    names: list[str], cho: npt.NDArray[np.float64], insulin: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Our simulator, BG before each step, for a batch of [B, T] actions."""
    patient = BatchedT1DPatient(VirtualPatientParams.select(names))
    out = np.empty(cho.shape)
    cho_t, insulin_t = torch.from_numpy(cho), torch.from_numpy(insulin)
    with torch.no_grad():
        for t in range(cho.shape[1]):
            out[:, t] = patient.bg_mg_dl.numpy()
            patient.step(cho_t[:, t], insulin_t[:, t])
    return out


ADOLESCENT_DAY = ("adolescent#001", [(420, 50.0), (720, 75.0), (900, 15.0), (1080, 90.0)])


def test_adolescent_day_matches_simglucose(reference_gsub: ReferenceRunner) -> None:
    name, meals = ADOLESCENT_DAY
    cho, insulin = day_actions(name, meals, suspend=(120, 240))
    expected = reference_gsub(name, cho, insulin)
    ours = run_batched([name], cho[None], insulin[None])[0]
    assert expected.max() - expected.min() > 50.0  # the day is not flat
    assert np.abs(ours - expected).max() < TOLERANCE_MG_DL


def test_batch_rows_do_not_mix(reference_gsub: ReferenceRunner) -> None:
    cases = [
        ADOLESCENT_DAY,
        ("child#001", [(400, 40.0), (401, 10.0), (780, 60.0), (1150, 70.0)]),
        ("adult#001", [(460, 45.0), (700, 30.0), (705, 30.0), (1000, 100.0)]),
    ]
    actions = [day_actions(name, meals) for name, meals in cases]
    actions[0] = day_actions(*ADOLESCENT_DAY, suspend=(120, 240))
    cho = np.stack([a[0] for a in actions])
    insulin = np.stack([a[1] for a in actions])
    ours = run_batched([c[0] for c in cases], cho, insulin)
    for row, (name, _) in enumerate(cases):
        expected = reference_gsub(name, cho[row], insulin[row])
        assert np.abs(ours[row] - expected).max() < TOLERANCE_MG_DL, name


@st.composite
def action_sequences(
    draw: st.DrawFn,
) -> tuple[str, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    name = draw(st.sampled_from(all_patient_names()))
    minutes = draw(st.integers(60, 180))
    basal = float(VirtualPatientParams.select([name]).basal_u_per_min[0])
    cho = np.zeros(minutes)
    insulin = np.zeros(minutes)
    for _ in range(draw(st.integers(0, 3))):
        cho[draw(st.integers(0, minutes - 1))] += draw(st.floats(1.0, 120.0))
    start = 0
    while start < minutes:
        length = draw(st.integers(1, 60))
        rate = draw(st.sampled_from([0.0, basal, 2 * basal])) + draw(
            st.sampled_from([0.0, 0.0, 0.05, 1.0, 5.0])
        ) * (length == 1)
        insulin[start : start + length] = rate
        start += length
    return name, cho, insulin


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=action_sequences(), second=action_sequences())
def test_random_actions_match_simglucose(
    first: tuple[str, npt.NDArray[np.float64], npt.NDArray[np.float64]],
    second: tuple[str, npt.NDArray[np.float64], npt.NDArray[np.float64]],
) -> None:
    minutes = min(len(first[1]), len(second[1]))
    cases = [(n, c[:minutes], i[:minutes]) for n, c, i in (first, second)]
    ours = run_batched(
        [n for n, _, _ in cases],
        np.stack([c for _, c, _ in cases]),
        np.stack([i for _, _, i in cases]),
    )
    for row, (name, cho, insulin) in enumerate(cases):
        expected = simglucose_gsub(name, cho, insulin)
        assert np.abs(ours[row] - expected).max() < TOLERANCE_MG_DL, name


@pytest.mark.parametrize("substeps", [1, 4])
def test_substeps_converge(substeps: int) -> None:
    name, meals = ADOLESCENT_DAY
    cho, insulin = day_actions(name, meals)
    params = VirtualPatientParams.select([name])
    default = BatchedT1DPatient(params)
    other = BatchedT1DPatient(params, substeps=substeps)
    for t in range(600):
        c, i = torch.tensor([cho[t]]), torch.tensor([insulin[t]])
        default.step(c, i)
        other.step(c, i)
    assert abs(float(default.bg_mg_dl[0] - other.bg_mg_dl[0])) < 0.1
