"""Shared fixtures: the environment every test runs in, and small simulated cohorts."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

from fedtwin.cohorts import CohortSeries, names_in_group, simulate_cohort
from fedtwin.cohorts.population import AgeGroup


@pytest.fixture(scope="session")
def adult_cohort() -> CohortSeries:
    """80 virtual adults (the 10 published subjects, 8 lives each), 1 day, seed 7."""
    names = [n for n in names_in_group(AgeGroup.ADULT) for _ in range(8)]
    return simulate_cohort(names, days=1.0, seed=7)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator (seed 0)."""
    return torch.Generator().manual_seed(0)
