"""σ calibrations kept on the site's disk, so each deployed task does not search σ again.

A site plans one noise multiplier σ per run (:func:`fedtwin.federation.site_round.plan_noise`):
the smallest σ keeping the run, the study and the site within their ε caps, found by 5–7 PRV
accountant evaluations per cap. A long-lived simulation actor memoises it in memory; a deployed
site runs every task in a fresh process (:mod:`fedtwin.deploy.warm_executor`), so it searched
again in every round. This store keeps each answer in ``<state_dir>/sigma/`` under the SHA-256
of every input of the search (canonical JSON, RFC 8785) and the Opacus version.

Invariant (fail closed): a stored σ is used only after one accountant evaluation shows that it
keeps ε within the target for exactly these inputs (in this process, or in the warm executor's
parent process it was forked from: :func:`verify_stored`); a stored value that is missing,
unreadable, for other inputs, out of range or too small is ignored and the search runs again
(and its answer replaces the file). Losing or deleting the folder only costs time.
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedtwin.privacy.accountant import (
    MAX_NOISE_MULTIPLIER,
    AccountantKind,
    MechanismSteps,
    epsilon_spent,
)

FOLDER = "sigma"
_FORMAT = 2

Calibrate = Callable[..., float]


class SigmaInputs(BaseModel):
    """Every input of one σ search; its canonical JSON's SHA-256 names the stored answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = _FORMAT
    opacus: str
    target_epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)
    accountant: AccountantKind
    prior: tuple[MechanismSteps, ...] = ()

    def key(self) -> str:
        """SHA-256 (hex) of the RFC 8785 canonical JSON of these inputs."""
        return hashlib.sha256(rfc8785.dumps(self.model_dump(mode="json"))).hexdigest()

    def verifies(self, sigma: float) -> bool:
        """Whether σ keeps ε within the target for these inputs (one accountant evaluation)."""
        planned = MechanismSteps(
            noise_multiplier=sigma, sample_rate=self.sample_rate, steps=self.steps
        )
        spent = epsilon_spent((*self.prior, planned), self.delta, self.accountant)
        return spent <= self.target_epsilon


_checked: dict[tuple[str, float], bool] = {}
"""Outcome of the accountant evaluation of (key, σ) in this process, or in the parent it was
forked from (a warm executor checks the stored σ values once; its tasks inherit this)."""


def _verified(inputs: SigmaInputs, key: str, sigma: float) -> bool:
    if (key, sigma) not in _checked:
        _checked[key, sigma] = inputs.verifies(sigma)
    return _checked[key, sigma]


def _stored(path: Path) -> tuple[str, float, dict[str, object] | None] | None:
    """(key, σ, inputs document or None) of a stored file, or None if it is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("key"), str):
        return None
    sigma = document.get("noise_multiplier")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        return None
    sigma = float(sigma)
    if not (math.isfinite(sigma) and 0 < sigma <= MAX_NOISE_MULTIPLIER):
        return None
    inputs = document.get("inputs")
    return document["key"], sigma, inputs if isinstance(inputs, dict) else None


def _store(path: Path, inputs: SigmaInputs, sigma: float) -> None:
    # Optional: a site that cannot write here only searches again next time.
    document = {
        "key": inputs.key(),
        "noise_multiplier": sigma,
        "inputs": inputs.model_dump(mode="json"),
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(document), encoding="utf-8")
        partial.replace(path)


def verify_stored(state_dir: Path) -> int:
    """Check every stored σ not yet checked in this process; returns how many passed now.

    A file counts only if its recorded inputs hash to its key, were made with this Opacus
    version, and one accountant evaluation passes for them; anything else is skipped (the
    task that needs it evaluates, or searches, itself).
    """
    import opacus

    passed = 0
    folder = state_dir / FOLDER
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        stored = _stored(path)
        if stored is None or stored[2] is None:
            continue
        key, sigma, document = stored
        if (key, sigma) in _checked:
            continue
        try:
            inputs = SigmaInputs.model_validate(document)
        except ValidationError:
            continue
        if inputs.key() != key or inputs.opacus != opacus.__version__:
            continue
        passed += _verified(inputs, key, sigma)
    return passed


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
    import opacus

    arguments: dict[str, object] = {
        "target_epsilon": target_epsilon,
        "delta": delta,
        "sample_rate": sample_rate,
        "steps": steps,
        "accountant": accountant,
        "prior": prior,
    }
    inputs = SigmaInputs.model_validate({"opacus": opacus.__version__, **arguments})
    key = inputs.key()
    path = state_dir / FOLDER / f"{key[:32]}.json"
    stored = _stored(path)
    if stored is not None and stored[0] == key and _verified(inputs, key, stored[1]):
        return stored[1]
    sigma = calibrate(**arguments)
    _store(path, inputs, sigma)
    return sigma
