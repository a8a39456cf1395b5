"""A site's guard rails around one federated round, as numbered fail-closed steps.

Training (:func:`train_round`); the first failing step refuses the round, and nothing leaves
the site before step 6:

1. the run config and the global model are validated, the site's policies loaded (a policy
   that cannot be loaded means no training, never a default);
2. the site guard (:class:`fedtwin.consent.SiteGuard`) checks the run's claims against the
   site policy and the approved consortium policy, evaluates every training patient's consent
   at the round's time, and refuses below the site's minimum cohort;
3. the privacy budget: σ is calibrated so that this run stays within its ε, the study within
   the consortium's cap and the site within its own cap over everything it ever spent; the
   ledger's ``can_spend`` must agree;
4. a retried round (same run, round and global model) gets back the update already released,
   never a second, independently noised one; a retry with another global model is refused;
5. patient-level DP-SGD on the permitted patients only (:mod:`fedtwin.privacy`);
6. the spend is committed to the ledger and the update's digest logged; then it is sent.

Evaluation (:func:`evaluate_round`): (1) the coordinator's newest checkpoint is cosigned only
after its consistency with the last one this site cosigned is verified (a split view refuses);
(2) consent is applied to the held-out patients at the round's time; (3) only aggregate
metrics over at least the site's minimum of held-out patients are returned.

Every step writes to the site's own audit log (``state_dir/audit``, kept across runs), which
the site checkpoints after every message; nothing logged names a patient.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedtwin.audit import (
    AuditLog,
    AuditSigner,
    BudgetChecked,
    BudgetCommitted,
    BudgetRefused,
    CheckpointCosigned,
    Cosigner,
    ErrorRaised,
    SignedCheckpoint,
    UpdateSent,
    load_verifier_key,
    update_digest,
)
from fedtwin.consent import (
    ConsortiumPolicy,
    RoundAdmission,
    SiteGuard,
    SitePolicy,
    load_consortium_policy,
    load_site_policy,
)
from fedtwin.errors import BudgetExhausted, ConfigError, ConsentDenied, VerificationError
from fedtwin.federation.calibration import fold_histograms
from fedtwin.federation.config import RunConfig, SiteConfig
from fedtwin.federation.sitedata import SiteData, load_site_data, patient_batch
from fedtwin.fhir import load_or_create_site_secret
from fedtwin.privacy import (
    LedgerCheck,
    PrivacyLedger,
    SpendEvent,
    calibrate_noise_multiplier,
    poisson_sample_rate,
    train_private_round,
)
from fedtwin.privacy.sigma_store import stored_noise_multiplier
from fedtwin.twins import GlucoseTwin
from fedtwin.twins.metrics import metrics_of_raw, raw_outputs
from fedtwin.twins.training import PatientWindowDataset, usable_rows
from fedtwin.twins.windows import batch_windows_with_rows

#: The time a round happens at, as the site sees it (consent is evaluated then).
RoundClock = Callable[[RunConfig, int], datetime]


def wall_clock(run: RunConfig, server_round: int) -> datetime:
    """A deployed site's round time: now (UTC)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class TrainOutcome:
    """What a site releases after a round: the update and its aggregate metrics."""

    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    digest: str


@dataclass(frozen=True)
class SiteParty:
    """A site's identity and its open audit log for one message."""

    site: SiteConfig
    log: AuditLog
    signer: AuditSigner

    @property
    def origin(self) -> str:
        """The checkpoint origin of the site's log (one log per site, across runs)."""
        return f"fedtwin/site/{self.site.site_id}"

    def close(self) -> None:
        """Checkpoint the log as it is now and close it."""
        self.log.checkpoint(self.signer, self.origin)
        self.log.close()


def open_party(site: SiteConfig, clock: Callable[[], datetime] | None = None) -> SiteParty:
    """Open the site's audit log with its signing key (fail closed if either is unusable)."""
    signer = AuditSigner.load(site.audit_key, site.site_id)
    log = (
        AuditLog.open(site.audit_dir, site.site_id)
        if clock is None
        else AuditLog.open(site.audit_dir, site.site_id, clock=clock)
    )
    return SiteParty(site, log, signer)


