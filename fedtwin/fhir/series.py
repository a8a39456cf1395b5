"""Per-patient series on a regular UTC grid: what the twin reads, built from timed records.

Grid rules (the same for FHIR exports and device CSV; ``docs/fhir-profile.md`` repeats them):

* glucose grid: 5-minute bins aligned to UTC epoch multiples of 5 min; bin ``k`` covers
  ``[start + 5k min, start + 5(k+1) min)``; ``start`` is the earliest record floored to the
  grid, the last bin holds the latest record (basal periods count until their end);
* ``cgm_mg_dl[k]`` is the *earliest* reading inside bin ``k`` (a reading taken at the bin start
  is the simulator's convention); later readings in the same bin are not used (``same_bin``);
  ``cgm_mask[k]`` is True where a reading exists, ``cgm_mg_dl`` is NaN elsewhere;
* ``insulin_u[k]`` is the insulin delivered during bin ``k``: boluses at their time plus every
  rate (U/h) × the minutes of its period that fall inside the bin; ``carbs_g[k]`` is the
  carbohydrate eaten during bin ``k``;
* ``insulin_mask`` / ``carbs_mask`` are True from the bin of the first to the bin of the last
  record of that kind: inside that span a bin without a record means *none delivered* (0),
  outside it the amount is unknown (value 0, mask False); a patient with no record of a kind
  has that mask all False;
* oncology grid: whole UTC days; ``tumour_volume_cm3[d]`` is the earliest measurement of day
  ``d`` (NaN and mask False elsewhere); chemotherapy (mg) and radiotherapy (Gy) are summed per
  day, and a day without a record means none given;
* arrays are read-only numpy (float32 values, bool masks), so a frozen series stays frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

STEP_MIN = 5
STEP_S = STEP_MIN * 60
DAY_S = 86_400

Sex = str  # FHIR administrative gender: "male", "female", "other", "unknown"


_A = TypeVar("_A", bound=np.generic)


def _frozen(array: NDArray[_A]) -> NDArray[_A]:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class PatientSeries:
    """One patient's glucose, insulin and carbohydrate history on the 5-minute grid.

    Attributes
    ----------
    patient_id : str
        Local id (``Patient.id`` or the CSV's given id). Never leaves the site.
    pseudonym : str
        Keyed pseudonym of ``patient_id`` (:func:`fedtwin.fhir.pseudonym`); what may leave.
    start : datetime
        UTC start of bin 0, a multiple of 5 minutes.
    cgm_mg_dl, cgm_mask : ndarray
        ``[T]`` float32 readings (NaN where none) and bool mask.
    insulin_u, insulin_mask : ndarray
        ``[T]`` float32 units delivered per bin and bool mask (see module rules).
    carbs_g, carbs_mask : ndarray
        ``[T]`` float32 grams eaten per bin and bool mask.
    age_years : float or None
        Age at ``start`` from ``birthDate``.
    sex : str or None
        Administrative gender.
    weight_kg : float or None
        Body weight (the measurement closest to ``start``).
    step_min : int
        Bin width, 5.
    """

    patient_id: str
    pseudonym: str
    start: datetime
    cgm_mg_dl: NDArray[np.float32]
    cgm_mask: NDArray[np.bool_]
    insulin_u: NDArray[np.float32]
    insulin_mask: NDArray[np.bool_]
    carbs_g: NDArray[np.float32]
    carbs_mask: NDArray[np.bool_]
    age_years: float | None = None
    sex: Sex | None = None
    weight_kg: float | None = None
    step_min: int = STEP_MIN

    @property
    def n_steps(self) -> int:
        """Number of bins ``T``."""
        return int(self.cgm_mg_dl.shape[0])

    @property
    def end(self) -> datetime:
        """UTC end of the last bin (exclusive)."""
        return self.start + timedelta(minutes=self.step_min * self.n_steps)


@dataclass(frozen=True, eq=False)
class OncologySeries:
    """One patient's tumour volume and treatments on a daily UTC grid.

    Attributes
    ----------
    patient_id, pseudonym : str
        Local id (never leaves the site) and its keyed pseudonym.
    start : datetime
        UTC midnight of day 0.
    tumour_volume_cm3, tumour_mask : ndarray
        ``[D]`` float32 volume (NaN where not measured) and bool mask.
    chemo_mg : ndarray
        ``[D]`` float32 chemotherapy given per day, mg.
    radio_gy : ndarray
        ``[D]`` float32 radiotherapy dose delivered per day, Gy.
    age_years, sex, weight_kg
        Static covariates, as for :class:`PatientSeries`.
    """

    patient_id: str
    pseudonym: str
    start: datetime
    tumour_volume_cm3: NDArray[np.float32]
    tumour_mask: NDArray[np.bool_]
    chemo_mg: NDArray[np.float32]
    radio_gy: NDArray[np.float32]
    age_years: float | None = None
    sex: Sex | None = None
    weight_kg: float | None = None
    step_days: int = 1

    @property
    def n_days(self) -> int:
        """Number of days ``D``."""
        return int(self.tumour_volume_cm3.shape[0])


def epoch_to_datetime(seconds: float) -> datetime:
    """UTC datetime of epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def first_per_bin(bins: NDArray[np.int64]) -> NDArray[np.int64]:
    """Indices of the first element of each distinct bin (``bins`` sorted ascending)."""
    if bins.size == 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.empty(bins.size, dtype=bool)
    keep[0] = True
    np.not_equal(bins[1:], bins[:-1], out=keep[1:])
    return np.flatnonzero(keep)


def spread_over_bins(
    t0: NDArray[np.float64],
    t1: NDArray[np.float64],
    amount: NDArray[np.float64],
    start_s: float,
    n_bins: int,
    step_s: float,
) -> NDArray[np.float64]:
    """Amounts per bin: point amounts (``t1 == t0``) in their bin, period amounts pro rata.

    A period ``[t0, t1)`` delivers ``amount`` uniformly; bin ``k`` gets the share of the
    period that overlaps ``[start + k·step, start + (k+1)·step)``. Computed from the cumulative
    delivery curve evaluated at the bin edges, so overlapping periods simply add up.
    """
    totals = np.zeros(n_bins, dtype=np.float64)
    point = t1 <= t0
    if point.any():
        bins = np.floor((t0[point] - start_s) / step_s).astype(np.int64)
        np.add.at(totals, bins, amount[point])
    period = ~point
    if period.any():
        p0, p1, pa = t0[period], t1[period], amount[period]
        rate = pa / (p1 - p0)
        times = np.concatenate([p0, p1])
        slope_change = np.concatenate([rate, -rate])
        order = np.argsort(times, kind="stable")
        times, slope_change = times[order], slope_change[order]
        slope = np.cumsum(slope_change)
        cumulative = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(times))])
        edges = start_s + step_s * np.arange(n_bins + 1, dtype=np.float64)
        at_edges = np.interp(edges, times, cumulative, left=0.0, right=float(cumulative[-1]))
        totals += np.diff(at_edges)
    return totals


