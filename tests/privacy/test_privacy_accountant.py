import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.errors import ConfigError
from fedtwin.privacy import (
    AccountantKind,
    MechanismSteps,
    calibrate_noise_multiplier,
    epsilon_spent,
    poisson_sample_rate,
)


def _analytic_gaussian_delta(epsilon: float, sigma: float) -> float:
    # Balle & Wang (ICML 2018), Theorem 8: the exact δ(ε) of one Gaussian mechanism with
    # sensitivity 1 and noise σ: Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ).
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    return phi(0.5 / sigma - epsilon * sigma) - math.exp(epsilon) * phi(
        -0.5 / sigma - epsilon * sigma
    )


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.0])
def test_prv_matches_the_analytic_gaussian_mechanism(sigma: float) -> None:
    # Golden values from a closed form: one unsubsampled step (q = 1) is the Gaussian mechanism.
    delta = 1e-5
    epsilon = epsilon_spent(
        [MechanismSteps(noise_multiplier=sigma, sample_rate=1.0, steps=1)],
        delta,
        AccountantKind.PRV,
    )
    assert _analytic_gaussian_delta(epsilon, sigma) <= delta * 1.01
    assert _analytic_gaussian_delta(epsilon - 0.05, sigma) > delta


def test_rdp_is_never_tighter_than_prv() -> None:
    history = [MechanismSteps(noise_multiplier=1.1, sample_rate=0.05, steps=300)]
    prv = epsilon_spent(history, 1e-5, AccountantKind.PRV)
    rdp = epsilon_spent(history, 1e-5, AccountantKind.RDP)
    assert 0 < prv <= rdp


@settings(max_examples=15, deadline=None)
@given(
    sigma=st.floats(0.7, 4.0),
    rate=st.floats(0.01, 0.5),
    steps=st.integers(1, 200),
)
def test_epsilon_grows_with_steps(sigma: float, rate: float, steps: int) -> None:
    def eps(n: int) -> float:
        return epsilon_spent(
            [MechanismSteps(noise_multiplier=sigma, sample_rate=rate, steps=n)],
            1e-5,
            AccountantKind.RDP,
        )

    assert eps(steps + 50) > eps(steps) > 0


def test_split_history_composes_like_one_block() -> None:
    one = [MechanismSteps(noise_multiplier=1.3, sample_rate=0.1, steps=90)]
    split = [MechanismSteps(noise_multiplier=1.3, sample_rate=0.1, steps=30)] * 3
    assert epsilon_spent(split, 1e-5, AccountantKind.RDP) == pytest.approx(
        epsilon_spent(one, 1e-5, AccountantKind.RDP)
    )


def test_calibrated_noise_meets_the_target_on_top_of_prior_spend() -> None:
    prior = (MechanismSteps(noise_multiplier=2.0, sample_rate=0.1, steps=100),)
    sigma = calibrate_noise_multiplier(4.0, 1e-5, 0.1, 200, AccountantKind.RDP, prior)
    planned = MechanismSteps(noise_multiplier=sigma, sample_rate=0.1, steps=200)
    assert epsilon_spent((*prior, planned), 1e-5, AccountantKind.RDP) <= 4.0
    looser = MechanismSteps(noise_multiplier=sigma - 0.05, sample_rate=0.1, steps=200)
    assert epsilon_spent((*prior, looser), 1e-5, AccountantKind.RDP) > 4.0


def test_calibration_refuses_when_prior_spend_exhausts_the_budget() -> None:
    prior = (MechanismSteps(noise_multiplier=0.5, sample_rate=1.0, steps=100),)
    with pytest.raises(ConfigError, match="no noise multiplier"):
        calibrate_noise_multiplier(1.0, 1e-5, 0.1, 10, AccountantKind.RDP, prior)


def test_prv_calibration_refuses_an_exhausted_history_without_searching() -> None:
    prior = (MechanismSteps(noise_multiplier=0.3, sample_rate=1.0, steps=5),)
    assert epsilon_spent(prior, 1e-5, AccountantKind.PRV) > 8.0
    with pytest.raises(ConfigError, match="no noise multiplier"):
        calibrate_noise_multiplier(8.0, 1e-5, 0.1, 30, AccountantKind.PRV, prior)


def test_sample_rate_is_what_opacus_derives() -> None:
    assert poisson_sample_rate(1000, 256) == 0.25
    assert poisson_sample_rate(100, 32) == 0.25
    assert poisson_sample_rate(10, 64) == 1.0


def test_rounds_at_one_noise_level_cost_one_term_and_the_same_epsilon() -> None:
    from opacus.accountants import RDPAccountant

    rounds = [MechanismSteps(noise_multiplier=1.3, sample_rate=0.05, steps=30)] * 5
    other = MechanismSteps(noise_multiplier=2.0, sample_rate=0.1, steps=10)
    reference = RDPAccountant()
    reference.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in [*rounds, other]]
    expected = float(reference.get_epsilon(delta=1e-5))
    merged = epsilon_spent([other, *rounds], 1e-5, AccountantKind.RDP)
    assert merged == pytest.approx(expected, rel=1e-9)
    one_term = [MechanismSteps(noise_multiplier=1.3, sample_rate=0.05, steps=150)]
    assert epsilon_spent(rounds, 1e-5, AccountantKind.PRV) == epsilon_spent(
        one_term, 1e-5, AccountantKind.PRV
    )


@settings(max_examples=10, deadline=None)
@given(
    target=st.floats(min_value=0.5, max_value=20),
    sample_rate=st.sampled_from([0.01, 0.05, 0.25, 1 / 3, 1.0]),
    steps=st.integers(min_value=1, max_value=2000),
)
def test_calibrated_noise_is_the_smallest_within_tolerance(
    target: float, sample_rate: float, steps: int
) -> None:
    sigma = calibrate_noise_multiplier(target, 1e-5, sample_rate, steps, AccountantKind.RDP)

    def eps(noise: float) -> float:
        planned = MechanismSteps(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
        return epsilon_spent([planned], 1e-5, AccountantKind.RDP)

    assert eps(sigma) <= target
    assert sigma <= 0.01 or eps(sigma - 0.01) > target
