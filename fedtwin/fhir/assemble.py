"""Whole-export decisions on the records each patient accumulated, then the grids.

Invariant: every record that reached a patient's :class:`Columns` leaves here counted exactly
once, as used or as rejected, in this order of reasons: ``duplicate_id`` (a later line reusing
an id), ``outside_span`` (older than ``max_span_days`` before the patient's latest record),
``superseded`` (blood/capillary glucose when the patient has CGM-IG readings), ``timestamp``
(a basal period overlapping an earlier one), ``insufficient_data`` (patient not usable),
``same_bin`` (a later reading in an occupied bin/day); the rest are used.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedtwin.errors import IngestError
from fedtwin.fhir.profile import Measure
from fedtwin.fhir.pseudonym import pseudonym
from fedtwin.fhir.report import ErrorClass, IngestPolicy, Rejection, Tally
from fedtwin.fhir.series import (
    OncologySeries,
    PatientSeries,
    build_glucose_series,
    build_oncology_series,
)

#: The file each measure's records come from.
MEASURE_FILE: dict[Measure, str] = {
    Measure.CGM: "Observation",
    Measure.GLUCOSE_OTHER: "Observation",
    Measure.CARBS: "Observation",
    Measure.BODY_WEIGHT: "Observation",
    Measure.TUMOUR_SIZE: "Observation",
    Measure.INSULIN: "MedicationAdministration",
    Measure.INSULIN_BASAL: "MedicationAdministration",
    Measure.CHEMO: "MedicationAdministration",
    Measure.RADIOTHERAPY: "Procedure",
}
GLUCOSE_MEASURES = (
    Measure.CGM,
    Measure.GLUCOSE_OTHER,
    Measure.CARBS,
    Measure.INSULIN,
    Measure.INSULIN_BASAL,
)
ONCOLOGY_MEASURES = (Measure.TUMOUR_SIZE, Measure.CHEMO, Measure.RADIOTHERAPY)

PointSink = tuple[Callable[[float], None], Callable[[float], None], Callable[[int], None]]
Arrays = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]


@dataclass
class Columns:
    """Timed records of one kind for one patient, as compact typed arrays."""

    t0: array[float] = field(default_factory=lambda: array("d"))
    t1: array[float] = field(default_factory=lambda: array("d"))
    value: array[float] = field(default_factory=lambda: array("d"))
    line: array[int] = field(default_factory=lambda: array("I"))

    def add(self, t0: float, t1: float, value: float, line: int) -> None:
        """Append one record over the period ``[t0, t1)`` (``t1 == t0``: a point in time)."""
        if len(self.t1) != len(self.t0):
            raise ValueError("point and period records cannot share one Columns")
        self.t0.append(t0)
        self.t1.append(t1)
        self.value.append(value)
        self.line.append(line)

    def add_point(self, t: float, value: float, line: int) -> None:
        """Append one record at a point in time (no end time stored)."""
        self.t0.append(t)
        self.value.append(value)
        self.line.append(line)

    def point_sink(self) -> PointSink:
        """The three appenders of :meth:`add_point`, for a hot loop to call directly."""
        return self.t0.append, self.value.append, self.line.append

    def arrays(self) -> Arrays:
        """``(t0, t1, value, line)`` as numpy arrays (``t1`` is ``t0`` for points)."""
        t0 = np.frombuffer(self.t0, dtype=np.float64)
        return (
            t0,
            np.frombuffer(self.t1, dtype=np.float64) if len(self.t1) else t0,
            np.frombuffer(self.value, dtype=np.float64),
            np.frombuffer(self.line, dtype=np.uint32).astype(np.int64),
        )


@dataclass
class PatientInfo:
    """What ``Patient.ndjson`` says about one patient, and the records that name them."""

    birth: datetime | None
    sex: str | None
    records: dict[Measure, Columns] = field(default_factory=dict)

    def columns(self, measure: Measure) -> Columns:
        """The patient's records of ``measure`` (created empty on first use)."""
        found = self.records.get(measure)
        if found is None:
            found = self.records[measure] = Columns()
        return found


def _take(arrays: Arrays, keep: NDArray[np.bool_]) -> Arrays:
    return (arrays[0][keep], arrays[1][keep], arrays[2][keep], arrays[3][keep])


def _empty() -> Arrays:
    nothing = np.zeros(0, dtype=np.float64)
    return nothing, nothing, nothing, np.zeros(0, dtype=np.int64)