def last_instant(t0: NDArray[np.float64], t1: NDArray[np.float64]) -> float:
    """Latest instant covered by records: a point's time, or just before a period's end."""
    latest = float(t0.max())
    period = t1 > t0
    if period.any():
        latest = max(latest, float(np.nextafter(t1[period].max(), -np.inf)))
    return latest


def span_mask(
    t0: NDArray[np.float64], t1: NDArray[np.float64], start_s: float, n_bins: int, step_s: float
) -> NDArray[np.bool_]:
    """True from the bin of the earliest record to the bin of the latest covered instant."""
    mask = np.zeros(n_bins, dtype=bool)
    if t0.size == 0:
        return mask
    first = math.floor((float(t0.min()) - start_s) / step_s)
    last = math.floor((last_instant(t0, t1) - start_s) / step_s)
    mask[max(first, 0) : min(last, n_bins - 1) + 1] = True
    return mask


def age_years(birth: datetime | None, at: datetime) -> float | None:
    """Age in years (365.25-day years) at ``at``; ``None`` when the birth date is unknown."""
    if birth is None:
        return None
    return (at - birth).total_seconds() / (365.25 * DAY_S)


def build_glucose_series(
    patient_id: str,
    pseudonym: str,
    cgm: tuple[NDArray[np.float64], NDArray[np.float64]],
    insulin: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]],
    carbs: tuple[NDArray[np.float64], NDArray[np.float64]],
    *,
    birth: datetime | None,
    sex: Sex | None,
    weight_kg: float | None,
) -> tuple[PatientSeries, int]:
    """Grid one patient's records (times in epoch seconds) into a :class:`PatientSeries`.

    Parameters
    ----------
    patient_id, pseudonym : str
        Local id and its pseudonym.
    cgm : tuple of ndarray
        ``(times, mg_dl)`` glucose readings, any order.
    insulin : tuple of ndarray
        ``(t0, t1, units)``: ``t1 == t0`` for a bolus, ``t1 > t0`` for delivery over a period.
    carbs : tuple of ndarray
        ``(times, grams)``.
    birth, sex, weight_kg
        Static covariates.

    Returns
    -------
    tuple[PatientSeries, int]
        The series and the number of CGM readings not used because an earlier reading
        already filled their bin.
    """
    cgm_t, cgm_v = cgm
    ins_t0, ins_t1, ins_u = insulin
    carb_t, carb_g = carbs
    kinds = [(t, t) for t in (cgm_t, carb_t) if t.size]
    if ins_t0.size:
        kinds.append((ins_t0, ins_t1))
    start_s = math.floor(min(float(t0.min()) for t0, _ in kinds) / STEP_S) * STEP_S
    latest = max(last_instant(t0, t1) for t0, t1 in kinds)
    n_bins = math.floor((latest - start_s) / STEP_S) + 1

    order = np.argsort(cgm_t, kind="stable")
    bins = np.floor((cgm_t[order] - start_s) / STEP_S).astype(np.int64)
    first = first_per_bin(bins)
    cgm_values = np.full(n_bins, np.nan, dtype=np.float32)
    cgm_values[bins[first]] = cgm_v[order][first]
    cgm_mask = ~np.isnan(cgm_values)

    insulin_u = spread_over_bins(ins_t0, ins_t1, ins_u, start_s, n_bins, STEP_S)
    carbs_g = spread_over_bins(carb_t, carb_t, carb_g, start_s, n_bins, STEP_S)
    start = epoch_to_datetime(start_s)
    series = PatientSeries(
        patient_id=patient_id,
        pseudonym=pseudonym,
        start=start,
        cgm_mg_dl=_frozen(cgm_values),
        cgm_mask=_frozen(cgm_mask),
        insulin_u=_frozen(insulin_u.astype(np.float32)),
        insulin_mask=_frozen(span_mask(ins_t0, ins_t1, start_s, n_bins, STEP_S)),
        carbs_g=_frozen(carbs_g.astype(np.float32)),
        carbs_mask=_frozen(span_mask(carb_t, carb_t, start_s, n_bins, STEP_S)),
        age_years=age_years(birth, start),
        sex=sex,
        weight_kg=weight_kg,
    )
    return series, int(cgm_t.size - first.size)


