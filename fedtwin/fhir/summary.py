"""The report of an ingest: counts from the tally, time span and CGM sampling of the series.

Invariant: the report is built only from counts and grids, never from identifiers, so it can
be printed, stored and sent without naming a patient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedtwin.fhir.report import IngestPolicy, IngestReport, SamplingGaps, Tally
from fedtwin.fhir.series import STEP_MIN, OncologySeries, PatientSeries, epoch_to_datetime

#: A run of missing CGM bins longer than this counts as a gap in the report.
GAP_MIN = 30


def missing_runs(mask: np.ndarray) -> np.ndarray:
    """Lengths (in bins) of the runs of ``False`` in a boolean mask."""
    padded = np.concatenate([[True], mask.astype(bool), [True]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return changes[1::2] - changes[0::2]


def sampling_of(series: Sequence[PatientSeries]) -> SamplingGaps:
    """CGM coverage and gaps over all glucose series."""
    grid = observed = gaps = longest = 0
    for one in series:
        grid += one.n_steps
        observed += int(one.cgm_mask.sum())
        runs = missing_runs(one.cgm_mask)
        if runs.size:
            gaps += int((runs * STEP_MIN > GAP_MIN).sum())
            longest = max(longest, int(runs.max()) * STEP_MIN)
    return SamplingGaps(
        grid_bins=grid,
        observed_bins=observed,
        coverage=observed / grid if grid else 0.0,
        gaps_over_30_min=gaps,
        longest_gap_min=longest,
    )


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return epoch_to_datetime(seconds).isoformat().replace("+00:00", "Z")


def summarise(
    source: str,
    tally: Tally,
    patients_found: int,
    glucose: Sequence[PatientSeries],
    oncology: Sequence[OncologySeries],
    first_s: float | None,
    last_s: float | None,
) -> IngestReport:
    """Freeze the tally and the series' shape into an :class:`IngestReport`."""
    usable = {s.pseudonym for s in glucose} | {s.pseudonym for s in oncology}
    policy: IngestPolicy = tally.policy
    return IngestReport(
        source=source,
        policy=policy,
        resources=tally.counts(),
        patients_found=patients_found,
        patients_usable=len(usable),
        time_start=_iso(first_s),
        time_end=_iso(last_s),
        sampling=sampling_of(glucose),
        notes=tuple(tally.notes),
        examples=tuple(tally.examples),
    )
