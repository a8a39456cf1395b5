"""Twin models: forecast a patient's course under a treatment plan, with uncertainty."""

from fedtwin.twins.glucose import (
    GlucoseForecast,
    GlucoseTwin,
    GlucoseTwinConfig,
    gaussian_nll,
)
from fedtwin.twins.metrics import forecast_metrics
from fedtwin.twins.windows import ForecastWindows, all_windows, cut_windows, valid_anchor_range

__all__ = [
    "ForecastWindows",
    "GlucoseForecast",
    "GlucoseTwin",
    "GlucoseTwinConfig",
    "all_windows",
    "cut_windows",
    "forecast_metrics",
    "gaussian_nll",
    "valid_anchor_range",
]
