"""The embedded default: three simulated hospitals train a glucose twin together, with DP.

``fedtwin demo`` plays every role on one machine. The consortium writes its policy and audit
key; each site gets virtual patients (:mod:`fedtwin.cohorts`) as a Bulk FHIR export with
realistic consents, its own site policy, its keys and an empty state folder; then the same
ServerApp and ClientApp that a deployment runs federate with Flower's simulation engine. Sites
read their data only through the FHIR ingestion path, filter patients by consent at each
round's time (a simulated weekly study calendar, so withdrawals take effect mid-run), train
with patient-level DP, and every party keeps a signed audit log; afterwards the logs are
verified and an HTML report is written for auditors.

The run directory is built under a hidden ``.<run-id>.partial`` name and renamed to
``<run-id>`` only when complete, so a failed or interrupted demo leaves no partial run behind.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedtwin.audit import (
    AuditLayout,
    AuditSigner,
    RunAudit,
    write_report,
    write_verifier_key,
)
from fedtwin.cohorts import AgeGroup
from fedtwin.cohorts.site import SiteSpec
from fedtwin.consent import (
    ConsortiumPolicy,
    DataWindow,
    Regime,
    SitePolicy,
    TwinKind,
    policy_toml,
    synthetic_consents,
)
from fedtwin.demo_sites import SiteJob, build_sites
from fedtwin.errors import FederationError
from fedtwin.federation import (
    CoordinatorOutcome,
    CoordinatorSetup,
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
from fedtwin.federation.sitedata import ingest_options
from fedtwin.fhir import load_or_create_site_secret
from fedtwin.privacy import DpSgdConfig

SITE_KINDS: tuple[tuple[str, AgeGroup, Regime], ...] = (
    ("paediatric", AgeGroup.CHILD, Regime.OPT_IN),
    ("adolescent", AgeGroup.ADOLESCENT, Regime.OPT_IN),
    ("adult", AgeGroup.ADULT, Regime.OPT_OUT),
)
CONSORTIUM_ID = "fedtwin-consortium"
CONSORTIUM_ACTOR = "Organization/fedtwin-consortium"
STUDY_ID = "fedtwin-demo"
#: First day of simulated data; rounds follow weekly after the data ends.
DATA_START = date(2026, 1, 5)
ROUND_SPACING = timedelta(days=7)


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
    min_eligible_patients: int = Field(10, ge=1, le=10_000)
    data_start: date = Field(DATA_START, description="first day of the simulated records")
    seed: int = Field(0, ge=0)
    out: Path = Path("runs")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, what the coordinator saw, and the audit verdict."""

    run_dir: Path
    collector: RoundCollector
    version_hash: str
    sites: tuple[SiteConfig, ...]
    audit: RunAudit


def site_ids(count: int) -> list[SiteId]:
    """``site-paediatric``, ``site-adolescent``, ``site-adult``, then numbered repeats."""
    ids = []
    for index in range(count):
        label, _, _ = SITE_KINDS[index % len(SITE_KINDS)]
        suffix = "" if index < len(SITE_KINDS) else f"-{index // len(SITE_KINDS) + 1}"
        ids.append(SiteId(f"site-{label}{suffix}"))
    return ids


@dataclass(frozen=True)
class StudyCalendar:
    """The simulated study's calendar: round ``r`` happens ``r`` weeks after the data ends."""

    data_end: datetime
    spacing: timedelta = ROUND_SPACING

    def round_at(self, run: RunConfig, server_round: int) -> datetime:
        """When round ``server_round`` happens (the final cosigning: after the last round)."""
        return self.data_end + self.spacing * (server_round or run.num_rounds + 1)

    def study_end(self, rounds: int) -> datetime:
        """The last round's time."""
        return self.data_end + self.spacing * rounds


def calendar_for(config: DemoConfig) -> StudyCalendar:
    """The study calendar of a demo."""
    start = datetime.combine(config.data_start, datetime.min.time(), tzinfo=UTC)
    return StudyCalendar(data_end=start + timedelta(days=config.days))


def consortium_policy_for(config: DemoConfig) -> ConsortiumPolicy:
    """The demo study's consortium policy."""
    return ConsortiumPolicy(
        version="demo-1",
        consortium_id=CONSORTIUM_ID,
        study_id=STUDY_ID,
        purpose="HRESCH",
        legal_basis=(
            "GDPR Art. 9(2)(j) scientific research with Art. 89 safeguards; explicit consent "
            "at opt-in sites, national opt-out at opt-out sites (synthetic patients)"
        ),
        actors=(CONSORTIUM_ACTOR,),
        twin_kinds=(TwinKind.GLUCOSE,),
        max_epsilon_per_patient=config.epsilon_cap,
        delta=config.delta,
        min_round_spacing_minutes=24 * 60,
        retention_days=3650,
    )


