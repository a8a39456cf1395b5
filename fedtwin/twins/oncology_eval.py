"""The counterfactual evaluation protocol of CRN / Causal Transformer on the tumour simulator.

Invariant: every target is the simulator's own replay of the *same* patient with the *same*
pre-drawn noise from a checkpoint of its factual run (:mod:`fedtwin.cohorts.oncology`), so a
counterfactual target differs from the factual one by the treatment effect alone, and every
predictor is scored on exactly the same rows.

Protocol (Bica et al., ICLR 2020; Melnychuk et al., ICML 2022; the Causal Transformer
repository's ``config/dataset/cancer_sim.yaml``: 10,000 / 1,000 / 1,000 patients, 60 days,
window 15, lag 0, ``projection_horizon`` 5, ``cf_seq_mode: sliding_treatment``):

* one-step (τ = 1): from every origin ``t`` of every test patient (observed, not ended), the
  four options {none, chemo, radio, both} on day ``t``; target ``V(t+1)``. *Factual* scores the
  row whose option is what the patient got; *counterfactual* pools all four rows, as the
  repository's ``test_cf_one_step`` set does;
* τ-step (τ = 2 … 6), sliding treatment: the factual treatment on day ``t``, then one single
  chemo or one single radio day at each of the five positions of days ``t+1 … t+5`` (10 plans);
  target ``V(t+τ)``; the history ends at ``V(t)`` (``V(t+1)`` is forecast, not observed);
* metric: ``RMSE / V(13 cm sphere) × 100`` (%), pooled over rows.

Departures, stated: our simulator is the corrected one (the confounding window reads the
patient's own diameters in every set, and day 0 is untreated), counterfactual runs end on
death (volume clipped at the threshold, later days dropped) like factual ones, and rows whose
replay ended are dropped per τ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fedtwin.cohorts.oncology import (
    DEATH_VOLUME_CM3,
    ConfoundedAssignment,
    Regimen,
    TumourCheckpoint,
    TumourNoise,
    TumourPatients,
    draw_tumour_noise,
    sample_tumour_patients,
    simulate_tumours,
)
from fedtwin.errors import ConfigError
from fedtwin.twins.oncology import (
    OncologyTwin,
    TumourSeries,
    encoder_inputs,
    increments_to_log_volume,
    log_volume_of,
)
from fedtwin.twins.oncology_whatif import (
    OncologyRegimen,
    RegimenObjective,
    expected_objectives,
    forecast_regimens,
    parse_regimens,
    regimen_doses,
)

#: Stream-key offsets of the three patient sets (one seed, disjoint patients).
SPLIT_KEY_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}
ONE_STEP_OPTIONS = ((False, False), (True, False), (False, True), (True, True))


class OncologyProtocol(BaseModel):
    """One configuration of the benchmark (defaults: the Causal Transformer repository's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gamma: float = Field(ge=0.0, le=10.0, description="confounding strength (chemo = radio)")
    train_patients: int = Field(10_000, ge=1)
    val_patients: int = Field(1_000, ge=1)
    test_patients: int = Field(1_000, ge=1)
    days: int = Field(60, ge=3, le=365, description="max_seq_length")
    projection_horizon: int = Field(5, ge=1, le=20, description="τ runs 2 … horizon + 1")
    window_days: int = Field(15, ge=1, le=60)
    seed: int = Field(0, ge=0)


@dataclass(frozen=True, eq=False)
class FactualCohort:
    """Patients, their noise, the factual run and a checkpoint before every day.

    ``checkpoints[d]`` is the state before day ``d`` (``d = 0 … days``).
    """

    patients: TumourPatients
    noise: TumourNoise
    checkpoints: tuple[TumourCheckpoint, ...]
    series: TumourSeries


def _take(obj: object, rows: Tensor) -> object:
    """Row subset of a dataclass of ``[B, ...]`` tensors (other fields copied)."""
    values = {
        f.name: (v[rows] if isinstance(v, Tensor) else v)
        for f in dataclasses.fields(obj)  # type: ignore[arg-type]
        for v in [getattr(obj, f.name)]
    }
    return type(obj)(**values)


def simulate_tumour_cohort(protocol: OncologyProtocol, split: str, patients: int) -> FactualCohort:
    """Simulate one split's observational data under the confounded policy.

    Parameters
    ----------
    protocol : OncologyProtocol
        γ, days, window, seed.
    split : str
        ``"train"``, ``"val"`` or ``"test"`` (disjoint patient streams).
    patients : int
        How many.

    Returns
    -------
    FactualCohort
        The run with its daily checkpoints.
    """
    if split not in SPLIT_KEY_OFFSET:
        raise ConfigError(f"split must be one of {sorted(SPLIT_KEY_OFFSET)}, not {split!r}")
    keys = range(SPLIT_KEY_OFFSET[split], SPLIT_KEY_OFFSET[split] + patients)
    people = sample_tumour_patients(patients, protocol.seed, patient_keys=keys)
    noise_days = protocol.days + protocol.projection_horizon + 1
    noise = draw_tumour_noise(patients, noise_days, protocol.seed, patient_keys=keys)
    policy = ConfoundedAssignment(protocol.gamma, protocol.gamma, window_days=protocol.window_days)
    checkpoints = [TumourCheckpoint.initial(people)]
    volumes, chemo, radio = [], [], []
    for day in range(protocol.days):
        run = simulate_tumours(people, noise, policy, days=day + 1, start=checkpoints[-1])
        checkpoints.append(run.final)
        volumes.append(run.volume_cm3)
        chemo.append(run.chemo)
        radio.append(run.radio)
    series = TumourSeries(
        torch.cat(volumes, 1), torch.cat(chemo, 1), torch.cat(radio, 1), people.patient_type
    )
    return FactualCohort(people, noise, tuple(checkpoints), series)


def _replay(
    cohort: FactualCohort,
    rows: Tensor,
    start_day: int,
    chemo: Tensor,
    radio: Tensor,
    quiet_from: int,
) -> tuple[Tensor, Tensor]:
    """Replay ``rows`` from the checkpoint before ``start_day`` under fixed plans ``[R, K]``.

    Returns the volumes of days ``start_day … start_day + K`` ``[R, K + 1]``, and the same with
    no growth noise and no recovery from day ``quiet_from`` on (the outcome expected from the
    patient's parameters and the observed history).
    """
    patients = _take(cohort.patients, rows)
    noise = _take(cohort.noise, rows)
    start = _take(cohort.checkpoints[start_day], rows)
    assert isinstance(patients, TumourPatients) and isinstance(noise, TumourNoise)
    assert isinstance(start, TumourCheckpoint)
    regimen = Regimen(chemo, radio, start_day=start_day)
    end = start_day + chemo.shape[1] + 1
    noisy = simulate_tumours(patients, noise, regimen, days=end, start=start).volume_cm3
    growth, recovery_u = noise.growth.clone(), noise.recovery_u.clone()
    growth[:, quiet_from:] = 0.0
    recovery_u[:, quiet_from:] = 1.0
    quiet_noise = dataclasses.replace(noise, growth=growth, recovery_u=recovery_u)
    quiet = simulate_tumours(patients, quiet_noise, regimen, days=end, start=start).volume_cm3
    return noisy, quiet


@dataclass(frozen=True, eq=False)
class CounterfactualRows:
    """Test rows of the protocol, ``R`` of them.

    Patient, origin day ``t``, plan ``[R, K]`` from ``t``, targets ``V(t+1) … V(t+K)``
    ``[R, K]`` (``NaN`` where the replay ended), their noise-free expectation, and whether the
    plan's first day is the factual treatment.
    """

    patient: Tensor
    origin: Tensor
    chemo: Tensor
    radio: Tensor
    target_cm3: Tensor
    expected_cm3: Tensor
    factual: Tensor


def _cat_rows(parts: Sequence[CounterfactualRows]) -> CounterfactualRows:
    return CounterfactualRows(
        *(
            torch.cat([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(CounterfactualRows)
        )
    )


def one_step_counterfactual_rows(cohort: FactualCohort) -> CounterfactualRows:
    """All four one-day options from every origin (τ = 1)."""
    parts = []
    days = cohort.series.days
    options = torch.tensor(ONE_STEP_OPTIONS)
    for origin in range(days - 1):
        alive = torch.nonzero(cohort.checkpoints[origin + 1].active).flatten()
        if alive.numel() == 0:
            continue
        rows = alive.repeat(len(options))
        option = options.repeat_interleave(alive.numel(), dim=0)
        noisy, quiet = _replay(cohort, rows, origin, option[:, :1], option[:, 1:], origin + 1)
        factual = (option[:, 0] == cohort.series.chemo[rows, origin]) & (
            option[:, 1] == cohort.series.radio[rows, origin]
        )
        parts.append(
            CounterfactualRows(
                rows,
                torch.full_like(rows, origin),
                option[:, :1],
                option[:, 1:],
                noisy[:, 1:],
                quiet[:, 1:],
                factual,
            )
        )
    return _cat_rows(parts)


def sliding_treatment_counterfactual_rows(
    cohort: FactualCohort, projection_horizon: int
) -> CounterfactualRows:
    """The sliding-treatment plans of τ = 2 … ``projection_horizon + 1``."""
    parts = []
    days, k = cohort.series.days, projection_horizon
    single = torch.eye(k, dtype=torch.bool)
    none = torch.zeros(k, k, dtype=torch.bool)
    plan_chemo = torch.cat([single, none])  # [2k, k]
    plan_radio = torch.cat([none, single])
    for origin in range(days - 1):
        alive = torch.nonzero(cohort.checkpoints[origin + 2].active).flatten()
        if alive.numel() == 0:
            continue
        rows = alive.repeat(2 * k)
        chemo = plan_chemo.repeat_interleave(alive.numel(), dim=0)
        radio = plan_radio.repeat_interleave(alive.numel(), dim=0)
        noisy, quiet = _replay(cohort, rows, origin + 1, chemo, radio, origin + 1)
        first_chemo = cohort.series.chemo[rows, origin : origin + 1]
        first_radio = cohort.series.radio[rows, origin : origin + 1]
        parts.append(
            CounterfactualRows(
                rows,
                torch.full_like(rows, origin),
                torch.cat([first_chemo, chemo], 1),
                torch.cat([first_radio, radio], 1),
                noisy,
                quiet,
                torch.zeros_like(rows, dtype=torch.bool),
            )
        )
    return _cat_rows(parts)


#: ``predict(series, patient [R], origin [R], chemo [R, K], radio [R, K]) -> volume [R, K]``.
VolumePredictor = Callable[[TumourSeries, Tensor, Tensor, Tensor, Tensor], Tensor]


def tumour_persistence(
    series: TumourSeries, patient: Tensor, origin: Tensor, chemo: Tensor, radio: Tensor
) -> Tensor:
    """Persistence ("last value"): the volume at the origin, for every day ahead."""
    last = series.volume_cm3[patient, origin].to(torch.float64)
    return last[:, None].expand(-1, chemo.shape[1])


def oncology_twin_predictor(twin: OncologyTwin, chunk: int = 8192) -> VolumePredictor:
    """Adapter: the twin's expected volume for rows of (patient, origin, plan ≤ H days)."""

    @torch.no_grad()
    def predict(
        series: TumourSeries, patient: Tensor, origin: Tensor, chemo: Tensor, radio: Tensor
    ) -> Tensor:
        c = twin.config
        if chemo.shape[1] > c.horizon_days:
            raise ValueError("rows longer than the twin's horizon")
        twin.eval()
        states = twin.encode(encoder_inputs(series)).transpose(1, 2)  # [N, T, C]
        treated = torch.stack([series.chemo, series.radio], dim=-1).to(torch.float32)
        past = torch.nn.functional.pad(treated, (0, 0, c.treatment_lag_days - 1, 0))
        volume = series.volume_cm3.to(torch.float32)
        out = []
        for start in range(0, patient.shape[0], chunk):
            p, t = patient[start : start + chunk], origin[start : start + chunk]
            # days t+1-P … t-1 sit at padded indices t … t+P-2
            lag_index = t[:, None] + torch.arange(c.treatment_lag_days - 1)[None, :]
            history = past[p[:, None], lag_index]
            plan = torch.stack(
                [chemo[start : start + chunk], radio[start : start + chunk]], dim=-1
            ).to(torch.float32)
            plan = torch.nn.functional.pad(plan, (0, 0, 0, c.horizon_days - plan.shape[1]))
            windows = torch.cat([history, plan], dim=1)
            mean, var = increments_to_log_volume(twin.decode(states[p, t], windows))
            log_v = log_volume_of(volume[p, t])[:, None] + mean
            out.append(torch.exp(log_v + 0.5 * var)[:, : chemo.shape[1]])
        return torch.cat(out).to(torch.float64)

    return predict


def normalised_rmse_pct(predicted: Tensor, target: Tensor) -> float:
    """``RMSE / V(13 cm) × 100`` over finite targets."""
    ok = ~torch.isnan(target) & ~torch.isnan(predicted)
    if not bool(ok.any()):
        return math.nan
    error = (predicted[ok] - target[ok]).to(torch.float64)
    return float(torch.sqrt((error**2).mean()) / DEATH_VOLUME_CM3 * 100.0)


class OncologyScores(BaseModel):
    """Normalised RMSE (%) of one predictor on one test set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    one_step_factual_pct: float
    one_step_counterfactual_pct: float
    tau_step_counterfactual_pct: tuple[float, ...] = Field(description="τ = 2, 3, …")


def score_oncology(
    predictor: VolumePredictor,
    series: TumourSeries,
    one_step: CounterfactualRows,
    sliding: CounterfactualRows,
    *,
    expected: bool = False,
) -> OncologyScores:
    """Score a predictor (``expected=True`` scores the noise-free replay: the noise floor)."""
    if expected:
        one = one_step.expected_cm3[:, 0]
        seq = sliding.expected_cm3
    else:
        one = predictor(series, one_step.patient, one_step.origin, one_step.chemo, one_step.radio)[
            :, 0
        ]
        seq = predictor(series, sliding.patient, sliding.origin, sliding.chemo, sliding.radio)
    target = one_step.target_cm3[:, 0]
    return OncologyScores(
        one_step_factual_pct=normalised_rmse_pct(one[one_step.factual], target[one_step.factual]),
        one_step_counterfactual_pct=normalised_rmse_pct(one, target),
        tau_step_counterfactual_pct=tuple(
            normalised_rmse_pct(seq[:, tau], sliding.target_cm3[:, tau])
            for tau in range(1, seq.shape[1])
        ),
    )


class RegimenValidation(BaseModel):
    """How often the twin's ranking picks the regimen the simulator says is best."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patients: int
    regimens: int
    origin_day: int
    days: int
    truly_best_fraction: float = Field(description="chosen regimen is the true best")
    chance_fraction: float = Field(description="a uniformly random pick, for reference")
    always_best_single_fraction: float = Field(
        description="the one regimen most often truly best, picked for everyone"
    )
    mean_regret: float = Field(description="true objective of the pick minus the best's")
    final_volume_rmse_pct: float = Field(description="normalised RMSE of final volumes")


def true_final_volumes(
    cohort: FactualCohort, rows: Tensor, origin_day: int, regimens: Sequence[OncologyRegimen]
) -> Tensor:
    """Simulator ground truth: final volume of each patient under each regimen ``[N, R]``.

    Death counts as the death volume, recovery as 0.
    """
    finals = []
    for regimen in regimens:
        chemo = torch.tensor(regimen.chemo, dtype=torch.bool).expand(rows.numel(), -1)
        radio = torch.tensor(regimen.radio, dtype=torch.bool).expand(rows.numel(), -1)
        volume, _ = _replay(cohort, rows, origin_day, chemo.clone(), radio.clone(), origin_day + 1)
        seen = ~torch.isnan(volume)
        last = seen.to(torch.int64).cumsum(1).argmax(1)
        finals.append(volume[torch.arange(rows.numel()), last])
    return torch.stack(finals, dim=1)


def validate_regimen_choice(
    twin: OncologyTwin,
    cohort: FactualCohort,
    regimens: Sequence[OncologyRegimen],
    objective: RegimenObjective,
    origin_day: int,
) -> RegimenValidation:
    """Rank regimens for every patient alive at ``origin_day`` and check against replay.

    The twin sees each patient's history through ``origin_day``; the simulator replays the
    same patient, same noise, under every regimen from that day.
    """
    chosen = parse_regimens(regimens)
    if chosen[0].days + origin_day + 1 > cohort.noise.days:
        raise ValueError("regimens run past the cohort's pre-drawn noise")
    rows = torch.nonzero(cohort.checkpoints[origin_day + 1].active).flatten()
    history = cohort.series.until(origin_day).take(rows)
    predicted = expected_objectives(twin, history, chosen, objective)
    forecast = forecast_regimens(twin, history, chosen).volume_cm3[..., -1].to(torch.float64)
    truth = true_final_volumes(cohort, rows, origin_day, chosen)
    chemo, radio = regimen_doses(chosen)
    origin = history.volume_cm3[:, -1:].to(torch.float64)
    true_objective = objective.value(truth, origin, chemo, radio)
    best = true_objective.min(dim=1).values
    pick = true_objective.gather(1, predicted.argmin(dim=1, keepdim=True))[:, 0]
    correct = pick <= best + 1e-9
    winners = torch.bincount(true_objective.argmin(dim=1), minlength=len(chosen))
    return RegimenValidation(
        patients=int(rows.numel()),
        regimens=len(chosen),
        origin_day=origin_day,
        days=chosen[0].days,
        truly_best_fraction=float(correct.to(torch.float64).mean()),
        chance_fraction=1.0 / len(chosen),
        always_best_single_fraction=float(winners.max()) / max(1, int(rows.numel())),
        mean_regret=float((pick - best).mean()),
        final_volume_rmse_pct=normalised_rmse_pct(forecast, truth),
    )
