"""Patient-level differential privacy: the only package that imports Opacus."""

from fedtwin.privacy.accountant import (
    AccountantKind,
    MechanismSteps,
    calibrate_noise_multiplier,
    epsilon_spent,
    poisson_sample_rate,
)
from fedtwin.privacy.engine import DpSgdConfig, PrivateRoundResult, train_private_round
from fedtwin.privacy.ledger import LedgerCheck, PrivacyLedger, SpendEvent

__all__ = [
    "AccountantKind",
    "DpSgdConfig",
    "LedgerCheck",
    "MechanismSteps",
    "PrivacyLedger",
    "PrivateRoundResult",
    "SpendEvent",
    "calibrate_noise_multiplier",
    "epsilon_spent",
    "poisson_sample_rate",
    "train_private_round",
]
