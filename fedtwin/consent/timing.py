"""FHIR dates and periods as half-open UTC intervals, so every time test is one comparison.

Invariants:

* a FHIR ``date``/``dateTime`` of any precision denotes the interval ``[lo, hi)`` it covers:
  ``"2026"`` is the whole year, ``"2026-03"`` the month, ``"2026-03-01"`` the day (UTC), and a
  full ``dateTime`` the instant itself (``hi`` one microsecond later, so an ``end`` is inclusive);
* a ``Period`` is ``[lo(start), hi(end))``; a missing bound is unbounded (``None``), as FHIR says
  ("an ongoing period"); a period whose end lies before its start is refused, never reordered;
* a date without a time zone (a date-only or partial value) is read in UTC;
* a moment in time used for ordering (``Consent.dateTime`` / ``Consent.date``) is ``lo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

_YEAR = re.compile(r"^(\d{4})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_INSTANT = timedelta(microseconds=1)


class TimeValueError(ValueError):
    """A FHIR time value cannot be read (its message names what is wrong, not where)."""


@dataclass(frozen=True, order=True)
class Interval:
    """A half-open time interval ``[start, end)`` in UTC; ``None`` is unbounded on that side."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` lies in the interval."""
        if self.start is not None and moment < self.start:
            return False
        return self.end is None or moment < self.end

    def covers(self, other: Interval) -> bool:
        """Whether ``other`` lies wholly inside this interval (an unbounded side is infinite)."""
        if self.start is not None and (other.start is None or other.start < self.start):
            return False
        return self.end is None or (other.end is not None and other.end <= self.end)

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share at least one moment."""
        starts_before_other_ends = self.start is None or other.end is None or self.start < other.end
        ends_after_other_starts = self.end is None or other.start is None or other.start < self.end
        return starts_before_other_ends and ends_after_other_starts

    def describe(self) -> str:
        """``start → end`` in ISO form, ``…`` for an open side."""
        start = self.start.isoformat() if self.start else "…"
        end = self.end.isoformat() if self.end else "…"
        return f"{start} → {end}"


UNBOUNDED = Interval()


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _next_month(year: int, month: int) -> datetime:
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def value_interval(value: Any) -> Interval:
    """The interval a FHIR ``date``/``dateTime`` value denotes.

    Parameters
    ----------
    value : str, date or datetime
        As fhir.resources gives it: ``str`` for a year or year-month, ``date`` for a full date,
        ``datetime`` (timezone-aware) for a date-time.

    Raises
    ------
    TimeValueError
        If the value has none of these forms or a date-time has no UTC offset.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TimeValueError("date-time has no UTC offset")
        moment = value.astimezone(UTC)
        return Interval(moment, moment + _INSTANT)
    if isinstance(value, date):
        start = _utc_midnight(value)
        return Interval(start, start + timedelta(days=1))
    if isinstance(value, str):
        if match := _YEAR.match(value):
            year = int(match.group(1))
            return Interval(datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC))
        if match := _MONTH.match(value):
            year, month = int(match.group(1)), int(match.group(2))
            if not 1 <= month <= 12:
                raise TimeValueError(f"month {month} out of range")
            return Interval(datetime(year, month, 1, tzinfo=UTC), _next_month(year, month))
    raise TimeValueError(f"not a FHIR date or dateTime ({type(value).__name__})")


def moment_of(value: Any) -> datetime:
    """The moment used to order a value in time: the start of the interval it denotes."""
    start = value_interval(value).start
    assert start is not None  # a single value always has both bounds
    return start


def period_interval(period: Any) -> Interval:
    """The interval of a FHIR ``Period`` (or ``None`` → unbounded).

    Raises
    ------
    TimeValueError
        If a bound cannot be read or the end lies before the start.
    """
    if period is None:
        return UNBOUNDED
    start = value_interval(period.start).start if period.start is not None else None
    end = value_interval(period.end) if period.end is not None else None
    if start is not None and end is not None and end.start is not None and end.start < start:
        raise TimeValueError("period ends before it starts")
    return Interval(start, end.end if end is not None else None)


def parse_instant(text: str) -> datetime:
    """Read an ISO 8601 date or date-time given by a user; a date means its UTC midnight.

    Raises
    ------
    TimeValueError
        If the text is not ISO 8601 or is a date-time without a UTC offset.
    """
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise TimeValueError(f"{text!r} is not an ISO 8601 date or date-time") from error
    if len(text) == 10:  # YYYY-MM-DD
        return _utc_midnight(parsed.date())
    if parsed.tzinfo is None:
        raise TimeValueError(f"{text!r} has no UTC offset (write e.g. 2026-03-01T09:00:00Z)")
    return parsed.astimezone(UTC)
