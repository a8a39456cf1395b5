"""The oncology twin: counterfactual tumour-volume forecasts under planned chemo/radio regimens.

Given a patient's daily tumour volumes up to day ``t`` (the *origin*), the treatments given
before day ``t``, the static patient type, and a *plan* of chemo/radio days from day ``t`` on,
the twin predicts ``log V`` on days ``t+1 … t+H`` as a Gaussian.

Invariants:

* causal: the history encoder is a stack of left-padded dilated ``Conv1d`` blocks with
  per-day ``LayerNorm``, and day ``s`` enters it as ``(log V(s), treatment on day s-1)``, so the
  state at origin ``t`` never sees a volume after ``t`` nor a treatment on or after ``t``; the
  forecast of day ``t+k`` depends on the plan's days ``t … t+k-1`` only (each daily increment
  reads the treatments of the ``P`` days before it, and increments are summed);
* DP-friendly: ``Conv1d``, ``LayerNorm`` and ``Linear`` only, and every tensor keeps the
  patient on dimension 0, so one patient is one Opacus record (all origins of a patient are
  decoded inside that record);
* stateless normalisation: fixed physical scales, never statistics of a site's data;
* persistence at initialisation: the growth, response and scale heads start at zero, so an
  untrained twin says "the tumour stays as it is", with a broad uncertainty;
* time-varying confounding is handled by a *balancing representation* (Bica et al., CRN,
  ICLR 2020): a head predicts the treatment given at the origin from the history state through
  a gradient-reversal layer, so training pushes the state towards carrying no information about
  which treatment the observational policy chose. Chosen over inverse-propensity weighting
  because IPW multiplies per-day weights over the horizon (variance explodes, RMSN needs
  truncation) and inflates some patients' gradients, which DP clipping then cuts: a biased,
  noisier estimator under the very privacy mechanism the project trains with.

Decoder: a tumour multiplies each day by a growth factor (the discrete-time form of growth
inhibition models, Geng et al. 2017 among them). The twin writes day ``j``'s factor as
``1 + g_j(state) + Σ_l w_l(state) · treatment(t+j-l)``: a state-dependent growth term plus a
state-dependent *linear response* to the last ``P`` days of chemo and radio (the patient's
sensitivity, and how fast a drug's effect fades, are both learned), takes its log as the mean
daily increment, predicts each increment's variance, and sums them, so the variance of
``log V(t+k)`` grows with ``k``. The encoder is given, besides the raw days, the running mean
log-volume change after each kind of treatment day: the raw material of a sensitivity estimate.

Training lives in :mod:`fedtwin.twins.oncology_training`, what-if ranking in
:mod:`fedtwin.twins.oncology_whatif`, the benchmark protocol in
:mod:`fedtwin.twins.oncology_eval`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional

from fedtwin.errors import ConfigError

if TYPE_CHECKING:
    from fedtwin.twins.oncology_whatif import OncologyRegimen, RankedRegimen, RegimenObjective

LOG_VOLUME_CENTRE = 1.0
LOG_VOLUME_SCALE = 3.0
INCREMENT_SCALE = 0.1
MIN_VOLUME_CM3 = 1e-6
MIN_STD_LOG = 1e-3
PATIENT_TYPES = 3
TREATMENT_KINDS = 4
INPUT_CHANNELS = 5 + 2 * TREATMENT_KINDS + PATIENT_TYPES
MAX_PLAN_DAYS = 366
MIN_GROWTH_FACTOR = 1e-3


class Balancing(enum.StrEnum):
    """How the twin handles time-varying confounding."""

    GRADIENT_REVERSAL = "gradient_reversal"
    NONE = "none"


class OncologyTwinConfig(BaseModel):
    """Architecture of the oncology twin (identical at every site)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    horizon_days: int = Field(7, ge=1, le=28, description="days decoded in one shot, H")
    treatment_lag_days: int = Field(6, ge=1, le=28, description="treatment days per increment")
    channels: int = Field(32, ge=4, le=256, description="width of the history encoder")
    hidden: int = Field(64, ge=8, le=512, description="width of the increment decoder")
    dilations: tuple[int, ...] = Field((1, 2, 4, 8, 16), min_length=1, max_length=8)
    kernel_size: int = Field(3, ge=2, le=7)
    balancing: Balancing = Balancing.GRADIENT_REVERSAL
    balancing_weight: float = Field(1.0, ge=0.0, le=10.0, description="max reversal scale")

    @property
    def window_days(self) -> int:
        """Treatment days the decoder reads for one origin: ``P + H - 1``."""
        return self.treatment_lag_days + self.horizon_days - 1


