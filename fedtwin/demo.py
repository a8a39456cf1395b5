"""The embedded default: three simulated hospitals train a glucose twin together, with DP.

``fedtwin demo`` plays every role on one machine: it simulates each site's virtual patients
(batched UVA/Padova, :mod:`fedtwin.cohorts`), keeps each site's records in that site's own
folder, and federates with Flower's simulation engine (the same ServerApp and ClientApp that a
deployment runs). Each patient is one record and one privacy unit; each site holds out a fixed
share of its patients for evaluation and never trains on them.

The run directory is built under a hidden ``.<run-id>.partial`` name and renamed to
``<run-id>`` only when complete, so a failed or interrupted demo leaves no partial run behind.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedtwin.cohorts import AgeGroup, CohortSeries, names_in_group, simulate_cohort
from fedtwin.errors import FederationError
from fedtwin.federation import (
    CoordinatorOutcome,
    RoundCollector,
    RunConfig,
    SiteConfig,
    SiteId,
    make_client_app,
    make_server_app,
    simulation_sites,
    write_sites_manifest,
)
from fedtwin.federation.outputs import write_json
from fedtwin.privacy import DpSgdConfig

SITE_GROUPS = (
    ("paediatric", AgeGroup.CHILD),
    ("adolescent", AgeGroup.ADOLESCENT),
    ("adult", AgeGroup.ADULT),
)


class DemoConfig(BaseModel):
    """Every knob of ``fedtwin demo`` (the CLI flags map one to one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounds: int = Field(5, ge=1, le=100)
    sites: int = Field(3, ge=1, le=12)
    patients_per_site: int = Field(1000, ge=20, le=5000)
    days: float = Field(1.0, ge=0.5, le=30)
    epsilon_cap: float = Field(8.0, gt=0, le=100)
    delta: float = Field(1e-5, gt=0, lt=1)
    heldout_fraction: float = Field(0.2, gt=0, lt=0.9)
    local_steps: int = Field(30, ge=1, le=1000)
    batch_patients: int = Field(256, ge=1, le=5000)
    learning_rate: float = Field(1e-2, gt=0, le=1)
    seed: int = Field(0, ge=0)
    out: Path = Path("runs")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs and what the coordinator saw."""

    run_dir: Path
    collector: RoundCollector
    version_hash: str
    sites: tuple[SiteConfig, ...]


def site_ids(count: int) -> list[SiteId]:
    """``site-paediatric``, ``site-adolescent``, ``site-adult``, then numbered repeats."""
    ids = []
    for index in range(count):
        label, _ = SITE_GROUPS[index % len(SITE_GROUPS)]
        suffix = "" if index < len(SITE_GROUPS) else f"-{index // len(SITE_GROUPS) + 1}"
        ids.append(SiteId(f"site-{label}{suffix}"))
    return ids


def _subset(series: CohortSeries, rows: torch.Tensor) -> CohortSeries:
    return CohortSeries(
        patient_names=tuple(series.patient_names[i] for i in rows.tolist()),
        cgm_mg_dl=series.cgm_mg_dl[rows],
        bg_true_mg_dl=series.bg_true_mg_dl[rows],
        insulin_u=series.insulin_u[rows],
        carbs_g=series.carbs_g[rows],
        step_min=series.step_min,
        start_minute_of_day=series.start_minute_of_day,
    )


def generate_sites(
    config: DemoConfig, root: Path, progress: Callable[[str, float], None] | None = None
) -> list[SiteConfig]:
    """Simulate every site's patients into ``root/<site-id>/data`` and return site configs.

    Site ``k`` draws its patients from one age group of the published virtual population
    (non-IID across sites); patient ``i`` uses subject ``i mod 10`` of that group with its own
    meals, behaviour and sensor noise. Seeds: ``config.seed * 1000 + k``.
    """
    sites = []
    for index, site_id in enumerate(site_ids(config.sites)):
        _, group = SITE_GROUPS[index % len(SITE_GROUPS)]
        subjects = names_in_group(group)
        names = [subjects[i % len(subjects)] for i in range(config.patients_per_site)]
        seed = config.seed * 1000 + index

        def report(fraction: float, site_id: str = site_id) -> None:
            if progress is not None:
                progress(site_id, fraction)

        series = simulate_cohort(names, config.days, seed, progress=report)
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
        heldout = max(3, round(config.heldout_fraction * len(names)))
        data_dir = (root / site_id / "data").resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        _subset(series, order[heldout:]).save(data_dir / "train.safetensors")
        _subset(series, order[:heldout]).save(data_dir / "heldout.safetensors")
        sites.append(
            SiteConfig(
                site_id=site_id,
                data_dir=data_dir,
                state_dir=(root / site_id / "state").resolve(),
                epsilon_cap=config.epsilon_cap,
                delta=config.delta,
                seed=seed,
            )
        )
    return sites


def run_config_for(config: DemoConfig) -> RunConfig:
    """The consortium's run config the demo coordinator sends."""
    return RunConfig(
        study_id="fedtwin-demo",
        num_rounds=config.rounds,
        min_sites=config.sites,
        delta=config.delta,
        seed=config.seed,
        dp=DpSgdConfig(
            local_steps=config.local_steps,
            expected_batch_patients=config.batch_patients,
            learning_rate=config.learning_rate,
        ),
    )


def new_run_id(seed: int, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str:
    """``demo-<UTC time>-s<seed>``: sortable and unique per second and seed."""
    return f"demo-{clock().strftime('%Y%m%dT%H%M%SZ')}-s{seed}"


def run_demo(
    config: DemoConfig,
    on_site_simulated: Callable[[str, float], None] | None = None,
    on_round_evaluated: Callable[[int, RoundCollector], None] | None = None,
    run_id: str | None = None,
) -> DemoResult:
    """Simulate the sites, federate, and write ``<out>/<run-id>/`` (see module docstring)."""
    from flwr.simulation import run_simulation

    run_id = run_id or new_run_id(config.seed)
    final_dir = config.out / run_id
    if final_dir.exists():
        raise FederationError(f"{final_dir} already exists")
    partial_dir = config.out / f".{run_id}.partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    try:
        partial_dir.mkdir(parents=True)
        sites = generate_sites(config, partial_dir / "sites", on_site_simulated)
        write_sites_manifest(partial_dir / "sites", sites)
        run = run_config_for(config)
        write_json(partial_dir / "run_config.json", run.model_dump(mode="json"))
        outcome = CoordinatorOutcome()
        server_app = make_server_app(
            run,
            out_dir=partial_dir.resolve(),
            data_description=(
                f"synthetic UVA/Padova cohort: {config.sites} sites x {config.patients_per_site}"
                f" patients x {config.days} days, seed {config.seed}"
            ),
            on_round_evaluated=on_round_evaluated,
            outcome=outcome,
        )
        client_app = make_client_app(simulation_sites(sites))
        # run_simulation is deprecated upstream (flwr run is the CLI path); the API is what an
        # in-process demo needs, so its deprecation notice is not shown to users.
        logging.getLogger("flwr").setLevel(logging.ERROR)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(sites),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"include_dashboard": False, "log_to_driver": False},
            },
        )
        if outcome.version_hash is None:
            raise FederationError("the coordinator did not finish the run")
        partial_dir.rename(final_dir)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    moved_sites = tuple(
        site.model_copy(
            update={
                "data_dir": final_dir.resolve() / site.data_dir.relative_to(partial_dir.resolve()),
                "state_dir": final_dir.resolve()
                / site.state_dir.relative_to(partial_dir.resolve()),
            }
        )
        for site in sites
    )
    return DemoResult(final_dir, outcome.collector, outcome.version_hash, moved_sites)