def _policies(site: SiteConfig) -> tuple[SitePolicy, ConsortiumPolicy]:
    site_policy = load_site_policy(site.site_policy)
    if site_policy.site_id != site.site_id:
        raise ConfigError(
            f"{site.site_policy}: site_id {site_policy.site_id!r} is not this site "
            f"({site.site_id!r})"
        )
    return site_policy, load_consortium_policy(site.consortium_policy)


def _log_error(
    party: SiteParty, run: RunConfig | None, server_round: int, where: str, error: Exception
) -> None:
    party.log.record(
        ErrorRaised,
        run_id=run.run_id if run else "unknown",
        round=server_round,
        where=where,
        error_class=type(error).__name__,
        message=str(error)[:500] or type(error).__name__,
    )


# σ is a pure function of these inputs and costs seconds (PRV search): once per run, in
# memory for a long-lived process, on the site's disk (verified before use) across processes.
_calibrated = functools.lru_cache(maxsize=64)(calibrate_noise_multiplier)


def plan_noise(
    run: RunConfig,
    site: SiteConfig,
    site_cap: float,
    study_cap: float,
    ledger: PrivacyLedger,
    sample_rate: float,
) -> float:
    """The smallest σ that keeps the run, the study and the site within their caps.

    The whole run (``num_rounds · local_steps`` steps) is planned at one σ on top of every
    spend outside this run, so a resumed or retried run plans the same σ.

    Raises
    ------
    BudgetExhausted
        If no σ keeps one of the three within its cap (the earlier spend exhausts it).
    """
    steps = run.num_rounds * run.dp.local_steps
    outside = [e for e in ledger.history() if e.run_id != run.run_id]
    prior_site = tuple(e.as_mechanism() for e in outside)
    prior_study = tuple(e.as_mechanism() for e in outside if e.study == run.study_id)
    sigmas = []
    for target, prior in ((run.epsilon, ()), (study_cap, prior_study), (site_cap, prior_site)):
        try:
            sigmas.append(
                stored_noise_multiplier(
                    site.state_dir,
                    _calibrated,
                    target_epsilon=target,
                    delta=run.delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=site.accountant,
                    prior=prior,
                )
            )
        except ConfigError as error:
            raise BudgetExhausted(f"site {site.site_id}: privacy budget exhausted") from error
    return max(sigmas)


def _round_generator(site: SiteConfig, run_id: str, server_round: int) -> torch.Generator:
    # Distinct, reproducible stream per (site seed, run, round).
    digest = hashlib.sha256(f"{site.seed}/{run_id}/{server_round}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))


def _released_path(site: SiteConfig, run: RunConfig, server_round: int) -> Path:
    return site.state_dir / "released" / run.run_id / f"round-{server_round}.safetensors"


def _release(
    site: SiteConfig, run: RunConfig, server_round: int, global_digest: str, outcome: TrainOutcome
) -> None:
    path = _released_path(site, run, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    metadata = {"global": global_digest, "metrics": json.dumps(outcome.metrics, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in outcome.state_dict.items()}, str(partial), metadata)
    partial.replace(path)


def _already_released(
    site: SiteConfig, run: RunConfig, server_round: int, global_digest: str
) -> TrainOutcome | None:
    path = _released_path(site, run, server_round)
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("global") != global_digest:
        raise BudgetExhausted(
            f"site {site.site_id}: round {server_round} of run {run.run_id} was already "
            "trained on another global model; a second release would spend ε again"
        )
    state = load_file(str(path))
    return TrainOutcome(state, json.loads(metadata["metrics"]), update_digest(state))


def round_record_path(site: SiteConfig, run_id: str, server_round: int) -> Path:
    """The site-local record of who a round trained on and why each patient was in or out."""
    return site.state_dir / "rounds" / run_id / f"round-{server_round}.json"


def _record_round(
    site: SiteConfig,
    run: RunConfig,
    server_round: int,
    trained: tuple[str, ...],
    admission: RoundAdmission,
) -> None:
    # Kept at the site only (keyed pseudonyms): lets the site show an auditor, for any patient
    # of any round, whether it was used and which consent decided it.
    secret = load_or_create_site_secret(site.state_dir)
    decisions = admission.snapshot.decision_log(secret) if admission.snapshot else []
    path = round_record_path(site, run.run_id, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"run_id": run.run_id, "round": server_round, "trained": sorted(trained)}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({**document, "decisions": decisions}, indent=1) + "\n")
    partial.replace(path)


def trained_pseudonyms(site: SiteConfig, run_id: str) -> set[str]:
    """Every patient (keyed pseudonym) any round of ``run_id`` trained on at this site."""
    folder = site.state_dir / "rounds" / run_id
    trained: set[str] = set()
    for path in sorted(folder.glob("round-*.json")) if folder.is_dir() else []:
        trained.update(json.loads(path.read_text())["trained"])
    return trained


def _rounds_file(site: SiteConfig) -> Path:
    return site.state_dir / "round-times.json"


def _previous_round_at(site: SiteConfig, run: RunConfig, server_round: int) -> datetime | None:
    path = _rounds_file(site)
    if not path.is_file():
        return None
    try:
        times: dict[str, str] = json.loads(path.read_text()).get(run.run_id, {})
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise ConfigError(f"{path}: unreadable round times ({error})") from error
    earlier = [datetime.fromisoformat(t) for r, t in times.items() if int(r) < server_round]
    return max(earlier, default=None)


def _remember_round_at(site: SiteConfig, run: RunConfig, server_round: int, at: datetime) -> None:
    path = _rounds_file(site)
    document: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.is_file() else {}
    document.setdefault(run.run_id, {})[str(server_round)] = at.isoformat()
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document, sort_keys=True))
    partial.replace(path)


