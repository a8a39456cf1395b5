"""What an ingest read, used and rejected, and the policy that decides stop-or-count.

Invariants:

* every record (one NDJSON line, one CSV row) that is read ends up either *used* or *rejected*
  with exactly one :class:`ErrorClass`; :class:`IngestReport` refuses to exist unless
  ``read == used + rejected`` holds for every resource type and the per-class counts add up;
* a record is rejected through :meth:`Tally.reject`, which raises :class:`IngestError` at once
  when the policy says ``strict`` for that class, so a strict ingest stops at the first bad
  record and never returns a partial result;
* no message and no report field carries a patient identifier or a resource id: a rejection
  names the file, the line and what is wrong.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedtwin.errors import IngestError

#: How many rejection lines a report keeps as examples (the counts are always complete).
MAX_EXAMPLES = 20

Action = Literal["strict", "lenient"]


class ErrorClass(StrEnum):
    """Why a record was not used. The value is what reports and ``--json`` show."""

    INVALID_JSON = "invalid_json"
    FHIR_INVALID = "fhir_invalid"
    WRONG_RESOURCE_TYPE = "wrong_resource_type"
    UNKNOWN_PATIENT = "unknown_patient"
    UNIT = "unit"
    DUPLICATE_ID = "duplicate_id"
    OUT_OF_RANGE = "out_of_range"
    TIMESTAMP = "timestamp"
    MISSING_ELEMENT = "missing_element"
    BAD_VALUE = "bad_value"
    EMPTY_FILE = "empty_file"
    UNREADABLE_FILE = "unreadable_file"
    # Not errors: valid records outside what fedtwin reads. Counted, never fatal.
    NOT_IN_PROFILE = "not_in_profile"
    EXCLUDED_STATUS = "excluded_status"
    NO_VALUE = "no_value"
    SAME_BIN = "same_bin"
    SUPERSEDED = "superseded"
    OUTSIDE_SPAN = "outside_span"
    INSUFFICIENT_DATA = "insufficient_data"


#: Classes that describe valid data fedtwin does not use; no policy makes them fatal.
NEVER_FATAL: frozenset[ErrorClass] = frozenset(
    {
        ErrorClass.NOT_IN_PROFILE,
        ErrorClass.EXCLUDED_STATUS,
        ErrorClass.NO_VALUE,
        ErrorClass.SAME_BIN,
        ErrorClass.SUPERSEDED,
        ErrorClass.OUTSIDE_SPAN,
        ErrorClass.INSUFFICIENT_DATA,
    }
)


class IngestPolicy(BaseModel):
    """Stop (``strict``) or reject-count-continue (``lenient``) per error class.

    Parameters
    ----------
    default : {"strict", "lenient"}
        Action for every class not named in ``per_class``.
    per_class : dict[ErrorClass, {"strict", "lenient"}]
        Overrides. Classes in :data:`NEVER_FATAL` are always counted and never stop.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: Action = "strict"
    per_class: dict[ErrorClass, Action] = Field(default_factory=dict)

    @classmethod
    def strict(cls) -> IngestPolicy:
        """Stop at the first invalid record (the default of ``fedtwin site check``)."""
        return cls(default="strict")

    @classmethod
    def lenient(cls) -> IngestPolicy:
        """Reject invalid records, count them and carry on."""
        return cls(default="lenient")

    def is_fatal(self, error_class: ErrorClass) -> bool:
        """Whether a record of this class stops the ingest."""
        if error_class in NEVER_FATAL:
            return False
        return self.per_class.get(error_class, self.default) == "strict"


@dataclass(frozen=True)
class Rejection:
    """One rejected record: where it is and why (never what it contains)."""

    error_class: ErrorClass
    file: Path
    line: int
    reason: str

    @property
    def message(self) -> str:
        """``<file>:<line>: <reason>`` (line 0 means the file as a whole)."""
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        return f"{where}: {self.reason}"


