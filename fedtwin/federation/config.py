"""Validated configuration of a federated twin run and of a site (pydantic, closed, frozen).

The coordinator sends :class:`RunConfig` to every site as canonical JSON inside the train
message; a site re-validates it (unknown keys are errors) before doing anything with it.
:class:`SiteConfig` never leaves the site.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, NewType

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedtwin.consent import ConsortiumPolicy, RunRequest, policy_hash
from fedtwin.errors import ConfigError
from fedtwin.privacy import AccountantKind, DpSgdConfig
from fedtwin.twins import GlucoseTwinConfig

SiteId = NewType("SiteId", str)

SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class CentralDpConfig(BaseModel):
    """Optional site-level DP at the coordinator (Flower's server-side fixed clipping).

    Each site's model update is clipped to ``clipping_norm`` and Gaussian noise of standard
    deviation ``noise_multiplier · clipping_norm / sites`` is added to their average. It
    protects whole *sites*; it adds to, never replaces, every site's patient-level DP.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float = Field(gt=0, le=100)
    clipping_norm: float = Field(gt=0, le=1000)


RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class RunConfig(BaseModel):
    """What the coordinator asks every site to do in one federated run.

    The study's claims (consortium, study, purpose, actors, δ and the policy hash) come from
    the consortium policy the coordinator runs under (:meth:`for_policy`); every site checks
    them against its own approved copy of that policy before each round. ``run_id`` is
    fedtwin's own id of the run: it stays the same when a coordinator resumes the run, so a
    site's ledger never counts a resumed round twice.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field("run-0", pattern=RUN_ID_PATTERN)
    consortium_id: str = Field("fedtwin-consortium", min_length=1, max_length=64)
    study_id: str = Field("fedtwin-demo", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    purpose: str = Field("HRESCH", min_length=1, max_length=64)
    actors: tuple[str, ...] = Field(("Organization/fedtwin-consortium",), min_length=1)
    consortium_policy_hash: str | None = Field(
        None, description="sha256 of the consortium policy the coordinator runs under"
    )
    twin_kind: str = Field("glucose-twin", min_length=1, max_length=64)
    epsilon: float = Field(8.0, gt=0, le=100, description="most ε per patient this run spends")
    num_rounds: int = Field(5, ge=1, le=1000)
    min_sites: int = Field(3, ge=1, le=1000, description="sites needed to start a round")
    twin: GlucoseTwinConfig = GlucoseTwinConfig()
    dp: DpSgdConfig = DpSgdConfig()
    delta: float = Field(1e-5, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    round_timeout_s: float = Field(600.0, gt=0)
    max_update_norm: float = Field(50.0, gt=0, description="coordinator rejects larger updates")
    max_norm_ratio: float | None = Field(
        10.0, gt=1, description="reject an update > this x the median norm of the round's others"
    )
    min_updates: int = Field(
        1, ge=1, le=1000, description="accepted updates a round needs to change the model"
    )
    eval_stride_steps: int = Field(3, ge=1, le=288)
    central_dp: CentralDpConfig | None = None
    secure_aggregation: bool = Field(
        False, description="SecAgg+: the coordinator sees only the sum of the sites' updates"
    )

    @classmethod
    def for_policy(cls, policy: ConsortiumPolicy, **settings: Any) -> RunConfig:
        """A run under ``policy``: the study's claims from the policy, the rest from settings."""
        return cls.model_validate(
            {
                "consortium_id": policy.consortium_id,
                "study_id": policy.study_id,
                "purpose": policy.purpose,
                "actors": policy.actors,
                "delta": policy.delta,
                "epsilon": policy.max_epsilon_per_patient,
                "consortium_policy_hash": policy_hash(policy),
                **settings,
            }
        )

    def run_request(self) -> RunRequest:
        """The claims a site's guard checks (:class:`fedtwin.consent.RunRequest`)."""
        return RunRequest(
            consortium_id=self.consortium_id,
            study_id=self.study_id,
            purpose=self.purpose,
            twin_kind=self.twin_kind,
            epsilon=self.epsilon,
            delta=self.delta,
            actors=self.actors,
            consortium_policy_hash=self.consortium_policy_hash,
        )

    @property
    def config_hash(self) -> str:
        """``sha256:<hex>`` of the canonical wire form (what the audit log names)."""
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        """Compact JSON with sorted keys (what travels in the train message)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse and validate, turning any problem into one :class:`ConfigError` line."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise ConfigError(f"run config: {one_line(error)}") from error


class SiteConfig(BaseModel):
    """A site's own settings: where its data, state, policies and keys live. Never leaves it.

    How much the site will spend, which purposes it accepts, its consent regime and its
    minimum cohort are in its *site policy* document (``site_policy``); ``consortium_policy``
    is the study policy the site reviewed and approved — a run claiming any other policy is
    refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: SiteId = Field(pattern=SITE_ID_PATTERN)
    data_dir: Path = Field(description="the site's Bulk FHIR export (NDJSON per resource type)")
    state_dir: Path = Field(description="ledger, site secret, audit log, caches")
    site_policy: Path = Field(description="the site policy document (TOML)")
    consortium_policy: Path = Field(description="the approved consortium policy (TOML)")
    audit_key: Path = Field(description="the site's Ed25519 audit signing key (PEM, 0600)")
    coordinator_audit_key: Path = Field(
        description="the coordinator's audit verifier key (.vkey): what the site cosigns"
    )
    accountant: AccountantKind = AccountantKind.PRV
    seed: int = Field(0, ge=0, description="seeds window choice, sampling and noise")
    heldout_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of patients kept for evaluation (keyed hash split)"
    )
    min_heldout_patients: int = Field(
        3, ge=1, description="never report evaluation metrics over fewer patients"
    )
    fhir_version: Literal["auto", "R4B", "R5"] = "auto"
    ingest_policy: Literal["strict", "lenient"] = Field(
        "strict", description="strict: any bad record stops the site; lenient: reject and count"
    )

    @property
    def ledger_path(self) -> Path:
        """The site's privacy ledger (SQLite)."""
        return self.state_dir / "privacy-ledger.sqlite"

    @property
    def audit_dir(self) -> Path:
        """The site's own audit log and checkpoints (kept at the site, across runs)."""
        return self.state_dir / "audit"


def one_line(error: ValidationError) -> str:
    """Render a pydantic error as one line naming the field and what is allowed."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "value"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{field}: {first['msg']}{more}"
