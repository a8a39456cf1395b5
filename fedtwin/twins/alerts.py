"""Hypoglycaemia alerts from the twin's forecast, and how well they work.

Alarm rule: at a forecast origin, alarm when the predicted probability of glucose below
``threshold_mg_dl`` at some step within ``within_min`` reaches ``probability``, where the
probability is ``max_k Φ((threshold - mean_k) / std_k)`` over the steps ``k`` up to
``within_min`` (the largest marginal probability; a lower bound on the probability of *any*
step below the threshold, so the rule never overstates the risk it reports).

Evaluation is event-based (:func:`alert_performance`), on a patient's true future CGM:

* a **hypoglycaemic event** is a run of at least ``min_event_steps`` consecutive CGM readings
  below the threshold (3 readings = 15 min, the level-1 event definition of Battelino et al.,
  Lancet Diabetes Endocrinol 2023); its *onset* is its first reading;
* an event is **detected** when an alarm was raised at an origin in the ``within_min`` minutes
  before its onset (origin ``t`` with ``onset - within_min <= t < onset``); events whose whole
  lead window holds no evaluated origin are not counted;
* an **alarm episode** is a run of consecutive alarming origins; it is **false** when no CGM
  reading below the threshold occurs from its first origin to ``within_min`` after its last;
* origins whose own reading is already below the threshold are neither alarms nor misses (the
  patient is in hypoglycaemia; that is treatment, not prediction).

``sensitivity = detected / events``; ``false_alarm_rate = false episodes / episodes`` (the
share of alarms a patient would find useless); ``false_alarms_per_day`` per evaluated day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

STEP_MIN = 5


class HypoAlertConfig(BaseModel):
    """When to alarm, and what counts as an event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold_mg_dl: float = Field(70.0, gt=0.0, le=200.0)
    within_min: int = Field(30, ge=5, le=120, multiple_of=5)
    probability: float = Field(0.3, gt=0.0, lt=1.0)
    min_event_steps: int = Field(3, ge=1, le=24)

    @property
    def within_steps(self) -> int:
        """Forecast steps the alarm looks at."""
        return self.within_min // STEP_MIN


def hypo_probability(mean_mg_dl: Tensor, std_mg_dl: Tensor, config: HypoAlertConfig) -> Tensor:
    """``max_k P(G_k < threshold)`` over the first ``within_steps`` steps, ``[N]``."""
    steps = config.within_steps
    if int(mean_mg_dl.shape[-1]) < steps:
        raise ValueError(f"forecasts must reach {config.within_min} min")
    z = (config.threshold_mg_dl - mean_mg_dl[..., :steps]) / std_mg_dl[..., :steps]
    return (0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))).amax(dim=-1)


def hypo_alarms(mean_mg_dl: Tensor, std_mg_dl: Tensor, config: HypoAlertConfig) -> Tensor:
    """Boolean ``[N]``: alarm at each origin."""
    return hypo_probability(mean_mg_dl, std_mg_dl, config) >= config.probability


@dataclass(frozen=True)
class AlertPerformance:
    """Event-based counts (add them across patients with ``+``)."""

    events: int = 0
    detected: int = 0
    episodes: int = 0
    false_episodes: int = 0
    evaluated_origins: int = 0

    def __add__(self, other: AlertPerformance) -> AlertPerformance:
        return AlertPerformance(
            events=self.events + other.events,
            detected=self.detected + other.detected,
            episodes=self.episodes + other.episodes,
            false_episodes=self.false_episodes + other.false_episodes,
            evaluated_origins=self.evaluated_origins + other.evaluated_origins,
        )

    @property
    def sensitivity(self) -> float:
        """Detected events / events (NaN without events)."""
        return self.detected / self.events if self.events else math.nan

    @property
    def false_alarm_rate(self) -> float:
        """False alarm episodes / alarm episodes (NaN without alarms)."""
        return self.false_episodes / self.episodes if self.episodes else math.nan

    @property
    def false_alarms_per_day(self) -> float:
        """False alarm episodes per evaluated day of origins."""
        days = self.evaluated_origins * STEP_MIN / 1440.0
        return self.false_episodes / days if days else math.nan


def _runs(flags: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(first, last)`` of each run of True values."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    changes = np.diff(padded)
    starts = np.flatnonzero(changes == 1)
    stops = np.flatnonzero(changes == -1) - 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def alert_performance(
    cgm_mg_dl: NDArray[np.float64],
    alarm: NDArray[np.bool_],
    evaluated: NDArray[np.bool_],
    config: HypoAlertConfig,
) -> AlertPerformance:
    """Score one patient's alarms against the true CGM (module docstring rules).

    Parameters
    ----------
    cgm_mg_dl : ndarray
        ``[T]`` readings on the 5-minute grid (``NaN`` where none).
    alarm : ndarray
        ``[T]`` bool: an alarm at the origin of each bin.
    evaluated : ndarray
        ``[T]`` bool: origins where a forecast was made.
    config : HypoAlertConfig
        Threshold, look-ahead and event length.
    """
    cgm = np.asarray(cgm_mg_dl, dtype=np.float64)
    below = np.nan_to_num(cgm, nan=np.inf) < config.threshold_mg_dl
    counted = np.asarray(evaluated, dtype=bool) & ~below & ~np.isnan(cgm)
    alarms = np.asarray(alarm, dtype=bool) & counted
    lead = config.within_steps
    events = detected = 0
    for first, last in _runs(below):
        if last - first + 1 < config.min_event_steps:
            continue
        window = slice(max(0, first - lead), first)
        if not counted[window].any():
            continue
        events += 1
        detected += int(alarms[window].any())
    episodes = false_episodes = 0
    for first, last in _runs(alarms):
        episodes += 1
        false_episodes += int(not below[first : last + lead + 1].any())
    return AlertPerformance(
        events=events,
        detected=detected,
        episodes=episodes,
        false_episodes=false_episodes,
        evaluated_origins=int(counted.sum()),
    )
