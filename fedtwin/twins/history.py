"""One patient's device CSV as twin inputs: forecast origins, windows and planned treatment.

The CSV is read by :func:`fedtwin.fhir.read_device_csv` (strict: the first bad row is an
:class:`~fedtwin.errors.IngestError` naming ``<file>:<line>``) onto the 5-minute grid of
:mod:`fedtwin.fhir.series`. On top of it this module keeps, for every bin with a reading, the
reading's own time and CSV line, so that forecasts are stamped with the patient's times and
errors name the rows.

Gap rule (the same as :class:`fedtwin.twins.twin.Twin`): up to :data:`MAX_GAP_STEPS` missing
readings in a row are filled linearly between their neighbours; a longer gap inside the span a
command reads is refused with the lines of the readings on both sides. Treatment is known over
the span of insulin records (a pump logs basal continuously); a bin there without a record had
none, as in :mod:`fedtwin.twins.records`.
"""

from __future__ import annotations

import csv
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from fedtwin.errors import ConfigError
from fedtwin.fhir.device_csv import read_device_csv
from fedtwin.twins.glucose import GlucoseTwinConfig

#: Longest run of missing CGM readings that is interpolated (15 min).
MAX_GAP_STEPS = 3
STEP_MIN = 5
_STEP_S = STEP_MIN * 60


@dataclass(frozen=True, eq=False)
class DeviceHistory:
    """A device CSV on the 5-minute grid (``[T]`` arrays).

    Attributes
    ----------
    path : Path
        The file (named in errors).
    cgm_mg_dl : ndarray
        Reading of each bin, ``NaN`` where none.
    insulin_u, carbs_g : ndarray
        Delivered / eaten during each bin (0 where none).
    treatment_known : ndarray
        Bins inside the span of insulin records.
    reading_time_s : ndarray
        Epoch seconds of each bin's reading (``NaN`` where none).
    reading_line : ndarray
        CSV line of each bin's reading (0 where none).
    """

    path: Path
    cgm_mg_dl: NDArray[np.float64]
    insulin_u: NDArray[np.float64]
    carbs_g: NDArray[np.float64]
    treatment_known: NDArray[np.bool_]
    reading_time_s: NDArray[np.float64]
    reading_line: NDArray[np.int64]

    @property
    def n_bins(self) -> int:
        """Bins ``T`` on the grid."""
        return int(self.cgm_mg_dl.shape[0])

    def time_of(self, bin_index: int) -> datetime:
        """UTC time of the reading of ``bin_index``."""
        return datetime.fromtimestamp(float(self.reading_time_s[bin_index]), tz=UTC)


def read_history(path: Path) -> DeviceHistory:
    """Read a device CSV (``time,glucose_mg_dl,insulin_u,carbs_g``) for the twin.

    Raises
    ------
    IngestError
        A bad row (``<file>:<line>: reason``), a missing column, no glucose reading.
    """
    # The pseudonym is never used or written here; a throw-away key keeps it meaningless.
    device = read_device_csv(path, patient_id=path.stem, secret=secrets.token_bytes(32))
    series = device.series
    start_s = series.start.timestamp()
    times = np.full(series.n_steps, np.nan)
    lines = np.zeros(series.n_steps, dtype=np.int64)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader)]
        time_at, glucose_at = header.index("time"), header.index("glucose_mg_dl")
        for row in reader:
            if len(row) != len(header) or not row[glucose_at].strip():
                continue
            moment = datetime.fromisoformat(row[time_at].strip()).timestamp()
            index = math.floor((moment - start_s) / _STEP_S)
            if 0 <= index < series.n_steps and lines[index] == 0:
                times[index], lines[index] = moment, reader.line_num
    return DeviceHistory(
        path=path,
        cgm_mg_dl=np.where(series.cgm_mask, series.cgm_mg_dl, np.nan).astype(np.float64),
        insulin_u=np.asarray(series.insulin_u, dtype=np.float64),
        carbs_g=np.asarray(series.carbs_g, dtype=np.float64),
        treatment_known=np.asarray(series.insulin_mask, dtype=bool),
        reading_time_s=times,
        reading_line=lines,
    )


def _missing_runs(missing: NDArray[np.bool_]) -> list[tuple[int, int]]:
    padded = np.concatenate([[0], missing.astype(np.int8), [0]])
    changes = np.diff(padded)
    return list(
        zip(
            np.flatnonzero(changes == 1).tolist(),
            (np.flatnonzero(changes == -1) - 1).tolist(),
            strict=True,
        )
    )


def filled_cgm(history: DeviceHistory) -> NDArray[np.float64]:
    """Readings with inner gaps of up to :data:`MAX_GAP_STEPS` bins filled linearly."""
    cgm = history.cgm_mg_dl.copy()
    for first, last in _missing_runs(np.isnan(cgm)):
        inner = first > 0 and last < len(cgm) - 1
        if inner and last - first + 1 <= MAX_GAP_STEPS:
            before, after = cgm[first - 1], cgm[last + 1]
            fraction = np.arange(1, last - first + 2) / (last - first + 2)
            cgm[first : last + 1] = before + (after - before) * fraction
    return cgm