def site_policy_for(site_id: str, regime: Regime, config: DemoConfig) -> SitePolicy:
    """A demo site's policy: its regime, the study's purpose, the cap, its minimum cohort."""
    return SitePolicy(
        version="demo-1",
        site_id=site_id,
        regime=regime,
        accepted_purposes=("HRESCH",),
        accepted_twin_kinds=(TwinKind.GLUCOSE,),
        max_epsilon_per_patient=config.epsilon_cap,
        max_delta=config.delta,
        min_eligible_patients_per_round=config.min_eligible_patients,
        trusted_consortia=(CONSORTIUM_ID,),
        trusted_actors=(CONSORTIUM_ACTOR,),
        data_window=DataWindow(lookback_days=365),
    )


def _consents_by_patient(resources: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        holder = resource.get("patient") or resource.get("subject") or {}
        patient = str(holder.get("reference", "")).rsplit("/", 1)[-1]
        grouped.setdefault(patient, []).append(resource)
    return grouped


def _prefix(secret: bytes, size: int) -> bytes:
    return secret[:size]


def _write_keys(root: Path, sites: list[SiteId]) -> None:
    consortium = root / "consortium"
    coordinator = AuditSigner.generate("coordinator")
    coordinator.save(consortium / "coordinator.audit.pem")
    for site_id in sites:
        signer = AuditSigner.generate(site_id)
        signer.save(root / "sites" / site_id / "keys" / f"{site_id}.audit.pem")
        write_verifier_key(signer.verifier_key, consortium / "site-keys" / f"{site_id}.vkey")
        write_verifier_key(
            coordinator.verifier_key, root / "sites" / site_id / "keys" / "coordinator.vkey"
        )


def generate_sites(
    config: DemoConfig, root: Path, progress: Callable[[str, float], None] | None = None
) -> list[SiteConfig]:
    """Create the consortium folder and every site under ``root`` and return site configs.

    Site ``k`` draws new virtual patients of one age group (non-IID across sites), writes them
    as a Bulk FHIR export with synthetic consents (the study period spans the demo's rounds),
    and gets its policy, keys and an empty state folder; each export is then read once through
    the site's cached ingest. Large cohorts are built by worker processes
    (:mod:`fedtwin.demo_sites`). Seeds: ``config.seed``, combined with the site id.
    """
    ids = site_ids(config.sites)
    policy = consortium_policy_for(config)
    consortium = root / "consortium"
    consortium.mkdir(parents=True, exist_ok=True)
    header = "Generated by fedtwin demo: the study's consortium policy."
    (consortium / "consortium-policy.toml").write_text(policy_toml(policy, header=header))
    _write_keys(root, ids)
    calendar = calendar_for(config)
    study_start = calendar.data_end - timedelta(days=config.days)
    sites, jobs = [], []
    for index, site_id in enumerate(ids):
        _, group, regime = SITE_KINDS[index % len(SITE_KINDS)]
        folder = root / "sites" / site_id
        (folder / "site-policy.toml").write_text(
            policy_toml(site_policy_for(site_id, regime, config), header=f"{site_id} policy")
        )
        shutil.copyfile(
            consortium / "consortium-policy.toml", folder / "approved-consortium-policy.toml"
        )
        # A real site draws its secret at random; the demo derives it from the seed so that a
        # seeded demo splits and pseudonymises its synthetic patients the same way every time.
        derived = hashlib.sha256(f"fedtwin-demo/{config.seed}/{site_id}".encode()).digest()
        load_or_create_site_secret(
            folder / "state", token_bytes=functools.partial(_prefix, derived)
        )
        site = SiteConfig(
            site_id=site_id,
            data_dir=(folder / "export").resolve(),
            state_dir=(folder / "state").resolve(),
            site_policy=(folder / "site-policy.toml").resolve(),
            consortium_policy=(folder / "approved-consortium-policy.toml").resolve(),
            audit_key=(folder / "keys" / f"{site_id}.audit.pem").resolve(),
            coordinator_audit_key=(folder / "keys" / "coordinator.vkey").resolve(),
            heldout_fraction=config.heldout_fraction,
            seed=config.seed * 1000 + index,
        )
        sites.append(site)
        patient_ids = [f"{site_id}-{i:06d}" for i in range(config.patients_per_site)]
        jobs.append(
            SiteJob(
                spec=SiteSpec(
                    site_id=site_id,
                    n_patients=config.patients_per_site,
                    age_mix={group: 1.0},
                    days=config.days,
                    start_date=config.data_start,
                    seed=config.seed,
                ),
                export_dir=site.data_dir,
                state_dir=site.state_dir,
                ground_truth=root / "ground_truth" / site_id,
                seed=config.seed,
                consents=_consents_by_patient(
                    synthetic_consents(
                        patient_ids,
                        study_start=study_start,
                        study_end=calendar.study_end(config.rounds),
                        seed=config.seed * 1000 + index,
                        actor=CONSORTIUM_ACTOR,
                        fhir_version="mixed",
                    )
                ),
                ingest=ingest_options(site),
            )
        )
    build_sites(jobs, progress)
    return sites


def run_config_for(config: DemoConfig, run_id: str) -> RunConfig:
    """The consortium's run config the demo coordinator sends."""
    return RunConfig.for_policy(
        consortium_policy_for(config),
        run_id=run_id,
        twin_kind=TwinKind.GLUCOSE.value,
        num_rounds=config.rounds,
        min_sites=config.sites,
        seed=config.seed,
        dp=DpSgdConfig(
            local_steps=config.local_steps,
            expected_batch_patients=config.batch_patients,
            learning_rate=config.learning_rate,
        ),
    )


def coordinator_setup(root: Path, out_dir: Path, description: str) -> CoordinatorSetup:
    """The coordinator's files in a demo tree."""
    consortium = root / "consortium"
    return CoordinatorSetup(
        out_dir=out_dir,
        consortium_policy=consortium / "consortium-policy.toml",
        audit_key=consortium / "coordinator.audit.pem",
        site_keys=consortium / "site-keys",
        data_description=description,
    )


def collect_site_logs(sites: tuple[SiteConfig, ...] | list[SiteConfig], run_dir: Path) -> None:
    """Copy every site's audit log and checkpoints into the run's ``audit/`` folder."""
    layout = AuditLayout.of_run(run_dir)
    for site in sites:
        source = AuditLayout(site.audit_dir)
        shutil.copyfile(source.log_path(site.site_id), layout.log_path(site.site_id))
        target = layout.checkpoints_dir(site.site_id)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source.checkpoints_dir(site.site_id), target)


