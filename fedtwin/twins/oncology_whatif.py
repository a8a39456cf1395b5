"""What-if for the oncology twin: roll one patient forward under several regimens and rank them.

Invariants: a regimen is a closed, validated record (an unknown field, a wrong length, a
duplicate name is a :class:`~fedtwin.errors.ConfigError` with one line naming the regimen and
the field); the objective is one function applied alike to the twin's forecast and to the
simulator's ground truth, so a validation compares like with like; the ranking orders by the
expected objective and reports its interval, never a bare point.

Objective (lower is better): ``volume_weight × final tumour burden (%)``
``+ chemo_dose_weight × chemo doses + radio_gy_weight × Gy`` — tumour burden against a
cumulative-dose toxicity proxy, weights configurable (:class:`RegimenObjective`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from fedtwin.cohorts.oncology import DEATH_VOLUME_CM3, RADIO_DOSE_GY
from fedtwin.errors import ConfigError
from fedtwin.twins.oncology import MAX_PLAN_DAYS, OncologyTwin, TumourForecast, TumourSeries


class OncologyRegimen(BaseModel):
    """A named plan: chemo and radio on each day from the origin day on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=80)
    chemo: tuple[bool, ...] = Field(min_length=1, max_length=MAX_PLAN_DAYS)
    radio: tuple[bool, ...] = Field(min_length=1, max_length=MAX_PLAN_DAYS)

    @model_validator(mode="after")
    def _same_length(self) -> OncologyRegimen:
        if len(self.chemo) != len(self.radio):
            raise ValueError(f"chemo has {len(self.chemo)} days but radio has {len(self.radio)}")
        return self

    @property
    def days(self) -> int:
        """Length of the plan."""
        return len(self.chemo)

    @classmethod
    def weekly(
        cls,
        name: str,
        days: int,
        *,
        chemo_every_days: int | None = None,
        radio_fractions_per_week: int = 0,
    ) -> OncologyRegimen:
        """Chemo every ``chemo_every_days`` days and radio on the first fractions of each week."""
        if not 1 <= days <= MAX_PLAN_DAYS or not 0 <= radio_fractions_per_week <= 7:
            raise ConfigError(
                f"regimen {name!r} needs 1-{MAX_PLAN_DAYS} days and 0-7 radio fractions a week"
            )
        if chemo_every_days is not None and chemo_every_days < 1:
            raise ConfigError(f"regimen {name!r}: chemo_every_days must be >= 1")
        return cls(
            name=name,
            chemo=tuple(
                chemo_every_days is not None and day % chemo_every_days == 0 for day in range(days)
            ),
            radio=tuple(day % 7 < radio_fractions_per_week for day in range(days)),
        )


