"""Forecast windows cut from a patient's 5-minute series, causally.

Conventions (they keep the twin causal; tests rely on them): index ``t`` of a series is the
5-minute bin starting at minute ``5·t``. ``cgm_mg_dl[t]`` is the reading at the start of bin
``t``; ``insulin_u[t]`` and ``carbs_g[t]`` are what was delivered/eaten *during* bin ``t``.
A window anchored at ``t`` (the forecast is made just after reading ``cgm[t]``) holds

* history: ``cgm[t-L+1 .. t]`` and ``insulin/carbs[t-L .. t-1]`` (what happened before ``t``),
* plan: ``insulin/carbs[t .. t+H-1]`` (what is planned from now on, e.g. the bolus at ``t``),
* target: ``cgm[t+1 .. t+H]``.

No glucose value after ``t`` ever enters the history or the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fedtwin.twins.records import PatientBatch

HISTORY_CHANNELS = ("cgm_mg_dl", "insulin_u", "carbs_g")
PLAN_CHANNELS = ("insulin_u", "carbs_g")


@dataclass(frozen=True)
class ForecastWindows:
    """A batch of forecast windows.

    Attributes
    ----------
    history : Tensor
        ``[N, 3, L]``: CGM (mg/dL), insulin (U per bin), carbohydrates (g per bin).
    plan : Tensor
        ``[N, 2, H]``: planned insulin (U per bin) and carbohydrates (g per bin).
    target_mg_dl : Tensor
        ``[N, H]``: CGM glucose at 5, 10, …, 5·H minutes after the anchor.

    Training batches whose record is a patient carry ``k`` windows per record instead:
    ``[N, k, 3, L]``, ``[N, k, 2, H]`` and ``[N, k, H]``; ``len`` counts records.
    """

    history: Tensor
    plan: Tensor
    target_mg_dl: Tensor

    def __len__(self) -> int:
        return int(self.history.shape[0])

    @property
    def last_cgm_mg_dl(self) -> Tensor:
        """The reading at the anchor (the persistence forecast), ``[N]`` (or ``[N, k]``)."""
        return self.history[..., 0, -1]


def valid_anchor_range(num_steps: int, history_steps: int, horizon_steps: int) -> range:
    """Anchors ``t`` for which a full window exists in a series of ``num_steps`` bins."""
    return range(history_steps, num_steps - horizon_steps)


def cut_windows(
    cgm_mg_dl: Tensor,
    insulin_u: Tensor,
    carbs_g: Tensor,
    patient_index: Tensor,
    anchor: Tensor,
    history_steps: int,
    horizon_steps: int,
) -> ForecastWindows:
    """Cut one window per ``(patient_index[i], anchor[i])`` from ``[B, T]`` series.

    Parameters
    ----------
    cgm_mg_dl, insulin_u, carbs_g : Tensor
        ``[B, T]`` series of the patients on the 5-minute grid.
    patient_index, anchor : Tensor
        ``[N]`` integer tensors; every anchor must lie in :func:`valid_anchor_range`.
    history_steps, horizon_steps : int
        Window lengths ``L`` and ``H`` in 5-minute steps.

    Returns
    -------
    ForecastWindows
        Float32 windows, gathered without any Python loop over windows.
    """
    num_steps = int(cgm_mg_dl.shape[1])
    valid = valid_anchor_range(num_steps, history_steps, horizon_steps)
    if len(anchor) and (int(anchor.min()) < valid.start or int(anchor.max()) >= valid.stop):
        raise ValueError(f"anchors must lie in [{valid.start}, {valid.stop}) for these windows")
    patients = patient_index.long().unsqueeze(1)
    past = anchor.long().unsqueeze(1) + torch.arange(-history_steps + 1, 1).unsqueeze(0)
    future = anchor.long().unsqueeze(1) + torch.arange(0, horizon_steps).unsqueeze(0)
    history = torch.stack(
        [cgm_mg_dl[patients, past], insulin_u[patients, past - 1], carbs_g[patients, past - 1]],
        dim=1,
    )
    plan = torch.stack([insulin_u[patients, future], carbs_g[patients, future]], dim=1)
    target = cgm_mg_dl[patients, future + 1]
    return ForecastWindows(history=history.float(), plan=plan.float(), target_mg_dl=target.float())


def all_windows(
    cgm_mg_dl: Tensor,
    insulin_u: Tensor,
    carbs_g: Tensor,
    history_steps: int,
    horizon_steps: int,
    stride: int = 1,
) -> ForecastWindows:
    """Every window of every patient, anchors ``stride`` steps apart (for evaluation)."""
    num_patients, num_steps = int(cgm_mg_dl.shape[0]), int(cgm_mg_dl.shape[1])
    anchors = torch.tensor(list(valid_anchor_range(num_steps, history_steps, horizon_steps)))
    anchors = anchors[::stride]
    patient_index = torch.arange(num_patients).repeat_interleave(len(anchors))
    return cut_windows(
        cgm_mg_dl,
        insulin_u,
        carbs_g,
        patient_index,
        anchors.repeat(num_patients),
        history_steps,
        horizon_steps,
    )


def batch_windows(batch: PatientBatch, stride: int = 1) -> ForecastWindows:
    """Every valid window of every patient whose anchor is a multiple of ``stride``."""
    return batch_windows_with_rows(batch, stride)[0]


def batch_windows_with_rows(batch: PatientBatch, stride: int = 1) -> tuple[ForecastWindows, Tensor]:
    """:func:`batch_windows` and each window's patient row ``[N]`` (rows in order)."""
    patients, anchors = torch.nonzero(batch.valid_anchor, as_tuple=True)
    keep = anchors % stride == 0
    windows = cut_windows(
        batch.cgm_mg_dl,
        batch.insulin_u,
        batch.carbs_g,
        patients[keep],
        anchors[keep],
        batch.history_steps,
        batch.horizon_steps,
    )
    return windows, patients[keep]


def windows_per_patient(batch: PatientBatch, stride: int = 1) -> list[ForecastWindows]:
    """:func:`batch_windows` split by patient (row order), for patient-level scores."""
    return [batch_windows(batch.select([row]), stride) for row in range(len(batch))]
