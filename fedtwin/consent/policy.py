"""Consortium and site policies: closed, frozen documents, loaded from TOML, hashed when used.

Invariants:

* the pydantic models here are the source of truth; ``policies/schema/*.schema.json`` are
  generated from them (:mod:`fedtwin.consent.schema`) and a test fails when they drift;
* a policy is valid or it is not loaded: unknown keys, ε ≤ 0, δ outside (0, 1), an unknown
  purpose code or a window that ends before it starts are one-line :class:`ConfigError`
  ``<file>: <field>: <what>``; there is no default policy to fall back on (fail closed);
* :func:`policy_hash` is SHA-256 over the RFC 8785 canonical JSON of the *validated* model, so
  comments, key order and number spelling in the TOML file do not change it, and every value
  that does is covered.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import rfc8785
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fedtwin.consent.codes import PURPOSE_CODES
from fedtwin.consent.model import Regime, actor_key
from fedtwin.consent.timing import Interval
from fedtwin.errors import ConfigError


class TwinKind(StrEnum):
    """Kinds of twin a run may train (the twin registry's names)."""

    GLUCOSE = "glucose-twin"
    ONCOLOGY = "oncology-twin"


TWIN_DATA_CLASSES: dict[TwinKind, tuple[str, ...]] = {
    TwinKind.GLUCOSE: ("MedicationAdministration", "Observation", "Patient"),
    TwinKind.ONCOLOGY: ("MedicationAdministration", "Observation", "Patient", "Procedure"),
}
"""FHIR resource types each twin kind trains on: the data classes a consent must cover."""


def _known_purpose(code: str) -> str:
    if code not in PURPOSE_CODES:
        raise ValueError(f"unknown v3-ActReason purpose of use code {code!r}")
    return code


def _actor_reference(text: str) -> str:
    key = actor_key(text)
    if "/" not in key and "|" not in key:
        raise ValueError(f"{text!r} is not a FHIR reference (Type/id) or identifier (system|value)")
    return key


PurposeOfUse = Annotated[
    str,
    AfterValidator(_known_purpose),
    Field(json_schema_extra={"enum": sorted(PURPOSE_CODES)}),
]
"""A v3-ActReason PurposeOfUse code (``HRESCH`` healthcare research, ``TREAT`` …)."""
ActorReference = Annotated[
    str, Field(min_length=3, max_length=256), AfterValidator(_actor_reference)
]
"""A FHIR reference naming the recipient in consents (``Organization/fedtwin-consortium``)."""
PolicyVersion = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
PartyId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
StudyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
EpsilonPerPatient = Annotated[float, Field(gt=0, le=100)]
Delta = Annotated[float, Field(gt=0, lt=1)]
AppDigest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]

_CLOSED = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ConsortiumPolicy(BaseModel):
    """What the consortium's study may do, as every site agreed to it."""

    model_config = _CLOSED

    version: PolicyVersion = Field(description="version of this document; bump on any change")
    consortium_id: PartyId = Field(description="the coordinator's party id")
    study_id: StudyId = Field(description="the study every run of this policy belongs to")
    purpose: PurposeOfUse = Field(description="v3-ActReason purpose of use of the study")
    legal_basis: Annotated[str, Field(min_length=1, max_length=500)] = Field(
        description="legal basis as stated to patients and ethics boards"
    )
    actors: tuple[ActorReference, ...] = Field(
        min_length=1, description="FHIR references that name the consortium/study in consents"
    )
    twin_kinds: tuple[TwinKind, ...] = Field(min_length=1, description="twins the study trains")
    max_epsilon_per_patient: EpsilonPerPatient = Field(
        description="most ε per patient one run of the study may spend"
    )
    delta: Delta = Field(description="δ of every (ε, δ) guarantee of the study")
    min_round_spacing_minutes: Annotated[int, Field(ge=0, le=525_600)] = Field(
        description="least time between two rounds' consent snapshots"
    )
    retention_days: Annotated[int, Field(ge=1, le=36_500)] = Field(
        description="how long models, logs and checkpoints of a run are kept"
    )


