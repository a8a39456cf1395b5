"""Clarke error grid zones: known boundary points (Clarke et al. 1987) and properties."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.twins.clarke import (
    ClarkeZone,
    clarke_ab_fraction,
    clarke_zones,
    zone_fractions,
    zone_regions,
)

A, B, C, D, E = ClarkeZone

glucose = st.floats(min_value=0.0, max_value=600.0, allow_nan=False)
# Off every boundary line: integer part plus a fraction that no boundary expression (slopes
# 1, 0.8, 1.2, 1.4; offsets 110, 182; thresholds integers or 175/3) can map onto the other's.
off_boundary_x = st.integers(0, 500).map(lambda i: i + 0.37)
off_boundary_y = st.integers(0, 500).map(lambda j: j + 0.61)


@pytest.mark.parametrize(
    ("reference", "prediction", "zone"),
    [
        (100, 120, A),  # exactly +20 %
        (100, 121, B),
        (100, 80, A),  # exactly -20 %
        (100, 79, B),
        (50, 69, A),  # both hypoglycaemic
        (65, 79, D),  # above 6/5 x, left of 70
        (50, 100, D),  # x <= 175/3, prediction in range
        (240, 100, D),  # x >= 240, prediction in range
        (239, 100, B),
        (250, 71, D),
        (250, 181, B),
        (100, 210, C),  # y = x + 110
        (100, 209, B),
        (290, 400, C),  # right end of the upper C region
        (291, 401, B),
        (150, 28, C),  # y = 7/5 x - 182
        (150, 29, B),
        (180, 70, E),  # corner shared by the lower C and E regions: E wins
        (180, 71, B),
        (70, 180, E),  # corner shared by the upper C, D and E regions: E wins
        (50, 181, E),
        (250, 60, E),
    ],
)
def test_known_points_fall_in_the_published_zone(
    reference: float, prediction: float, zone: ClarkeZone
) -> None:
    assert clarke_zones(reference, prediction) == zone


@given(glucose)
def test_perfect_prediction_is_zone_a(value: float) -> None:
    assert clarke_zones(value, value) == A


@given(glucose, glucose)
def test_zone_e_is_symmetric_under_swapping_reference_and_prediction(x: float, y: float) -> None:
    assert (clarke_zones(x, y) == E) == (clarke_zones(y, x) == E)


@given(st.floats(0.0, 70.0), st.floats(0.0, 70.0))
def test_both_hypoglycaemic_is_zone_a_in_either_order(x: float, y: float) -> None:
    assert clarke_zones(x, y) == A
    assert clarke_zones(y, x) == A


@given(off_boundary_x, off_boundary_y)
def test_off_the_boundaries_exactly_one_region_holds(x: float, y: float) -> None:
    regions = zone_regions(x, y)
    held = [zone for zone, inside in regions.items() if bool(inside)]
    assert len(held) <= 1
    expected = held[0] if held else B
    assert clarke_zones(x, y) == expected


@given(st.lists(st.tuples(glucose, glucose), min_size=1, max_size=50))
def test_every_pair_gets_exactly_one_zone_and_batches_match_single_pairs(
    pairs: list[tuple[float, float]],
) -> None:
    reference = np.array([p[0] for p in pairs])
    prediction = np.array([p[1] for p in pairs])
    zones = clarke_zones(reference, prediction)
    assert zones.shape == reference.shape
    assert set(zones.tolist()) <= {int(z) for z in ClarkeZone}
    assert [int(clarke_zones(x, y)) for x, y in pairs] == zones.tolist()
    fractions = zone_fractions(reference, prediction)
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert fractions[A] == pytest.approx(float(np.mean(zones == A)))


def test_ab_fraction_counts_zones_a_and_b_only() -> None:
    reference = np.array([100.0, 100.0, 100.0, 250.0])
    prediction = np.array([100.0, 130.0, 210.0, 60.0])  # A, B, C, E
    assert clarke_ab_fraction(reference, prediction) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_glucose_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="glucose"):
        clarke_zones([100.0, bad], [100.0, 100.0])
