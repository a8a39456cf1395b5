import pytest
import torch

from fedtwin.twins import ForecastWindows, GlucoseTwin, PatientBatch, batch_windows
from fedtwin.twins.personalise import PersonalHead, personalise
from fedtwin.twins.rollout import predict

DRIFT_MG_DL_PER_STEP = 1.0  # 12 mg/dL per hour that the shared twin knows nothing about


def _drifting(windows: ForecastWindows) -> ForecastWindows:
    """The patient's glucose rises ``DRIFT`` per step faster than the population's."""
    length, horizon = windows.history.shape[-1], windows.target_mg_dl.shape[-1]
    history = windows.history.clone()
    history[:, 0, :] += DRIFT_MG_DL_PER_STEP * torch.arange(-length + 1, 1)
    target = windows.target_mg_dl + DRIFT_MG_DL_PER_STEP * torch.arange(1, horizon + 1)
    return ForecastWindows(history=history, plan=windows.plan, target_mg_dl=target)


Split = tuple[ForecastWindows, ForecastWindows]


def _alternate_blocks(windows: ForecastWindows, block: int = 24, horizon: int = 12) -> Split:
    """Fit on even 2-h blocks of anchors, evaluate on odd ones; the last ``horizon`` anchors
    of each block are dropped so that no target of one part lies in the other."""
    index = torch.arange(len(windows))
    kept = index % block < block - horizon
    even = (index // block) % 2 == 0

    def part(rows: torch.Tensor) -> ForecastWindows:
        return ForecastWindows(
            windows.history[rows], windows.plan[rows], windows.target_mg_dl[rows]
        )

    return part(kept & even), part(kept & ~even)


def _rmse_60(model: GlucoseTwin, windows: ForecastWindows, head: PersonalHead | None) -> float:
    forecast = predict(model, windows.history, windows.plan, head=head)
    error = forecast.mean_mg_dl[:, 11] - windows.target_mg_dl[:, 11]
    return float(error.square().mean().sqrt())


def _ratio(model: GlucoseTwin, windows: ForecastWindows) -> tuple[float, PersonalHead]:
    own_history, later = _alternate_blocks(windows)
    head = personalise(model, own_history)
    return _rmse_60(model, later, head) / _rmse_60(model, later, None), head


def _bias_60(model: GlucoseTwin, windows: ForecastWindows, head: PersonalHead | None) -> float:
    forecast = predict(model, windows.history, windows.plan, head=head)
    return float((forecast.mean_mg_dl[:, 11] - windows.target_mg_dl[:, 11]).mean())


@pytest.mark.slow
def test_personal_head_reduces_the_error_of_patients_with_a_systematic_drift(
    trained_twin: GlucoseTwin, twin_patients: dict[str, PatientBatch]
) -> None:
    before = {k: v.clone() for k, v in trained_twin.state_dict().items()}
    ratios = []
    for row in range(4):
        windows = _drifting(batch_windows(twin_patients["test"].select([row])))
        own_history, later = _alternate_blocks(windows)
        head = personalise(trained_twin, own_history)
        ratios.append(_rmse_60(trained_twin, later, head) / _rmse_60(trained_twin, later, None))
        # The shared twin under-predicts this patient; the head removes part of that bias.
        assert abs(_bias_60(trained_twin, later, head)) < abs(_bias_60(trained_twin, later, None))
    assert max(ratios) < 1.0 and sum(ratios) / len(ratios) < 0.95, ratios
    assert all(torch.equal(before[k], v) for k, v in trained_twin.state_dict().items())


@pytest.mark.slow
def test_personal_head_does_not_hurt_patients_the_twin_already_fits(
    trained_twin: GlucoseTwin, twin_patients: dict[str, PatientBatch]
) -> None:
    ratios = [
        _ratio(trained_twin, batch_windows(twin_patients["test"].select([row])))[0]
        for row in range(4, 8)
    ]
    assert sum(ratios) / len(ratios) < 1.05, ratios


def test_without_windows_the_head_is_the_identity(trained_twin: GlucoseTwin) -> None:
    empty = ForecastWindows(torch.zeros(0, 3, 24), torch.zeros(0, 2, 12), torch.zeros(0, 12))
    head = personalise(trained_twin, empty)
    history = torch.full((1, 3, 24), 150.0)
    plan = torch.zeros(1, 2, 12)
    plain, corrected = (
        predict(trained_twin, history, plan),
        predict(trained_twin, history, plan, head=head),
    )
    assert torch.equal(plain.mean_mg_dl, corrected.mean_mg_dl)
    assert torch.equal(plain.std_mg_dl, corrected.std_mg_dl)
