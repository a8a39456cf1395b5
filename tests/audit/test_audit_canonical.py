"""Leaf bytes are RFC 8785: identical to the rfc8785 package for every JSON value."""

from __future__ import annotations

import math

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.audit.canonical import CanonicalizationError, canonical_json

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_equal_the_rfc8785_package(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(st.floats(min_value=1e-8, max_value=1e-3) | st.floats(min_value=1e15, max_value=1e22))
def test_floats_near_the_notation_switches_equal_the_rfc8785_package(value: float) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(-value) == rfc8785.dumps(-value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-5, b"0.00001"),
        (8.0, b"8"),
        (1e21, b"1e+21"),
        (1e16, b"10000000000000000"),
        (-0.0, b"0"),
        (0.1 + 0.2, b"0.30000000000000004"),
        (1e-7, b"1e-7"),
        (9.99e-5, b"0.0000999"),
        (-1.5e-5, b"-0.000015"),
        (1e-6, b"0.000001"),
        (9.999999e-7, b"9.999999e-7"),
        ({"b": 1, "a": [True, None]}, b'{"a":[true,null],"b":1}'),
        ("é\n\u2028\x1f", '"é\\n\u2028\\u001f"'.encode()),
        ({"\U0001f600": 1, "\ufb01": 2}, '{"\U0001f600":1,"\ufb01":2}'.encode()),
    ],
)
def test_known_canonical_forms(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, 2**53, {1: "x"}, "\ud800", b"raw"])
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(value)
