"""A finished run's twin against persistence and AR on every site's held-out patients.

Evaluates the final model of a run directory laid out as ``fedtwin demo`` writes it
(``model.safetensors``, ``model_card.json``, ``run_config.json``, ``sites/sites.json`` naming
each site's FHIR export and state) on every site's *held-out* patients (the keyed split of
:mod:`fedtwin.federation.sitedata`), next to persistence and a linear AR baseline fitted on
that site's training patients (:mod:`fedtwin.twins.baselines`). The twin is loaded through
:func:`fedtwin.twins.runfile.load_twin_run` (hash-checked against its card) and its spread is
rescaled by the card's calibration when the run fitted one. ``fedtwin twin evaluate`` and the
demo's report call :func:`evaluate_run`.

Only the standard library is imported at module level (torch, Flower and the FHIR models are
imported inside the functions): a folder that is not a run is refused at once.

Steps, each failing closed: (1) the folder is a run directory of a glucose twin, else a
ConfigError naming it; (2) each site's export is read through the FHIR ingestion path; (3)
consent is applied at the time of the run's last round as the site recorded it, to held-out
and training patients alike, with the site's data window; (4) scores are aggregates over groups
of at least every site's minimum of held-out patients (:mod:`fedtwin.twins.evaluation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from fedtwin.federation.config import RunConfig, SiteConfig
    from fedtwin.twins.calibration import CalibrationScales
    from fedtwin.twins.evaluation import Candidate, EvaluationResult, Forecaster, SiteWindows
    from fedtwin.twins.glucose import GlucoseForecast, GlucoseTwin

GLUCOSE_TWIN_KIND = "glucose-twin"
ROUND_TIMES_FILE = "round-times.json"


@dataclass(frozen=True, eq=False)
class CalibratedTwin:
    """The run's twin with the model card's std calibration applied (if the run fitted one)."""

    model: GlucoseTwin
    calibration: CalibrationScales | None

    def forecast(self, history: Tensor, plan: Tensor) -> GlucoseForecast:
        """The twin's forecast, its spread rescaled per horizon step by the calibration."""
        from fedtwin.twins.calibration import apply_calibration

        forecast = self.model.forecast(history, plan)
        if self.calibration is None:
            return forecast
        return apply_calibration(forecast, self.calibration)


