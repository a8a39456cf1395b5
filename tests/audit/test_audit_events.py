"""Audit events are closed, typed, in UTC, and account for every patient."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from fedtwin.audit import (
    EVENT_ADAPTER,
    Aggregated,
    BudgetRefused,
    ConsentFiltered,
    SiteJoined,
    UpdateSent,
)
from fedtwin.audit.canonical import event_bytes
from fedtwin.audit.events import EVENT_TYPES

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
COMMON: dict[str, Any] = {"actor": "site-a", "time": T0, "run_id": "run-1"}
BUDGET: dict[str, Any] = {
    "site_id": "site-a",
    "epsilon_before": 1.0,
    "epsilon_after": 2.0,
    "epsilon_cap": 8.0,
    "delta": 1e-5,
    "noise_multiplier": 1.1,
    "max_grad_norm": 1.0,
    "sample_rate": 0.05,
    "steps": 40,
    "accountant": "prv",
}


def test_unknown_fields_and_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValidationError, match="patient_id"):
        SiteJoined(**COMMON, site_id="site-a", identity_fingerprint="sha256:" + "0" * 64,
                   patient_id="p1")  # type: ignore[call-arg]  # fmt: skip
    with pytest.raises(ValidationError, match="type"):
        EVENT_ADAPTER.validate_python({**COMMON, "type": "patient_viewed"})


def test_consent_counts_must_account_for_every_patient() -> None:
    with pytest.raises(ValidationError, match="patients_total"):
        ConsentFiltered(
            **COMMON,
            site_id="site-a",
            consent_snapshot_time=T0,
            patients_total=10,
            patients_permitted=7,
            denied_by_reason={"withdrawn": 2},
        )


def test_round_level_events_need_a_round() -> None:
    with pytest.raises(ValidationError, match="round is required"):
        UpdateSent(**COMMON, site_id="site-a", sha256="sha256:" + "1" * 64, num_examples=3)
    with pytest.raises(ValidationError, match="at least 1"):
        Aggregated(**COMMON, round=1, model_version_hash="sha256:" + "2" * 64, contributors=())


def test_unbounded_epsilon_is_stored_as_null_and_nan_is_refused() -> None:
    refused = BudgetRefused(**COMMON, round=3, **{**BUDGET, "epsilon_after": float("inf")})
    assert refused.epsilon_after is None
    assert b'"epsilon_after":null' in event_bytes(refused)
    with pytest.raises(ValidationError):
        BudgetRefused(**COMMON, round=3, **{**BUDGET, "epsilon_after": float("nan")})


def test_times_are_written_in_utc_and_naive_times_are_refused() -> None:
    paris = timezone(timedelta(hours=1))
    event = SiteJoined(
        **{**COMMON, "time": datetime(2025, 3, 1, 9, 0, tzinfo=paris)},
        site_id="site-a",
        identity_fingerprint="sha256:" + "0" * 64,
    )
    assert b'"time":"2025-03-01T08:00:00Z"' in event_bytes(event)
    with pytest.raises(ValidationError, match="timezone"):
        SiteJoined(
            **{**COMMON, "time": datetime(2025, 3, 1, 9, 0)},
            site_id="site-a",
            identity_fingerprint="sha256:" + "0" * 64,
        )


def test_digests_and_party_ids_have_one_spelling() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        UpdateSent(**COMMON, round=1, site_id="site-a", sha256="ABC", num_examples=1)
    with pytest.raises(ValidationError, match="actor"):
        SiteJoined(
            **{**COMMON, "actor": "Site A"},
            site_id="site-a",
            identity_fingerprint="sha256:" + "0" * 64,
        )


def test_every_event_kind_round_trips_through_its_canonical_line() -> None:
    digest = "sha256:" + "a" * 64
    samples: dict[str, dict[str, Any]] = {
        "run_started": {
            "study_id": "s", "purpose_code": "HRESCH", "legal_basis": "GDPR Art. 9(2)(j)",
            "config_hash": digest, "app_hash": digest, "policy_hash": digest, "num_rounds": 3,
        },
        "run_finished": {"status": "failed", "rounds_completed": 1},
        "site_joined": {"site_id": "site-a", "identity_fingerprint": digest},
        "site_refused": {"site_id": "site-b", "reason_code": "unknown-node", "reason": "no cert"},
        "policy_decision": {"site_id": "site-a", "policy_version_hash": digest, "allowed": False,
                            "reasons": ["purpose not allowed"]},
        "consent_filtered": {"site_id": "site-a", "consent_snapshot_time": T0,
                             "patients_total": 3, "patients_permitted": 1,
                             "denied_by_reason": {"withdrawn": 2}},
        "budget_checked": {**BUDGET, "round": 1, "allowed": True},
        "budget_committed": {**BUDGET, "round": 1},
        "budget_refused": {**BUDGET, "round": 1},
        "update_sent": {"round": 1, "site_id": "site-a", "sha256": digest, "num_examples": 5},
        "update_received": {"round": 1, "site_id": "site-a", "sha256": digest, "num_examples": 5},
        "update_rejected": {"round": 1, "site_id": "site-a", "reason_code": "nan",
                            "reason": "non-finite values"},
        "aggregated": {"round": 1, "model_version_hash": digest, "contributors": ["site-a"]},
        "model_exported": {"model_version_hash": digest, "path": "model.safetensors"},
        "checkpoint_cosigned": {"cosigner": "site-a", "origin": "o", "size": 4, "root": "b" * 64},
        "log_recovered": {"discarded_bytes": 9, "discarded_sha256": digest},
        "error_raised": {"where": "round 2", "error_class": "FederationError", "message": "x"},
    }  # fmt: skip
    assert set(samples) == set(EVENT_TYPES)
    for kind, fields in samples.items():
        event = EVENT_ADAPTER.validate_python({**COMMON, "type": kind, **fields})
        assert EVENT_ADAPTER.validate_json(event_bytes(event)) == event
