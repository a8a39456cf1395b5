"""Audit fixtures: deterministic keys and clock, and a real run's audit trail built via the API.

The run is what the federation writes: a coordinator and two sites, three rounds, every party
checkpointing its log after each round, the sites cosigning the coordinator's checkpoints
(with consistency proofs) and logging what they cosigned. Keys come from fixed seeds
(``bytes([n]) * 32``) and the clock ticks one second per call from 2025-03-01 08:00 UTC, so the
logs are byte-for-byte reproducible.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedtwin.audit import (
    Aggregated,
    AuditLayout,
    AuditLog,
    AuditSigner,
    BudgetChecked,
    BudgetCommitted,
    BudgetRefused,
    CheckpointCosigned,
    ConsentFiltered,
    Cosigner,
    ModelExported,
    NoteSignature,
    PolicyDecision,
    RunFinished,
    RunStarted,
    SignedCheckpoint,
    SiteJoined,
    UpdateReceived,
    UpdateRejected,
    UpdateSent,
    add_cosignature,
    last_cosigned_size,
    write_verifier_key,
)

RUN_ID = "run-0001"
SITES = ("site-a", "site-b")
ROUNDS = 3


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


class TickingClock:
    """A clock that advances one second per reading."""

    def __init__(self, start: datetime = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture(scope="session")
def signers() -> dict[str, AuditSigner]:
    parties = ("coordinator", *SITES, "intruder")
    return {p: AuditSigner.from_seed(p, bytes([n + 1]) * 32) for n, p in enumerate(parties)}


@dataclass(frozen=True)
class BuiltRun:
    run_dir: Path
    layout: AuditLayout

    def log(self, party: str) -> Path:
        return self.layout.log_path(party)

    def checkpoints(self, party: str) -> Path:
        return self.layout.checkpoints_dir(party)


def origin(party: str) -> str:
    return f"fedtwin/{RUN_ID}/{party}"


def build_run(run_dir: Path, signers: dict[str, AuditSigner], refuse_last_round: bool) -> None:
    layout = AuditLayout.of_run(run_dir)
    clock = TickingClock()
    for party in ("coordinator", *SITES):
        write_verifier_key(signers[party].verifier_key, layout.key_path(party))
    coordinator = AuditLog.open(layout.root, "coordinator", clock=clock)
    sites = {s: AuditLog.open(layout.root, s, clock=clock) for s in SITES}
    cosigners = {
        s: Cosigner(run_dir / "site-state" / f"{s}.cosigner.json", signers[s], clock) for s in SITES
    }
    coordinator.record(
        RunStarted,
        run_id=RUN_ID,
        study_id="t1d-glucose",
        purpose_code="HRESCH",
        legal_basis="GDPR Art. 9(2)(j) scientific research",
        config_hash=digest(1),
        app_hash=digest(2),
        policy_hash=digest(3),
        num_rounds=ROUNDS,
    )
    for n, site in enumerate(SITES):
        coordinator.record(
            SiteJoined,
            run_id=RUN_ID,
            site_id=site,
            identity_fingerprint=signers[site].verifier_key.fingerprint,
        )
        sites[site].record(
            PolicyDecision,
            run_id=RUN_ID,
            site_id=site,
            policy_version_hash=digest(10 + n),
            allowed=True,
            reasons=("purpose HRESCH allowed", "epsilon cap 8 respected"),
        )
    epsilon = dict.fromkeys(SITES, 0.0)
    for round_ in range(1, ROUNDS + 1):
        contributors = []
        for n, site in enumerate(SITES):
            log = sites[site]
            with log.batch():
                log.record(
                    ConsentFiltered,
                    run_id=RUN_ID,
                    round=round_,
                    site_id=site,
                    consent_snapshot_time=datetime(2025, 2, 28, tzinfo=UTC),
                    patients_total=100 + n,
                    patients_permitted=90,
                    denied_by_reason={"withdrawn": 4 + n, "no-research-consent": 6},
                )
                numbers = {
                    "site_id": site,
                    "epsilon_before": epsilon[site],
                    "epsilon_after": epsilon[site] + 1.5 + n,
                    "epsilon_cap": 8.0,
                    "delta": 1e-5,
                    "noise_multiplier": 1.1,
                    "max_grad_norm": 1.0,
                    "sample_rate": 0.05,
                    "steps": 40,
                    "accountant": "prv",
                }
                refuse = refuse_last_round and round_ == ROUNDS and site == "site-b"
                log.record(
                    BudgetChecked, run_id=RUN_ID, round=round_, allowed=not refuse, **numbers
                )
                if refuse:
                    log.record(BudgetRefused, run_id=RUN_ID, round=round_, **numbers)
                    continue
                update = digest(1000 * round_ + n)
                log.record(
                    UpdateSent,
                    run_id=RUN_ID,
                    round=round_,
                    site_id=site,
                    sha256=update,
                    num_examples=90,
                )
                log.record(BudgetCommitted, run_id=RUN_ID, round=round_, **numbers)
                epsilon[site] += 1.5 + n
            coordinator.record(
                UpdateReceived,
                run_id=RUN_ID,
                round=round_,
                site_id=site,
                sha256=update,
                num_examples=90,
            )
            if round_ == 2 and site == "site-b":
                coordinator.record(
                    UpdateRejected,
                    run_id=RUN_ID,
                    round=round_,
                    site_id=site,
                    reason_code="norm-too-large",
                    reason="update norm 75.2 exceeds 50",
                    sha256=update,
                )
            else:
                contributors.append(site)
        coordinator.record(
            Aggregated,
            run_id=RUN_ID,
            round=round_,
            model_version_hash=digest(500 + round_),
            contributors=tuple(contributors),
        )
        _checkpoint_and_cosign(coordinator, sites, cosigners, signers, round_)
    coordinator.record(
        ModelExported, run_id=RUN_ID, model_version_hash=digest(500 + ROUNDS), path="model.st"
    )
    coordinator.record(RunFinished, run_id=RUN_ID, status="completed", rounds_completed=ROUNDS)
    _checkpoint_and_cosign(coordinator, sites, cosigners, signers, None)
    coordinator.checkpoint(signers["coordinator"], origin("coordinator"))
    for log in (coordinator, *sites.values()):
        log.close()


def _checkpoint_and_cosign(
    coordinator: AuditLog,
    sites: dict[str, AuditLog],
    cosigners: dict[str, Cosigner],
    signers: dict[str, AuditSigner],
    round_: int | None,
) -> None:
    signed = coordinator.checkpoint(signers["coordinator"], origin("coordinator"))
    head = signed.checkpoint
    for site in SITES:
        site_key = signers[site].verifier_key
        # Coordinator side: the note and a proof from what this site cosigned last go out ...
        last = last_cosigned_size(coordinator.checkpoints_dir, site_key)
        note, proof = (
            signed.encode(),
            coordinator.consistency_proof(last, head.size) if last else [],
        )
        # ... the site checks and cosigns what it received, and sends one line back ...
        received = SignedCheckpoint.from_bytes(note)
        line = cosigners[site].cosign(received, proof, signers["coordinator"].verifier_key).line()
        # ... which the coordinator verifies and keeps in its checkpoint file.
        add_cosignature(
            coordinator.checkpoints_dir, head.size, NoteSignature.from_line(line), site_key
        )
        for log in (coordinator, sites[site]):
            log.record(
                CheckpointCosigned,
                run_id=RUN_ID,
                round=round_,
                cosigner=site,
                origin=head.origin,
                size=head.size,
                root=head.root.hex(),
            )
        sites[site].checkpoint(signers[site], origin(site))


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory: pytest.TempPathFactory, signers: dict[str, AuditSigner]) -> Path:
    run_dir = tmp_path_factory.mktemp("pristine") / RUN_ID
    build_run(run_dir, signers, refuse_last_round=True)
    return run_dir


@pytest.fixture
def run(pristine_run: Path, tmp_path: Path) -> Iterator[BuiltRun]:
    """A private copy of the built run, free to tamper with."""
    copy = tmp_path / RUN_ID
    shutil.copytree(pristine_run, copy)
    yield BuiltRun(copy, AuditLayout.of_run(copy))


@pytest.fixture
def lines_of() -> Callable[[Path], list[bytes]]:
    def read(path: Path) -> list[bytes]:
        return path.read_bytes().split(b"\n")[:-1]

    return read