class RegimenObjective(BaseModel):
    """Weights of the ranking objective (lower is better).

    ``burden="relative"`` scores the final volume in % of the volume on the origin day (a
    RECIST-like response, meaningful for small and large tumours alike); ``"absolute"`` in %
    of the death volume (what the benchmark's RMSE is normalised by).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    burden: Literal["relative", "absolute"] = "relative"
    volume_weight: float = Field(1.0, ge=0.0, description="per % of final tumour burden")
    chemo_dose_weight: float = Field(1.0, ge=0.0, description="per chemo dose given")
    radio_gy_weight: float = Field(0.5, ge=0.0, description="per Gy of radiotherapy")

    def value(
        self, final_cm3: Tensor, origin_cm3: Tensor, chemo_doses: Tensor, radio_gy: Tensor
    ) -> Tensor:
        """Objective of final volumes and cumulative doses (broadcasting)."""
        reference = origin_cm3.clamp_min(1e-12) if self.burden == "relative" else DEATH_VOLUME_CM3
        return (
            self.volume_weight * 100.0 * final_cm3 / reference
            + self.chemo_dose_weight * chemo_doses
            + self.radio_gy_weight * radio_gy
        )


class RankedRegimen(BaseModel):
    """One row of a ranking (volumes in cm^3; the interval is the twin's central ``level``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int
    name: str
    objective: float
    objective_low: float
    objective_high: float
    final_volume_cm3: float
    final_volume_low_cm3: float
    final_volume_high_cm3: float
    chemo_doses: int
    radio_gy: float


def parse_regimens(
    regimens: Sequence[OncologyRegimen | Mapping[str, Any]],
) -> tuple[OncologyRegimen, ...]:
    """Validate regimens given as models or plain mappings (e.g. parsed JSON).

    Raises
    ------
    ConfigError
        One line: which regimen, which field, what is wrong; also for no regimens, duplicate
        names, or regimens of different lengths.
    """
    if isinstance(regimens, (str, bytes, Mapping)) or len(regimens) == 0:
        raise ConfigError("regimens must be a non-empty list")
    parsed = []
    for index, raw in enumerate(regimens):
        if isinstance(raw, OncologyRegimen):
            parsed.append(raw)
            continue
        label = raw.get("name") if isinstance(raw, Mapping) else None
        try:
            parsed.append(OncologyRegimen.model_validate(raw))
        except ValidationError as error:
            detail = error.errors()[0]
            where = ".".join(str(part) for part in detail["loc"]) or "days"
            what = (
                "unknown field"
                if detail["type"] == "extra_forbidden"
                else detail["msg"].removeprefix("Value error, ")
            )
            name = f" ({label!r})" if isinstance(label, str) else ""
            raise ConfigError(f"regimen {index}{name}: {where}: {what}") from error
    names = [r.name for r in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"regimen names must be unique: {duplicates[0]!r} repeats")
    lengths = {r.days for r in parsed}
    if len(lengths) > 1:
        first, other = parsed[0], next(r for r in parsed if r.days != parsed[0].days)
        raise ConfigError(
            f"regimens must cover the same days: {first.name!r} has {first.days}, "
            f"{other.name!r} has {other.days}"
        )
    return tuple(parsed)


def regimen_doses(regimens: Sequence[OncologyRegimen]) -> tuple[Tensor, Tensor]:
    """Chemo doses (count) and radio Gy of each regimen, ``[R]`` each."""
    chemo = torch.tensor([sum(r.chemo) for r in regimens], dtype=torch.float64)
    radio = torch.tensor([sum(r.radio) * RADIO_DOSE_GY for r in regimens], dtype=torch.float64)
    return chemo, radio


def forecast_regimens(
    twin: OncologyTwin, history: TumourSeries, regimens: Sequence[OncologyRegimen]
) -> TumourForecast:
    """Forecasts of every patient under every regimen, ``[N, R, K]`` each."""
    count, options = len(history), len(regimens)
    chemo = torch.tensor([r.chemo for r in regimens], dtype=torch.bool)
    radio = torch.tensor([r.radio for r in regimens], dtype=torch.bool)
    repeated = history.take(torch.arange(count).repeat_interleave(options))
    forecast = twin.forecast(repeated, chemo.repeat(count, 1), radio.repeat(count, 1))
    shape = (count, options, chemo.shape[1])
    return TumourForecast(forecast.mean_log.view(shape), forecast.std_log.view(shape))


def expected_objectives(
    twin: OncologyTwin,
    history: TumourSeries,
    regimens: Sequence[OncologyRegimen],
    objective: RegimenObjective,
) -> Tensor:
    """Expected objective of every patient under every regimen, ``[N, R]``."""
    forecast = forecast_regimens(twin, history, regimens)
    chemo, radio = regimen_doses(regimens)
    final = forecast.volume_cm3[..., -1].to(torch.float64)
    origin = history.volume_cm3[:, -1:].to(torch.float64)
    return objective.value(final, origin, chemo, radio)


def compare_regimens(
    twin: OncologyTwin,
    history: TumourSeries,
    regimens: Sequence[OncologyRegimen | Mapping[str, Any]],
    objective: RegimenObjective | None = None,
    *,
    level: float = 0.9,
) -> tuple[RankedRegimen, ...]:
    """Rank regimens for one patient, best (lowest expected objective) first.

    Parameters
    ----------
    twin : OncologyTwin
        A trained twin.
    history : TumourSeries
        One patient, observed through its last day (the first day of every regimen).
    regimens : Sequence[OncologyRegimen | Mapping]
        The candidates, all of the same length (validated by :func:`parse_regimens`).
    objective : RegimenObjective or None, optional
        Weights (default :class:`RegimenObjective`).
    level : float, default 0.9
        Central probability of the reported intervals.

    Returns
    -------
    tuple of RankedRegimen
        One row per regimen, ``rank`` 1 first.

    Raises
    ------
    ConfigError
        Bad regimens, a history of more than one patient, or a level outside ``(0, 1)``.
    """
    chosen = parse_regimens(regimens)
    weights = objective or RegimenObjective()
    if len(history) != 1:
        raise ConfigError(f"compare takes one patient's history, got {len(history)}")
    if not 0.0 < level < 1.0:
        raise ConfigError("level must be in (0, 1)")
    forecast = forecast_regimens(twin, history, chosen)
    final = TumourForecast(forecast.mean_log[0, :, -1:], forecast.std_log[0, :, -1:])
    chemo, radio = regimen_doses(chosen)
    origin = history.volume_cm3[0, -1]
    return rank_by_objective([r.name for r in chosen], final, origin, chemo, radio, weights, level)


def rank_by_objective(
    names: Sequence[str],
    final: TumourForecast,
    origin_cm3: Tensor,
    chemo_doses: Tensor,
    radio_gy: Tensor,
    weights: RegimenObjective,
    level: float,
) -> tuple[RankedRegimen, ...]:
    """Rank plans by ``weights`` on their final-day forecast ``final`` (``[P, 1]``).

    The objective's interval is the objective at the volume's central ``level`` interval.
    """
    expected = final.volume_cm3[:, 0].to(torch.float64)
    low = final.quantile_cm3((1.0 - level) / 2.0)[:, 0].to(torch.float64)
    high = final.quantile_cm3((1.0 + level) / 2.0)[:, 0].to(torch.float64)
    chemo, radio = chemo_doses.to(torch.float64), radio_gy.to(torch.float64)
    origin = origin_cm3.to(torch.float64)
    values = weights.value(expected, origin, chemo, radio)
    lows = weights.value(low, origin, chemo, radio)
    highs = weights.value(high, origin, chemo, radio)
    order = torch.argsort(values, stable=True).tolist()
    return tuple(
        RankedRegimen(
            rank=rank,
            name=names[i],
            objective=float(values[i]),
            objective_low=float(lows[i]),
            objective_high=float(highs[i]),
            final_volume_cm3=float(expected[i]),
            final_volume_low_cm3=float(low[i]),
            final_volume_high_cm3=float(high[i]),
            chemo_doses=int(chemo[i]),
            radio_gy=float(radio[i]),
        )
        for rank, i in enumerate(order, start=1)
    )
