"""Twin models: forecast a patient's course under a treatment plan, with uncertainty."""

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
    "ForecastWindows",
    "GlucoseForecast",
    "GlucoseRecord",
    "GlucoseTwin",
    "GlucoseTwinConfig",
    "PatientBatch",
    "all_windows",
    "batch_windows",
    "cut_windows",
    "forecast_metrics",
    "gaussian_nll",
    "valid_anchor_range",
    "valid_anchors",
    "windows_per_patient",
]
