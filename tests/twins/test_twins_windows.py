import pytest
import torch

from fedtwin.twins import all_windows, cut_windows, valid_anchor_range


def _series(num_patients: int = 2, num_steps: int = 80) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    cgm = 100 + 50 * torch.rand(num_patients, num_steps, generator=g)
    insulin = torch.rand(num_patients, num_steps, generator=g)
    carbs = 10 * torch.rand(num_patients, num_steps, generator=g)
    return cgm, insulin, carbs


def test_window_slices_follow_the_causal_convention() -> None:
    cgm, insulin, carbs = _series()
    windows = cut_windows(cgm, insulin, carbs, torch.tensor([1]), torch.tensor([40]), 6, 4)
    assert torch.equal(windows.history[0, 0], cgm[1, 35:41].float())
    assert torch.equal(windows.history[0, 1], insulin[1, 34:40].float())
    assert torch.equal(windows.plan[0, 0], insulin[1, 40:44].float())
    assert torch.equal(windows.plan[0, 1], carbs[1, 40:44].float())
    assert torch.equal(windows.target_mg_dl[0], cgm[1, 41:45].float())
    assert float(windows.last_cgm_mg_dl[0]) == pytest.approx(float(cgm[1, 40]))


def test_future_glucose_never_enters_history_or_plan() -> None:
    cgm, insulin, carbs = _series()
    anchor = 50
    before = cut_windows(cgm, insulin, carbs, torch.tensor([0]), torch.tensor([anchor]), 12, 6)
    altered = cgm.clone()
    altered[:, anchor + 1 :] = 999.0
    after = cut_windows(altered, insulin, carbs, torch.tensor([0]), torch.tensor([anchor]), 12, 6)
    assert torch.equal(before.history, after.history)
    assert torch.equal(before.plan, after.plan)
    assert not torch.equal(before.target_mg_dl, after.target_mg_dl)


def test_anchor_outside_the_valid_range_is_refused() -> None:
    cgm, insulin, carbs = _series(num_steps=30)
    valid = valid_anchor_range(30, 6, 4)
    with pytest.raises(ValueError, match="anchors must lie"):
        cut_windows(cgm, insulin, carbs, torch.tensor([0]), torch.tensor([valid.stop]), 6, 4)


def test_all_windows_covers_every_patient_at_the_stride() -> None:
    cgm, insulin, carbs = _series(num_patients=3, num_steps=40)
    windows = all_windows(cgm, insulin, carbs, 6, 4, stride=5)
    per_patient = len(range(6, 36, 5))
    assert len(windows) == 3 * per_patient