class DataWindow(BaseModel):
    """Which records a site lets runs use: absolute bounds or a look-back from the round time."""

    model_config = _CLOSED

    start: AwareDatetime | None = Field(None, description="first moment of usable data")
    end: AwareDatetime | None = Field(None, description="end of usable data (exclusive)")
    lookback_days: Annotated[int, Field(ge=1, le=36_500)] | None = Field(
        None, description="instead of start: data of the last N days before the round"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataWindow:
        if self.start is not None and self.lookback_days is not None:
            raise ValueError("give start or lookback_days, not both")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end lies before start")
        return self

    def interval(self, at: datetime) -> Interval:
        """The data window for a round at ``at`` (never beyond ``at``: no data is newer)."""
        start = at - timedelta(days=self.lookback_days) if self.lookback_days else self.start
        end = min(self.end, at) if self.end is not None else at
        if start is not None and end < start:
            end = start
        return Interval(start, end)


class SitePolicy(BaseModel):
    """What one site allows: checked by the site itself before every round."""

    model_config = _CLOSED

    version: PolicyVersion = Field(description="version of this document; bump on any change")
    site_id: PartyId = Field(description="this site's party id")
    regime: Regime = Field(
        description="opt-in: consent required; opt-out: permit unless the patient objected"
    )
    accepted_purposes: tuple[PurposeOfUse, ...] = Field(
        min_length=1, description="purposes a run may have (a more specific code is accepted)"
    )
    accepted_twin_kinds: tuple[TwinKind, ...] = Field(min_length=1)
    max_epsilon_per_patient: EpsilonPerPatient = Field(
        description="most ε per patient this site will ever spend, over all studies"
    )
    max_delta: Delta = Field(description="largest δ the site accepts")
    min_eligible_patients_per_round: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        description="refuse a round when fewer patients are permitted"
    )
    trusted_consortia: tuple[PartyId, ...] = Field(
        min_length=1, description="consortium ids whose runs the site takes part in"
    )
    trusted_actors: tuple[ActorReference, ...] = Field(
        min_length=1, description="actor references a run may claim when consents are checked"
    )
    data_window: DataWindow = Field(
        default_factory=DataWindow, description="which records runs may use"
    )
    approved_app_hashes: tuple[AppDigest, ...] = Field(
        (),
        description="SHA-256 of the Flower app bundles the site reviewed (`fedtwin coordinator "
        "app-hash`); a deployed site refuses a run of any other bundle, so empty refuses all",
    )


Policy = TypeVar("Policy", SitePolicy, ConsortiumPolicy)


def policy_hash(policy: BaseModel) -> str:
    """``sha256:<hex>`` over the RFC 8785 canonical JSON of a validated policy."""
    canonical = rfc8785.dumps(policy.model_dump(mode="json"))
    return f"sha256:{hashlib.sha256(canonical).hexdigest()}"


def _error_line(path: Path, error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "document"
    if first["type"] == "extra_forbidden":
        return f"{path}: {field}: unknown key"
    if first["type"] == "missing":
        return f"{path}: {field}: required key is missing"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{path}: {field}: {message}"


def _load(path: Path, model: type[Policy]) -> Policy:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read policy ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: policy is not UTF-8") from error
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from error
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_error_line(path, error)) from error


def load_site_policy(path: Path) -> SitePolicy:
    """Read and validate a site policy (TOML).

    Raises
    ------
    ConfigError
        ``<file>: <field>: <what>`` when the file cannot be read or is not a valid site policy.
    """
    return _load(path, SitePolicy)


def load_consortium_policy(path: Path) -> ConsortiumPolicy:
    """Read and validate a consortium policy (TOML).

    Raises
    ------
    ConfigError
        ``<file>: <field>: <what>`` when the file cannot be read or is not a valid policy.
    """
    return _load(path, ConsortiumPolicy)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string is JSON-compatible
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to a policy document")


def policy_toml(policy: SitePolicy | ConsortiumPolicy, header: str = "") -> str:
    """The policy as a TOML document that :func:`load_site_policy` etc. read back equal.

    ``header`` lines are written as comments first (e.g. who generated the document).
    """
    document = policy.model_dump(mode="json", exclude_none=True)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = {key: value for key, value in document.items() if isinstance(value, dict)}
    lines += [
        f"{key} = {_toml_value(value)}" for key, value in document.items() if key not in tables
    ]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"
