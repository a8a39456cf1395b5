"""σ calibrations kept on the site's disk, so each deployed task does not search σ again.

A site plans one noise multiplier σ per run (:func:`fedtwin.federation.site_round.plan_noise`):
the smallest σ keeping the run, the study and the site within their ε caps, found by 5–7 PRV
accountant evaluations per cap. A long-lived simulation actor memoises it in memory; a deployed
site runs every task in a fresh process (:mod:`fedtwin.deploy.warm_executor`), so it searched
again in every round. This store keeps each answer in ``<state_dir>/sigma/`` under the SHA-256
of every input of the search (canonical JSON, RFC 8785) and the Opacus version.

Invariant (fail closed): a stored σ is used only after one accountant evaluation shows that it
keeps ε within the target for exactly these inputs; a stored value that is missing, unreadable,
for other inputs, out of range or too small is ignored and the search runs again (and its
answer replaces the file). Losing or deleting the folder only costs time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import rfc8785

from fedtwin.privacy.accountant import (
    MAX_NOISE_MULTIPLIER,
    AccountantKind,
    MechanismSteps,
    epsilon_spent,
)

FOLDER = "sigma"
_FORMAT = 1

Calibrate = Callable[..., float]


def _key(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantKind,
    prior: tuple[MechanismSteps, ...],
) -> str:
    import opacus

    document = {
        "format": _FORMAT,
        "opacus": opacus.__version__,
        "target_epsilon": target_epsilon,
        "delta": delta,
        "sample_rate": sample_rate,
        "steps": steps,
        "accountant": accountant.value,
        "prior": [[m.noise_multiplier, m.sample_rate, m.steps] for m in prior],
    }
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()


def _stored(path: Path, key: str) -> float | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("key") != key:
        return None
    sigma = document.get("noise_multiplier")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        return None
    sigma = float(sigma)
    return sigma if math.isfinite(sigma) and 0 < sigma <= MAX_NOISE_MULTIPLIER else None


def _store(path: Path, key: str, sigma: float) -> None:
    # Optional: a site that cannot write here only searches again next time.
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"key": key, "noise_multiplier": sigma}), encoding="utf-8")
        partial.replace(path)


def stored_noise_multiplier(
    state_dir: Path,
    calibrate: Calibrate,
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantKind,
    prior: tuple[MechanismSteps, ...] = (),
) -> float:
    """σ for these inputs: the stored one if it verifies, else ``calibrate(...)`` (then stored).

    ``calibrate`` takes the same keyword arguments (e.g. the memoised
    :func:`~fedtwin.privacy.accountant.calibrate_noise_multiplier`); its errors propagate and
    nothing is stored for them.
    """
    key = _key(target_epsilon, delta, sample_rate, steps, accountant, prior)
    path = state_dir / FOLDER / f"{key[:32]}.json"
    sigma = _stored(path, key)
    if sigma is not None:
        planned = MechanismSteps(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        if epsilon_spent((*prior, planned), delta, accountant) <= target_epsilon:
            return sigma
    sigma = calibrate(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        prior=prior,
    )
    _store(path, key, sigma)
    return sigma
