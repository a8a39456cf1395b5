"""Clarke error grid: the clinical zone (A–E) of each (reference, prediction) glucose pair.

Source: W. L. Clarke, D. Cox, L. A. Gonder-Frederick, W. Carter, S. L. Pohl, "Evaluating
clinical accuracy of systems for self-monitoring of blood glucose", *Diabetes Care* 10(5):
622–628, 1987. Both axes are in mg/dL; ``x`` is the reference, ``y`` the prediction. The zone
boundaries, as drawn in the paper's figure and used by the common implementations:

* **A** (clinically accurate): ``y`` within 20 % of ``x`` (``0.8·x ≤ y ≤ 1.2·x``), or both
  hypoglycaemic (``x ≤ 70`` and ``y ≤ 70``);
* **E** (erroneous, opposite treatment): ``x ≥ 180`` and ``y ≤ 70``, or ``x ≤ 70`` and
  ``y ≥ 180``;
* **C** (over-correction): ``70 ≤ x ≤ 290`` and ``y ≥ x + 110``, or ``130 ≤ x ≤ 180`` and
  ``y ≤ 7/5·x − 182``;
* **D** (failure to detect/treat): ``x ≥ 240`` and ``70 ≤ y ≤ 180``, or ``x ≤ 175/3`` and
  ``70 ≤ y ≤ 180``, or ``175/3 ≤ x ≤ 70`` and ``6/5·x ≤ y ≤ 180`` (the common
  implementations leave out ``y ≤ 180``, which changes nothing: E comes first);
* **B** (benign): everything else.

Invariant: the regions above overlap only on their boundary lines; there a pair takes the
first zone in the order A, E, C, D, B (the precedence of the common implementations), so every
pair gets exactly one zone. Everything is vectorised (no Python loop over pairs).
"""

from __future__ import annotations

import enum

import numpy as np
from numpy.typing import ArrayLike, NDArray

HYPO_MG_DL = 70.0
HYPER_MG_DL = 180.0


class ClarkeZone(enum.IntEnum):
    """A Clarke error grid zone; the value is the zone's index (A = 0 … E = 4)."""

    A = 0
    B = 1
    C = 2
    D = 3
    E = 4


BoolArray = NDArray[np.bool_]


def zone_regions(
    reference_mg_dl: ArrayLike, prediction_mg_dl: ArrayLike
) -> dict[ClarkeZone, BoolArray]:
    """The raw regions A, C, D and E of the module docstring, each a bool array.

    B is the complement of their union. The regions share only boundary lines (see
    :func:`clarke_zones` for the precedence there).
    """
    x = np.asarray(reference_mg_dl, dtype=np.float64)
    y = np.asarray(prediction_mg_dl, dtype=np.float64)
    zone_a = ((x <= HYPO_MG_DL) & (y <= HYPO_MG_DL)) | ((y >= 0.8 * x) & (y <= 1.2 * x))
    zone_e = ((x >= HYPER_MG_DL) & (y <= HYPO_MG_DL)) | ((x <= HYPO_MG_DL) & (y >= HYPER_MG_DL))
    zone_c = ((x >= 70.0) & (x <= 290.0) & (y >= x + 110.0)) | (
        (x >= 130.0) & (x <= 180.0) & (y <= 7.0 / 5.0 * x - 182.0)
    )
    normal_prediction = (y >= HYPO_MG_DL) & (y <= HYPER_MG_DL)
    zone_d = (
        ((x >= 240.0) & normal_prediction)
        | ((x <= 175.0 / 3.0) & normal_prediction)
        | ((x >= 175.0 / 3.0) & (x <= HYPO_MG_DL) & (y >= 6.0 / 5.0 * x) & (y <= HYPER_MG_DL))
    )
    return {ClarkeZone.A: zone_a, ClarkeZone.C: zone_c, ClarkeZone.D: zone_d, ClarkeZone.E: zone_e}


def clarke_zones(reference_mg_dl: ArrayLike, prediction_mg_dl: ArrayLike) -> NDArray[np.int8]:
    """The zone of every pair (values of :class:`ClarkeZone`), same shape as the inputs.

    Parameters
    ----------
    reference_mg_dl, prediction_mg_dl : array_like
        Broadcastable arrays of glucose in mg/dL (reference, e.g. the CGM reading, and the
        forecast of it).

    Raises
    ------
    ValueError
        If any value is not finite or is negative.
    """
    x = np.asarray(reference_mg_dl, dtype=np.float64)
    y = np.asarray(prediction_mg_dl, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("Clarke zones need finite glucose values")
    if np.any(x < 0) or np.any(y < 0):
        raise ValueError("Clarke zones need non-negative glucose values (mg/dL)")
    regions = zone_regions(x, y)
    zones = np.full(np.broadcast(x, y).shape, ClarkeZone.B, dtype=np.int8)
    # Assign in reverse precedence so that the first zone of A, E, C, D wins on a boundary.
    for zone in (ClarkeZone.D, ClarkeZone.C, ClarkeZone.E, ClarkeZone.A):
        zones[regions[zone]] = zone
    return zones


def zone_fractions(
    reference_mg_dl: ArrayLike, prediction_mg_dl: ArrayLike
) -> dict[ClarkeZone, float]:
    """Share of pairs in each zone (sums to 1); every zone is present, possibly at 0.

    Raises
    ------
    ValueError
        If there are no pairs, or a value is not finite or negative.
    """
    zones = clarke_zones(reference_mg_dl, prediction_mg_dl).ravel()
    if zones.size == 0:
        raise ValueError("no glucose pairs")
    counts = np.bincount(zones, minlength=len(ClarkeZone))
    return {zone: float(counts[zone]) / zones.size for zone in ClarkeZone}


def clarke_ab_fraction(reference_mg_dl: ArrayLike, prediction_mg_dl: ArrayLike) -> float:
    """Share of pairs in zones A or B (the usual clinical-acceptability figure)."""
    fractions = zone_fractions(reference_mg_dl, prediction_mg_dl)
    return fractions[ClarkeZone.A] + fractions[ClarkeZone.B]
