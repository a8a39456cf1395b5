"""Sample new UVA/Padova 2008 virtual patients beyond the 30 published subjects.

Invariant: every patient returned by :func:`sample_virtual_patients` satisfies the model's
steady-state equations (to rounding), passed every check of :class:`PlausibilityLimits`, and
runs through :class:`~fedtwin.cohorts.BatchedT1DPatient` like a published subject. Sampling is
a pure function of ``(group, n, seed, spread, limits)``: the same arguments give the same
patients, named ``<group>#v00001`` … in acceptance order.

Method
------
1. *Free parameters.* The published table mixes free parameters with ones fixed by the
   steady state. The free ones are the body weight, the basal state (``Gb``, ``Ib``, ``EGPb``),
   the rate constants and volumes, and the gastric-emptying shape ``b``, ``d``; the therapy
   values of ``Quest.csv`` (``CR``, ``CF``, ``TDI``, ``Age``) are sampled with them so that,
   e.g., heavier patients get larger insulin doses. ``HEb``, ``f``, ``ke1``, ``ke2``,
   ``Fsnc`` and ``dosekempt`` are the same for all 30 subjects and stay fixed.
2. *Distribution.* A multivariate normal on ``log`` (``logit`` for ``b``, ``d``) of the free
   values, with the mean and standard deviations of the subject's age group (10 subjects
   each) and one correlation matrix pooled over the three groups' within-group residuals
   (30 subjects, 27 degrees of freedom) and shrunk towards the identity with the analytic
   Schäfer-Strimmer intensity (Schäfer & Strimmer, Stat Appl Genet Mol Biol 4:32, 2005).
   Ten subjects cannot identify a 30-dimensional covariance; pooling and shrinkage keep it
   positive definite and damp spurious correlations. ``spread`` scales the standard deviations.
3. *Dependent parameters* follow from the steady state of the model equations (Dalla Man et
   al., IEEE TBME 54(10) 2007, eqs. of the glucose, insulin and EGP subsystems; Dalla Man et
   al., J Diabetes Sci Technol 8(1) 2014 for the subcutaneous route), see
   :func:`steady_state_parameters`. ``tests/cohorts`` checks that these equations reproduce
   the published dependent columns of all 30 subjects; the one exception is ``adult#004``,
   whose published ``m2`` and ``m4`` are 5.4 % below ``CL`` / (``Vi`` ``BW``) (as if computed
   with a 5.7 % heavier body weight).
4. *Rejection* (:class:`PlausibilityLimits`): positive derived rates (``Vm0 > 0`` needs
   ``EGPb > Fsnc``; ``Gtb > 0``), ``kmin < kmax``, ``d < b``, no renal excretion at basal
   (``Gpb < ke2``), basal glucose and age in clinical ranges, basal insulin a plausible share
   of ``TDI``, a gastric-emptying switch no steeper than the published ones allow, a *stable*
   steady state (every eigenvalue of the one-minute map's Jacobian inside
   the unit circle), a basal-only simulation that stays at ``Gb``, and a standard meal
   (50 g, children scaled by body weight, bolused with the patient's own ``CR``) whose glucose
   stays in a clinical band, which ties the sampled therapy to the sampled physiology.

Limits
------
The 30 published subjects are themselves a sample (simglucose ships the UVA/Padova 2008
"educational" population, not the 300-subject FDA-accepted one); sampled patients only
interpolate and mildly extrapolate it. Correlations beyond what 30 subjects show are lost to
shrinkage, the age-group means carry the sampling error of 10 subjects, the log-normal shape is
an assumption, and the model itself has no counter-regulation, exercise or intra-day
variability of insulin sensitivity.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedtwin.cohorts._uva_padova_ode import gut_stiffness
from fedtwin.cohorts.population import (
    N_STATES,
    AgeGroup,
    VirtualPatientParams,
    all_patient_names,
    names_in_group,
)
from fedtwin.cohorts.scenario import meal_size_scale
from fedtwin.cohorts.uva_padova import BatchedT1DPatient
from fedtwin.errors import ConfigError

#: Free model parameters sampled on the log scale.
LOG_PARAMETERS = (
    "BW", "EGPb", "Gb", "Ib", "kabs", "kmax", "kmin", "Vg", "Vi", "Vmx", "Km0", "k2", "k1",
    "p2u", "m1", "m5", "CL", "ki", "kp2", "kp3", "kd", "ksc", "ka1", "ka2",
)  # fmt: skip
#: Free model parameters in (0, 1), sampled on the logit scale.
LOGIT_PARAMETERS = ("b", "d")
#: Questionnaire values sampled (log scale) jointly with the physiology.
THERAPY_VALUES = ("CR", "CF", "TDI", "Age")
#: Parameters that are identical across the published population and stay fixed.
FIXED_PARAMETERS = ("HEb", "f", "ke1", "ke2", "Fsnc", "dosekempt")
_COLUMNS = (*LOG_PARAMETERS, *LOGIT_PARAMETERS, *THERAPY_VALUES)
_GROUP_SEED = {AgeGroup.CHILD: 1, AgeGroup.ADOLESCENT: 2, AgeGroup.ADULT: 3}
_MEAL_TEST_G = 50.0
_BASAL_MIN = 60
_MEAL_TEST_END_MIN = 360


@dataclass(frozen=True)
class PlausibilityLimits:
    """Clinical limits a sampled patient must meet (defaults contain all 30 published ones).

    Parameters
    ----------
    basal_glucose_mg_dl : tuple[float, float], default (70.0, 180.0)
        Range of the basal plasma glucose ``Gb``.
    basal_share_of_tdi : tuple[float, float], default (0.2, 0.8)
        Range of basal insulin per day over total daily insulin (published: 0.21-0.78).
    meal_test_mg_dl : tuple[float, float], default (50.0, 300.0)
        Band the glucose must stay in during the standard meal test (published: 61-273).
    basal_drift_mg_dl : float, default 0.5
        Largest departure from ``Gb`` allowed during 1 h on basal insulin alone.
    max_gut_stiffness_per_min : float, default 4.0
        Largest worst-case gastric-emptying stiffness (:func:`gut_stiffness`; published
        maximum 3.05): rejects emptying switches steeper than any published subject's.
    """

    basal_glucose_mg_dl: tuple[float, float] = (70.0, 180.0)
    basal_share_of_tdi: tuple[float, float] = (0.2, 0.8)
    meal_test_mg_dl: tuple[float, float] = (50.0, 300.0)
    basal_drift_mg_dl: float = 0.5
    max_gut_stiffness_per_min: float = 4.0

    def __post_init__(self) -> None:
        for low, high in (self.basal_glucose_mg_dl, self.basal_share_of_tdi, self.meal_test_mg_dl):
            if not 0.0 <= low < high:
                raise ConfigError("plausibility ranges need 0 <= low < high")
        if self.basal_drift_mg_dl <= 0.0:
            raise ConfigError("basal_drift_mg_dl must be positive")


#: Age band (years, inclusive) of each group; the published subjects are 7-12, 14-19, 26-68.
AGE_BANDS: dict[AgeGroup, tuple[float, float]] = {
    AgeGroup.CHILD: (6.0, 12.0),
    AgeGroup.ADOLESCENT: (13.0, 19.0),
    AgeGroup.ADULT: (20.0, 75.0),
}


@dataclass(frozen=True)
class PopulationModel:
    """Fitted sampling distribution of the free values, per age group.

    Parameters
    ----------
    columns : tuple[str, ...]
        Free values in sampling order (log, then logit, then therapy).
    mean : Mapping[AgeGroup, numpy.ndarray]
        Per-group mean of the transformed values.
    sd : Mapping[AgeGroup, numpy.ndarray]
        Per-group standard deviation of the transformed values.
    correlation : numpy.ndarray
        Shrunk pooled within-group correlation, positive definite.
    shrinkage : float
        Schäfer-Strimmer intensity used (0 = sample correlation, 1 = identity).
    fixed : Mapping[str, float]
        Values of :data:`FIXED_PARAMETERS`.
    """

    columns: tuple[str, ...]
    mean: MappingProxyType[AgeGroup, npt.NDArray[np.float64]]
    sd: MappingProxyType[AgeGroup, npt.NDArray[np.float64]]
    correlation: npt.NDArray[np.float64]
    shrinkage: float
    fixed: MappingProxyType[str, float]


def _transform(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n_log = len(LOG_PARAMETERS)
    n_logit = len(LOGIT_PARAMETERS)
    out: npt.NDArray[np.float64] = np.log(values)
    logit = values[:, n_log : n_log + n_logit]
    out[:, n_log : n_log + n_logit] = np.log(logit) - np.log1p(-logit)
    return out


def _untransform(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n_log = len(LOG_PARAMETERS)
    n_logit = len(LOGIT_PARAMETERS)
    out: npt.NDArray[np.float64] = np.exp(z)
    out[:, n_log : n_log + n_logit] = 1.0 / (1.0 + np.exp(-z[:, n_log : n_log + n_logit]))
    return out


def _published_free_values(group: AgeGroup) -> npt.NDArray[np.float64]:
    p = VirtualPatientParams.select(names_in_group(group))
    therapy = {
        "CR": p.carb_ratio_g_per_u,
        "CF": p.correction_factor_mg_dl_per_u,
        "TDI": p.total_daily_insulin_u,
        "Age": p.age_years,
    }
    columns = [therapy[c] if c in therapy else p[c] for c in _COLUMNS]
    return torch.stack(columns, dim=1).numpy()


def _shrunk_correlation(
    standardised: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], float]:
    """Schäfer-Strimmer shrinkage of a correlation matrix towards the identity."""
    n = standardised.shape[0]
    products = standardised[:, :, None] * standardised[:, None, :]
    mean_product = products.mean(axis=0)
    sample = mean_product * n / (n - 1)
    variance = ((products - mean_product) ** 2).sum(axis=0) * n / (n - 1) ** 3
    off = ~np.eye(standardised.shape[1], dtype=bool)
    denominator = float((sample[off] ** 2).sum())
    intensity = 1.0 if denominator == 0.0 else float(variance[off].sum() / denominator)
    intensity = min(1.0, max(0.0, intensity))
    shrunk = (1.0 - intensity) * sample
    np.fill_diagonal(shrunk, 1.0)
    return shrunk, intensity


@functools.lru_cache(maxsize=1)
def fit_population_model() -> PopulationModel:
    """Fit the sampling distribution to the 30 published subjects.

    Returns
    -------
    PopulationModel
        Group means and SDs of the transformed free values and the shrunk pooled correlation.
    """
    means: dict[AgeGroup, npt.NDArray[np.float64]] = {}
    sds: dict[AgeGroup, npt.NDArray[np.float64]] = {}
    residuals = []
    for group in AgeGroup:
        z = _transform(_published_free_values(group))
        means[group] = z.mean(axis=0)
        sds[group] = z.std(axis=0, ddof=1)
        residuals.append((z - means[group]) / sds[group])
    correlation, intensity = _shrunk_correlation(np.concatenate(residuals))
    published = VirtualPatientParams.population()
    fixed = {name: float(published[name][0]) for name in FIXED_PARAMETERS}
    return PopulationModel(
        columns=_COLUMNS,
        mean=MappingProxyType(means),
        sd=MappingProxyType(sds),
        correlation=correlation,
        shrinkage=intensity,
        fixed=MappingProxyType(fixed),
    )


def steady_state_parameters(free: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """Derive the dependent parameters and the basal steady state from the free ones.

    Parameters
    ----------
    free : dict[str, torch.Tensor]
        :data:`LOG_PARAMETERS`, :data:`LOGIT_PARAMETERS` and :data:`FIXED_PARAMETERS`, each
        ``float64`` ``[B]``.

    Returns
    -------
    tuple[dict[str, torch.Tensor], torch.Tensor]
        Every model parameter of ``vpatient_params.csv`` (free and dependent) and the initial
        state ``[B, 13]``.

    Notes
    -----
    With basal insulin and no meal, setting every derivative of the model to zero gives
    ``Gpb = Gb Vg``, ``Ipb = Ib Vi``; the hepatic insulin extraction ``HEb`` and clearance
    ``CL`` fix ``m2 = 0.6 CL / (HEb Vi BW)``, ``m4 = 0.4 CL / (Vi BW)`` and
    ``m30 = HEb m1 / (1 - HEb)``; ``Ilb = m2 Ipb / (m1 + m30)``; the basal infusion is
    ``u2ss = (m2 + m4) Ipb - m1 Ilb`` with ``isc1ss = u2ss / (ka1 + kd)`` and
    ``isc2ss = kd isc1ss / ka2``; with ``EGPb`` equal to the basal uptake and no renal
    excretion, ``Gtb = (Fsnc - EGPb + k1 Gpb) / k2``, ``Vm0 = (EGPb - Fsnc)(Km0 + Gtb) / Gtb``
    and ``kp1 = EGPb + kp2 Gpb + kp3 Ib``; ``Rdb = EGPb`` and ``PCRb = Rdb / Gb``.
    """
    p = dict(free)
    p["Gpb"] = p["Gb"] * p["Vg"]
    p["Ipb"] = p["Ib"] * p["Vi"]
    p["m2"] = 0.6 * p["CL"] / (p["HEb"] * p["Vi"] * p["BW"])
    p["m4"] = 0.4 * p["CL"] / (p["Vi"] * p["BW"])
    p["m30"] = p["HEb"] * p["m1"] / (1.0 - p["HEb"])
    p["Ilb"] = p["m2"] * p["Ipb"] / (p["m1"] + p["m30"])
    p["u2ss"] = (p["m2"] + p["m4"]) * p["Ipb"] - p["m1"] * p["Ilb"]
    p["isc1ss"] = p["u2ss"] / (p["ka1"] + p["kd"])
    p["isc2ss"] = p["kd"] * p["isc1ss"] / p["ka2"]
    p["Gtb"] = (p["Fsnc"] - p["EGPb"] + p["k1"] * p["Gpb"]) / p["k2"]
    p["Vm0"] = (p["EGPb"] - p["Fsnc"]) * (p["Km0"] + p["Gtb"]) / p["Gtb"]
    p["kp1"] = p["EGPb"] + p["kp2"] * p["Gpb"] + p["kp3"] * p["Ib"]
    p["Rdb"] = p["EGPb"].clone()
    p["PCRb"] = p["Rdb"] / p["Gb"]
    zero = torch.zeros_like(p["Gb"])
    state = torch.stack(
        (zero, zero, zero, p["Gpb"], p["Gtb"], p["Ipb"], zero, p["Ib"], p["Ib"], p["Ilb"],
         p["isc1ss"], p["isc2ss"], p["Gpb"]),
        dim=1,
    )  # fmt: skip
    return p, state


def _candidates(
    group: AgeGroup, count: int, generator: np.random.Generator, spread: float
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    model = fit_population_model()
    chol = np.linalg.cholesky(model.correlation)
    normal = generator.standard_normal((count, len(model.columns))) @ chol.T
    values = _untransform(model.mean[group] + spread * model.sd[group] * normal)
    columns = {c: torch.from_numpy(values[:, i].copy()) for i, c in enumerate(model.columns)}
    free = {c: columns[c] for c in (*LOG_PARAMETERS, *LOGIT_PARAMETERS)}
    free.update({k: torch.full((count,), v, dtype=torch.float64) for k, v in model.fixed.items()})
    therapy = {c: columns[c] for c in THERAPY_VALUES}
    return free, therapy


def _static_checks(
    group: AgeGroup, p: dict[str, Tensor], therapy: dict[str, Tensor], limits: PlausibilityLimits
) -> Tensor:
    low_gb, high_gb = limits.basal_glucose_mg_dl
    low_age, high_age = AGE_BANDS[group]
    low_share, high_share = limits.basal_share_of_tdi
    basal_share = p["u2ss"] * p["BW"] / 6000.0 * 1440.0 / therapy["TDI"]
    ok = (
        (p["EGPb"] > p["Fsnc"])
        & (p["Gtb"] > 0.0)
        & (p["Vm0"] > 0.0)
        & (p["kmin"] < p["kmax"])
        & (p["d"] < p["b"])
        & (p["Gpb"] < p["ke2"])
        & (p["u2ss"] > 0.0)
        & (p["Gb"] >= low_gb)
        & (p["Gb"] <= high_gb)
        & (therapy["Age"] >= low_age)
        & (therapy["Age"] <= high_age)
        & (basal_share >= low_share)
        & (basal_share <= high_share)
        & (gut_stiffness(p) <= limits.max_gut_stiffness_per_min)
    )
    finite = torch.stack([torch.isfinite(v) for v in (*p.values(), *therapy.values())]).all(0)
    return ok & finite


def stable_steady_state(params: VirtualPatientParams) -> Tensor:
    """Whether each patient's basal steady state is locally asymptotically stable.

    Parameters
    ----------
    params : VirtualPatientParams
        The batch, with ``initial_state`` at its steady state.

    Returns
    -------
    torch.Tensor
        Bool ``[B]``: every eigenvalue of the finite-difference Jacobian of the one-minute map
        (basal insulin, no meal) lies strictly inside the unit circle.
    """
    batch = params.batch_size
    x0 = params.initial_state
    step = 1e-6 * torch.clamp_min(x0.abs(), 1.0)
    perturbed = x0[:, None, :].repeat(1, N_STATES + 1, 1)
    perturbed[:, 1:, :] += torch.diag_embed(step)
    rows = torch.arange(batch).repeat_interleave(N_STATES + 1)
    patient = BatchedT1DPatient(params.take(rows), initial_state=perturbed.reshape(-1, N_STATES))
    patient.step(torch.zeros(len(rows), dtype=torch.float64), params.basal_u_per_min[rows])
    mapped = patient.state.reshape(batch, N_STATES + 1, N_STATES)
    jacobian = ((mapped[:, 1:, :] - mapped[:, :1, :]) / step[:, :, None]).transpose(1, 2)
    radius: Tensor = torch.linalg.eigvals(jacobian).abs().amax(dim=1)
    return radius < 1.0


def _dynamic_checks(params: VirtualPatientParams, limits: PlausibilityLimits) -> Tensor:
    batch = params.batch_size
    patient = BatchedT1DPatient(params)
    basal = params.basal_u_per_min
    carbs = torch.round(_MEAL_TEST_G * meal_size_scale(params))
    bolus = carbs / params.carb_ratio_g_per_u
    zero = torch.zeros(batch, dtype=torch.float64)
    gb = params.basal_glucose_mg_dl
    drift = torch.zeros(batch, dtype=torch.float64)
    low = torch.full((batch,), math.inf, dtype=torch.float64)
    high = torch.full((batch,), -math.inf, dtype=torch.float64)
    for minute in range(_MEAL_TEST_END_MIN):
        bg = patient.bg_mg_dl
        if minute < _BASAL_MIN:
            drift = torch.maximum(drift, (bg - gb).abs())
        else:
            low, high = torch.minimum(low, bg), torch.maximum(high, bg)
        meal = minute == _BASAL_MIN
        patient.step(carbs if meal else zero, basal + bolus if meal else basal)
    low_band, high_band = limits.meal_test_mg_dl
    return (drift <= limits.basal_drift_mg_dl) & (low >= low_band) & (high <= high_band)


def _as_params(
    group: AgeGroup, p: dict[str, Tensor], state: Tensor, therapy: dict[str, Tensor]
) -> VirtualPatientParams:
    names = (f"{group.value}#candidate",) * int(state.shape[0])
    return VirtualPatientParams(
        names=names,
        params=MappingProxyType({k: v.clone() for k, v in sorted(p.items())}),
        initial_state=state.clone(),
        carb_ratio_g_per_u=therapy["CR"].clone(),
        correction_factor_mg_dl_per_u=therapy["CF"].clone(),
        age_years=therapy["Age"].clone(),
        total_daily_insulin_u=therapy["TDI"].clone(),
    )


def sample_virtual_patients(
    group: AgeGroup,
    n: int,
    seed: int,
    *,
    spread: float = 1.0,
    limits: PlausibilityLimits | None = None,
) -> VirtualPatientParams:
    """Draw ``n`` plausible new virtual patients of one age group.

    Parameters
    ----------
    group : AgeGroup
        Age group whose published subjects the distribution is fitted to.
    n : int
        Number of patients wanted (>= 1).
    seed : int
        Non-negative seed; candidates are drawn from ``numpy.random.SeedSequence(seed)``
        spawned per group and accepted in order, so the first ``k`` patients of a larger
        sample are the sample of ``k``.
    spread : float, default 1.0
        Factor on the fitted standard deviations (0 < spread <= 3).
    limits : PlausibilityLimits or None, optional
        Rejection limits; defaults to :class:`PlausibilityLimits` ``()``.

    Returns
    -------
    VirtualPatientParams
        ``n`` patients named ``<group>#v00001`` … ``<group>#v<n>``, with ages and therapy
        values from the same draw.

    Raises
    ------
    ConfigError
        On bad arguments, or if fewer than 1 % of the candidates are plausible.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of patients must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed must be a non-negative integer")
    if not (math.isfinite(spread) and 0.0 < spread <= 3.0):
        raise ConfigError("spread must be in (0, 3]")
    rules = PlausibilityLimits() if limits is None else limits
    generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_GROUP_SEED[group],)))
    accepted: list[VirtualPatientParams] = []
    have = drawn = 0
    chunk = min(2048, n + n // 2 + 8)
    while have < n:
        if drawn >= 100 * n + 1000:
            raise ConfigError(
                f"only {have} of {drawn} sampled {group.value} patients were plausible"
            )
        free, therapy = _candidates(group, chunk, generator, spread)
        drawn += chunk
        derived, state = steady_state_parameters(free)
        keep = torch.nonzero(_static_checks(group, derived, therapy, rules)).flatten()
        if keep.numel() == 0:
            continue
        batch = _as_params(
            group,
            {k: v[keep] for k, v in derived.items()},
            state[keep],
            {k: v[keep] for k, v in therapy.items()},
        )
        good = torch.nonzero(stable_steady_state(batch) & _dynamic_checks(batch, rules)).flatten()
        if good.numel() == 0:
            continue
        chosen = batch.take(good[: n - have])
        names = tuple(f"{group.value}#v{have + 1 + i:05d}" for i in range(chosen.batch_size))
        accepted.append(dataclasses.replace(chosen, names=names))
        have += chosen.batch_size
    return VirtualPatientParams.concat(accepted)


_SAMPLED_NAME = re.compile(r"^(child|adolescent|adult)#v(\d{5})$")


def patient_by_name(name: str, *, population_seed: int | None = None) -> VirtualPatientParams:
    """Return one published or sampled patient by name.

    Parameters
    ----------
    name : str
        A published subject (``adult#001``) or a sampled one (``adult#v00042``, the 42nd
        adult drawn by :func:`sample_virtual_patients` with ``population_seed``).
    population_seed : int or None, optional
        Seed of the sampled population; required for sampled names.

    Returns
    -------
    VirtualPatientParams
        A batch of one.

    Raises
    ------
    ConfigError
        If the name is unknown, or a sampled name comes without a seed.
    """
    match = _SAMPLED_NAME.match(name)
    if match is None:
        if name not in all_patient_names():
            raise ConfigError(
                f"unknown virtual patient {name!r} (expected adolescent#001…adolescent#010, "
                "adult#001…adult#010, child#001…child#010, or a sampled name like adult#v00001)"
            )
        return VirtualPatientParams.select([name])
    index = int(match.group(2))
    if population_seed is None:
        raise ConfigError(f"sampled patient {name!r} needs the population seed it was drawn with")
    if index < 1:
        raise ConfigError(f"sampled patient numbers start at v00001, got {name!r}")
    population = sample_virtual_patients(AgeGroup(match.group(1)), index, population_seed)
    return population.take([index - 1])
