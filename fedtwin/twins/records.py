"""A site's patients as one padded batch of 5-minute series, with where windows may be cut.

Invariant: ``valid_anchor[p, t]`` is True exactly when a forecast window anchored at ``t``
(:mod:`fedtwin.twins.windows`) lies inside patient ``p``'s observed data: every CGM reading of
its history and target exists and the treatment is known over every bin the window reads.
Treatment is known where the insulin record is (a pump logs basal continuously); within that
span a bin without a carbohydrate entry means none was eaten — patients log meals, not their
absence — so carbohydrate gaps never invalidate a window that insulin covers. Values outside
the observed data are zero-filled and never enter a valid window, so padding, gaps and missing
channels cannot leak into training or evaluation. Row ``p`` belongs to ``pseudonyms[p]``;
nothing here holds a local patient id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor


class GlucoseRecord(Protocol):
    """What a patient's glucose history must provide (``fedtwin.fhir.PatientSeries`` does)."""

    @property
    def pseudonym(self) -> str: ...  # noqa: D102

    @property
    def cgm_mg_dl(self) -> NDArray[np.float32]: ...  # noqa: D102

    @property
    def cgm_mask(self) -> NDArray[np.bool_]: ...  # noqa: D102

    @property
    def insulin_u(self) -> NDArray[np.float32]: ...  # noqa: D102

    @property
    def insulin_mask(self) -> NDArray[np.bool_]: ...  # noqa: D102

    @property
    def carbs_g(self) -> NDArray[np.float32]: ...  # noqa: D102

    @property
    def carbs_mask(self) -> NDArray[np.bool_]: ...  # noqa: D102


def _all_true_over(mask: Tensor, offsets: range) -> Tensor:
    """``out[:, t]`` = all of ``mask[:, t + o]`` for ``o`` in ``offsets`` (False off the end)."""
    patients, steps = mask.shape
    out = torch.ones(patients, steps, dtype=torch.bool)
    for offset in offsets:
        shifted = torch.zeros(patients, steps, dtype=torch.bool)
        if offset >= 0:
            shifted[:, : steps - offset] = mask[:, offset:]
        else:
            shifted[:, -offset:] = mask[:, : steps + offset]
        out &= shifted
    return out


def valid_anchors(
    cgm_mask: Tensor, treatment_mask: Tensor, history_steps: int, horizon_steps: int
) -> Tensor:
    """Anchors whose whole window is observed, ``[P, T]`` bool.

    A window at ``t`` reads CGM at ``t-L+1 .. t+H`` and insulin/carbohydrate at
    ``t-L .. t+H-1`` (:func:`fedtwin.twins.windows.cut_windows`).
    """
    cgm_ok = _all_true_over(cgm_mask, range(-history_steps + 1, horizon_steps + 1))
    treatment_ok = _all_true_over(treatment_mask, range(-history_steps, horizon_steps))
    return cgm_ok & treatment_ok


@dataclass(frozen=True, eq=False)
class PatientBatch:
    """Patients of one site padded to a common length ``T`` (float32 ``[P, T]`` tensors).

    Attributes
    ----------
    pseudonyms : tuple[str, ...]
        Keyed pseudonym of each row.
    cgm_mg_dl, insulin_u, carbs_g : Tensor
        Series on the 5-minute grid, zero where unobserved.
    valid_anchor : Tensor
        ``[P, T]`` bool: where a full window of ``history_steps`` + ``horizon_steps`` exists.
    history_steps, horizon_steps : int
        The window the validity refers to.
    """

    pseudonyms: tuple[str, ...]
    cgm_mg_dl: Tensor
    insulin_u: Tensor
    carbs_g: Tensor
    valid_anchor: Tensor
    history_steps: int
    horizon_steps: int

    def __len__(self) -> int:
        return len(self.pseudonyms)

    @property
    def anchors_per_patient(self) -> Tensor:
        """Number of valid anchors of each patient, ``[P]``."""
        return self.valid_anchor.sum(dim=1)

    def select(self, rows: Sequence[int]) -> PatientBatch:
        """The batch restricted to ``rows`` (in that order)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return PatientBatch(
            pseudonyms=tuple(self.pseudonyms[i] for i in index.tolist()),
            cgm_mg_dl=self.cgm_mg_dl[index],
            insulin_u=self.insulin_u[index],
            carbs_g=self.carbs_g[index],
            valid_anchor=self.valid_anchor[index],
            history_steps=self.history_steps,
            horizon_steps=self.horizon_steps,
        )

    @classmethod
    def from_records(
        cls, records: Sequence[GlucoseRecord], history_steps: int, horizon_steps: int
    ) -> PatientBatch:
        """Pad per-patient series (any lengths, masks) into one batch."""
        steps = max((len(r.cgm_mg_dl) for r in records), default=0)
        shape = (len(records), steps)
        cgm = np.zeros(shape, dtype=np.float32)
        insulin = np.zeros(shape, dtype=np.float32)
        carbs = np.zeros(shape, dtype=np.float32)
        cgm_mask = np.zeros(shape, dtype=bool)
        treatment_mask = np.zeros(shape, dtype=bool)
        for row, record in enumerate(records):
            length = len(record.cgm_mg_dl)
            observed = np.asarray(record.cgm_mask, dtype=bool) & np.isfinite(record.cgm_mg_dl)
            cgm[row, :length] = np.where(observed, record.cgm_mg_dl, 0.0)
            cgm_mask[row, :length] = observed
            insulin[row, :length] = record.insulin_u
            carbs[row, :length] = record.carbs_g
            treatment_mask[row, :length] = np.asarray(record.insulin_mask)
        return cls.from_arrays(
            tuple(r.pseudonym for r in records),
            torch.from_numpy(cgm),
            torch.from_numpy(insulin),
            torch.from_numpy(carbs),
            torch.from_numpy(cgm_mask),
            torch.from_numpy(treatment_mask),
            history_steps,
            horizon_steps,
        )

    @classmethod
    def from_arrays(
        cls,
        pseudonyms: Sequence[str],
        cgm_mg_dl: Tensor,
        insulin_u: Tensor,
        carbs_g: Tensor,
        cgm_mask: Tensor | None,
        treatment_mask: Tensor | None,
        history_steps: int,
        horizon_steps: int,
    ) -> PatientBatch:
        """Build from ``[P, T]`` tensors; masks default to "everything observed"."""
        cgm_mask = torch.ones_like(cgm_mg_dl, dtype=torch.bool) if cgm_mask is None else cgm_mask
        if treatment_mask is None:
            treatment_mask = torch.ones_like(cgm_mg_dl, dtype=torch.bool)
        cgm_mask = cgm_mask & torch.isfinite(cgm_mg_dl)
        return cls(
            pseudonyms=tuple(pseudonyms),
            cgm_mg_dl=torch.where(cgm_mask, cgm_mg_dl, 0.0).float(),
            insulin_u=torch.where(treatment_mask, insulin_u, 0.0).float(),
            carbs_g=torch.where(treatment_mask, carbs_g, 0.0).float(),
            valid_anchor=valid_anchors(cgm_mask, treatment_mask, history_steps, horizon_steps),
            history_steps=history_steps,
            horizon_steps=horizon_steps,
        )
