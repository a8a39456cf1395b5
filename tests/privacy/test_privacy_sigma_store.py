"""σ kept on disk: reused only when it verifies for exactly the same inputs (fail closed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedtwin.privacy.accountant import (
    AccountantKind,
    MechanismSteps,
    calibrate_noise_multiplier,
    epsilon_spent,
)
from fedtwin.privacy.sigma_store import FOLDER, stored_noise_multiplier

INPUTS: dict[str, Any] = {
    "target_epsilon": 4.0,
    "delta": 1e-5,
    "sample_rate": 0.05,
    "steps": 60,
    "accountant": AccountantKind.RDP,
}


class Counting:
    """The real calibration, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **inputs: Any) -> float:
        self.calls += 1
        return calibrate_noise_multiplier(**inputs)


def _file(state: Path) -> Path:
    (path,) = (state / FOLDER).glob("*.json")
    return path


def test_a_stored_sigma_is_reused_for_the_same_inputs(tmp_path: Path) -> None:
    calibrate = Counting()
    first = stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    second = stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    assert first == second and calibrate.calls == 1
    planned = MechanismSteps(noise_multiplier=first, sample_rate=0.05, steps=60)
    assert epsilon_spent((planned,), 1e-5, AccountantKind.RDP) <= 4.0


@pytest.mark.parametrize(
    "change",
    [
        {"target_epsilon": 3.0},
        {"steps": 90},
        {"sample_rate": 0.06},
        {"prior": (MechanismSteps(noise_multiplier=2.0, sample_rate=0.05, steps=30),)},
    ],
)
def test_other_inputs_search_again(tmp_path: Path, change: dict[str, Any]) -> None:
    calibrate = Counting()
    stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    other = stored_noise_multiplier(tmp_path, calibrate, **{**INPUTS, **change})
    assert calibrate.calls == 2
    assert other == calibrate_noise_multiplier(**{**INPUTS, **change})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda doc: {**doc, "noise_multiplier": doc["noise_multiplier"] / 2},  # would overspend
        lambda doc: {**doc, "noise_multiplier": -1.0},
        lambda doc: {**doc, "noise_multiplier": "1.5"},
        lambda doc: {**doc, "key": "0" * 64},
        lambda doc: [],
    ],
)
def test_a_stored_value_that_does_not_verify_is_searched_again_and_replaced(
    tmp_path: Path, tamper: Any
) -> None:
    calibrate = Counting()
    right = stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    path = _file(tmp_path)
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    assert stored_noise_multiplier(tmp_path, calibrate, **INPUTS) == right
    assert calibrate.calls == 2
    assert json.loads(path.read_text())["noise_multiplier"] == right


def test_an_unreadable_store_only_costs_a_search(tmp_path: Path) -> None:
    calibrate = Counting()
    stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    _file(tmp_path).write_bytes(b"\xff\x00not json")
    stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    assert stored_noise_multiplier(blocked, calibrate, **INPUTS) > 0  # cannot store: still σ
    assert calibrate.calls == 3