def simulation_actors(sites: int, cpus: int | None = None) -> int:
    """ClientApp actors for the simulation: one per site, at most one more than the CPUs.

    Flower starts one actor per CPU Ray is given (each imports torch and Opacus, ~0.5 GiB),
    so Ray is told this many CPUs. One actor beyond the CPUs keeps both cores busy when three
    sites share two (demo on 2 cores: 15 s → 13 s per round).
    """
    return max(1, min(sites, (cpus or os.cpu_count() or 1) + 1))


def new_run_id(seed: int, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str:
    """``demo-<UTC time>-s<seed>``: sortable and unique per second and seed."""
    return f"demo-{clock().strftime('%Y%m%dT%H%M%SZ')}-s{seed}"


def run_demo(
    config: DemoConfig,
    on_site_simulated: Callable[[str, float], None] | None = None,
    on_round_evaluated: Callable[[int, RoundCollector], None] | None = None,
    run_id: str | None = None,
) -> DemoResult:
    """Build the sites, federate, audit and write ``<out>/<run-id>/`` (module docstring)."""
    from flwr.simulation import run_simulation

    run_id = run_id or new_run_id(config.seed)
    final_dir = config.out / run_id
    if final_dir.exists():
        raise FederationError(f"{final_dir} already exists")
    partial_dir = config.out / f".{run_id}.partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    try:
        partial_dir.mkdir(parents=True)
        sites = generate_sites(config, partial_dir, on_site_simulated)
        write_sites_manifest(partial_dir / "sites", sites)
        run = run_config_for(config, run_id)
        write_json(partial_dir / "run_config.json", run.model_dump(mode="json"))
        outcome = CoordinatorOutcome()
        description = (
            f"synthetic UVA/Padova cohort: {config.sites} sites x {config.patients_per_site}"
            f" patients x {config.days} days, seed {config.seed}"
        )
        server_app = make_server_app(
            run,
            coordinator_setup(partial_dir, partial_dir.resolve(), description),
            on_round_evaluated=on_round_evaluated,
            outcome=outcome,
        )
        client_app = make_client_app(simulation_sites(sites), clock=calendar_for(config).round_at)
        # run_simulation is deprecated upstream (flwr run is the CLI path); the API is what an
        # in-process demo needs, so its deprecation notice is not shown to users.
        logging.getLogger("flwr").setLevel(logging.ERROR)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(sites),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "include_dashboard": False,
                    "log_to_driver": False,
                    "num_cpus": simulation_actors(len(sites)),
                },
            },
        )
        if outcome.version_hash is None:
            raise FederationError("the coordinator did not finish the run")
        collect_site_logs(sites, partial_dir)
        # The twin scored on every site's consenting held-out patients vs persistence and AR
        # (what `fedtwin twin evaluate` prints), kept beside the model and in the report.
        from fedtwin.run_evaluation import evaluate_run
        from fedtwin.twins.evaluation import evaluation_html

        evaluation = evaluate_run(partial_dir)
        write_json(partial_dir / "evaluation.json", evaluation.document())
        audit = write_report(
            partial_dir,
            partial_dir / "report.html",
            datetime.now(UTC),
            appendices=[evaluation_html(evaluation, "Forecast quality on held-out patients")],
        )
        partial_dir.rename(final_dir)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    moved = tuple(_moved(site, partial_dir.resolve(), final_dir.resolve()) for site in sites)
    return DemoResult(final_dir, outcome.collector, outcome.version_hash, moved, audit)


def _moved(site: SiteConfig, old: Path, new: Path) -> SiteConfig:
    updates = {
        name: new / value.relative_to(old)
        for name, value in site.model_dump().items()
        if isinstance(value, Path) and value.is_relative_to(old)
    }
    return site.model_copy(update=updates)
