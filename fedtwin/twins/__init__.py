"""Twin models: forecast a patient's course under a treatment plan, with uncertainty."""

from fedtwin.twins.baselines import LinearArForecaster, PersistenceForecaster
from fedtwin.twins.clarke import ClarkeZone, clarke_ab_fraction, clarke_zones, zone_fractions
from fedtwin.twins.evaluation import (
    EvaluationResult,
    Forecaster,
    GroupKind,
    GroupScores,
    HorizonScores,
    SiteWindows,
    evaluate_forecasters,
    evaluation_html,
    evaluation_table,
)
from fedtwin.twins.glucose import (
    GlucoseForecast,
    GlucoseTwin,
    GlucoseTwinConfig,
    gaussian_nll,
)
from fedtwin.twins.metrics import forecast_metrics
from fedtwin.twins.records import GlucoseRecord, PatientBatch, valid_anchors
from fedtwin.twins.windows import (
    ForecastWindows,
    all_windows,
    batch_windows,
    cut_windows,
    valid_anchor_range,
    windows_per_patient,
)

__all__ = [
    "ClarkeZone",
    "EvaluationResult",
    "ForecastWindows",
    "Forecaster",
    "GlucoseForecast",
    "GlucoseRecord",
    "GlucoseTwin",
    "GlucoseTwinConfig",
    "GroupKind",
    "GroupScores",
    "HorizonScores",
    "LinearArForecaster",
    "PatientBatch",
    "PersistenceForecaster",
    "SiteWindows",
    "all_windows",
    "batch_windows",
    "clarke_ab_fraction",
    "clarke_zones",
    "cut_windows",
    "evaluate_forecasters",
    "evaluation_html",
    "evaluation_table",
    "forecast_metrics",
    "gaussian_nll",
    "valid_anchor_range",
    "valid_anchors",
    "windows_per_patient",
    "zone_fractions",
]
