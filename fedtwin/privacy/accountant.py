"""Pure privacy accounting for patient-level DP-SGD (no state, no I/O).

Every training step of a site is one Poisson-subsampled Gaussian mechanism over *patients*:
each patient is in a step's batch independently with probability ``sample_rate`` and contributes
one window, whose gradient is clipped to ``max_grad_norm``; noise ``N(0, (σ·C)²)`` is added to the
sum. ε is always computed by a *fresh* Opacus accountant fed the whole history of a site's spends
(all rounds, all runs), so a reported ε never depends on accountant state kept elsewhere.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from enum import StrEnum

import numpy as np
from opacus.accountants import create_accountant
from pydantic import BaseModel, ConfigDict, Field

from fedtwin.errors import ConfigError


class AccountantKind(StrEnum):
    """Accountants a site may choose (PRV is Opacus' default and the tighter bound)."""

    PRV = "prv"
    RDP = "rdp"


class MechanismSteps(BaseModel):
    """``steps`` compositions of the subsampled Gaussian at one (σ, q)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)


def poisson_sample_rate(num_patients: int, expected_batch_patients: int) -> float:
    """The sample rate Opacus uses for ``num_patients`` and this expected batch size.

    Opacus derives ``q = 1 / len(loader)``, i.e. ``1 / ceil(N / B)``; planning uses the same
    number so that the planned and the accounted spend agree exactly.
    """
    if num_patients < 1 or expected_batch_patients < 1:
        raise ConfigError("need at least one patient and a batch of at least one patient")
    return 1.0 / math.ceil(num_patients / expected_batch_patients)


def epsilon_spent(
    history: Iterable[MechanismSteps], delta: float, accountant: AccountantKind
) -> float:
    """ε (per patient) of the composition of every mechanism in ``history`` at ``delta``.

    Composition is commutative and ``k`` steps then ``m`` steps of one (σ, q) are ``k + m``
    steps of it, so spends at the same (σ, q) are merged before accounting: a ledger's rounds
    of one run cost one accountant term, not one per round (PRV's cost grows with the terms).
    """
    merged: dict[tuple[float, float], int] = {}
    for item in history:
        if item.steps:
            key = (item.noise_multiplier, item.sample_rate)
            merged[key] = merged.get(key, 0) + item.steps
    return _epsilon_of_terms(tuple(sorted(merged.items())), delta, accountant)


@functools.lru_cache(maxsize=256)
def _epsilon_of_terms(
    terms: tuple[tuple[tuple[float, float], int], ...], delta: float, accountant: AccountantKind
) -> float:
    if not terms:
        return 0.0
    fresh = create_accountant(mechanism=accountant.value)
    fresh.history = [(noise, rate, steps) for (noise, rate), steps in terms]
    # Far outside the useful range (ε in the hundreds) PRV's numerics overflow and it answers
    # inf or nan; both mean "no guarantee left", so they are reported as inf (fail closed).
    # Its warnings (and RDP's note on the alpha range) say the same and are not shown.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epsilon = float(fresh.get_epsilon(delta=delta))
    return epsilon if math.isfinite(epsilon) else math.inf


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantKind,
    prior: Iterable[MechanismSteps] = (),
    tolerance: float = 0.01,
) -> float:
    """Smallest σ (within ``tolerance``) such that ``prior`` plus ``steps`` at σ stays ≤ target.

    Raises
    ------
    ConfigError
        If even a very large σ cannot keep the total within ``target_epsilon`` (the prior spend
        already exhausts it).
    """
    prior = tuple(prior)
    # A prior spend at or above the target leaves no room at any σ: refuse at once instead of
    # searching (each accountant call on an exhausted history is slow).
    if prior and epsilon_spent(prior, delta, accountant) >= target_epsilon:
        raise ConfigError(f"no noise multiplier keeps ε ≤ {target_epsilon} (prior spend too large)")

    def total(noise: float) -> float:
        planned = MechanismSteps(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
        return epsilon_spent((*prior, planned), delta, accountant)

    return _smallest_within(total, target_epsilon, tolerance)


MAX_NOISE_MULTIPLIER = 1024.0
"""The largest σ the calibration searches (beyond it no σ keeps the target: refused)."""


def _smallest_within(total: Callable[[float], float], target: float, tolerance: float) -> float:
    """Smallest σ (within ``tolerance``) with ``total(σ) ≤ target``; ``total`` decreasing.

    Each evaluation costs about half a second (PRV), so the search interpolates instead of
    bisecting: ``log ε`` is close to linear in ``log σ``, the secant through the bracket's ends
    lands near the answer, and each probe is placed ``tolerance/3`` past that estimate towards
    the farther end, so two probes around an accurate estimate close the bracket. Invariant:
    ``total(low) > target ≥ total(high)`` (``low = 0`` stands for "no noise"); every probe
    lies strictly inside the bracket and shrinks it, so the search always ends, and the
    answer ``high`` was evaluated. About 5 evaluations where bisection took 11.
    """
    goal = math.log(target)

    def gap(noise: float) -> float:
        value = total(noise)
        return math.log(value) - goal if value > 0 else -math.inf

    low, gap_low = 0.0, math.inf
    high, gap_high = 1.0, gap(1.0)
    while gap_high > 0:  # no bracket yet: go up, by the secant's guess or at least doubling
        previous, gap_previous = low, gap_low
        low, gap_low = high, gap_high
        guess = _secant(previous, gap_previous, low, gap_low)
        high = min(max(1.5 * low, guess * 1.05 if guess is not None else 2.0 * low), 8.0 * low)
        if high > MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"no noise multiplier keeps ε ≤ {target} (prior spend too large)")
        gap_high = gap(high)
    while high - low > tolerance:
        guess = _secant(low, gap_low, high, gap_high)
        middle = (low + high) / 2.0 if guess is None else guess
        nudge = tolerance / 3.0 if middle - low < high - middle else -tolerance / 3.0
        probe = min(max(middle + nudge, low + tolerance / 6.0), high - tolerance / 6.0)
        gap_probe = gap(probe)
        if gap_probe <= 0:
            high, gap_high = probe, gap_probe
        else:
            low, gap_low = probe, gap_probe
    return high


def _secant(low: float, gap_low: float, high: float, gap_high: float) -> float | None:
    """Where the line through two points of ``log ε − log target`` vs ``log σ`` crosses 0."""
    if low <= 0 or not (math.isfinite(gap_low) and math.isfinite(gap_high)):
        return None
    if gap_low == gap_high:
        return None
    x_low, x_high = math.log(low), math.log(high)
    return math.exp(x_high - gap_high * (x_high - x_low) / (gap_high - gap_low))
