"""The per-patient window dataset: one item per patient, batch fetch equal to item fetch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.twins.records import PatientBatch
from fedtwin.twins.training import PatientWindowDataset, usable_rows


@pytest.mark.parametrize("windows_per_patient", [1, 3])
def test_batch_fetch_draws_the_same_windows_as_item_fetch(
    twin_patients: dict[str, PatientBatch], windows_per_patient: int
) -> None:
    batch = twin_patients["train"]
    batch = batch.select(usable_rows(batch, windows_per_patient))
    patients = [5, 0, 5, len(batch) - 1, 2]

    one = PatientWindowDataset(batch, torch.Generator().manual_seed(7), windows_per_patient)
    many = PatientWindowDataset(batch, torch.Generator().manual_seed(7), windows_per_patient)
    singles = [one[p] for p in patients]
    together = many.__getitems__(patients)
    assert len(together) == len(patients)
    for single, joint in zip(singles, together, strict=True):
        for a, b in zip(single, joint, strict=True):
            assert a.shape == b.shape
            assert torch.equal(a, b)
    assert many.__getitems__([]) == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=40))
def test_batch_fetch_windows_belong_to_their_patient(
    twin_patients: dict[str, PatientBatch], picks: list[int]
) -> None:
    batch = twin_patients["train"]
    dataset = PatientWindowDataset(batch, torch.Generator().manual_seed(sum(picks)), 2)
    patients = [p % len(batch) for p in picks]
    for patient, (history, _plan, target) in zip(
        patients, dataset.__getitems__(patients), strict=True
    ):
        series = batch.cgm_mg_dl[patient]
        for window in range(2):
            # The window's glucose history and target are a contiguous slice of its patient.
            glucose = torch.cat([history[window, 0], target[window]])
            found = any(
                torch.allclose(series[start : start + len(glucose)], glucose)
                for start in range(len(series) - len(glucose) + 1)
            )
            assert found