def _admission(
    party: SiteParty,
    run: RunConfig,
    server_round: int,
    data: SiteData,
    at: datetime,
    patient_ids: list[str],
) -> tuple[RoundAdmission, SitePolicy]:
    site_policy, consortium_policy = _policies(party.site)
    guard = SiteGuard(site_policy, consortium_policy)
    admission = guard.admit_round(
        run.run_request(),
        data.consents,
        patient_ids,
        at=at,
        previous_round_at=_previous_round_at(party.site, run, server_round),
    )
    with party.log.batch():
        for event in admission.audit_events(
            site_id=party.site.site_id, time=party.log.now(), run_id=run.run_id, round=server_round
        ):
            party.log.append(event)
    admission.raise_if_refused()
    _remember_round_at(party.site, run, server_round, at)
    return admission, site_policy


def _budget_numbers(site: SiteConfig, check: LedgerCheck, planned: SpendEvent) -> dict[str, Any]:
    return {
        "site_id": site.site_id,
        "epsilon_before": check.epsilon_before,
        "epsilon_after": check.epsilon_after,
        "epsilon_cap": check.epsilon_cap,
        "delta": check.delta,
        "noise_multiplier": planned.noise_multiplier,
        "max_grad_norm": planned.max_grad_norm,
        "sample_rate": planned.sample_rate,
        "steps": planned.steps,
        "accountant": site.accountant.value,
    }


def train_round(
    party: SiteParty,
    run: RunConfig,
    server_round: int,
    model: GlucoseTwin,
    at: datetime,
) -> TrainOutcome:
    """Steps 1–6 of the module docstring for a validated run config and global model.

    Raises
    ------
    ConfigError, ConsentDenied, BudgetExhausted
        A refusal (already logged); nothing was trained or released.
    """
    site = party.site
    try:
        return _train_round(party, run, server_round, model, at)
    except (ConfigError, ConsentDenied, BudgetExhausted, VerificationError) as refusal:
        if not isinstance(refusal, ConsentDenied | BudgetExhausted):
            _log_error(party, run, server_round, f"site {site.site_id} train", refusal)
        raise


