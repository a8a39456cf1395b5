"""Batched lung-cancer tumour growth under chemo- and radiotherapy, with counterfactual replay.

Invariant: :func:`simulate_tumours` is a pure function of its arguments; every random number
(growth noise, recovery draws, treatment-assignment draws) is pre-drawn per patient and day in
a :class:`TumourNoise`, and everything carried from one day to the next lives in a
:class:`TumourCheckpoint`. So a run of days ``[0, t)`` resumed from its checkpoint equals a run
of ``[0, n)`` bit for bit, and a patient replayed under another regimen from day ``t`` sees the
same noise: the difference is the ground-truth treatment effect.

Model (Geng, Paganetti & Grassberger, Sci Rep 7:13542, 2017, as used by the counterfactual
benchmarks RMSN (Lim et al., NeurIPS 2018), CRN (Bica et al., ICLR 2020) and the Causal
Transformer (Melnychuk et al., ICML 2022); details checked against the public simulation code
of those repositories, ``cancer_simulation.py``), one step per day ``t >= 1``::

    V(t) = V(t-1) * (1 + rho * log(K / V(t-1)) - beta_c * C(t-1)
                     - (alpha * d(t-1) + beta * d(t-1)^2) + e(t)),   e(t) ~ N(0, 0.01^2)
    C(t) = C(t-1) / 2 + 5 * chemo(t)       (one-day half-life)
    d(t) = 2 Gy * radio(t)

``K`` is the volume of a 30 cm sphere. A patient dies when ``V`` exceeds the volume of a 13 cm
sphere (``V`` is then clipped to it) and recovers with probability ``exp(-V * 5.8e8)`` (cells
per cm^3), or when the kill term drives ``V`` to zero; either ends the trajectory.
Parameters: ``(alpha, rho)`` bivariate normal (means 0.0398, 7e-5; SDs 0.168, 7.23e-3;
correlation 0.87) redrawn until both are positive; ``beta = alpha / 10``; ``beta_c`` normal
(0.028, 0.0007) truncated at 0; patient type 1, 2 or 3 with equal probability, type 1 adding
10 % of the mean to ``alpha`` and type 3 to ``beta_c``; stage drawn from the counts
I 1432, II 128, IIIA 1306, IIIB 7248, IV 12840 (Detterbeck & Gibson 2008) and the initial
diameter from that stage's truncated log-normal, with the ``(mu, sigma, low, high)`` table of
those repositories. Time-varying confounding (:class:`ConfoundedAssignment`): on day ``t``
chemo and radio are each given with ``p = sigmoid((gamma / D_max) * (D_bar - D_max / 2))``,
``D_bar`` the mean diameter over days ``[t - window - lag, t - lag)``, ``D_max = 13`` cm, as in
the Causal Transformer's ``simulate_factual``; day 0 has no history and is never treated.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedtwin.errors import ConfigError


def sphere_volume_cm3(diameter_cm: Tensor | float) -> Tensor:
    """Volume of a sphere, cm^3.

    Parameters
    ----------
    diameter_cm : torch.Tensor or float
        Diameter, cm.

    Returns
    -------
    torch.Tensor
        ``pi / 6 * diameter^3``.
    """
    d = torch.as_tensor(diameter_cm, dtype=torch.float64)
    return math.pi / 6.0 * d**3


def sphere_diameter_cm(volume_cm3: Tensor) -> Tensor:
    """Diameter of a sphere of the given volume, cm.

    Parameters
    ----------
    volume_cm3 : torch.Tensor
        Volume, cm^3 (>= 0).

    Returns
    -------
    torch.Tensor
        ``(6 V / pi)^(1/3)``.
    """
    return (6.0 * volume_cm3 / math.pi) ** (1.0 / 3.0)


#: Death threshold: volume of a 13 cm sphere (also the RMSE normaliser of the benchmarks).
DEATH_VOLUME_CM3 = float(sphere_volume_cm3(13.0))
#: Carrying capacity: volume of a 30 cm sphere.
CARRYING_CAPACITY_CM3 = float(sphere_volume_cm3(30.0))
#: Maximum diameter ``D_max`` of the confounded assignment, cm.
D_MAX_CM = 13.0
TUMOUR_CELLS_PER_CM3 = 5.8e8
CHEMO_DOSE = 5.0
RADIO_DOSE_GY = 2.0
GROWTH_NOISE_SD = 0.01


class Stage(enum.IntEnum):
    """Cancer stage at diagnosis."""

    I = 0  # noqa: E741
    II = 1
    IIIA = 2
    IIIB = 3
    IV = 4


#: Patients observed per stage (Detterbeck & Gibson 2008), as used by the benchmarks.
STAGE_COUNTS = {Stage.I: 1432, Stage.II: 128, Stage.IIIA: 1306, Stage.IIIB: 7248, Stage.IV: 12840}
#: Initial diameter per stage: ``exp(mu + sigma z)`` with ``z`` standard normal truncated so
#: that the diameter lies in ``[low, high]`` cm.
STAGE_DIAMETER = {
    Stage.I: (1.72, 4.70, 0.3, 5.0),
    Stage.II: (1.96, 1.63, 0.3, 13.0),
    Stage.IIIA: (1.91, 9.40, 0.3, 13.0),
    Stage.IIIB: (2.76, 6.87, 0.3, 13.0),
    Stage.IV: (3.86, 8.82, 0.3, 13.0),
}
_ALPHA = (0.0398, 0.168)
_RHO = (7e-5, 7.23e-3)
_ALPHA_RHO_CORRELATION = 0.87
_BETA_C = (0.028, 0.0007)
_TYPE_SHIFT = 0.1


@dataclass(frozen=True, eq=False)
class TumourPatients:
    """Parameters of ``B`` virtual cancer patients, each ``[B]``.

    Parameters
    ----------
    patient_type : torch.Tensor
        ``int64``: 1 (radio-sensitive), 2, 3 (chemo-sensitive).
    stage : torch.Tensor
        ``int64`` :class:`Stage` values.
    initial_volume_cm3, rho, alpha, beta, beta_c, carrying_capacity_cm3 : torch.Tensor
        ``float64`` model parameters.
    """

    patient_type: Tensor
    stage: Tensor
    initial_volume_cm3: Tensor
    rho: Tensor
    alpha: Tensor
    beta: Tensor
    beta_c: Tensor
    carrying_capacity_cm3: Tensor

    @property
    def batch_size(self) -> int:
        """Number of patients ``B``."""
        return int(self.rho.shape[0])


def _stream(seed: int, key: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, purpose)))


def _keys(n: int, patient_keys: Sequence[int] | None) -> list[int]:
    keys = list(range(n)) if patient_keys is None else [int(k) for k in patient_keys]
    if len(keys) != n or any(k < 0 for k in keys):
        raise ConfigError(f"patient_keys must be {n} non-negative integers")
    return keys


def _check_count_and_seed(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of patients must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed must be a non-negative integer")


def sample_tumour_patients(
    n: int, seed: int, *, patient_keys: Sequence[int] | None = None
) -> TumourPatients:
    """Draw ``n`` patients from the published parameter distributions.

    Parameters
    ----------
    n : int
        Number of patients.
    seed : int
        Non-negative seed; patient ``i`` uses its own stream keyed by ``patient_keys[i]``.
    patient_keys : Sequence[int] or None, optional
        Stream key per patient (default ``0 … n-1``).

    Returns
    -------
    TumourPatients
        The patients.
    """
    _check_count_and_seed(n, seed)
    keys = _keys(n, patient_keys)
    cov = np.array(
        [
            [_ALPHA[1] ** 2, _ALPHA_RHO_CORRELATION * _ALPHA[1] * _RHO[1]],
            [_ALPHA_RHO_CORRELATION * _ALPHA[1] * _RHO[1], _RHO[1] ** 2],
        ]
    )
    chol = np.linalg.cholesky(cov)
    uniforms = np.empty((n, 4))
    alpha_rho = np.empty((n, 2))
    for row, key in enumerate(keys):
        rng = _stream(seed, key, 0)
        uniforms[row] = rng.random(4)
        while True:
            draw = np.array([_ALPHA[0], _RHO[0]]) + chol @ rng.standard_normal(2)
            if draw[0] > 0.0 and draw[1] > 0.0:
                break
        alpha_rho[row] = draw
    u = torch.from_numpy(uniforms)
    counts = torch.tensor([STAGE_COUNTS[s] for s in Stage], dtype=torch.float64)
    edges = torch.cumsum(counts / counts.sum(), 0)
    stage = torch.searchsorted(edges[:-1].contiguous(), u[:, 0].contiguous(), right=True)
    table = torch.tensor([STAGE_DIAMETER[s] for s in Stage], dtype=torch.float64)[stage]
    mu, sigma, low, high = table.unbind(1)
    cdf_low = torch.special.ndtr((torch.log(low) - mu) / sigma)
    cdf_high = torch.special.ndtr((torch.log(high) - mu) / sigma)
    z = torch.special.ndtri(cdf_low + u[:, 1] * (cdf_high - cdf_low))
    diameter = torch.minimum(torch.maximum(torch.exp(mu + sigma * z), low), high)
    cdf_zero = torch.special.ndtr(torch.tensor(-_BETA_C[0] / _BETA_C[1], dtype=torch.float64))
    z_c = torch.special.ndtri(cdf_zero + u[:, 2] * (1.0 - cdf_zero))
    patient_type = 1 + torch.clamp((u[:, 3] * 3).to(torch.int64), max=2)
    alpha = torch.from_numpy(alpha_rho[:, 0].copy())
    alpha = alpha + _ALPHA[0] * _TYPE_SHIFT * (patient_type == 1)
    beta_c = _BETA_C[0] + _BETA_C[1] * z_c + _BETA_C[0] * _TYPE_SHIFT * (patient_type == 3)
    return TumourPatients(
        patient_type=patient_type,
        stage=stage,
        initial_volume_cm3=sphere_volume_cm3(diameter),
        rho=torch.from_numpy(alpha_rho[:, 1].copy()),
        alpha=alpha,
        beta=alpha / 10.0,
        beta_c=torch.clamp_min(beta_c, 0.0),
        carrying_capacity_cm3=torch.full((n,), CARRYING_CAPACITY_CM3, dtype=torch.float64),
    )


@dataclass(frozen=True, eq=False)
class TumourNoise:
    """Pre-drawn randomness of ``B`` patients over ``T`` days, each ``float64`` ``[B, T]``.

    Parameters
    ----------
    growth : torch.Tensor
        ``e(t) ~ N(0, 0.01^2)``.
    recovery_u, chemo_u, radio_u : torch.Tensor
        Uniforms for the recovery draw and the two treatment assignments.
    """

    growth: Tensor
    recovery_u: Tensor
    chemo_u: Tensor
    radio_u: Tensor

    @property
    def days(self) -> int:
        """Days covered ``T``."""
        return int(self.growth.shape[1])


def draw_tumour_noise(
    n: int, days: int, seed: int, *, patient_keys: Sequence[int] | None = None
) -> TumourNoise:
    """Draw the daily randomness of ``n`` patients (per-patient streams, prefix-stable in days).

    Parameters
    ----------
    n : int
        Number of patients.
    days : int
        Days to cover.
    seed : int
        Non-negative seed.
    patient_keys : Sequence[int] or None, optional
        Stream key per patient (default ``0 … n-1``).

    Returns
    -------
    TumourNoise
        Noise for days ``0 … days-1``.
    """
    _check_count_and_seed(n, seed)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("days must be a positive integer")
    keys = _keys(n, patient_keys)
    arrays = [np.empty((n, days)) for _ in range(4)]
    for row, key in enumerate(keys):
        for purpose, array in enumerate(arrays, start=1):
            rng = _stream(seed, key, purpose)
            array[row] = rng.standard_normal(days) if purpose == 1 else rng.random(days)
    growth, recovery, chemo, radio = (torch.from_numpy(a) for a in arrays)
    return TumourNoise(GROWTH_NOISE_SD * growth, recovery, chemo, radio)


@dataclass(frozen=True)
class ConfoundedAssignment:
    """Observational policy: treat more when the recent tumour diameter is large.

    Parameters
    ----------
    gamma_chemo, gamma_radio : float
        Confounding strengths ``gamma`` in ``[0, 10]`` (0: random, 50 % a day).
    window_days : int, default 15
        Days averaged in ``D_bar``.
    lag_days : int, default 0
        Days between the window's end and the decision.
    """

    gamma_chemo: float
    gamma_radio: float
    window_days: int = 15
    lag_days: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma_chemo <= 10.0 and 0.0 <= self.gamma_radio <= 10.0):
            raise ConfigError("gamma must be in [0, 10]")
        if self.window_days < 1 or self.lag_days < 0:
            raise ConfigError("window_days must be >= 1 and lag_days >= 0")


@dataclass(frozen=True, eq=False)
class Regimen:
    """A fixed treatment schedule, ``bool`` ``[B, T]`` per modality, from ``start_day``.

    Parameters
    ----------
    chemo, radio : torch.Tensor
        Whether each patient gets chemo / a 2 Gy fraction on each day.
    start_day : int, default 0
        Day of column 0; days outside the schedule are untreated.
    """

    chemo: Tensor
    radio: Tensor
    start_day: int = 0

    def __post_init__(self) -> None:
        if self.chemo.dim() != 2 or tuple(self.chemo.shape) != tuple(self.radio.shape):
            raise ConfigError("regimen chemo and radio must both be [B, T]")
        if self.start_day < 0:
            raise ConfigError("regimen start_day must be >= 0")

    @classmethod
    def standard(
        cls,
        batch_size: int,
        days: int,
        *,
        chemo_every_days: int | None = 7,
        radio_fractions_per_week: int = 0,
        start_day: int = 0,
    ) -> Regimen:
        """A weekly/daily schedule, the same for every patient.

        Chemo every ``chemo_every_days`` days from ``start_day``; radio on the first
        ``radio_fractions_per_week`` days of each week (Monday to Friday for 5).

        Parameters
        ----------
        batch_size : int
            Number of patients.
        days : int
            Length of the schedule.
        chemo_every_days : int or None, default 7
            Chemo cycle length; ``None`` for no chemo.
        radio_fractions_per_week : int, default 0
            Radio fractions per week (0-7).
        start_day : int, default 0
            First treatment day.

        Returns
        -------
        Regimen
            The schedule, identical for every patient.
        """
        if days < 1 or batch_size < 1 or not 0 <= radio_fractions_per_week <= 7:
            raise ConfigError("regimen needs days >= 1, patients >= 1, 0-7 fractions a week")
        if chemo_every_days is not None and chemo_every_days < 1:
            raise ConfigError("chemo_every_days must be >= 1")
        day = torch.arange(days)
        chemo = (
            (day % chemo_every_days == 0)
            if chemo_every_days is not None
            else torch.zeros(days, dtype=torch.bool)
        )
        radio = day % 7 < radio_fractions_per_week
        return cls(
            chemo=chemo.expand(batch_size, days).clone(),
            radio=radio.expand(batch_size, days).clone(),
            start_day=start_day,
        )


#: Anything :func:`simulate_tumours` accepts as treatment.
TumourPolicy = ConfoundedAssignment | Regimen


@dataclass(frozen=True, eq=False)
class TumourCheckpoint:
    """State after ``day`` simulated days (``day == 0``: nothing simulated yet).

    Parameters
    ----------
    day : int
        Days simulated.
    volume_cm3 : torch.Tensor
        Volume on day ``day - 1`` (the initial volume when ``day == 0``), ``[B]``.
    chemo_concentration : torch.Tensor
        ``C(day - 1)``, ``[B]``.
    radio_dose_gy : torch.Tensor
        ``d(day - 1)``, ``[B]``.
    diameter_history_cm : torch.Tensor
        Diameters of the last ``H`` days, oldest first, ``NaN`` before day 0, ``[B, H]``.
    active : torch.Tensor
        Neither dead nor recovered, bool ``[B]``.
    death_day, recovery_day : torch.Tensor
        Day of death / recovery, ``-1`` if none, ``int64`` ``[B]``.
    """

    day: int
    volume_cm3: Tensor
    chemo_concentration: Tensor
    radio_dose_gy: Tensor
    diameter_history_cm: Tensor
    active: Tensor
    death_day: Tensor
    recovery_day: Tensor

    @classmethod
    def initial(cls, patients: TumourPatients, history_days: int = 64) -> TumourCheckpoint:
        """Checkpoint before day 0.

        Parameters
        ----------
        patients : TumourPatients
            The patients.
        history_days : int, default 64
            Diameter history kept (must cover the policy's ``window + lag``).

        Returns
        -------
        TumourCheckpoint
            Day 0, initial volumes, no drug.
        """
        batch = patients.batch_size
        zeros = torch.zeros(batch, dtype=torch.float64)
        return cls(
            day=0,
            volume_cm3=patients.initial_volume_cm3.clone(),
            chemo_concentration=zeros,
            radio_dose_gy=zeros.clone(),
            diameter_history_cm=torch.full((batch, history_days), math.nan, dtype=torch.float64),
            active=torch.ones(batch, dtype=torch.bool),
            death_day=torch.full((batch,), -1, dtype=torch.int64),
            recovery_day=torch.full((batch,), -1, dtype=torch.int64),
        )


@dataclass(frozen=True, eq=False)
class TumourTrajectory:
    """Days ``[start_day, start_day + T)`` of a run, each ``[B, T]``.

    Parameters
    ----------
    start_day : int
        First day.
    volume_cm3 : torch.Tensor
        Volume on each day (after that day's growth); ``NaN`` once the trajectory has ended.
    chemo, radio : torch.Tensor
        Treatment given that day, bool.
    chemo_concentration : torch.Tensor
        ``C(t)`` after that day's dose.
    chemo_probability, radio_probability : torch.Tensor
        Assignment probabilities (``NaN`` under a fixed regimen or after the end).
    final : TumourCheckpoint
        State to resume from.
    """

    start_day: int
    volume_cm3: Tensor
    chemo: Tensor
    radio: Tensor
    chemo_concentration: Tensor
    chemo_probability: Tensor
    radio_probability: Tensor
    final: TumourCheckpoint

    @property
    def death_day(self) -> Tensor:
        """Day of death, ``-1`` if none (up to the end of this run)."""
        return self.final.death_day

    @property
    def recovery_day(self) -> Tensor:
        """Day of recovery, ``-1`` if none (up to the end of this run)."""
        return self.final.recovery_day


def _assignment(
    policy: TumourPolicy, day: int, history: Tensor, noise: TumourNoise
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch = history.shape[0]
    if isinstance(policy, Regimen):
        column = day - policy.start_day
        nan = torch.full((batch,), math.nan, dtype=torch.float64)
        if 0 <= column < policy.chemo.shape[1]:
            return policy.chemo[:, column].clone(), policy.radio[:, column].clone(), nan, nan
        off = torch.zeros(batch, dtype=torch.bool)
        return off, off.clone(), nan, nan
    width, lag = policy.window_days, policy.lag_days
    window = history[:, history.shape[1] - width - lag : history.shape[1] - lag]
    seen = ~torch.isnan(window)
    count = seen.sum(dim=1)
    mean_diameter = torch.where(seen, window, 0.0).sum(dim=1) / count.clamp_min(1)
    probabilities = []
    for gamma in (policy.gamma_chemo, policy.gamma_radio):
        p = torch.sigmoid((gamma / D_MAX_CM) * (mean_diameter - D_MAX_CM / 2.0))
        probabilities.append(torch.where(count > 0, p, 0.0))
    p_chemo, p_radio = probabilities
    return noise.chemo_u[:, day] < p_chemo, noise.radio_u[:, day] < p_radio, p_chemo, p_radio


def simulate_tumours(
    patients: TumourPatients,
    noise: TumourNoise,
    policy: TumourPolicy,
    *,
    days: int | None = None,
    start: TumourCheckpoint | None = None,
) -> TumourTrajectory:
    """Simulate the patients day by day under a policy or regimen.

    Parameters
    ----------
    patients : TumourPatients
        The patients.
    noise : TumourNoise
        Their pre-drawn randomness (must cover the days run).
    policy : TumourPolicy
        :class:`ConfoundedAssignment` (observational data) or :class:`Regimen`.
    days : int or None, optional
        Last day (exclusive) to simulate; default ``noise.days``.
    start : TumourCheckpoint or None, optional
        Resume point, e.g. ``trajectory.final`` of a run under another policy.

    Returns
    -------
    TumourTrajectory
        Days ``[start.day, days)``.

    Raises
    ------
    ConfigError
        If shapes or the horizon do not fit.
    """
    batch = patients.batch_size
    cp = TumourCheckpoint.initial(patients) if start is None else start
    end = noise.days if days is None else days
    if noise.growth.shape[0] != batch or cp.volume_cm3.shape[0] != batch:
        raise ConfigError("patients, noise and checkpoint must have the same batch size")
    if not cp.day < end <= noise.days:
        raise ConfigError(f"cannot simulate days [{cp.day}, {end}) with noise for {noise.days}")
    if isinstance(policy, ConfoundedAssignment):
        if policy.window_days + policy.lag_days > cp.diameter_history_cm.shape[1]:
            raise ConfigError("policy window + lag exceeds the checkpoint's diameter history")
    elif policy.chemo.shape[0] != batch:
        raise ConfigError("regimen batch size differs from the patients'")
    span = end - cp.day
    out = {
        name: torch.full((batch, span), math.nan, dtype=torch.float64)
        for name in ("volume", "concentration", "p_chemo", "p_radio")
    }
    chemo_given = torch.zeros(batch, span, dtype=torch.bool)
    radio_given = torch.zeros(batch, span, dtype=torch.bool)
    volume, concentration, dose = cp.volume_cm3, cp.chemo_concentration, cp.radio_dose_gy
    history, active = cp.diameter_history_cm, cp.active
    death_day, recovery_day = cp.death_day.clone(), cp.recovery_day.clone()
    p = patients
    for day in range(cp.day, end):
        column = day - cp.day
        if day > 0:
            kill = p.beta_c * concentration + p.alpha * dose + p.beta * dose**2
            growth = p.rho * torch.log(p.carrying_capacity_cm3 / volume)
            grown = volume * (1.0 + growth - kill + noise.growth[:, day])
            dies = active & (grown > DEATH_VOLUME_CM3)
            recovers = (
                active
                & ~dies
                & (
                    (grown <= 0.0)
                    | (noise.recovery_u[:, day] < torch.exp(-grown * TUMOUR_CELLS_PER_CM3))
                )
            )
            grown = torch.where(dies, DEATH_VOLUME_CM3, torch.where(recovers, 0.0, grown))
            death_day = torch.where(dies, day, death_day)
            recovery_day = torch.where(recovers, day, recovery_day)
            out["volume"][:, column] = torch.where(active, grown, math.nan)
            volume = torch.where(active, grown, volume)
            active = active & ~dies & ~recovers
        else:
            out["volume"][:, column] = volume
        chemo, radio, p_chemo, p_radio = _assignment(policy, day, history, noise)
        chemo, radio = chemo & active, radio & active
        concentration = concentration * 0.5 + CHEMO_DOSE * chemo
        dose = RADIO_DOSE_GY * radio.to(torch.float64)
        chemo_given[:, column], radio_given[:, column] = chemo, radio
        out["concentration"][:, column] = torch.where(active, concentration, math.nan)
        out["p_chemo"][:, column] = torch.where(active, p_chemo, math.nan)
        out["p_radio"][:, column] = torch.where(active, p_radio, math.nan)
        history = torch.cat((history[:, 1:], sphere_diameter_cm(volume)[:, None]), dim=1)
    final = TumourCheckpoint(
        day=end,
        volume_cm3=volume,
        chemo_concentration=concentration,
        radio_dose_gy=dose,
        diameter_history_cm=history,
        active=active,
        death_day=death_day,
        recovery_day=recovery_day,
    )
    return TumourTrajectory(
        start_day=cp.day,
        volume_cm3=out["volume"],
        chemo=chemo_given,
        radio=radio_given,
        chemo_concentration=out["concentration"],
        chemo_probability=out["p_chemo"],
        radio_probability=out["p_radio"],
        final=final,
    )
