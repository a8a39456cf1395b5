"""Grid arithmetic: amounts spread over bins, spans, first reading per bin."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.fhir.series import first_per_bin, span_mask, spread_over_bins


@settings(max_examples=100, deadline=None)
@given(
    periods=st.lists(
        st.tuples(st.integers(0, 3000), st.integers(1, 3000), st.floats(0.0, 50.0)),
        min_size=1,
        max_size=6,
    )
)
def test_spreading_keeps_the_total_delivered(periods: list[tuple[int, int, float]]) -> None:
    t0 = np.array([p[0] for p in periods], dtype=np.float64)
    t1 = t0 + np.array([p[1] for p in periods], dtype=np.float64)
    amount = np.array([p[2] for p in periods])
    n_bins = int(np.ceil(t1.max() / 300)) + 1
    per_bin = spread_over_bins(t0, t1, amount, 0.0, n_bins, 300.0)
    np.testing.assert_allclose(per_bin.sum(), amount.sum(), rtol=1e-9, atol=1e-9)
    assert (per_bin >= -1e-12).all()


def test_period_share_is_proportional_to_overlap() -> None:
    per_bin = spread_over_bins(np.array([150.0]), np.array([750.0]), np.array([6.0]), 0.0, 3, 300.0)
    np.testing.assert_allclose(per_bin, [1.5, 3.0, 1.5])


def test_points_land_in_their_bin() -> None:
    t = np.array([0.0, 299.0, 300.0, 899.9])
    per_bin = spread_over_bins(t, t, np.ones(4), 0.0, 3, 300.0)
    assert per_bin.tolist() == [2.0, 1.0, 1.0]


def test_span_ends_in_the_bin_before_an_edge_aligned_period_end() -> None:
    mask = span_mask(np.array([300.0]), np.array([900.0]), 0.0, 5, 300.0)
    assert mask.tolist() == [False, True, True, False, False]


def test_first_per_bin_keeps_the_earliest_of_each_bin() -> None:
    assert first_per_bin(np.array([0, 0, 1, 3, 3, 3])).tolist() == [0, 2, 3]
