"""The validated-shape cache accepts exactly what fhir.resources accepts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedtwin.fhir.fastpath import ShapeCache
from fedtwin.fhir.ndjson import FhirVersion, model_class

VARIABLE = (
    ("id",),
    ("subject", "reference"),
    ("effectiveDateTime",),
    ("effectivePeriod", "start"),
    ("valueQuantity", "value"),
)
MEMO = (("subject", "reference"), ("effectiveDateTime",), ("valueQuantity", "value"))
BASE: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "g-1",
    "status": "final",
    "category": [{"coding": [{"system": "http://x.org/cat", "code": "laboratory"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-05-01T08:00:00Z",
    "valueQuantity": {
        "value": 120.5,
        "unit": "mg/dL",
        "system": "http://unitsofmeasure.org",
        "code": "mg/dL",
    },
}
PATHS = {
    "id": ("id",),
    "reference": ("subject", "reference"),
    "time": ("effectiveDateTime",),
    "value": ("valueQuantity", "value"),
}

# Leaf values near the edges of the FHIR primitive rules: ids, references, date-times, decimals.
TEXT = st.one_of(
    st.from_regex(r"[A-Za-z0-9\-.]{1,70}", fullmatch=True),
    st.from_regex(
        r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?)?)?(Z|[+-]\d{2}:\d{2})?",
        fullmatch=True,
    ),
    st.sampled_from(["", " ", "Patient/", "Patient/p 1", "2024-02-30T08:00:00Z", "x\ny", "NaN"]),
    st.text(max_size=12),
)
NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALID_ID = st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)
VALID_REFERENCE = VALID_ID.map(lambda i: f"Patient/{i}")
VALID_TIME = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
VALID_DECIMAL = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False))


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid, an edge case otherwise (so that both outcomes occur often)."""
    return st.one_of(valid, valid, valid, valid, valid, valid, TEXT, NUMBER)


LEAVES = {
    "id": _mostly(VALID_ID),
    "reference": _mostly(VALID_REFERENCE),
    "time": _mostly(VALID_TIME),
    "value": _mostly(VALID_DECIMAL),
}
ANY_JSON = st.one_of(
    TEXT,
    NUMBER,
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _fully_valid(resource: dict[str, Any]) -> bool:
    try:
        model_class("Observation", FhirVersion.R4B).model_validate(resource)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _set(resource: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = resource
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@pytest.fixture(scope="module")
def cache() -> ShapeCache:
    found = ShapeCache("Observation", FhirVersion.R4B, VARIABLE, MEMO)
    found.learn(copy.deepcopy(BASE), "plan")
    return found


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(leaves=st.fixed_dictionaries(LEAVES))
def test_fast_path_agrees_with_full_validation_on_variable_leaves(
    cache: ShapeCache, leaves: dict[str, Any]
) -> None:
    resource = copy.deepcopy(BASE)
    for name, value in leaves.items():
        _set(resource, PATHS[name], value)
    accepted, _ = cache.match(resource)
    full = _fully_valid(resource)
    same_types = all(isinstance(leaves[k], str) for k in ("id", "reference", "time"))
    if same_types and type(leaves["value"]) in (int, float):
        # Same shape, leaves of the template's JSON types: the cache decides like the model.
        assert accepted == full
    assert not accepted or full


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        [
            ("status",),
            ("id",),
            ("subject", "reference"),
            ("subject", "display"),
            ("effectiveDateTime",),
            ("effectivePeriod",),
            ("valueQuantity", "value"),
            ("valueQuantity", "code"),
            ("issued",),
            ("code",),
            ("category",),
        ]
    ),
    value=ANY_JSON,
    drop=st.booleans(),
)
def test_fast_path_never_accepts_what_fhir_rejects(
    cache: ShapeCache, path: tuple[str, ...], value: Any, drop: bool
) -> None:
    resource = copy.deepcopy(BASE)
    if drop and path[-1] in _parent(resource, path):
        del _parent(resource, path)[path[-1]]
    else:
        _set(resource, path, value)
    accepted, _ = cache.match(resource)
    assert not accepted or _fully_valid(resource)


def _parent(resource: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = resource
    for key in path[:-1]:
        node = node[key]
    return node


def test_fixed_numbers_keep_their_json_type() -> None:
    local = ShapeCache("Observation", FhirVersion.R4B, VARIABLE, MEMO)
    template = copy.deepcopy(BASE)
    template["referenceRange"] = [{"low": {"value": 1}}]
    local.learn(template, "plan")
    as_bool = copy.deepcopy(template)
    as_bool["referenceRange"][0]["low"]["value"] = True  # == 1 in Python, not a FHIR decimal
    assert local.match(copy.deepcopy(template))[0]
    assert not _fully_valid(as_bool)
    assert not local.match(as_bool)[0]


def test_unknown_shape_falls_back_to_full_validation(cache: ShapeCache) -> None:
    other = copy.deepcopy(BASE)
    other["code"]["coding"][0]["code"] = "105272-9"
    assert cache.match(other) == (False, None)
