"""Process environment that every fedtwin entry point enforces before Flower is imported.

Hospitals must not phone home and have no internet: Flower's telemetry and update check are
switched off and its runtime dependency installation (``uv sync`` per run) is disabled.
``setdefault`` is not used for telemetry: an operator cannot switch it back on by accident.
"""

import os

_FORCED = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def quiet_flower_environment() -> None:
    """Force telemetry off and runtime installs off in this process and its children."""
    for key, value in _FORCED.items():
        os.environ[key] = value
