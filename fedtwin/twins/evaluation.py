"""Forecast quality of glucose forecasters on held-out patients, overall and per subgroup.

For any set of forecasters (the twin, persistence, the AR baseline, local-only and pooled
models…) and held-out windows of one or more sites, :func:`evaluate_forecasters` reports per
forecaster and per group — everyone, each site, each age group, each sex (the bias check) —

* RMSE and MAE at 30 and 60 min (and 120 min when the horizon reaches it), mg/dL;
* Clarke error grid A+B share at those horizons (:mod:`fedtwin.twins.clarke`), with the
  forecast as the prediction and the CGM reading as the reference;
* time-in-range error: per window, ``|TIR(forecast) − TIR(CGM)|`` over the whole horizon
  (share of steps in 70–180 mg/dL), averaged, in percentage points;
* coverage of the central 90 % interval (mean ± 1.645 σ) over every horizon step, in %.

Invariants: targets are CGM readings (what a site has; noisy, not the true glucose); a group
score is computed from that group's windows only, never re-weighted; a forecaster given per
site (a mapping ``site → forecaster``, e.g. local-only models or per-site AR fits) is scored on
its own site's windows only; nothing names a patient (groups are sites, age groups and sexes,
and no group is reported below ``min_patients``).
"""

from __future__ import annotations

import enum
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from fedtwin.twins.clarke import ClarkeZone, clarke_zones
from fedtwin.twins.glucose import GlucoseForecast
from fedtwin.twins.records import PatientBatch
from fedtwin.twins.windows import ForecastWindows, cut_windows

if TYPE_CHECKING:
    from rich.table import Table

REPORTED_HORIZONS_MIN = (30, 60, 120)
#: Two-sided 90 % central interval of a Gaussian: mean ± 1.6449 σ.
Z_90 = 1.6448536269514722
TIR_LOW_MG_DL, TIR_HIGH_MG_DL = 70.0, 180.0
UNKNOWN = "unknown"
TARGET = "CGM readings (noisy sensor glucose), mg/dL"


class Forecaster(Protocol):
    """What is evaluated: the twin's interface (``GlucoseTwin`` and the baselines have it)."""

    def forecast(self, history: Tensor, plan: Tensor) -> GlucoseForecast:
        """Gaussian forecast ``[N, H]`` (mg/dL) for ``history [N, 3, L]``, ``plan [N, 2, H]``."""
        ...


#: A forecaster for every site, or one per site (sites without one are not scored).
Candidate = Forecaster | Mapping[str, Forecaster]


class GroupKind(enum.StrEnum):
    """How windows are grouped for a score."""

    OVERALL = "overall"
    SITE = "site"
    AGE_GROUP = "age_group"
    SEX = "sex"


def age_group_label(age_years: float | None) -> str:
    """``child`` (< 13 y), ``adolescent`` (13–19 y) or ``adult`` (≥ 20 y), as the cohorts."""
    if age_years is None or not np.isfinite(age_years):
        return UNKNOWN
    if age_years < 13.0:
        return "child"
    return "adolescent" if age_years < 20.0 else "adult"


@dataclass(frozen=True, eq=False)
class SiteWindows:
    """One site's held-out evaluation windows and who they belong to (no identifiers).

    Attributes
    ----------
    site_id : str
        The site.
    windows : ForecastWindows
        ``[N, 3, L]`` windows of the site's held-out patients.
    patient_row : Tensor
        ``[N]`` row of each window's patient in ``age_groups``/``sexes``.
    age_groups, sexes : tuple[str, ...]
        Per patient row (``unknown`` where the record does not say).
    """

    site_id: str
    windows: ForecastWindows
    patient_row: Tensor
    age_groups: tuple[str, ...]
    sexes: tuple[str, ...]

    @classmethod
    def from_batch(
        cls,
        site_id: str,
        batch: PatientBatch,
        age_groups: Sequence[str],
        sexes: Sequence[str],
        stride: int = 3,
    ) -> SiteWindows:
        """Every valid window of ``batch`` whose anchor is a multiple of ``stride``."""
        if not len(age_groups) == len(sexes) == len(batch):
            raise ValueError("one age group and one sex per patient row")
        patients, anchors = torch.nonzero(batch.valid_anchor, as_tuple=True)
        keep = anchors % stride == 0
        windows = cut_windows(
            batch.cgm_mg_dl,
            batch.insulin_u,
            batch.carbs_g,
            patients[keep],
            anchors[keep],
            batch.history_steps,
            batch.horizon_steps,
        )
        return cls(site_id, windows, patients[keep], tuple(age_groups), tuple(sexes))