class ResourceCounts(BaseModel):
    """Counts for one resource type (or ``DeviceCSV`` rows)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    read: int = Field(ge=0)
    used: int = Field(ge=0)
    rejected: int = Field(ge=0)
    rejected_by_reason: dict[ErrorClass, int]

    @model_validator(mode="after")
    def _counts_add_up(self) -> ResourceCounts:
        if self.read != self.used + self.rejected:
            raise ValueError(f"read {self.read} != used {self.used} + rejected {self.rejected}")
        if sum(self.rejected_by_reason.values()) != self.rejected:
            raise ValueError("per-reason rejections do not add up to rejected")
        return self


class SamplingGaps(BaseModel):
    """CGM sampling of the usable patients on the 5-minute grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grid_bins: int = Field(ge=0, description="bins of all usable series together")
    observed_bins: int = Field(ge=0, description="bins with a CGM reading")
    coverage: float = Field(ge=0.0, le=1.0)
    gaps_over_30_min: int = Field(ge=0, description="runs of missing readings longer than 30 min")
    longest_gap_min: int = Field(ge=0)


class IngestReport(BaseModel):
    """What one ingest read, used and rejected, and what came out of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="folder or file name (never a patient identifier)")
    policy: IngestPolicy
    resources: dict[str, ResourceCounts]
    patients_found: int = Field(ge=0)
    patients_usable: int = Field(ge=0)
    time_start: str | None = Field(description="earliest used record, ISO 8601 UTC")
    time_end: str | None = Field(description="latest used record, ISO 8601 UTC")
    sampling: SamplingGaps
    notes: tuple[str, ...] = ()
    examples: tuple[str, ...] = Field((), description=f"first {MAX_EXAMPLES} rejection lines")

    @property
    def usable(self) -> bool:
        """Whether at least one patient can be used."""
        return self.patients_usable > 0

    @property
    def read(self) -> int:
        """Records read over all resource types."""
        return sum(c.read for c in self.resources.values())

    @property
    def used(self) -> int:
        """Records used over all resource types."""
        return sum(c.used for c in self.resources.values())

    @property
    def rejected(self) -> int:
        """Records rejected over all resource types."""
        return sum(c.rejected for c in self.resources.values())


class Tally:
    """Mutable counts of one ingest, and the place where the policy is applied.

    Parameters
    ----------
    policy : IngestPolicy
        Decides whether a rejection stops the ingest.
    """

    def __init__(self, policy: IngestPolicy) -> None:
        self.policy = policy
        self._read: Counter[str] = Counter()
        self._used: Counter[str] = Counter()
        self._rejected: dict[str, Counter[ErrorClass]] = {}
        self.examples: list[str] = []
        self.notes: list[str] = []

    def read(self, resource_type: str, count: int = 1) -> None:
        """Count records read."""
        self._read[resource_type] += count

    def use(self, resource_type: str, count: int = 1) -> None:
        """Count records used."""
        self._used[resource_type] += count

    def reject(self, resource_type: str, rejection: Rejection) -> None:
        """Count one rejected record, or stop if the policy says so.

        Raises
        ------
        IngestError
            ``<file>:<line>: <reason>`` when the class is fatal under the policy.
        """
        if self.policy.is_fatal(rejection.error_class):
            raise IngestError(rejection.message)
        self._rejected.setdefault(resource_type, Counter())[rejection.error_class] += 1
        if len(self.examples) < MAX_EXAMPLES and rejection.error_class not in NEVER_FATAL:
            self.examples.append(rejection.message)

    def reject_many(self, resource_type: str, error_class: ErrorClass, count: int) -> None:
        """Count ``count`` records of a never-fatal class at once (no per-line message)."""
        if error_class not in NEVER_FATAL:
            raise ValueError(f"{error_class} must be rejected record by record")
        if count:
            self._rejected.setdefault(resource_type, Counter())[error_class] += count

    def file_problem(self, error_class: ErrorClass, message: str) -> None:
        """A problem with a whole file (empty, unreadable): stop, or keep it as a note.

        Raises
        ------
        IngestError
            ``message`` when the class is fatal under the policy.
        """
        if self.policy.is_fatal(error_class):
            raise IngestError(message)
        self.notes.append(message)

    def counts(self) -> dict[str, ResourceCounts]:
        """Per-type counts, validated (``read == used + rejected``)."""
        types = sorted(set(self._read) | set(self._used) | set(self._rejected))
        result: dict[str, ResourceCounts] = {}
        for name in types:
            by_reason = dict(sorted(self._rejected.get(name, Counter()).items()))
            result[name] = ResourceCounts(
                read=self._read[name],
                used=self._used[name],
                rejected=sum(by_reason.values()),
                rejected_by_reason=by_reason,
            )
        return result