def check_gaps(history: DeviceHistory, first_bin: int, last_bin: int) -> None:
    """Refuse a reading gap longer than the twin tolerates that touches bins ``[first, last]``.

    Only gaps between two readings count (not the bins before the first or after the last).
    """
    cgm = history.cgm_mg_dl
    for first, last in _missing_runs(np.isnan(cgm)):
        inner = first > 0 and last < len(cgm) - 1
        touches = first <= last_bin and last >= first_bin
        if not inner or not touches or last - first + 1 <= MAX_GAP_STEPS:
            continue
        raise ConfigError(
            f"{history.path}: {(last - first + 2) * STEP_MIN} min between the glucose readings "
            f"at line {history.reading_line[first - 1]} and line {history.reading_line[last + 1]}"
            f" (the twin bridges at most {(MAX_GAP_STEPS + 1) * STEP_MIN} min)"
        )


def forecast_origins(history: DeviceHistory, config: GlucoseTwinConfig) -> NDArray[np.int64]:
    """Bins ``t`` with a reading, ``L`` usable readings up to ``t`` and known treatment before.

    Raises
    ------
    ConfigError
        When no bin qualifies (history too short for the model), or no insulin is recorded.
    """
    length = config.history_steps
    if not history.treatment_known.any():
        raise ConfigError(
            f"{history.path}: no insulin_u value in any row; the twin needs the insulin "
            f"delivered (basal and boluses, 0 where none)"
        )
    cgm = filled_cgm(history)
    usable = ~np.isnan(cgm)
    known = history.treatment_known
    ok = np.zeros(history.n_bins, dtype=bool)
    if history.n_bins > length:
        windows = np.lib.stride_tricks.sliding_window_view
        usable_run = np.asarray(windows(usable, length).all(axis=1), dtype=bool)
        known_run = np.asarray(windows(known, length).all(axis=1), dtype=bool)
        # Origin t reads readings t-L+1..t (window t-L+1) and treatment t-L..t-1 (window t-L).
        ok[length:] = usable_run[1:] & known_run[:-1]
        ok &= ~np.isnan(history.cgm_mg_dl)
    origins = np.flatnonzero(ok).astype(np.int64)
    if origins.size == 0:
        readings = int((~np.isnan(history.cgm_mg_dl)).sum())
        raise ConfigError(
            f"{history.path}: history too short for the model: it needs {length} glucose "
            f"readings 5 min apart ({length * STEP_MIN} min) after the first insulin record, "
            f"plus that record's bin; the file has {readings} reading(s) over "
            f"{history.n_bins * STEP_MIN} min"
        )
    return origins


def origin_windows(
    history: DeviceHistory, origins: NDArray[np.int64], config: GlucoseTwinConfig
) -> Tensor:
    """``[N, 3, L]`` histories at ``origins`` (short gaps filled)."""
    length = config.history_steps
    cgm = filled_cgm(history)
    past = origins[:, None] + np.arange(-length + 1, 1)[None, :]
    stacked = np.stack([cgm[past], history.insulin_u[past - 1], history.carbs_g[past - 1]], axis=1)
    return torch.tensor(stacked, dtype=torch.float32)


def origin_plans(
    history: DeviceHistory,
    origins: NDArray[np.int64],
    windows: Tensor,
    steps: int,
    *,
    basal_only: bool,
) -> Tensor:
    """``[N, 2, steps]`` treatment from each origin's bin on.

    Bin 0 (the origin's own row) is as recorded; later bins are as recorded while inside the
    known treatment span, unless ``basal_only``; elsewhere the basal rate (median insulin per
    bin of the origin's history) and no carbohydrate.
    """
    basal = windows[:, 1, :].median(dim=1).values.double().numpy()
    future = origins[:, None] + np.arange(steps)[None, :]
    inside = future < history.n_bins
    clipped = np.minimum(future, history.n_bins - 1)
    recorded = inside & history.treatment_known[clipped]
    if basal_only:
        recorded[:, 1:] = False
    insulin = np.where(recorded, history.insulin_u[clipped], basal[:, None])
    carbs = np.where(recorded, history.carbs_g[clipped], 0.0)
    return torch.tensor(np.stack([insulin, carbs], axis=1), dtype=torch.float32)


def forecast_times(history: DeviceHistory, origin: int, steps: int) -> list[datetime]:
    """Times 5, 10, …, 5·steps minutes after the origin's reading."""
    start = history.time_of(origin)
    return [start + timedelta(minutes=STEP_MIN * (k + 1)) for k in range(steps)]
