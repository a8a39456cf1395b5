"""What the evaluator works on: normalised consents, the request, the regime and the decision.

Invariants:

* a :class:`ConsentRecord` is release-neutral: R4/R4B and R5 consents are both reduced to a base
  decision, the conditions that scope the whole consent, its validity period and a tree of
  exception provisions, each carrying its *effective* decision (R4 ``provision.type``; R5 the
  root ``decision`` negated once per nesting level), so the evaluator has one code path;
* every record keeps where it came from (``file:line``) and a content fingerprint, so a decision
  can name its consent and the evaluation order never depends on file order;
* a :class:`Decision` names its verdict, its reasons (the first one is the reason it is counted
  under) and the consents and provision that decided it: every decision is explainable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from fedtwin.consent.codes import PURPOSE_CODES, Verdict
from fedtwin.consent.timing import Interval

TRAINING_RESOURCE_TYPES: tuple[str, ...] = (
    "MedicationAdministration",
    "Observation",
    "Patient",
    "Procedure",
)
"""Resource types fedtwin reads to train a twin: the data classes of a request by default."""

_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def actor_key(reference: str) -> str:
    """The comparable form of an actor reference: ``Type/id`` (a base URL or version is cut).

    ``https://fhir.example.org/Organization/c1/_history/2`` and ``Organization/c1`` give the same
    key; anything else (an identifier ``system|value``, a URN) is compared as written.
    """
    text = reference.strip()
    match = _REFERENCE.search(text)
    return match.group(1) if match else text


class Regime(StrEnum):
    """How a site treats a patient without an applicable consent."""

    OPT_IN = "opt-in"
    """Research consent required: no applicable consent → deny."""
    OPT_OUT = "opt-out"
    """EHDS / national opt-out: permit unless an applicable consent denies."""


class Reason(StrEnum):
    """Why a patient is in or out; the first reason of a decision is the one it is counted by."""

    CONSENT_PERMIT = "consent-permit"
    OPT_OUT_DEFAULT = "opt-out-default"
    CONSENT_DENY = "consent-deny"
    CONSENT_WITHDRAWN = "consent-withdrawn"
    CONSENT_EXPIRED = "consent-expired"
    CONSENT_UNDETERMINED = "consent-undetermined"
    NO_CONSENT = "no-consent"
    NO_APPLICABLE_CONSENT = "no-applicable-consent"
    NO_CONSENT_IN_FORCE = "no-consent-in-force"
    # Secondary reasons: detail behind the first one.
    CONSENT_INACTIVE = "consent-inactive"
    NOT_YET_VALID = "consent-not-yet-valid"
    STATUS_NOT_IN_FORCE = "status-not-in-force"
    SCOPE_NOT_DATA_USE = "scope-not-data-use"
    PURPOSE_NOT_COVERED = "purpose-not-covered"
    ACTOR_NOT_COVERED = "actor-not-covered"
    DATA_CLASS_NOT_COVERED = "data-class-not-covered"
    DATA_PERIOD_NOT_COVERED = "data-period-not-covered"
    ACTION_NOT_COVERED = "action-not-covered"
    UNCHECKABLE_CONDITION = "uncheckable-condition"
    TIED_CONSENTS = "tied-consents-deny-wins"


@dataclass(frozen=True)
class Conditions:
    """When a provision (or a whole R4 consent) applies; an empty set means "any".

    Attributes
    ----------
    period : Interval or None
        ``provision.period``: when the rule applies (``None``: always).
    purposes : frozenset[str]
        v3-ActReason purpose codes.
    actors : frozenset[str]
        Actor keys (:func:`actor_key`).
    unidentified_actor : bool
        An actor entry names no reference (a role only): it cannot be matched to the request.
    data_classes : frozenset[str]
        Resource types (R4 ``class``, R5 ``resourceType``).
    data_period : Interval or None
        ``provision.dataPeriod``: when the data was recorded.
    actions : frozenset[str]
        consentaction codes.
    uncheckable : tuple[str, ...]
        Elements fedtwin cannot check against its data (``code``, ``securityLabel``, ``data``
        about other resources, ``expression``, ``documentType``, classes of other systems).
    """

    period: Interval | None = None
    purposes: frozenset[str] = frozenset()
    actors: frozenset[str] = frozenset()
    unidentified_actor: bool = False
    data_classes: frozenset[str] = frozenset()
    data_period: Interval | None = None
    actions: frozenset[str] = frozenset()
    uncheckable: tuple[str, ...] = ()


NO_CONDITIONS = Conditions()


@dataclass(frozen=True)
class Provision:
    """One exception rule with its effective decision and its own exceptions."""

    path: str
    verdict: Verdict
    conditions: Conditions
    children: tuple[Provision, ...] = ()


@dataclass(frozen=True)
class ConsentRecord:
    """A validated consent reduced to what the evaluator needs.

    Attributes
    ----------
    consent_id : str
        ``Consent.id`` (or ``<file>:<line>`` when the resource has none).
    patient_id : str
        Local patient id the consent is about.
    fhir_version : {"R4B", "R5"}
        Release whose semantics apply.
    status : str
        ``Consent.status`` (validated for the release).
    recorded : datetime or None
        ``Consent.dateTime`` (R4) / ``Consent.date`` (R5) as a moment (start of its precision).
    last_updated : datetime or None
        ``meta.lastUpdated``: tie-break between consents recorded at the same moment.
    validity : Interval
        When the consent is in force: R5 ``Consent.period``, R4 root ``provision.period``.
    governs_data_use : bool
        ``False`` for R4 ``scope`` treatment or adr (consent to care, not to data use).
    base : Verdict or None
        R4 root ``provision.type`` (or from ``policyRule``), R5 ``decision``; ``None`` if the
        consent states none.
    base_path : str
        Where the base decision is stated: ``provision``, ``policyRule`` or ``decision``.
    scope : Conditions
        R4 root provision conditions other than its period (what the consent is about);
        empty for R5, whose base decision covers every request.
    provisions : tuple[Provision, ...]
        The exceptions (R4 ``provision.provision``, R5 ``provision``).
    fingerprint : str
        The resource's JSON, a total order key among otherwise equal consents.
    source : str
        ``<file>:<line>``.
    """

    consent_id: str
    patient_id: str
    fhir_version: Literal["R4B", "R5"]
    status: str
    recorded: datetime | None
    last_updated: datetime | None
    validity: Interval
    governs_data_use: bool
    base: Verdict | None
    base_path: str
    scope: Conditions
    provisions: tuple[Provision, ...]
    fingerprint: str = field(repr=False)
    source: str = ""


PurposeCode = Annotated[str, Field(min_length=1, max_length=64)]


class ConsentRequest(BaseModel):
    """What a site wants to do with a patient's data: the question consent answers.

    ``data_classes`` of ``None`` means every class; ``data_from``/``data_to`` of ``None`` leave
    that side of the data window unbounded. An unbounded or unknown request is read as the
    widest one (fail closed): a permit limited to some classes or some data period does not
    cover it, a deny limited to them does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    purpose: PurposeCode
    actors: tuple[str, ...] = ()
    data_classes: tuple[str, ...] | None = TRAINING_RESOURCE_TYPES
    data_from: AwareDatetime | None = None
    data_to: AwareDatetime | None = None

    @field_validator("purpose")
    @classmethod
    def _known_purpose(cls, value: str) -> str:
        if value not in PURPOSE_CODES:
            raise ValueError(f"unknown v3-ActReason purpose of use code {value!r}")
        return value

    @field_validator("actors")
    @classmethod
    def _actor_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({actor_key(actor) for actor in value if actor.strip()}))

    @field_validator("data_classes")
    @classmethod
    def _sorted_classes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _window_in_order(self) -> ConsentRequest:
        if self.data_from and self.data_to and self.data_to < self.data_from:
            raise ValueError("data_to lies before data_from")
        return self

    @property
    def data_period(self) -> Interval:
        """The window of the data the request would use."""
        return Interval(self.data_from, self.data_to)


class Decision(BaseModel):
    """The answer for one patient: permit or deny, why, and which consent provision said so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision: Verdict
    reasons: tuple[Reason, ...] = Field(min_length=1)
    provision_path: str | None = None
    consent_ids: tuple[str, ...] = ()

    @property
    def permitted(self) -> bool:
        """Whether the patient may be used."""
        return self.decision is Verdict.PERMIT

    @property
    def primary_reason(self) -> Reason:
        """The reason this decision is counted under."""
        return self.reasons[0]