@dataclass(frozen=True, eq=False)
class TumourSeries:
    """Daily observations of ``N`` patients over ``T`` days.

    Parameters
    ----------
    volume_cm3 : torch.Tensor
        ``float`` ``[N, T]``; ``NaN`` once a trajectory has ended (death or recovery).
    chemo, radio : torch.Tensor
        ``bool`` ``[N, T]``: treatment given on that day, after that day's measurement. A
        forecast from origin ``t`` reads treatments before ``t`` only; its plan replaces the rest.
    patient_type : torch.Tensor
        ``int64`` ``[N]`` in ``{1, 2, 3}``.
    """

    volume_cm3: Tensor
    chemo: Tensor
    radio: Tensor
    patient_type: Tensor

    def __post_init__(self) -> None:
        volume = self.volume_cm3
        if volume.dim() != 2 or volume.shape[1] < 1:
            raise ConfigError(f"tumour volume must be [patients, days], got {list(volume.shape)}")
        for name, series in (("chemo", self.chemo), ("radio", self.radio)):
            if tuple(series.shape) != tuple(volume.shape):
                raise ConfigError(
                    f"tumour {name} has shape {list(series.shape)}, volume {list(volume.shape)}"
                )
        if tuple(self.patient_type.shape) != (volume.shape[0],):
            raise ConfigError(f"patient_type must be [{volume.shape[0]}] (one per patient)")
        if bool(((self.patient_type < 1) | (self.patient_type > PATIENT_TYPES)).any()):
            raise ConfigError("patient_type must be 1, 2 or 3")
        seen = ~torch.isnan(volume)
        if bool((volume[seen] < 0).any()) or bool(torch.isinf(volume).any()):
            raise ConfigError("tumour volumes must be finite and >= 0 cm^3")
        if bool((seen[:, 1:] & ~seen[:, :-1]).any()):
            raise ConfigError("tumour volumes may end (NaN) but not resume after a gap")

    @property
    def days(self) -> int:
        """Days covered ``T``."""
        return int(self.volume_cm3.shape[1])

    def __len__(self) -> int:
        return int(self.volume_cm3.shape[0])

    def take(self, rows: Tensor | Sequence[int]) -> TumourSeries:
        """The series of the given patients (rows may repeat)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return TumourSeries(
            self.volume_cm3[index], self.chemo[index], self.radio[index], self.patient_type[index]
        )

    def until(self, day: int) -> TumourSeries:
        """Days ``[0, day]`` (the history a forecast from origin ``day`` may read)."""
        return TumourSeries(
            self.volume_cm3[:, : day + 1],
            self.chemo[:, : day + 1],
            self.radio[:, : day + 1],
            self.patient_type,
        )


def encoder_inputs(series: TumourSeries) -> Tensor:
    """Per-day encoder channels ``[N, 16, T]``, causal by construction.

    Day ``s`` holds ``log V(s)``, its change since ``s-1``, the treatment of day ``s-1``, the
    running responses of :func:`_response_so_far`, an observed flag and the patient type.
    """
    volume = series.volume_cm3.to(torch.float32)
    seen = ~torch.isnan(volume)
    log_volume = torch.log(volume.nan_to_num(0.0).clamp_min(MIN_VOLUME_CM3))
    log_volume = torch.where(seen, log_volume, 0.0)
    change = torch.zeros_like(log_volume)
    both = seen[:, 1:] & seen[:, :-1]
    change[:, 1:] = torch.where(both, log_volume[:, 1:] - log_volume[:, :-1], 0.0)
    treated = torch.stack([series.chemo, series.radio], dim=1).to(torch.float32)
    previous = functional.pad(treated[:, :, :-1], (1, 0))
    kind = functional.one_hot(series.patient_type - 1, PATIENT_TYPES).to(torch.float32)
    return torch.cat(
        [
            ((log_volume - LOG_VOLUME_CENTRE) / LOG_VOLUME_SCALE)[:, None],
            (change / INCREMENT_SCALE).clamp(-20.0, 20.0)[:, None],
            previous * seen[:, None],
            _response_so_far(change, previous, both),
            seen.to(torch.float32)[:, None],
            kind[:, :, None].expand(-1, -1, series.days) * seen[:, None],
        ],
        dim=1,
    )


def _response_so_far(change: Tensor, previous: Tensor, both: Tensor) -> Tensor:
    """Running mean log-volume change after each kind of treatment day, and their counts.

    Kinds: none, chemo, radio, both (of the day before the change); counts as
    ``log(1 + count)``.

    Causal (a cumulative sum) and parameter-free: the raw material of a sensitivity estimate,
    which a convolution would otherwise have to learn to divide out.
    """
    kind = (previous[:, 0] + 2.0 * previous[:, 1]).long()  # [N, T]
    valid = functional.pad(both, (1, 0))
    hits = functional.one_hot(kind, TREATMENT_KINDS).to(change.dtype) * valid[..., None]
    counts = torch.cumsum(hits, dim=1)
    sums = torch.cumsum(hits * change[..., None], dim=1)
    means = sums / counts.clamp_min(1.0) / INCREMENT_SCALE
    return torch.cat([means.clamp(-20.0, 20.0), torch.log1p(counts)], dim=-1).transpose(1, 2)


def log_volume_of(volume_cm3: Tensor) -> Tensor:
    """``log`` of volumes floored at :data:`MIN_VOLUME_CM3` (a recovered tumour is 0)."""
    return torch.log(volume_cm3.clamp_min(MIN_VOLUME_CM3))


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-scale`` backward (Ganin & Lempitsky)."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grads[0], None


class _CausalConvBlock(nn.Module):
    """Residual block: left-padded dilated convolution, per-day layer norm, SiLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(functional.pad(x, (self.left_pad, 0)))
        y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        return x + functional.silu(y)