def build_oncology_series(
    patient_id: str,
    pseudonym: str,
    volume: tuple[NDArray[np.float64], NDArray[np.float64]],
    chemo: tuple[NDArray[np.float64], NDArray[np.float64]],
    radio: tuple[NDArray[np.float64], NDArray[np.float64]],
    *,
    birth: datetime | None,
    sex: Sex | None,
    weight_kg: float | None,
) -> tuple[OncologySeries, int]:
    """Grid one patient's oncology records (epoch seconds) by UTC day.

    Returns
    -------
    tuple[OncologySeries, int]
        The series and the number of volume measurements not used (same day as an earlier
        one).
    """
    vol_t, vol_v = volume
    all_t = [a for a in (vol_t, chemo[0], radio[0]) if a.size]
    start_s = math.floor(float(min(a.min() for a in all_t)) / DAY_S) * DAY_S
    n_days = math.floor((float(max(a.max() for a in all_t)) - start_s) / DAY_S) + 1
    order = np.argsort(vol_t, kind="stable")
    days = np.floor((vol_t[order] - start_s) / DAY_S).astype(np.int64)
    first = first_per_bin(days)
    volumes = np.full(n_days, np.nan, dtype=np.float32)
    volumes[days[first]] = vol_v[order][first]
    chemo_mg = spread_over_bins(chemo[0], chemo[0], chemo[1], start_s, n_days, DAY_S)
    radio_gy = spread_over_bins(radio[0], radio[0], radio[1], start_s, n_days, DAY_S)
    start = epoch_to_datetime(start_s)
    series = OncologySeries(
        patient_id=patient_id,
        pseudonym=pseudonym,
        start=start,
        tumour_volume_cm3=_frozen(volumes),
        tumour_mask=_frozen(~np.isnan(volumes)),
        chemo_mg=_frozen(chemo_mg.astype(np.float32)),
        radio_gy=_frozen(radio_gy.astype(np.float32)),
        age_years=age_years(birth, start),
        sex=sex,
        weight_kg=weight_kg,
    )
    return series, int(vol_t.size - first.size)
