"""Shared fixtures: the environment every test runs in, and small simulated cohorts."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

from flwr.supercore.task_identity import TaskIdentity

from fedtwin.cohorts import CohortSeries, names_in_group, simulate_cohort
from fedtwin.cohorts.population import AgeGroup
from fedtwin.twins import GlucoseTwinConfig, PatientBatch


@pytest.fixture(scope="session")
def adult_cohort() -> CohortSeries:
    """80 virtual adults (the 10 published subjects, 8 lives each), 1 day, seed 7."""
    names = [n for n in names_in_group(AgeGroup.ADULT) for _ in range(8)]
    return simulate_cohort(names, days=1.0, seed=7)


def _cohort_batch(
    cohort: CohortSeries, rows: Sequence[int], twin: GlucoseTwinConfig, steps: int | None = None
) -> PatientBatch:
    """Rows of a simulated cohort (optionally its first ``steps`` bins) as a patient batch."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    cut = slice(None, steps)
    return PatientBatch.from_arrays(
        [cohort.patient_names[i] for i in index.tolist()],
        cohort.cgm_mg_dl[index, cut],
        cohort.insulin_u[index, cut],
        cohort.carbs_g[index, cut],
        None,
        None,
        twin.history_steps,
        twin.horizon_steps,
    )


CohortBatch = Callable[..., PatientBatch]


@pytest.fixture(scope="session")
def cohort_batch() -> CohortBatch:
    """Builds a patient batch from rows of a simulated cohort (see ``_cohort_batch``)."""
    return _cohort_batch


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator (seed 0)."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def flower_task_identity() -> Iterator[None]:
    """The task identity Flower sets in a ServerApp/ClientApp process (messages need it).

    Tests that build Flower Messages outside a running app use it:
    ``pytestmark = pytest.mark.usefixtures("flower_task_identity")``.
    """
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
