"""The report's invariant: read = used + rejected, or it does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fedtwin.errors import IngestError
from fedtwin.fhir import ErrorClass, IngestPolicy, Rejection, ResourceCounts
from fedtwin.fhir.report import NEVER_FATAL, Tally


def test_counts_that_do_not_add_up_are_refused() -> None:
    with pytest.raises(ValidationError, match="read 5 != used 3 \\+ rejected 1"):
        ResourceCounts(read=5, used=3, rejected=1, rejected_by_reason={ErrorClass.UNIT: 1})
    with pytest.raises(ValidationError, match="per-reason"):
        ResourceCounts(read=4, used=3, rejected=1, rejected_by_reason={})


@given(outcomes=st.lists(st.sampled_from([None, *ErrorClass]), max_size=50))
def test_lenient_tally_always_adds_up(outcomes: list[ErrorClass | None]) -> None:
    tally = Tally(IngestPolicy.lenient())
    for line, outcome in enumerate(outcomes, start=1):
        tally.read("Observation")
        if outcome is None:
            tally.use("Observation")
        else:
            tally.reject("Observation", Rejection(outcome, Path("O.ndjson"), line, "why"))
    counts = tally.counts().get("Observation")
    if outcomes:
        assert counts is not None
        assert counts.read == len(outcomes) == counts.used + counts.rejected


def test_strict_stops_at_a_fatal_class_but_counts_never_fatal_ones() -> None:
    tally = Tally(IngestPolicy.strict())
    for error_class in NEVER_FATAL:
        tally.reject("Observation", Rejection(error_class, Path("O.ndjson"), 1, "fine"))
    with pytest.raises(IngestError, match=r"^O.ndjson:7: bad unit$"):
        tally.reject("Observation", Rejection(ErrorClass.UNIT, Path("O.ndjson"), 7, "bad unit"))
