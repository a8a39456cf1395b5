"""Federated calibration of the twin's 90 % band: sites report |z| histograms, never windows.

Each round a site evaluates the global twin on its consenting held-out patients and, beside its
metrics, reports two histograms of ``|z| = |target − mean| / std`` per horizon step
(:class:`fedtwin.twins.calibration.AbsZHistogram`): one for each of two folds of its held-out
patients, the fold of a patient fixed by a keyed hash of its id with the site's secret. The
coordinator sums the histograms of the final round over sites and

* fits the split-conformal scales on both folds together (model card key ``calibration``, read
  by :mod:`fedtwin.twins.runfile`), and
* checks them out of sample by cross-fitting: scales fitted on fold A are scored on fold B and
  vice versa (model card key ``calibration_check``: coverage of the 90 % band per horizon step
  before and after calibration, on patients the fit never saw).

Invariants: only integer counts on a fixed grid leave a site (no window, no patient); the
histograms describe held-out patients, who are never in DP training, exactly like the RMSE and
coverage a site already reports; a round without enough windows for a conformal quantile gives
no calibration (the model card says so) rather than a guess. Coverage read off a histogram counts
only bins whose upper edge is inside the band, so it is a lower bound at the grid's 1.5 %
resolution.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedtwin.errors import ConfigError
from fedtwin.twins import GlucoseTwin, PatientBatch
from fedtwin.twins.calibration import (
    ABS_Z_EDGES,
    DEFAULT_COVERAGE,
    AbsZHistogram,
    CalibrationScales,
    abs_z_histogram_of,
    combine_histograms,
    fit_calibration,
    gaussian_quantile,
)
from fedtwin.twins.glucose import forecast_from_raw
from fedtwin.twins.metrics import raw_outputs
from fedtwin.twins.windows import ForecastWindows, batch_windows_with_rows

FOLD_KEYS = ("calibration-absz-a", "calibration-absz-b")
_FOLD_DOMAIN = b"fedtwin/calibration-fold/v1\x00"


def calibration_fold(secret: bytes, pseudonym: str) -> int:
    """0 or 1: the patient's calibration fold (keyed hash, stable across rounds and runs)."""
    digest = hmac.new(secret, _FOLD_DOMAIN + pseudonym.encode(), hashlib.sha256).digest()
    return digest[0] & 1


def site_histograms(
    model: GlucoseTwin, batch: PatientBatch, secret: bytes, stride: int
) -> dict[str, list[int]]:
    """The two folds' flat ``|z|`` histograms a site adds to its evaluation reply."""
    windows, rows = batch_windows_with_rows(batch, stride=stride)
    return fold_histograms(raw_outputs(model, windows), windows, rows, batch, secret)


def fold_histograms(
    raw: Tensor, windows: ForecastWindows, rows: Tensor, batch: PatientBatch, secret: bytes
) -> dict[str, list[int]]:
    """:func:`site_histograms` from the model's raw outputs on ``windows`` (of ``rows``)."""
    folds = torch.tensor(
        [calibration_fold(secret, pseudonym) for pseudonym in batch.pseudonyms], dtype=torch.long
    )
    window_fold = folds[rows] if len(rows) else torch.zeros(0, dtype=torch.long)
    forecast = forecast_from_raw(raw, windows.history)
    replies = {}
    for fold, key in enumerate(FOLD_KEYS):
        mask = window_fold == fold
        histogram = abs_z_histogram_of(
            forecast.mean_mg_dl[mask], forecast.std_mg_dl[mask], windows.target_mg_dl[mask]
        )
        replies[key] = histogram.to_list()
    return replies


def histogram_coverage(histogram: AbsZHistogram, scales: CalibrationScales) -> list[float]:
    """Fraction of windows inside the scaled band per horizon step (lower bound, see module)."""
    z = gaussian_quantile(scales.coverage)
    limit = z * scales.scale_for(histogram.horizon_steps).double()
    upper_edges = torch.tensor((*ABS_Z_EDGES[1:], float("inf")), dtype=torch.float64)
    inside = upper_edges.unsqueeze(0) <= limit.unsqueeze(1)
    counts = histogram.counts.double()
    return [float(v) for v in (counts * inside).sum(dim=1) / counts.sum(dim=1).clamp_min(1.0)]


def _unit(horizon_steps: int) -> CalibrationScales:
    return CalibrationScales(std_scale=(1.0,) * horizon_steps, windows=1)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def calibrate_from_sites(
    per_site: Mapping[str, Mapping[str, Sequence[int]]],
    horizon_steps: int,
    coverage: float = DEFAULT_COVERAGE,
) -> tuple[CalibrationScales | None, dict[str, Any]]:
    """Scales from the sites' fold histograms of one round, and their cross-fitted check.

    Returns ``(None, check)`` with the reason in ``check["status"]`` when the windows are too
    few for a conformal quantile at ``coverage``.
    """
    folds = [
        combine_histograms(
            AbsZHistogram.from_list(list(lists[key]), horizon_steps) for lists in per_site.values()
        )
        for key in FOLD_KEYS
    ]
    check: dict[str, Any] = {
        "method": "cross-fit over two keyed folds of held-out patients",
        "coverage_target": coverage,
        "sites": sorted(per_site),
        "windows_per_fold": [fold.windows for fold in folds],
    }
    try:
        scales = fit_calibration(folds[0] + folds[1], coverage)
        crossed = [fit_calibration(folds[0], coverage), fit_calibration(folds[1], coverage)]
    except ConfigError as reason:
        return None, {**check, "status": f"not calibrated: {reason}"}
    before = [histogram_coverage(fold, _unit(horizon_steps)) for fold in folds]
    after = [histogram_coverage(folds[1], crossed[0]), histogram_coverage(folds[0], crossed[1])]
    weights = [folds[1].windows, folds[0].windows]

    def pooled(rows: list[list[float]], w: list[int]) -> list[float]:
        total = sum(w)
        return [
            sum(r[h] * wi for r, wi in zip(rows, w, strict=True)) / total
            for h in range(horizon_steps)
        ]

    uncalibrated = pooled(before, [folds[0].windows, folds[1].windows])
    calibrated = pooled(after, weights)
    return scales, {
        **check,
        "status": "calibrated",
        "coverage_uncalibrated_per_step": [round(v, 4) for v in uncalibrated],
        "coverage_calibrated_per_step": [round(v, 4) for v in calibrated],
        "coverage_uncalibrated": round(_mean(uncalibrated), 4),
        "coverage_calibrated": round(_mean(calibrated), 4),
    }