def _run_model(run_dir: Path) -> tuple[RunConfig, CalibratedTwin]:
    """(1): the run's config and final glucose twin, or one ConfigError line."""
    from fedtwin.errors import ConfigError

    card_path = run_dir / "model_card.json"
    if not run_dir.is_dir() or not card_path.is_file():
        raise ConfigError(f"{run_dir}: not a fedtwin run directory (no model_card.json)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{card_path}: unreadable model card ({error})") from error
    kind = card.get("model_kind") if isinstance(card, dict) else None
    if kind != GLUCOSE_TWIN_KIND:
        raise ConfigError(
            f"{card_path}: model_kind {kind!r} is not {GLUCOSE_TWIN_KIND!r}; "
            "'twin evaluate' evaluates glucose twins"
        )
    config_path = run_dir / "run_config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: no run_config.json (not a federated run directory)")
    # Imported only now: a folder that is not a run is refused without loading torch.
    from fedtwin.federation import RunConfig
    from fedtwin.twins.runfile import load_twin_run

    try:
        run = RunConfig.from_json(config_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{config_path}: unreadable ({error.strerror})") from error
    loaded = load_twin_run(run_dir)
    if loaded.config != run.twin:
        raise ConfigError(f"{card_path}: architecture differs from {config_path}'s twin")
    return run, CalibratedTwin(loaded.model, loaded.calibration)


def _last_round_at(site: SiteConfig, run_id: str) -> datetime:
    """When the site saw the run's last round (consent is evaluated then)."""
    from fedtwin.errors import ConfigError

    path = site.state_dir / ROUND_TIMES_FILE
    try:
        times = json.loads(path.read_text(encoding="utf-8")).get(run_id, {})
        moments = [datetime.fromisoformat(t) for t in times.values()]
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read the site's round times ({error})") from error
    if not moments:
        raise ConfigError(f"site {site.site_id}: no round of run {run_id} recorded in {path}")
    return max(moments)


def _site_windows(site: SiteConfig, run: RunConfig) -> tuple[SiteWindows, dict[str, Forecaster]]:
    """(2)–(3): one site's held-out windows and its baselines fitted on its training part."""
    from fedtwin.consent import SiteGuard, load_consortium_policy, load_site_policy
    from fedtwin.errors import ConsentDenied
    from fedtwin.federation.sitedata import load_site_data, patient_batch
    from fedtwin.twins import batch_windows
    from fedtwin.twins.baselines import LinearArForecaster, PersistenceForecaster
    from fedtwin.twins.evaluation import SiteWindows, age_group_label
    from fedtwin.twins.training import usable_rows

    data = load_site_data(site)
    at = _last_round_at(site, run.run_id)
    site_policy = load_site_policy(site.site_policy)
    guard = SiteGuard(site_policy, load_consortium_policy(site.consortium_policy))
    if not guard.check_run(run.run_request(), at=at).allowed:
        raise ConsentDenied(f"site {site.site_id}: run {run.run_id} refused by the site policy")
    window = site_policy.data_window.interval(at)
    parts = {}
    for name, records in (("heldout", data.heldout), ("train", data.train)):
        snapshot = guard.eligible_patients(
            data.consents, [p.patient_id for p in records], run.run_request(), at=at
        )
        permitted = set(snapshot.permitted_ids)
        chosen = [p for p in records if p.patient_id in permitted]
        batch = patient_batch(
            chosen,
            run.twin.history_steps,
            run.twin.horizon_steps,
            start=window.start,
            end=window.end,
        )
        rows = usable_rows(batch)
        parts[name] = (batch.select(rows), [chosen[row] for row in rows])
    heldout, heldout_series = parts["heldout"]
    train, _ = parts["train"]
    if len(train) == 0:
        raise ConsentDenied(f"site {site.site_id}: no permitted training patient for the baselines")
    windows = SiteWindows.from_batch(
        site.site_id,
        heldout,
        [age_group_label(p.age_years) for p in heldout_series],
        [p.sex or "unknown" for p in heldout_series],
        stride=run.eval_stride_steps,
    )
    training = batch_windows(train, stride=run.eval_stride_steps)
    baselines: dict[str, Forecaster] = {
        "persistence": PersistenceForecaster.fit(training),
        "linear AR": LinearArForecaster.fit(training),
    }
    return windows, baselines


def evaluate_run(run_dir: Path) -> EvaluationResult:
    """The evaluation report of a demo-layout run directory (module docstring, steps 1–4).

    Raises
    ------
    ConfigError
        Not a run directory, another twin kind, no sites manifest, no recorded round.
    IngestError
        A site's export is invalid.
    ConsentDenied
        A site's policy refuses the run, or no patient may be used.
    """
    run, model = _run_model(run_dir)  # first: a folder that is not a run costs no import
    from fedtwin.errors import ConfigError
    from fedtwin.federation import load_sites_manifest
    from fedtwin.twins.evaluation import evaluate_forecasters

    manifest = run_dir / "sites" / "sites.json"
    if not manifest.is_file():
        raise ConfigError(f"{run_dir}: no sites/sites.json (the sites' exports are needed)")
    sites = load_sites_manifest(manifest)
    site_windows, per_site = [], {}
    for site in sites:
        windows, baselines = _site_windows(site, run)
        site_windows.append(windows)
        per_site[site.site_id] = baselines
    candidates: dict[str, Candidate] = {
        "twin": model,
        **{
            name: {site_id: fitted[name] for site_id, fitted in per_site.items()}
            for name in ("linear AR", "persistence")
        },
    }
    return evaluate_forecasters(
        candidates,
        site_windows,
        min_patients=max(site.min_heldout_patients for site in sites),
    )