def _train_round(
    party: SiteParty, run: RunConfig, server_round: int, model: GlucoseTwin, at: datetime
) -> TrainOutcome:
    site = party.site
    # (1): the site's data and policies (a policy that fails to load refuses the round).
    if run.twin_kind != "glucose-twin":
        raise ConfigError(f"twin kind {run.twin_kind!r} is not trained by this site app")
    data = load_site_data(site)
    global_digest = update_digest(model.state_dict())

    # (2): run claims, consent at the round's time, minimum cohort.
    admission, site_policy = _admission(
        party, run, server_round, data, at, [p.patient_id for p in data.train]
    )
    window = site_policy.data_window.interval(at)
    batch = patient_batch(
        data.train,
        run.twin.history_steps,
        run.twin.horizon_steps,
        only=set(admission.training_ids),
        start=window.start,
        end=window.end,
    )
    batch = batch.select(usable_rows(batch, run.dp.windows_per_patient))
    minimum = site_policy.min_eligible_patients_per_round
    if len(batch) < minimum:
        raise ConsentDenied(
            f"site {site.site_id}: {len(batch)} permitted patients have enough data, "
            f"fewer than the site's minimum {minimum}"
        )
    if run.delta >= 1.0 / len(batch):
        raise ConfigError(f"δ={run.delta} is not below 1/{len(batch)} patients: refused")

    # (3): the privacy budget.
    ledger = PrivacyLedger(
        site.ledger_path,
        site_policy.max_epsilon_per_patient,
        run.delta,
        site.accountant,
        site_id=site.site_id,
    )
    consortium_cap = load_consortium_policy(site.consortium_policy).max_epsilon_per_patient
    sample_rate = poisson_sample_rate(len(batch), run.dp.expected_batch_patients)
    try:
        sigma = plan_noise(
            run, site, site_policy.max_epsilon_per_patient, consortium_cap, ledger, sample_rate
        )
    except BudgetExhausted:
        exhausted = SpendEvent(
            run_id=run.run_id,
            round=server_round,
            study=run.study_id,
            noise_multiplier=1e3,
            sample_rate=sample_rate,
            steps=run.dp.local_steps,
            max_grad_norm=run.dp.max_grad_norm,
        )
        numbers = _budget_numbers(site, ledger.can_spend(exhausted, consortium_cap), exhausted)
        party.log.record(BudgetRefused, run_id=run.run_id, round=server_round, **numbers)
        raise
    planned = SpendEvent(
        run_id=run.run_id,
        round=server_round,
        study=run.study_id,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=run.dp.local_steps,
        max_grad_norm=run.dp.max_grad_norm,
    )

    # (4): a retried round gets the update already released (same global model only); a
    # committed round whose release is lost is refused: training again would spend twice.
    released = _already_released(site, run, server_round, global_digest)
    if released is not None:
        return released
    if any((e.run_id, e.round) == (run.run_id, server_round) for e in ledger.history()):
        raise BudgetExhausted(
            f"site {site.site_id}: round {server_round} of run {run.run_id} is already spent"
        )
    check = ledger.can_spend(planned, study_cap=consortium_cap)
    numbers = _budget_numbers(site, check, planned)
    party.log.record(
        BudgetChecked, run_id=run.run_id, round=server_round, allowed=check.allowed, **numbers
    )
    if not check.allowed:
        party.log.record(BudgetRefused, run_id=run.run_id, round=server_round, **numbers)
        raise BudgetExhausted(f"site {site.site_id}: round {server_round}: {check.reason}")

    # (5): patient-level DP-SGD on the permitted patients.
    generator = _round_generator(site, run.run_id, server_round)
    dataset = PatientWindowDataset(batch, generator, run.dp.windows_per_patient)
    result = train_private_round(model, dataset, sigma, run.dp, generator)
    spent = planned.model_copy(
        update={
            "noise_multiplier": result.mechanism.noise_multiplier,
            "sample_rate": result.mechanism.sample_rate,
            "steps": result.mechanism.steps,
        }
    )

    # (6): commit, log the digest, keep the release for retries; then it may leave.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    digest = update_digest(state)
    ledger.commit(spent)  # before the release is kept: a crash here refuses a retry (step 4)
    epsilon = ledger.epsilon()
    outcome = TrainOutcome(
        state_dict=state,
        metrics={
            "num-examples": float(len(batch)),
            "server-round": float(server_round),
            "train-loss": result.mean_loss,
            "epsilon": epsilon,
            "epsilon-study": ledger.epsilon(study=run.study_id),
            "noise-multiplier": spent.noise_multiplier,
            "sample-rate": spent.sample_rate,
            "dp-steps": float(spent.steps),
            "patients-permitted": float(len(admission.training_ids)),
        },
        digest=digest,
    )
    _release(site, run, server_round, global_digest, outcome)
    _record_round(site, run, server_round, batch.pseudonyms, admission)
    committed = _budget_numbers(site, ledger.can_spend(spent, consortium_cap), spent)
    committed["epsilon_before"], committed["epsilon_after"] = check.epsilon_before, epsilon
    with party.log.batch():
        party.log.record(
            UpdateSent,
            run_id=run.run_id,
            round=server_round,
            site_id=site.site_id,
            sha256=digest,
            num_examples=len(batch),
        )
        party.log.record(BudgetCommitted, run_id=run.run_id, round=server_round, **committed)
    return outcome


