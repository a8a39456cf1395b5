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
from fedtwin.twins.records import PatientBatch
from fedtwin.twins.windows import ForecastWindows, cut_windows

WindowItem = tuple[Tensor, Tensor, Tensor]


class PatientWindowDataset(Dataset[WindowItem]):
    """One item per patient; item ``i`` is ``k`` fresh random windows of patient ``i``.

    Item shapes: history ``[k, 3, L]``, plan ``[k, 2, H]``, target ``[k, H]``. Windows are
    cut only at the patient's valid anchors (:class:`~fedtwin.twins.records.PatientBatch`).

    Parameters
    ----------
    batch : PatientBatch
        The site's training patients; every one needs at least ``k`` valid anchors
        (:func:`usable_rows` finds them).
    generator : torch.Generator
        Source of the window positions (seeded for reproducible runs).
    windows_per_patient : int, default 1
        ``k``: the patient's valid anchors are split into ``k`` equal strata and one anchor is
        drawn uniformly in each, so the windows spread over the patient's whole record.
    """

    def __init__(
        self, batch: PatientBatch, generator: torch.Generator, windows_per_patient: int = 1
    ) -> None:
        if windows_per_patient < 1:
            raise ValueError("windows_per_patient must be >= 1")
        counts = batch.anchors_per_patient
        if len(batch) and int(counts.min()) < windows_per_patient:
            raise ValueError(
                f"every patient needs at least {windows_per_patient} valid windows "
                f"(select usable rows first)"
            )
        self.batch = batch
        self.generator = generator
        self.windows_per_patient = windows_per_patient
        # Each patient's valid anchors, left-aligned in a padded [P, max] table.
        self._counts = counts
        width = int(counts.max()) if len(batch) else 0
        self._anchors = torch.zeros(len(batch), width, dtype=torch.long)
        for row in range(len(batch)):
            positions = torch.nonzero(batch.valid_anchor[row]).flatten()
            self._anchors[row, : len(positions)] = positions

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, patient: int) -> WindowItem:
        k = self.windows_per_patient
        count = int(self._counts[patient])
        edges = torch.div(torch.arange(k + 1) * count, k, rounding_mode="floor")
        uniform = torch.rand(k, generator=self.generator, dtype=torch.float64)
        offsets = edges[:-1] + (uniform * (edges[1:] - edges[:-1])).long()
        windows = cut_windows(
            self.batch.cgm_mg_dl,
            self.batch.insulin_u,
            self.batch.carbs_g,
            torch.full((k,), patient),
            self._anchors[patient, offsets],
            self.batch.history_steps,
            self.batch.horizon_steps,
        )
        return windows.history, windows.plan, windows.target_mg_dl

    def __getitems__(self, patients: list[int]) -> list[WindowItem]:
        """Items of many patients at once (what a loader's batch fetch calls).

        The same windows as ``[self[p] for p in patients]`` from the same generator state
        (the draws are taken in the same order), cut in one vectorised call.
        """
        k = self.windows_per_patient
        rows = torch.as_tensor(patients, dtype=torch.long)
        if not len(rows):
            return []
        counts = self._counts[rows].to(torch.long)
        edges = torch.div(torch.arange(k + 1)[None, :] * counts[:, None], k, rounding_mode="floor")
        uniform = torch.rand(len(rows), k, generator=self.generator, dtype=torch.float64)
        offsets = edges[:, :-1] + (uniform * (edges[:, 1:] - edges[:, :-1])).long()
        windows = cut_windows(
            self.batch.cgm_mg_dl,
            self.batch.insulin_u,
            self.batch.carbs_g,
            rows.repeat_interleave(k),
            self._anchors[rows[:, None], offsets].flatten(),
            self.batch.history_steps,
            self.batch.horizon_steps,
        )
        n = len(rows)
        history = windows.history.reshape(n, k, *windows.history.shape[1:])
        plan = windows.plan.reshape(n, k, *windows.plan.shape[1:])
        target = windows.target_mg_dl.reshape(n, k, *windows.target_mg_dl.shape[1:])
        return list(zip(history.unbind(0), plan.unbind(0), target.unbind(0), strict=True))


def usable_rows(batch: PatientBatch, windows_per_patient: int = 1) -> list[int]:
    """Rows of patients with at least ``windows_per_patient`` valid windows."""
    enough = batch.anchors_per_patient >= windows_per_patient
    return torch.nonzero(enough).flatten().tolist()


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
