"""Synthetic consents: valid FHIR, deterministic, and each scenario decides as documented."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fedtwin.consent import (
    DEFAULT_MIX,
    ConsentRecord,
    ConsentRequest,
    ConsentScenario,
    Regime,
    assign_scenarios,
    evaluate_all,
    record_from_json,
    synthetic_consents,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 7, 1, tzinfo=UTC)
IDS = [f"pt-{i:03d}" for i in range(70)]
REQUEST = ConsentRequest(
    purpose="HRESCH",
    actors=("Organization/fedtwin-consortium",),
    data_classes=("MedicationAdministration", "Observation", "Patient"),
    data_from=START - timedelta(days=365),
    data_to=START,
)
S = ConsentScenario

# Scenario → (decision at the study start, at its end) under each regime; R5 "treatment-only"
# denies everything but treatment, so it is a deny in both regimes.
EXPECTED: dict[tuple[str, Regime], dict[ConsentScenario, tuple[bool, bool]]] = {
    ("R4B", Regime.OPT_IN): {
        S.RESEARCH_OPT_IN: (True, True),
        S.RESEARCH_WITH_EXCEPTIONS: (True, True),
        S.TREATMENT_ONLY: (False, False),
        S.NEVER_CONSENTED: (False, False),
        S.WITHDRAWN: (True, False),
        S.OPTED_OUT: (False, False),
    },
    ("R4B", Regime.OPT_OUT): {
        S.RESEARCH_OPT_IN: (True, True),
        S.RESEARCH_WITH_EXCEPTIONS: (True, True),
        S.TREATMENT_ONLY: (True, True),
        S.NEVER_CONSENTED: (True, True),
        S.WITHDRAWN: (True, False),
        S.OPTED_OUT: (False, False),
    },
    ("R5", Regime.OPT_IN): {
        S.RESEARCH_OPT_IN: (True, True),
        S.RESEARCH_WITH_EXCEPTIONS: (True, True),
        S.TREATMENT_ONLY: (False, False),
        S.NEVER_CONSENTED: (False, False),
        S.WITHDRAWN: (True, False),
        S.OPTED_OUT: (False, False),
    },
    ("R5", Regime.OPT_OUT): {
        S.RESEARCH_OPT_IN: (True, True),
        S.RESEARCH_WITH_EXCEPTIONS: (True, True),
        S.TREATMENT_ONLY: (False, False),
        S.NEVER_CONSENTED: (True, True),
        S.WITHDRAWN: (True, False),
        S.OPTED_OUT: (False, False),
    },
}


def _records(resources: list[dict[str, Any]]) -> dict[str, list[ConsentRecord]]:
    grouped: dict[str, list[ConsentRecord]] = {}
    for line, resource in enumerate(resources, start=1):
        record = record_from_json(resource, line=line)
        grouped.setdefault(record.patient_id, []).append(record)
    return grouped


@pytest.mark.parametrize(("release", "regime"), sorted(EXPECTED, key=str))
def test_each_scenario_decides_as_documented(release: str, regime: Regime) -> None:
    resources = synthetic_consents(
        IDS,
        study_start=START,
        study_end=END,
        seed=11,
        fhir_version=release,  # type: ignore[arg-type]
    )
    records = _records(resources)
    scenarios = assign_scenarios(IDS, seed=11)
    at_start = evaluate_all(records, REQUEST, at=START, regime=regime, patient_ids=IDS)
    at_end = evaluate_all(records, REQUEST, at=END, regime=regime, patient_ids=IDS)
    for patient, scenario in scenarios.items():
        got = (at_start.decisions[patient].permitted, at_end.decisions[patient].permitted)
        if scenario is S.EXPIRED:
            assert not got[1] or regime is Regime.OPT_OUT, patient
            continue
        assert got == EXPECTED[(release, regime)][scenario], (patient, scenario)


def test_withdrawals_and_expiries_fall_inside_the_study() -> None:
    records = _records(synthetic_consents(IDS, study_start=START, study_end=END, seed=5))
    scenarios = assign_scenarios(IDS, seed=5)
    for patient, scenario in scenarios.items():
        if scenario is S.WITHDRAWN:
            latest = max(r.recorded for r in records[patient] if r.recorded is not None)
            assert START < latest < END
        if scenario is S.EXPIRED:
            [record] = records[patient]
            assert record.validity.end is not None and record.validity.end < END


def test_mix_is_kept_to_within_one_patient_per_scenario() -> None:
    counts = Counter(assign_scenarios(IDS, seed=3).values())
    total = sum(DEFAULT_MIX.values())
    for scenario, share in DEFAULT_MIX.items():
        assert abs(counts[scenario] - len(IDS) * share / total) < 1


def test_same_seed_same_consents_other_seed_other_dates() -> None:
    one = synthetic_consents(IDS, study_start=START, study_end=END, seed=1, fhir_version="mixed")
    again = synthetic_consents(IDS, study_start=START, study_end=END, seed=1, fhir_version="mixed")
    other = synthetic_consents(IDS, study_start=START, study_end=END, seed=2, fhir_version="mixed")
    assert one == again
    assert one != other
    assert {("subject" in r) for r in one} == {True, False}  # both releases drawn