def cosign(
    party: SiteParty, run: RunConfig, server_round: int | None, note: str, proof_hex: list[str]
) -> str:
    """Cosign the coordinator's checkpoint after checking consistency; return the line.

    Raises
    ------
    VerificationError
        If the checkpoint is not consistent with the last one this site cosigned (a split view)
        or its signature does not verify with the coordinator's key; logged, nothing signed.
    """
    site = party.site
    try:
        coordinator_key = load_verifier_key(site.coordinator_audit_key)
        signed = SignedCheckpoint.from_bytes(note.encode())
        cosigner = Cosigner(site.audit_dir / "cosigner.json", party.signer)
        signature = cosigner.cosign(signed, [bytes.fromhex(h) for h in proof_hex], coordinator_key)
    except (VerificationError, ConfigError, ValueError) as error:
        _log_error(party, run, server_round or 0, f"site {site.site_id} cosign", error)
        raise VerificationError(f"site {site.site_id}: will not cosign: {error}") from error
    head = signed.checkpoint
    party.log.record(
        CheckpointCosigned,
        run_id=run.run_id,
        round=server_round,
        cosigner=site.site_id,
        origin=head.origin,
        size=head.size,
        root=head.root.hex(),
    )
    return signature.line()


def evaluate_round(
    party: SiteParty, run: RunConfig, server_round: int, model: GlucoseTwin, at: datetime
) -> dict[str, float | list[int]]:
    """Aggregate forecast metrics on consenting held-out patients (steps 2–3).

    Besides the metrics, the reply holds the two calibration folds' ``|z|`` histograms
    (:mod:`fedtwin.federation.calibration`): integer counts, never windows.
    """
    site = party.site
    data = load_site_data(site)
    site_policy, consortium_policy = _policies(site)
    guard = SiteGuard(site_policy, consortium_policy)
    check = guard.check_run(run.run_request(), at=at)
    if not check.allowed:
        raise ConsentDenied(f"site {site.site_id}: run refused by site policy")
    snapshot = guard.eligible_patients(
        data.consents, [p.patient_id for p in data.heldout], run.run_request(), at=at
    )
    window = site_policy.data_window.interval(at)
    batch = patient_batch(
        data.heldout,
        run.twin.history_steps,
        run.twin.horizon_steps,
        only=set(snapshot.permitted_ids),
        start=window.start,
        end=window.end,
    )
    batch = batch.select(usable_rows(batch))
    if len(batch) < site.min_heldout_patients:
        raise ConfigError(
            f"site {site.site_id} has {len(batch)} consenting held-out patients, fewer than "
            f"{site.min_heldout_patients}: no metrics reported"
        )
    # One forward pass serves the metrics and both folds' calibration histograms.
    windows, rows = batch_windows_with_rows(batch, stride=run.eval_stride_steps)
    if len(windows) == 0:
        raise ConfigError(f"site {site.site_id} has no evaluation windows: no metrics reported")
    raw = raw_outputs(model, windows)
    metrics = metrics_of_raw(raw, windows)
    secret = load_or_create_site_secret(site.state_dir)
    histograms = fold_histograms(raw, windows, rows, batch, secret)
    return {**metrics, "heldout-patients": float(len(batch)), **histograms}
