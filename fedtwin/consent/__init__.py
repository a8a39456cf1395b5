"""Consent and policy: each site decides, per patient and per run, what may be used.

Invariant: this facade re-exports the public API of :mod:`fedtwin.consent` and nothing else.
Consent evaluation is a pure, order-independent function of (consents, request, time, regime)
(:func:`evaluate`); policies are closed documents whose hash is logged when used
(:func:`policy_hash`); the site guard (:class:`SiteGuard`) refuses a run or a round with a
reason and never names a patient in what it logs (counts and keyed pseudonyms only).
"""

from fedtwin.consent.codes import Verdict
from fedtwin.consent.evaluate import ConsentSnapshot, evaluate, evaluate_all
from fedtwin.consent.guard import (
    EligibilitySnapshot,
    Refusal,
    RoundAdmission,
    RunCheck,
    RunRequest,
    SiteGuard,
)
from fedtwin.consent.model import (
    TRAINING_RESOURCE_TYPES,
    ConsentRecord,
    ConsentRequest,
    Decision,
    Reason,
    Regime,
)
from fedtwin.consent.parse import consent_record, consent_records, record_from_json
from fedtwin.consent.policy import (
    TWIN_DATA_CLASSES,
    ConsortiumPolicy,
    DataWindow,
    SitePolicy,
    TwinKind,
    load_consortium_policy,
    load_site_policy,
    policy_hash,
    policy_toml,
)
from fedtwin.consent.synthetic import (
    DEFAULT_MIX,
    ConsentScenario,
    assign_scenarios,
    synthetic_consents,
)

__all__ = [
    "DEFAULT_MIX",
    "TRAINING_RESOURCE_TYPES",
    "TWIN_DATA_CLASSES",
    "ConsentRecord",
    "ConsentRequest",
    "ConsentScenario",
    "ConsentSnapshot",
    "ConsortiumPolicy",
    "DataWindow",
    "Decision",
    "EligibilitySnapshot",
    "Reason",
    "Refusal",
    "Regime",
    "RoundAdmission",
    "RunCheck",
    "RunRequest",
    "SiteGuard",
    "SitePolicy",
    "TwinKind",
    "Verdict",
    "assign_scenarios",
    "consent_record",
    "consent_records",
    "evaluate",
    "evaluate_all",
    "load_consortium_policy",
    "load_site_policy",
    "policy_hash",
    "policy_toml",
    "record_from_json",
    "synthetic_consents",
]
