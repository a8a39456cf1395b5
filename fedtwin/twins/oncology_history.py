"""One oncology patient's history CSV, as ``fedtwin twin oncology-*`` reads it.

Format (UTF-8, comma-separated, header required, columns in this order)::

    day,tumour_volume_cm3,chemo_dose_mg,radio_dose_gy
    0,31.2,0,0
    1,31.9,5,2

* ``day``: integer day number (>= 0), one row per day, consecutive (no gap, no repeat);
* ``tumour_volume_cm3``: the volume measured that day, before that day's treatment (> 0);
* ``chemo_dose_mg``, ``radio_dose_gy``: treatment given after the measurement: 0, or the fixed
  dose of the protocol the twin models (chemotherapy 5 mg, radiotherapy fractions of 2 Gy);
  never negative.

Invariant: the reader is strict and accounts for every row: the first bad row is an
:class:`~fedtwin.errors.IngestError` naming ``<file>:<line>`` and the column; a file that reads
holds only valid, consecutive days, so :meth:`OncologyPatientTwin.observe` accepts it whole.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedtwin.cohorts.oncology import CHEMO_DOSE, RADIO_DOSE_GY
from fedtwin.errors import IngestError

HISTORY_COLUMNS = ("day", "tumour_volume_cm3", "chemo_dose_mg", "radio_dose_gy")
_PROTOCOL_DOSE = {"chemo_dose_mg": CHEMO_DOSE, "radio_dose_gy": RADIO_DOSE_GY}


@dataclass(frozen=True, eq=False)
class TumourHistory:
    """A patient's history CSV as ``[D]`` arrays (one entry per day, consecutive)."""

    path: Path
    days: NDArray[np.int64]
    volume_cm3: NDArray[np.float64]
    chemo_mg: NDArray[np.float64]
    radio_gy: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.days.shape[0])

    @property
    def first_day(self) -> int:
        """Day number of the first row."""
        return int(self.days[0])


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise IngestError(f"{where}: {column}: {text!r} is not a number") from error
    if not math.isfinite(value):
        raise IngestError(f"{where}: {column}: {text!r} is not finite")
    return value


def _dose(text: str, where: str, column: str) -> float:
    value = _number(text, where, column)
    dose = _PROTOCOL_DOSE[column]
    if value < 0:
        raise IngestError(f"{where}: {column}: {value:g} is negative")
    if value != 0.0 and abs(value - dose) > 1e-6 * dose:
        raise IngestError(
            f"{where}: {column}: {value:g} is neither 0 nor the protocol dose {dose:g} "
            "(the twin models fixed-dose chemotherapy and 2 Gy fractions)"
        )
    return value


def read_tumour_history(path: Path) -> TumourHistory:
    """Read and check a history CSV (format in the module docstring).

    Raises
    ------
    IngestError
        ``<file>:<line>: <column>: <what is wrong>`` for the first bad row; a missing or empty
        file, or a wrong header.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as error:
        raise IngestError(f"{path}: no such file") from error
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise IngestError(f"{path}: not a readable CSV ({error})") from error
    if not rows:
        raise IngestError(f"{path}: empty file (expected the header {','.join(HISTORY_COLUMNS)})")
    header = tuple(cell.strip() for cell in rows[0])
    if header != HISTORY_COLUMNS:
        unknown = [column for column in header if column not in HISTORY_COLUMNS]
        detail = f"unknown column {unknown[0]!r}" if unknown else f"got {','.join(header)}"
        raise IngestError(f"{path}:1: header must be {','.join(HISTORY_COLUMNS)} ({detail})")
    days: list[int] = []
    volumes: list[float] = []
    chemo: list[float] = []
    radio: list[float] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(HISTORY_COLUMNS):
            raise IngestError(f"{where}: {len(row)} fields, expected {len(HISTORY_COLUMNS)}")
        cells = [cell.strip() for cell in row]
        try:
            day = int(cells[0])
        except ValueError as error:
            raise IngestError(f"{where}: day: {cells[0]!r} is not a whole number") from error
        if day < 0:
            raise IngestError(f"{where}: day: {day} is negative")
        if days and day != days[-1] + 1:
            what = "repeats or goes back" if day <= days[-1] else "leaves a gap"
            raise IngestError(
                f"{where}: day: {day} {what} after day {days[-1]} (one row per day, consecutive)"
            )
        volume = _number(cells[1], where, "tumour_volume_cm3")
        if volume <= 0:
            raise IngestError(f"{where}: tumour_volume_cm3: {volume:g} must be > 0")
        days.append(day)
        volumes.append(volume)
        chemo.append(_dose(cells[2], where, "chemo_dose_mg"))
        radio.append(_dose(cells[3], where, "radio_dose_gy"))
    if not days:
        raise IngestError(f"{path}: no rows after the header")
    return TumourHistory(
        path=path,
        days=np.asarray(days, dtype=np.int64),
        volume_cm3=np.asarray(volumes, dtype=np.float64),
        chemo_mg=np.asarray(chemo, dtype=np.float64),
        radio_gy=np.asarray(radio, dtype=np.float64),
    )
