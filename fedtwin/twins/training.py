"""Training of a twin on one site's patients, with no privacy machinery in it.

The dataset holds one item per *patient*: each access draws a bounded number ``k`` of random
windows of that patient (one per stratum of the patient's valid anchors), so "one record = one
patient" holds for any sampler put on top of it (the privacy layer puts Poisson sampling of
patients there) and a patient's influence on a step is bounded by construction. Randomness
comes only from the injected generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fedtwin.twins.glucose import GlucoseTwin, gaussian_nll
from fedtwin.twins.windows import ForecastWindows, cut_windows, valid_anchor_range

WindowItem = tuple[Tensor, Tensor, Tensor]


class PatientWindowDataset(Dataset[WindowItem]):
    """One item per patient; item ``i`` is ``k`` fresh random windows of patient ``i``.

    Item shapes: history ``[k, 3, L]``, plan ``[k, 2, H]``, target ``[k, H]``.

    Parameters
    ----------
    cgm_mg_dl, insulin_u, carbs_g : Tensor
        ``[P, T]`` series of the site's training patients on the 5-minute grid.
    history_steps, horizon_steps : int
        Window lengths.
    generator : torch.Generator
        Source of the window positions (seeded for reproducible runs).
    windows_per_patient : int, default 1
        ``k``: the patient's valid anchors are split into ``k`` equal strata and one anchor is
        drawn uniformly in each, so the windows spread over the patient's whole record.
    """

    def __init__(
        self,
        cgm_mg_dl: Tensor,
        insulin_u: Tensor,
        carbs_g: Tensor,
        history_steps: int,
        horizon_steps: int,
        generator: torch.Generator,
        windows_per_patient: int = 1,
    ) -> None:
        anchors = valid_anchor_range(int(cgm_mg_dl.shape[1]), history_steps, horizon_steps)
        if windows_per_patient < 1:
            raise ValueError("windows_per_patient must be >= 1")
        if len(anchors) < windows_per_patient:
            raise ValueError(
                f"series of {cgm_mg_dl.shape[1]} steps are too short for {windows_per_patient}"
                f" windows of {history_steps}+{horizon_steps} steps"
            )
        self.cgm_mg_dl, self.insulin_u, self.carbs_g = cgm_mg_dl, insulin_u, carbs_g
        self.history_steps, self.horizon_steps = history_steps, horizon_steps
        self.anchors = anchors
        self.generator = generator
        self.windows_per_patient = windows_per_patient
        edges = torch.linspace(0, len(anchors), windows_per_patient + 1)
        self._stratum_start = edges[:-1].floor().long()
        self._stratum_width = (edges[1:].floor().long() - self._stratum_start).clamp_min(1)

    def __len__(self) -> int:
        return int(self.cgm_mg_dl.shape[0])

    def __getitem__(self, patient: int) -> WindowItem:
        k = self.windows_per_patient
        uniform = torch.rand(k, generator=self.generator, dtype=torch.float64)
        offsets = self._stratum_start + (uniform * self._stratum_width).long()
        windows = cut_windows(
            self.cgm_mg_dl,
            self.insulin_u,
            self.carbs_g,
            torch.full((k,), patient),
            self.anchors.start + offsets,
            self.history_steps,
            self.horizon_steps,
        )
        return windows.history, windows.plan, windows.target_mg_dl


def as_windows(batch: Iterable[Tensor]) -> ForecastWindows:
    """Turn a collated ``(history, plan, target)`` batch into :class:`ForecastWindows`."""
    history, plan, target = batch
    return ForecastWindows(history=history, plan=plan, target_mg_dl=target)


def repeat_batches(loader: Iterable[list[Tensor]]) -> Iterator[ForecastWindows]:
    """Cycle over a loader forever (each pass is a new epoch of sampling)."""
    while True:
        for batch in loader:
            yield as_windows(batch)


@dataclass(frozen=True)
class TrainingSummary:
    """What a local training run did."""

    steps: int
    mean_loss: float


LossFn = Callable[[Tensor, ForecastWindows], Any]


def fit_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[ForecastWindows],
    steps: int,
    loss_fn: LossFn = gaussian_nll,
) -> TrainingSummary:
    """Take ``steps`` optimiser steps on the Gaussian NLL; works for DP and plain optimisers.

    ``loss_fn`` returns something with ``backward()`` and ``detach()``: a tensor, or the
    wrapped loss Opacus' ghost clipping hands out.
    """
    model.train()
    total = 0.0
    for _ in range(steps):
        windows = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(windows.history, windows.plan), windows)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return TrainingSummary(steps=steps, mean_loss=total / max(steps, 1))


def train_non_private(
    model: GlucoseTwin,
    dataset: PatientWindowDataset,
    steps: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
) -> TrainingSummary:
    """Plain minibatch training (a baseline for benchmarks and tests; never used by sites)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    return fit_steps(model, optimizer, repeat_batches(loader), steps)