class HorizonScores(BaseModel):
    """Point-forecast accuracy at one horizon."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    horizon_min: int
    rmse_mg_dl: float
    mae_mg_dl: float
    clarke_ab_pct: float
    clarke_zones_pct: dict[str, float]


class GroupScores(BaseModel):
    """One forecaster on one group of windows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    forecaster: str
    kind: GroupKind
    group: str
    patients: int
    windows: int
    horizons: tuple[HorizonScores, ...]
    tir_error_pct: float
    coverage90_pct: float

    def at(self, horizon_min: int) -> HorizonScores:
        """The scores at ``horizon_min``.

        Raises
        ------
        KeyError
            If that horizon was not reported.
        """
        for scores in self.horizons:
            if scores.horizon_min == horizon_min:
                return scores
        raise KeyError(f"no scores at {horizon_min} min")


class EvaluationResult(BaseModel):
    """Every forecaster on every group: the evaluation report's data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = TARGET
    horizons_min: tuple[int, ...]
    forecasters: tuple[str, ...]
    min_patients: int
    groups: tuple[GroupScores, ...]

    def scores(
        self, forecaster: str, kind: GroupKind = GroupKind.OVERALL, group: str = "all"
    ) -> GroupScores:
        """The scores of one forecaster on one group.

        Raises
        ------
        KeyError
            If that forecaster was not scored on that group.
        """
        for row in self.groups:
            if (row.forecaster, row.kind, row.group) == (forecaster, kind, group):
                return row
        raise KeyError(f"no scores for {forecaster!r} on {kind.value} {group!r}")

    def bias(self) -> list[dict[str, Any]]:
        """Per forecaster and grouping: best and worst group by RMSE at the first horizon."""
        first = self.horizons_min[0]
        summary = []
        for forecaster in self.forecasters:
            for kind in (GroupKind.SITE, GroupKind.AGE_GROUP, GroupKind.SEX):
                rows = [r for r in self.groups if r.forecaster == forecaster and r.kind == kind]
                if len(rows) < 2:
                    continue
                ranked = sorted(rows, key=lambda r: r.at(first).rmse_mg_dl)
                best, worst = ranked[0].at(first), ranked[-1].at(first)
                summary.append(
                    {
                        "forecaster": forecaster,
                        "kind": kind.value,
                        "horizon_min": first,
                        "best_group": ranked[0].group,
                        "worst_group": ranked[-1].group,
                        "rmse_gap_mg_dl": worst.rmse_mg_dl - best.rmse_mg_dl,
                        "rmse_ratio_worst_best": worst.rmse_mg_dl / best.rmse_mg_dl,
                    }
                )
        return summary

    def document(self) -> dict[str, Any]:
        """The JSON document: every score plus the bias summary."""
        return {**self.model_dump(mode="json"), "bias": self.bias()}


@dataclass(frozen=True)
class _Scored:
    """Per-window quantities of one forecaster on one site (numpy, float64)."""

    squared: NDArray[np.float64]  # [N, R] at the reported horizons
    absolute: NDArray[np.float64]
    zones: NDArray[np.int8]  # [N, R]
    tir_error: NDArray[np.float64]  # [N]
    covered: NDArray[np.float64]  # [N], share of horizon steps inside the 90 % band
    patient: NDArray[np.int64]  # [N] global patient key
    labels: dict[GroupKind, NDArray[np.str_]]


def reported_horizons(horizon_steps: int) -> tuple[int, ...]:
    """30/60/120 min where the horizon reaches them (else the horizon itself)."""
    reached = tuple(h for h in REPORTED_HORIZONS_MIN if h <= 5 * horizon_steps)
    return reached or (5 * horizon_steps,)


def _predict(forecaster: Forecaster, windows: ForecastWindows, batch_size: int) -> GlucoseForecast:
    if isinstance(forecaster, torch.nn.Module):
        forecaster.eval()
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            part = slice(start, start + batch_size)
            forecast = forecaster.forecast(windows.history[part], windows.plan[part])
            means.append(forecast.mean_mg_dl)
            stds.append(forecast.std_mg_dl)
    return GlucoseForecast(mean_mg_dl=torch.cat(means), std_mg_dl=torch.cat(stds))


def _in_range(glucose: NDArray[np.float64]) -> NDArray[np.float64]:
    inside = (glucose >= TIR_LOW_MG_DL) & (glucose <= TIR_HIGH_MG_DL)
    share: NDArray[np.float64] = inside.mean(axis=1, dtype=np.float64)
    return share


def _score_site(
    forecaster: Forecaster,
    site: SiteWindows,
    steps: Sequence[int],
    patient_offset: int,
    batch_size: int,
) -> _Scored:
    forecast = _predict(forecaster, site.windows, batch_size)
    mean = forecast.mean_mg_dl.double().numpy()
    std = forecast.std_mg_dl.double().numpy()
    target = site.windows.target_mg_dl.double().numpy()
    if mean.shape != target.shape:
        raise ValueError(f"forecast shape {mean.shape} does not match the targets {target.shape}")
    error = mean - target
    index = [step - 1 for step in steps]
    rows = site.patient_row.numpy()
    return _Scored(
        squared=error[:, index] ** 2,
        absolute=np.abs(error[:, index]),
        zones=clarke_zones(target[:, index], np.clip(mean[:, index], 0.0, None)),
        tir_error=np.abs(_in_range(mean) - _in_range(target)),
        covered=(np.abs(error) <= Z_90 * std).mean(axis=1),
        patient=rows + patient_offset,
        labels={
            GroupKind.OVERALL: np.full(len(rows), "all"),
            GroupKind.SITE: np.full(len(rows), site.site_id),
            GroupKind.AGE_GROUP: np.asarray(site.age_groups, dtype=np.str_)[rows],
            GroupKind.SEX: np.asarray(site.sexes, dtype=np.str_)[rows],
        },
    )


def _concat(parts: Sequence[_Scored]) -> _Scored:
    return _Scored(
        squared=np.concatenate([p.squared for p in parts]),
        absolute=np.concatenate([p.absolute for p in parts]),
        zones=np.concatenate([p.zones for p in parts]),
        tir_error=np.concatenate([p.tir_error for p in parts]),
        covered=np.concatenate([p.covered for p in parts]),
        patient=np.concatenate([p.patient for p in parts]),
        labels={k: np.concatenate([p.labels[k] for p in parts]) for k in GroupKind},
    )


def _group_scores(
    name: str, kind: GroupKind, group: str, scored: _Scored, horizons: Sequence[int]
) -> GroupScores:
    mask = scored.labels[kind] == group
    zones = scored.zones[mask]
    per_horizon = []
    for column, horizon in enumerate(horizons):
        counts = np.bincount(zones[:, column], minlength=len(ClarkeZone)) / len(zones)
        per_horizon.append(
            HorizonScores(
                horizon_min=horizon,
                rmse_mg_dl=float(np.sqrt(scored.squared[mask, column].mean())),
                mae_mg_dl=float(scored.absolute[mask, column].mean()),
                clarke_ab_pct=100.0 * float(counts[ClarkeZone.A] + counts[ClarkeZone.B]),
                clarke_zones_pct={z.name: 100.0 * float(counts[z]) for z in ClarkeZone},
            )
        )
    return GroupScores(
        forecaster=name,
        kind=kind,
        group=group,
        patients=len(np.unique(scored.patient[mask])),
        windows=int(mask.sum()),
        horizons=tuple(per_horizon),
        tir_error_pct=100.0 * float(scored.tir_error[mask].mean()),
        coverage90_pct=100.0 * float(scored.covered[mask].mean()),
    )


def evaluate_forecasters(
    candidates: Mapping[str, Candidate],
    sites: Sequence[SiteWindows],
    *,
    min_patients: int = 3,
    batch_size: int = 4096,
) -> EvaluationResult:
    """Score every candidate on every site's held-out windows, overall and per subgroup.

    Parameters
    ----------
    candidates : Mapping[str, Forecaster | Mapping[str, Forecaster]]
        Name → one forecaster for all sites, or a mapping site id → that site's forecaster.
    sites : Sequence[SiteWindows]
        Held-out windows per site (same horizon everywhere).
    min_patients : int, default 3
        Groups with fewer patients are left out of the report (nobody is singled out).
    batch_size : int, default 4096
        Windows per forward pass.

    Raises
    ------
    ValueError
        If there are no windows, the sites' horizons differ, or a forecaster's output does not
        match the windows.
    """
    horizons_steps = {int(s.windows.target_mg_dl.shape[1]) for s in sites if len(s.windows)}
    if not horizons_steps:
        raise ValueError("no evaluation windows")
    if len(horizons_steps) > 1:
        raise ValueError(f"sites have different horizons: {sorted(horizons_steps)} steps")
    horizons = reported_horizons(horizons_steps.pop())
    steps = [h // 5 for h in horizons]
    offsets = np.cumsum([0] + [len(s.age_groups) for s in sites]).tolist()
    groups: list[GroupScores] = []
    for name, candidate in candidates.items():
        parts = []
        for site, offset in zip(sites, offsets, strict=False):
            forecaster = (
                candidate.get(site.site_id) if isinstance(candidate, Mapping) else candidate
            )
            if forecaster is None or len(site.windows) == 0:
                continue
            parts.append(_score_site(forecaster, site, steps, offset, batch_size))
        if not parts:
            continue
        scored = _concat(parts)
        for kind in GroupKind:
            for group in sorted(set(scored.labels[kind].tolist())):
                row = _group_scores(name, kind, group, scored, horizons)
                if row.patients >= min_patients:
                    groups.append(row)
    return EvaluationResult(
        horizons_min=horizons,
        forecasters=tuple(candidates),
        min_patients=min_patients,
        groups=tuple(groups),
    )


def _columns(result: EvaluationResult) -> list[str]:
    columns = ["forecaster", "group", "patients", "windows"]
    for horizon in result.horizons_min:
        columns += [f"RMSE {horizon}", f"MAE {horizon}", f"A+B {horizon} %"]
    return [*columns, "TIR err pp", "cov90 %"]


def _cells(row: GroupScores) -> list[str]:
    group = "all" if row.kind is GroupKind.OVERALL else f"{row.kind.value}={row.group}"
    cells = [row.forecaster, group, str(row.patients), str(row.windows)]
    for scores in row.horizons:
        cells += [f"{scores.rmse_mg_dl:.2f}", f"{scores.mae_mg_dl:.2f}"]
        cells.append(f"{scores.clarke_ab_pct:.1f}")
    return [*cells, f"{row.tir_error_pct:.1f}", f"{row.coverage90_pct:.1f}"]


def _ordered(result: EvaluationResult) -> list[GroupScores]:
    kinds = list(GroupKind)
    names = list(result.forecasters)
    return sorted(
        result.groups, key=lambda r: (kinds.index(r.kind), r.group, names.index(r.forecaster))
    )


def evaluation_table(result: EvaluationResult, title: str = "Forecast quality") -> Table:
    """A rich table: one row per forecaster and group (mg/dL; pp = percentage points)."""
    from rich.table import Table

    table = Table(title=f"{title} — target: {result.target}")
    for column in _columns(result):
        table.add_column(column, justify="left" if column in ("forecaster", "group") else "right")
    rows = _ordered(result)
    for row, following in zip(rows, [*rows[1:], None], strict=True):
        # A rule under the last forecaster of each group keeps the groups apart.
        last_of_group = following is None or (following.kind, following.group) != (
            row.kind,
            row.group,
        )
        table.add_row(*_cells(row), end_section=last_of_group)
    return table


def evaluation_html(result: EvaluationResult, title: str = "Forecast quality") -> str:
    """An HTML fragment (one ``<section>``, escaped, no scripts) for the run report."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _columns(result))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row)) + "</tr>"
        for row in _ordered(result)
    )
    bias = "".join(
        f"<li>{html.escape(b['forecaster'])}, by {html.escape(b['kind'])}: worst "
        f"{html.escape(b['worst_group'])}, best {html.escape(b['best_group'])}, RMSE gap "
        f"{b['rmse_gap_mg_dl']:.2f} mg/dL at {b['horizon_min']} min</li>"
        for b in result.bias()
    )
    return (
        f'<section class="fedtwin-twin-evaluation"><h2>{html.escape(title)}</h2>'
        f"<p>Held-out patients; target: {html.escape(result.target)}. RMSE/MAE in mg/dL, "
        "A+B: Clarke error grid zones A and B, TIR err: |predicted − observed time in range "
        "70–180 mg/dL| over the horizon in percentage points, cov90: share of readings inside "
        f"the 90 % interval. Groups below {result.min_patients} patients are not shown.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<h3>Bias check</h3><ul>{bias}</ul></section>"
    )
