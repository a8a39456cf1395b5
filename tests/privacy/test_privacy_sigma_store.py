"""σ kept on disk: reused only when it verifies for exactly the same inputs (fail closed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedtwin.privacy import sigma_store
from fedtwin.privacy.accountant import (
    AccountantKind,
    MechanismSteps,
    calibrate_noise_multiplier,
    epsilon_spent,
)
from fedtwin.privacy.sigma_store import (
    FOLDER,
    SigmaInputs,
    stored_noise_multiplier,
    verify_stored,
)

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


class CountingEvaluations:
    """The real accountant evaluation of the store, counting its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        monkeypatch.setattr(sigma_store, "epsilon_spent", self)

    def __call__(self, *args: Any) -> float:
        self.calls += 1
        return epsilon_spent(*args)


def _new_process() -> None:
    """Nothing checked in this process's memory, as in a freshly started one."""
    sigma_store._checked.clear()


def test_a_parent_checks_each_stored_sigma_once_and_its_tasks_inherit_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calibrate = Counting()
    right = stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    _new_process()
    evaluations = CountingEvaluations(monkeypatch)
    assert verify_stored(tmp_path) == 1 and evaluations.calls == 1
    assert verify_stored(tmp_path) == 0 and evaluations.calls == 1  # already checked
    # A task forked afterwards uses it without an evaluation or a search of its own.
    assert stored_noise_multiplier(tmp_path, calibrate, **INPUTS) == right
    assert evaluations.calls == 1 and calibrate.calls == 1


def _retarget(doc: dict[str, Any]) -> dict[str, Any]:
    """σ halved and the recorded target raised to match, the key recomputed: consistent, but
    for other inputs than the ones the file is named for."""
    inputs = SigmaInputs.model_validate({**doc["inputs"], "target_epsilon": 40.0})
    return {
        "key": inputs.key(),
        "noise_multiplier": doc["noise_multiplier"] / 2,
        "inputs": inputs.model_dump(mode="json"),
    }


@pytest.mark.parametrize(
    ("tamper", "passes", "searches"),
    [
        (lambda doc: {**doc, "noise_multiplier": doc["noise_multiplier"] / 2}, 0, 2),
        (_retarget, 1, 2),  # verifies in the parent, but only for its own (other) inputs
        # The record of the inputs spoiled, key and σ intact: the parent cannot vouch for it,
        # the task's own evaluation for its own inputs still passes (no search).
        (lambda doc: {**doc, "inputs": {**doc["inputs"], "target_epsilon": 40.0}}, 0, 1),
        (lambda doc: {**doc, "inputs": {**doc["inputs"], "opacus": "0.0.1"}}, 0, 1),
        (lambda doc: {**doc, "inputs": {**doc["inputs"], "steps": -1}}, 0, 1),
        (lambda doc: {k: v for k, v in doc.items() if k != "inputs"}, 0, 1),
    ],
)
def test_a_stored_sigma_the_parent_cannot_vouch_for_is_checked_or_searched_by_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: Any, passes: int, searches: int
) -> None:
    calibrate = Counting()
    right = stored_noise_multiplier(tmp_path, calibrate, **INPUTS)
    path = _file(tmp_path)
    path.write_text(json.dumps(tamper(json.loads(path.read_text()))))
    _new_process()
    assert verify_stored(tmp_path) == passes
    evaluations = CountingEvaluations(monkeypatch)
    assert verify_stored(tmp_path) == 0 and evaluations.calls == 0  # each file checked once
    assert stored_noise_multiplier(tmp_path, calibrate, **INPUTS) == right
    # The task evaluates a stored σ for its own inputs unless that outcome is known already
    # (a failed check in the parent) or the file is for other inputs; then it searches.
    assert evaluations.calls == (1 if searches == 1 else 0)
    assert calibrate.calls == searches
    assert json.loads(path.read_text())["noise_multiplier"] == right


def test_checking_an_empty_or_missing_store_finds_nothing(tmp_path: Path) -> None:
    assert verify_stored(tmp_path) == 0
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "x.json").write_text("{")
    assert verify_stored(tmp_path) == 0