@dataclass(frozen=True)
class TumourForecast:
    """Gaussian forecast of ``log V`` (cm^3) on days ``t+1 … t+K``, each ``[N, K]``."""

    mean_log: Tensor
    std_log: Tensor

    @property
    def volume_cm3(self) -> Tensor:
        """Expected volume, ``exp(mean + var / 2)`` (log-normal mean)."""
        return torch.exp(self.mean_log + 0.5 * self.std_log**2)

    def quantile_cm3(self, probability: float) -> Tensor:
        """Volume quantile, e.g. ``0.05`` and ``0.95`` for a 90 % interval."""
        z = math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * probability - 1.0))
        return torch.exp(self.mean_log + z * self.std_log)


class OncologyTwin(nn.Module):
    """Counterfactual tumour forecaster conditioned on a planned regimen.

    ``forward`` is the training entry point (one record = one patient, all its origins inside);
    :meth:`forecast` and :meth:`compare` are what a clinician-facing tool calls.
    """

    def __init__(self, config: OncologyTwinConfig | None = None) -> None:
        super().__init__()
        self.config = config or OncologyTwinConfig()
        c = self.config
        self.input = nn.Conv1d(INPUT_CHANNELS, c.channels, kernel_size=1)
        self.blocks = nn.ModuleList(
            _CausalConvBlock(c.channels, c.kernel_size, d) for d in c.dilations
        )
        self.state = nn.Linear(c.channels, c.hidden)
        self.norm = nn.LayerNorm(c.hidden)
        self.hidden = nn.Linear(c.hidden, c.hidden)
        self.growth = nn.Linear(c.hidden, c.horizon_days)
        self.response = nn.Linear(c.hidden, 2 * c.treatment_lag_days)
        self.scale = nn.Linear(c.hidden, c.horizon_days)
        self.scale_lags = nn.Linear(2 * c.treatment_lag_days, 1)
        for head in (self.growth, self.response, self.scale):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.propensity = nn.Sequential(
            nn.Linear(c.channels, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 2)
        )
        #: Gradient-reversal scale, set by the trainer (CRN's schedule); 0 disables balancing.
        self.reversal_scale = 0.0

    def encode(self, inputs: Tensor) -> Tensor:
        """History states ``[N, C, T]`` from :func:`encoder_inputs`; state ``t`` is causal."""
        features = self.input(inputs)
        for block in self.blocks:
            features = block(features)
        encoded: Tensor = features
        return encoded

    def decode(self, states: Tensor, windows: Tensor) -> Tensor:
        """Raw daily increments ``[..., H, 2]`` (mean, scale) of one origin each.

        ``states`` ``[..., C]``; ``windows`` ``[..., P + H - 1, 2]`` hold the treatments of
        days ``t+1-P … t+H-1`` (the plan starts at index ``P-1``).
        """
        c = self.config
        lags = windows.unfold(-2, c.treatment_lag_days, 1).flatten(-2)  # [..., H, 2P]
        hidden = functional.silu(self.norm(self.state(states)))
        hidden = functional.silu(self.hidden(hidden))
        # Daily growth factor 1 + u: a state-dependent growth term plus a state-dependent
        # linear response to the treatments of the last P days (the patient's sensitivity).
        response = (lags * self.response(hidden).unsqueeze(-2)).sum(-1)
        factor = 1.0 + self.growth(hidden) + response
        increment = torch.log(factor.clamp_min(MIN_GROWTH_FACTOR)) / INCREMENT_SCALE
        scale = self.scale(hidden) + self.scale_lags(lags).squeeze(-1)
        return torch.stack([increment, scale], dim=-1)

    def forward(self, inputs: Tensor, windows: Tensor, origins: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass over whole patients.

        Parameters
        ----------
        inputs : torch.Tensor
            :func:`encoder_inputs`, ``[N, 8, T]``.
        windows : torch.Tensor
            Treatment window of each origin, ``[N, O, P + H - 1, 2]``.
        origins : torch.Tensor
            Origin days, ``int64`` ``[N, O]``.

        Returns
        -------
        tuple of torch.Tensor
            Raw increments ``[N, O, H, 2]`` and treatment logits at the origins ``[N, O, 2]``
            (through the gradient-reversal layer).
        """
        encoded = self.encode(inputs).transpose(1, 2)  # [N, T, C]
        index = origins.unsqueeze(-1).expand(-1, -1, encoded.shape[-1])
        states = torch.gather(encoded, 1, index)
        reversed_states = _ReverseGradient.apply(  # type: ignore[no-untyped-call]
            states, self.reversal_scale
        )
        logits: Tensor = self.propensity(reversed_states)
        return self.decode(states, windows), logits

    @torch.no_grad()
    def forecast(self, history: TumourSeries, chemo: Tensor, radio: Tensor) -> TumourForecast:
        """Forecast from each patient's last day under a plan of any length.

        Parameters
        ----------
        history : TumourSeries
            ``N`` patients, all observed through the last day ``t = T - 1``.
        chemo, radio : torch.Tensor
            ``bool`` ``[N, K]``: the plan for days ``t … t+K-1``.

        Returns
        -------
        TumourForecast
            ``log V`` on days ``t+1 … t+K``. Plans longer than ``H`` roll forward ``H`` days at
            a time, feeding the expected volumes back as history (variances add).

        Raises
        ------
        ConfigError
            If the history or the plan does not fit.
        """
        if bool(torch.isnan(history.volume_cm3[:, -1]).any()):
            raise ConfigError("every history must be observed on its last day (the origin)")
        if chemo.dim() != 2 or tuple(chemo.shape) != tuple(radio.shape):
            raise ConfigError("plan chemo and radio must both be [patients, days]")
        if chemo.shape[0] != len(history) or not 1 <= chemo.shape[1] <= MAX_PLAN_DAYS:
            raise ConfigError(
                f"plan must be [{len(history)}, 1..{MAX_PLAN_DAYS}], got {list(chemo.shape)}"
            )
        return self.roll_forward(history, chemo, radio)

    def roll_forward(
        self,
        history: TumourSeries,
        chemo: Tensor,
        radio: Tensor,
        inputs_of: Callable[[TumourSeries], Tensor] = encoder_inputs,
    ) -> TumourForecast:
        """:meth:`forecast` without its checks: ``H`` days at a time, expected volumes fed back.

        ``inputs_of`` builds the encoder's inputs of a (growing) history; a patient twin that
        keeps only a window of its history passes its own (running totals of the dropped days).
        """
        was_training = self.training
        self.eval()
        c = self.config
        means, variances = [], []
        offset_var = torch.zeros(len(history))
        current = history
        for start in range(0, chemo.shape[1], c.horizon_days):
            block_chemo = chemo[:, start : start + c.horizon_days]
            block_radio = radio[:, start : start + c.horizon_days]
            days = block_chemo.shape[1]
            states = self.encode(inputs_of(current))[:, :, -1]
            windows = plan_windows(current, block_chemo, block_radio, c)
            mean, var = increments_to_log_volume(self.decode(states, windows))
            origin_log = log_volume_of(current.volume_cm3[:, -1].to(torch.float32))
            mean = origin_log[:, None] + mean[:, :days]
            var = offset_var[:, None] + var[:, :days]
            means.append(mean)
            variances.append(var)
            offset_var = var[:, -1]
            current = _extend(current, block_chemo, block_radio, torch.exp(mean))
        self.train(was_training)
        variance = torch.cat(variances, dim=1)
        return TumourForecast(torch.cat(means, dim=1), variance.sqrt())

    def compare(
        self,
        history: TumourSeries,
        regimens: Sequence[OncologyRegimen | Mapping[str, Any]],
        objective: RegimenObjective | None = None,
        *,
        level: float = 0.9,
    ) -> tuple[RankedRegimen, ...]:
        """Rank regimens for one patient (see :func:`~fedtwin.twins.compare_regimens`)."""
        from fedtwin.twins.oncology_whatif import compare_regimens

        return compare_regimens(self, history, regimens, objective, level=level)


def increments_to_log_volume(raw: Tensor) -> tuple[Tensor, Tensor]:
    """Mean change of ``log V`` since the origin and its variance, ``[..., H]`` each.

    Sums the raw daily increments ``[..., H, 2]`` (independent daily noise: variances add).
    """
    mean = INCREMENT_SCALE * torch.cumsum(raw[..., 0], dim=-1)
    std = INCREMENT_SCALE * (functional.softplus(raw[..., 1] - 1.0) + MIN_STD_LOG)
    return mean, torch.cumsum(std**2, dim=-1)


def plan_windows(
    history: TumourSeries, chemo: Tensor, radio: Tensor, config: OncologyTwinConfig
) -> Tensor:
    """Treatment windows ``[N, P + H - 1, 2]`` for a forecast from each history's last day.

    The ``P - 1`` days before the origin, then the plan (zero-padded to ``H`` days).
    """
    lag, horizon = config.treatment_lag_days, config.horizon_days
    past = torch.stack([history.chemo, history.radio], dim=-1)[:, :-1].to(torch.float32)
    past = functional.pad(past, (0, 0, max(0, lag - 1 - past.shape[1]), 0))
    past = past[:, past.shape[1] - (lag - 1) :]
    plan = torch.stack([chemo, radio], dim=-1).to(torch.float32)
    plan = functional.pad(plan, (0, 0, 0, horizon - plan.shape[1]))
    return torch.cat([past, plan], dim=1)


def _extend(history: TumourSeries, chemo: Tensor, radio: Tensor, volume: Tensor) -> TumourSeries:
    """History followed by a plan block and the volumes it produced."""
    given_chemo = torch.cat([history.chemo[:, :-1], chemo], dim=1)
    given_radio = torch.cat([history.radio[:, :-1], radio], dim=1)
    pad = torch.zeros(len(history), 1, dtype=torch.bool)
    return TumourSeries(
        torch.cat([history.volume_cm3.to(volume.dtype), volume], dim=1),
        torch.cat([given_chemo, pad], dim=1),
        torch.cat([given_radio, pad], dim=1),
        history.patient_type,
    )
