"""One patient's device export (CGM + pump CSV) into a :class:`PatientSeries`.

Format: a header row naming at least ``time,glucose_mg_dl,insulin_u,carbs_g`` (any order;
other columns are ignored and listed in :attr:`DeviceCsv.ignored_columns`), then one row per
event. ``time`` is ISO 8601 with a UTC offset; rows are strictly increasing in time. An empty
cell means *not recorded*; ``0`` means *none*. ``insulin_u`` is the insulin delivered at that
time (U), ``carbs_g`` the carbohydrate eaten (g).

Invariants: the same grid rules as the FHIR path (:mod:`fedtwin.fhir.series`), the same ranges
(:data:`fedtwin.fhir.profile.RANGES`), the same policy and counting (read = used + rejected);
every message names ``<file>:<line>``; the file is streamed row by row.
"""

from __future__ import annotations

import csv
import math
from array import array
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from fedtwin.errors import IngestError
from fedtwin.fhir.profile import RANGES, Dimension
from fedtwin.fhir.pseudonym import pseudonym
from fedtwin.fhir.records import Skip
from fedtwin.fhir.report import ErrorClass, IngestPolicy, IngestReport, Rejection, Tally
from fedtwin.fhir.series import PatientSeries, build_glucose_series
from fedtwin.fhir.summary import summarise

COLUMNS = ("time", "glucose_mg_dl", "insulin_u", "carbs_g")
KIND = "DeviceCSV"
_RANGE_OF = {
    "glucose_mg_dl": RANGES[Dimension.GLUCOSE],
    "insulin_u": RANGES[Dimension.INSULIN],
    "carbs_g": RANGES[Dimension.MASS_G],
}


@dataclass(frozen=True)
class DeviceCsv:
    """A device CSV read into one series.

    Attributes
    ----------
    series : PatientSeries
        The patient's grid.
    report : IngestReport
        Rows read/used/rejected (resource type ``DeviceCSV``).
    ignored_columns : tuple[str, ...]
        Header names that were not read.
    """

    series: PatientSeries
    report: IngestReport
    ignored_columns: tuple[str, ...]


def _time(cell: str) -> float | str:
    try:
        moment = datetime.fromisoformat(cell.strip())
    except ValueError:
        return "time is not ISO 8601"
    if moment.tzinfo is None or moment.utcoffset() is None:
        return "time has no UTC offset"
    return moment.timestamp()


def _number(cell: str, name: str) -> float | str | None:
    text = cell.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return f"{name} is not a number"
    if not math.isfinite(value):
        return f"{name} is not a finite number"
    return value


def read_device_csv(
    path: Path,
    *,
    patient_id: str,
    secret: bytes,
    policy: IngestPolicy | None = None,
) -> DeviceCsv:
    """Read a device CSV export of one patient.

    Parameters
    ----------
    path : Path
        The CSV file (UTF-8, optional BOM).
    patient_id : str
        Local id to give the series (pseudonymised with ``secret``).
    secret : bytes
        Site secret.
    policy : IngestPolicy or None
        Strict (default) or lenient.

    Returns
    -------
    DeviceCsv
        Series, report and the ignored columns.

    Raises
    ------
    IngestError
        ``<file>:<line>: <reason>`` for the first bad row under a strict policy; for a
        missing file or column, an empty file, or a file without any glucose reading.
    """
    tally = Tally(policy or IngestPolicy.strict())
    columns = {name: (array("d"), array("d")) for name in COLUMNS[1:]}
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise IngestError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise IngestError(f"{path}: empty file (no header)")
            names = [name.strip() for name in header]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise IngestError(f"{path}:1: missing column(s) {', '.join(missing)}")
            position = {c: names.index(c) for c in COLUMNS}
            ignored = tuple(n for n in names if n not in COLUMNS)
            previous: tuple[float, int] | None = None
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                tally.read(KIND)
                outcome = _row(row, names, position, previous)
                if isinstance(outcome, Skip):
                    rejection = Rejection(outcome.error_class, path, line, outcome.reason)
                    tally.reject(KIND, rejection)
                    continue
                when, values = outcome
                previous = (when, line)
                for name, value in values.items():
                    if value is not None:
                        columns[name][0].append(when)
                        columns[name][1].append(value)
                tally.use(KIND)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise IngestError(f"{path}:{reader.line_num + 1}: not a readable CSV row") from exc
    if not tally.counts():
        raise IngestError(f"{path}: empty file (no rows)")
    glucose_t, glucose_v = (np.frombuffer(a, dtype=np.float64) for a in columns["glucose_mg_dl"])
    if glucose_t.size == 0:
        raise IngestError(f"{path}: no glucose reading (glucose_mg_dl is empty in every row)")
    insulin_t, insulin_u = (np.frombuffer(a, dtype=np.float64) for a in columns["insulin_u"])
    carbs_t, carbs_g = (np.frombuffer(a, dtype=np.float64) for a in columns["carbs_g"])
    series, same_bin = build_glucose_series(
        patient_id,
        pseudonym(secret, patient_id),
        (glucose_t, glucose_v),
        (insulin_t, insulin_t, insulin_u),
        (carbs_t, carbs_g),
        birth=None,
        sex=None,
        weight_kg=None,
    )
    if same_bin:
        tally.notes.append(f"{same_bin} glucose readings shared a 5-minute bin; the first was kept")
    if ignored:
        tally.notes.append(f"ignored column(s): {', '.join(ignored)}")
    first = float(min(a.min() for a in (glucose_t, insulin_t, carbs_t) if a.size))
    last = float(max(a.max() for a in (glucose_t, insulin_t, carbs_t) if a.size))
    report = summarise(path.name, tally, 1, [series], [], first, last)
    return DeviceCsv(series=series, report=report, ignored_columns=ignored)


def _row(
    row: list[str],
    names: list[str],
    position: dict[str, int],
    previous: tuple[float, int] | None,
) -> tuple[float, dict[str, float | None]] | Skip:
    if len(row) != len(names):
        return Skip(ErrorClass.BAD_VALUE, f"row has {len(row)} fields, the header has {len(names)}")
    when = _time(row[position["time"]])
    if isinstance(when, str):
        return Skip(ErrorClass.TIMESTAMP, when)
    if previous is not None and when <= previous[0]:
        reason = f"time is not after the row at line {previous[1]} (out of order)"
        return Skip(ErrorClass.TIMESTAMP, reason)
    values: dict[str, float | None] = {}
    for name in COLUMNS[1:]:
        value = _number(row[position[name]], name)
        if isinstance(value, str):
            return Skip(ErrorClass.BAD_VALUE, value)
        if value is not None:
            low, high = _RANGE_OF[name]
            if not low <= value <= high:
                return Skip(
                    ErrorClass.OUT_OF_RANGE, f"{name} {value:g} outside [{low:g}, {high:g}]"
                )
        values[name] = value
    if all(v is None for v in values.values()):
        return Skip(ErrorClass.NO_VALUE, "row has no glucose, insulin or carbohydrate value")
    return when, values