class SeriesAssembler:
    """Turns accumulated records into series, counting every record once.

    Parameters
    ----------
    tally : Tally
        Counts and policy of the ingest.
    files : dict[str, Path]
        Resource type → file (for messages).
    duplicate_lines : dict[str, set[int]]
        Resource type → lines whose id repeats an earlier line.
    secret : bytes
        Site secret for pseudonyms.
    max_span_s : float
        Longest history kept per patient and domain, seconds.
    min_cgm_readings : int
        Glucose readings a patient needs to be usable.
    """

    def __init__(
        self,
        tally: Tally,
        files: dict[str, Path],
        duplicate_lines: dict[str, set[int]],
        secret: bytes,
        max_span_s: float,
        min_cgm_readings: int,
    ) -> None:
        self.tally = tally
        self.files = files
        self.duplicate_lines = duplicate_lines
        self.secret = secret
        self.max_span_s = max_span_s
        self.min_cgm_readings = min_cgm_readings
        self.first_s: float | None = None
        self.last_s: float | None = None

    @property
    def policy(self) -> IngestPolicy:
        """The ingest's policy."""
        return self.tally.policy

    def _used(self, measure: Measure, arrays: Arrays) -> None:
        count = int(arrays[0].size)
        if count == 0:
            return
        self.tally.use(MEASURE_FILE[measure], count)
        low, high = float(arrays[0].min()), float(np.maximum(arrays[0], arrays[1]).max())
        self.first_s = low if self.first_s is None else min(self.first_s, low)
        self.last_s = high if self.last_s is None else max(self.last_s, high)

    def _drop_many(self, measure: Measure, error_class: ErrorClass, count: int) -> None:
        self.tally.reject_many(MEASURE_FILE[measure], error_class, count)

    def _without_duplicates(self, measure: Measure, arrays: Arrays) -> Arrays:
        resource_type = MEASURE_FILE[measure]
        lines = self.duplicate_lines.get(resource_type)
        if not lines:
            return arrays
        duplicated = np.isin(arrays[3], np.fromiter(lines, dtype=np.int64))
        for line in arrays[3][duplicated].tolist():
            rejection = Rejection(
                ErrorClass.DUPLICATE_ID, self.files[resource_type], line, "duplicate id"
            )
            self.tally.reject(resource_type, rejection)
        return _take(arrays, ~duplicated)

    def _within_span(self, records: dict[Measure, Arrays], measures: Iterable[Measure]) -> None:
        present = [records[m] for m in measures if records[m][0].size]
        if not present:
            return
        latest = max(float(np.maximum(a[0], a[1]).max()) for a in present)
        cutoff = latest - self.max_span_s
        for measure in measures:
            arrays = records[measure]
            old = arrays[0] < cutoff
            if old.any():
                self._drop_many(measure, ErrorClass.OUTSIDE_SPAN, int(old.sum()))
                records[measure] = _take(arrays, ~old)

    def _without_basal_overlaps(self, arrays: Arrays) -> Arrays:
        order = np.argsort(arrays[0], kind="stable")
        arrays = (arrays[0][order], arrays[1][order], arrays[2][order], arrays[3][order])
        keep = np.ones(arrays[0].size, dtype=bool)
        covered_until, covered_line = -np.inf, 0
        for index, (t0, t1, line) in enumerate(
            zip(arrays[0].tolist(), arrays[1].tolist(), arrays[3].tolist(), strict=True)
        ):
            if t0 < covered_until:
                reason = f"basal period overlaps the basal period at line {covered_line}"
                rejection = Rejection(
                    ErrorClass.TIMESTAMP, self.files["MedicationAdministration"], line, reason
                )
                self.tally.reject("MedicationAdministration", rejection)
                keep[index] = False
                continue
            covered_until, covered_line = t1, line
        return _take(arrays, keep)

    def build(
        self, patient_id: str, info: PatientInfo
    ) -> tuple[PatientSeries | None, OncologySeries | None]:
        """Decide every pending record of one patient and grid what is usable."""
        records = {
            m: self._without_duplicates(m, info.records[m].arrays())
            if m in info.records
            else _empty()
            for m in MEASURE_FILE
        }
        self._within_span(records, GLUCOSE_MEASURES)
        self._within_span(records, ONCOLOGY_MEASURES)
        if records[Measure.CGM][0].size and records[Measure.GLUCOSE_OTHER][0].size:
            other = records[Measure.GLUCOSE_OTHER]
            self._drop_many(Measure.GLUCOSE_OTHER, ErrorClass.SUPERSEDED, int(other[0].size))
            records[Measure.GLUCOSE_OTHER] = _empty()
        if records[Measure.INSULIN_BASAL][0].size:
            records[Measure.INSULIN_BASAL] = self._without_basal_overlaps(
                records[Measure.INSULIN_BASAL]
            )
        glucose = self._glucose(patient_id, info, records)
        oncology = self._oncology(patient_id, info, records)
        weights = records[Measure.BODY_WEIGHT]
        if glucose is None and oncology is None:
            self._drop_many(Measure.BODY_WEIGHT, ErrorClass.INSUFFICIENT_DATA, int(weights[0].size))
        else:
            self.tally.use("Observation", int(weights[0].size))  # covariates: not in the span
        return glucose, oncology

    def _weight_near(self, weights: Arrays, at_s: float) -> float | None:
        if weights[0].size == 0:
            return None
        return float(weights[2][int(np.argmin(np.abs(weights[0] - at_s)))])

    def _glucose(
        self, patient_id: str, info: PatientInfo, records: dict[Measure, Arrays]
    ) -> PatientSeries | None:
        glucose_key = Measure.CGM if records[Measure.CGM][0].size else Measure.GLUCOSE_OTHER
        cgm = records[glucose_key]
        if cgm[0].size < self.min_cgm_readings:
            for measure in GLUCOSE_MEASURES:
                count = int(records[measure][0].size)
                self._drop_many(measure, ErrorClass.INSUFFICIENT_DATA, count)
            return None
        bolus, basal = records[Measure.INSULIN], records[Measure.INSULIN_BASAL]
        insulin = (
            np.concatenate([bolus[0], basal[0]]),
            np.concatenate([bolus[1], basal[1]]),
            np.concatenate([bolus[2], basal[2]]),
        )
        carbs = records[Measure.CARBS]
        start_guess = float(min(a[0].min() for a in (cgm, carbs, bolus, basal) if a[0].size))
        series, same_bin = build_glucose_series(
            patient_id,
            pseudonym(self.secret, patient_id),
            (cgm[0], cgm[2]),
            insulin,
            (carbs[0], carbs[2]),
            birth=info.birth,
            sex=info.sex,
            weight_kg=self._weight_near(records[Measure.BODY_WEIGHT], start_guess),
        )
        self._drop_many(glucose_key, ErrorClass.SAME_BIN, same_bin)
        used_cgm = cgm[0].size - same_bin
        self.tally.use(MEASURE_FILE[glucose_key], used_cgm)
        self._span(cgm)
        for measure in (Measure.CARBS, Measure.INSULIN, Measure.INSULIN_BASAL):
            self._used(measure, records[measure])
        return series

    def _span(self, arrays: Arrays) -> None:
        if arrays[0].size:
            low, high = float(arrays[0].min()), float(arrays[0].max())
            self.first_s = low if self.first_s is None else min(self.first_s, low)
            self.last_s = high if self.last_s is None else max(self.last_s, high)

    def _oncology(
        self, patient_id: str, info: PatientInfo, records: dict[Measure, Arrays]
    ) -> OncologySeries | None:
        volume = records[Measure.TUMOUR_SIZE]
        if volume[0].size == 0:
            for measure in ONCOLOGY_MEASURES:
                count = int(records[measure][0].size)
                self._drop_many(measure, ErrorClass.INSUFFICIENT_DATA, count)
            return None
        chemo, radio = records[Measure.CHEMO], records[Measure.RADIOTHERAPY]
        series, same_day = build_oncology_series(
            patient_id,
            pseudonym(self.secret, patient_id),
            (volume[0], volume[2]),
            (chemo[0], chemo[2]),
            (radio[0], radio[2]),
            birth=info.birth,
            sex=info.sex,
            weight_kg=self._weight_near(records[Measure.BODY_WEIGHT], float(volume[0].min())),
        )
        self._drop_many(Measure.TUMOUR_SIZE, ErrorClass.SAME_BIN, same_day)
        self.tally.use("Observation", int(volume[0].size) - same_day)
        self._span(volume)
        self._used(Measure.CHEMO, chemo)
        self._used(Measure.RADIOTHERAPY, radio)
        return series

    def build_all(
        self, patients: dict[str, PatientInfo]
    ) -> tuple[list[PatientSeries], list[OncologySeries]]:
        """Series of every usable patient, in ``Patient.ndjson`` order."""
        glucose: list[PatientSeries] = []
        oncology: list[OncologySeries] = []
        for patient_id, info in patients.items():
            one, other = self.build(patient_id, info)
            if one is not None:
                glucose.append(one)
            if other is not None:
                oncology.append(other)
            info.records.clear()  # free the columns as soon as they are gridded
        return glucose, oncology


def check_duplicates(
    tally: Tally, resource_type: str, path: Path, found: list[tuple[int, int]]
) -> set[int]:
    """Stop at the first duplicate under a strict policy; else the duplicate lines."""
    if found and tally.policy.is_fatal(ErrorClass.DUPLICATE_ID):
        line, first = found[0]
        raise IngestError(f"{path}:{line}: duplicate id (first at line {first})")
    return {line for line, _ in found}
