"""The code systems a consent is evaluated with, as closed tables checked against their sources.

Invariant: a code that is not in these tables is never guessed at. fhir.resources checks the
structure of a ``Consent`` but not its codes, so :mod:`fedtwin.consent.parse` rejects an unknown
status, decision, provision type or purpose code with a one-line error instead of letting it
fall through to a default.

Sources:

* ``Consent.status``: consent-state-codes, FHIR R4/R4B (``draft | proposed | active | rejected |
  inactive | entered-in-error``) and R5 (``draft | active | inactive | not-done |
  entered-in-error | unknown``);
* ``provision.type`` (R4/R4B) and ``Consent.decision`` (R5): consent-provision-type
  (``deny | permit``);
* ``provision.purpose``: the ``PurposeOfUse`` subtree of
  ``http://terminology.hl7.org/CodeSystem/v3-ActReason`` (the 60 concepts of the R4 expansion
  of ValueSet v3-PurposeOfUse, with their ``subsumedBy`` parents);
* ``Consent.scope`` (R4/R4B): consentscope (``adr | research | patient-privacy | treatment``);
* ``Consent.policyRule`` (R4/R4B): the v3-ActCode consent directive codes OPTIN/OPTINR/OPTOUT/
  OPTOUTE, used only to find the base decision of a root provision that states none;
* ``provision.data.meaning``: consent-data-meaning (``instance | related | dependents |
  authoredby``);
* ``provision.action``: consentaction (``collect | access | use | disclose | correct``).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
RESOURCE_TYPE_SYSTEMS = frozenset(
    {"http://hl7.org/fhir/resource-types", "http://hl7.org/fhir/fhir-types"}
)
"""Systems whose codes name FHIR resource types (R4 ``provision.class``, R5 ``resourceType``)."""


class Verdict(StrEnum):
    """A decision: consent-provision-type codes."""

    PERMIT = "permit"
    DENY = "deny"

    def negated(self) -> Verdict:
        """The opposite decision (an R5 nested provision level)."""
        return Verdict.DENY if self is Verdict.PERMIT else Verdict.PERMIT


STATUS_CODES: dict[str, frozenset[str]] = {
    "R4B": frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}),
    "R5": frozenset({"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}),
}
"""Valid ``Consent.status`` codes per release."""

STATUS_IN_FORCE = "active"
STATUS_WITHDRAWN = "inactive"

SCOPES_OF_DATA_USE = frozenset({"research", "patient-privacy"})
"""R4 scopes that govern use of data; ``treatment`` and ``adr`` consents do not."""
SCOPE_CODES = frozenset({"adr", "research", "patient-privacy", "treatment"})

POLICY_RULE_BASE: dict[str, Verdict] = {
    "OPTIN": Verdict.PERMIT,
    "OPTINR": Verdict.PERMIT,
    "OPTOUT": Verdict.DENY,
    "OPTOUTE": Verdict.DENY,
}
"""Base decision of an R4 consent whose root provision has no ``type``, by ``policyRule``."""

DATA_MEANINGS = frozenset({"instance", "related", "dependents", "authoredby"})

ACTION_CODES = frozenset({"collect", "access", "use", "disclose", "correct"})
PERMIT_ACTIONS_COVERING_USE = frozenset({"access", "use"})
"""A permit naming one of these actions covers training on the data (which reads and uses it)."""
DENY_ACTIONS_TOUCHING_USE = frozenset({"access", "use", "disclose"})
"""A deny naming one of these actions stops training (an update derived from the data leaves)."""

# v3-ActReason PurposeOfUse subtree: code -> parent (subsumedBy).
_PURPOSE_PARENT: dict[str, str | None] = {
    "PurposeOfUse": None,
    "HMARKT": "PurposeOfUse",
    "HOPERAT": "PurposeOfUse",
    "CAREMGT": "HOPERAT",
    "DONAT": "HOPERAT",
    "FRAUD": "HOPERAT",
    "GOV": "HOPERAT",
    "HACCRED": "HOPERAT",
    "HCOMPL": "HOPERAT",
    "HDECD": "HOPERAT",
    "HDIRECT": "HOPERAT",
    "HDM": "HOPERAT",
    "HLEGAL": "HOPERAT",
    "HOUTCOMS": "HOPERAT",
    "HPRGRP": "HOPERAT",
    "HQUALIMP": "HOPERAT",
    "HSYSADMIN": "HOPERAT",
    "LABELING": "HSYSADMIN",
    "METAMGT": "HSYSADMIN",
    "MEMADMIN": "HOPERAT",
    "MILCDM": "HOPERAT",
    "PATADMIN": "HOPERAT",
    "PATSFTY": "HOPERAT",
    "PERFMSR": "HOPERAT",
    "RECORDMGT": "HOPERAT",
    "SYSDEV": "HOPERAT",
    "HTEST": "SYSDEV",
    "TRAIN": "HOPERAT",
    "HPAYMT": "PurposeOfUse",
    "CLMATTCH": "HPAYMT",
    "COVAUTH": "HPAYMT",
    "COVERAGE": "HPAYMT",
    "ELIGDTRM": "COVERAGE",
    "ELIGVER": "COVERAGE",
    "ENROLLM": "COVERAGE",
    "MILDCRG": "COVERAGE",
    "REMITADV": "HPAYMT",
    "HRESCH": "PurposeOfUse",
    "BIORCH": "HRESCH",
    "CLINTRCH": "HRESCH",
    "CLINTRCHNPC": "CLINTRCH",
    "CLINTRCHPC": "CLINTRCH",
    "PRECLINTRCH": "CLINTRCH",
    "DSRCH": "HRESCH",
    "POARCH": "HRESCH",
    "TRANSRCH": "HRESCH",
    "PATRQT": "PurposeOfUse",
    "FAMRQT": "PATRQT",
    "PWATRNY": "PATRQT",
    "SUPNWK": "PATRQT",
    "PUBHLTH": "PurposeOfUse",
    "DISASTER": "PUBHLTH",
    "THREAT": "PUBHLTH",
    "TREAT": "PurposeOfUse",
    "CLINTRL": "TREAT",
    "COC": "TREAT",
    "ETREAT": "TREAT",
    "BTG": "ETREAT",
    "ERTREAT": "ETREAT",
    "POPHLTH": "TREAT",
}

PURPOSE_CODES = frozenset(_PURPOSE_PARENT)
"""Every v3-ActReason code accepted as a purpose of use."""


@cache
def purpose_ancestors(code: str) -> frozenset[str]:
    """The code and every code that subsumes it (``CLINTRCH`` → CLINTRCH, HRESCH, PurposeOfUse).

    Raises
    ------
    KeyError
        If ``code`` is not a PurposeOfUse code.
    """
    found = {code}
    parent = _PURPOSE_PARENT[code]
    while parent is not None:
        found.add(parent)
        parent = _PURPOSE_PARENT[parent]
    return frozenset(found)


def purpose_subsumes(general: str, specific: str) -> bool:
    """Whether ``general`` is ``specific`` or one of its ancestors (HRESCH subsumes CLINTRCH)."""
    return general in purpose_ancestors(specific)


def purposes_overlap(one: str, other: str) -> bool:
    """Whether either purpose subsumes the other (the test a deny uses: fail closed)."""
    return purpose_subsumes(one, other) or purpose_subsumes(other, one)


def is_purpose_code(code: str) -> bool:
    """Whether ``code`` is a known PurposeOfUse code of v3-ActReason."""
    return code in PURPOSE_CODES
