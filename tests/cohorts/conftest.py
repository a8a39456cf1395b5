"""Fixtures for the fedtwin.cohorts tests."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
import pytest
from cohorts_reference import ReferenceRunner, simglucose_gsub

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(scope="session")
def reference_gsub() -> ReferenceRunner:
    """Memoised simglucose reference runs keyed by (name, actions)."""
    cache: dict[tuple[str, bytes, bytes], npt.NDArray[np.float64]] = {}

    def run(
        name: str, cho_g: npt.NDArray[np.float64], insulin_u_per_min: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        key = (name, cho_g.tobytes(), insulin_u_per_min.tobytes())
        if key not in cache:
            cache[key] = simglucose_gsub(name, cho_g, insulin_u_per_min)
        return cache[key]

    return run
