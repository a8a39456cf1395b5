"""Round checkpoints of the coordinator: written atomically, read back fail closed, round numbers.

The multi-process test (tests/integration/test_integration_failures.py) kills and resumes a
real coordinator; these check the rules of the checkpoint itself on real files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.federation import RunConfig
from fedtwin.federation.resume import (
    RESUME_DIR,
    STATE_FILE,
    ResumableStrategy,
    RoundState,
    load_round_state,
    write_round_state,
)

RUN = RunConfig(run_id="run-resume", num_rounds=5, min_sites=2)


def _arrays(seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "w": Array(rng.normal(size=(3, 2)).astype(np.float32)),
            "b": Array(rng.normal(size=2).astype(np.float32)),
        }
    )


def _state(completed: int, log_size: int = 10, run: RunConfig = RUN) -> RoundState:
    return RoundState(
        run_id=run.run_id,
        config_hash=run.config_hash,
        completed_round=completed,
        model_file=f"round-{completed}.safetensors",
        model_sha256="sha256:" + "0" * 64,
        audit_log_size=log_size,
        train={completed: {"site-a": {"epsilon": 1.5}}},
        node_sites={17: "site-a"},
        joined=("site-a",),
    )


def test_the_last_written_round_is_read_back_with_its_exact_model(tmp_path: Path) -> None:
    write_round_state(tmp_path, _state(1), _arrays(1))
    write_round_state(tmp_path, _state(2, log_size=14), _arrays(2))

    state, arrays = load_round_state(tmp_path, RUN, audit_log_size=20)

    assert state.completed_round == 2 and state.train == {2: {"site-a": {"epsilon": 1.5}}}
    assert state.node_sites == {17: "site-a"}
    for key, value in _arrays(2).items():
        np.testing.assert_array_equal(arrays[key].numpy(), value.numpy())
    assert sorted(p.name for p in (tmp_path / RESUME_DIR).iterdir()) == [
        "round-2.safetensors",
        STATE_FILE,
    ]


def test_a_run_with_other_settings_cannot_resume_the_checkpoint(tmp_path: Path) -> None:
    write_round_state(tmp_path, _state(1), _arrays(1))
    changed = RUN.model_copy(update={"num_rounds": 6})
    with pytest.raises(ConfigError, match="another run config"):
        load_round_state(tmp_path, changed, audit_log_size=20)
    with pytest.raises(ConfigError, match="no round checkpoint"):
        load_round_state(tmp_path / "elsewhere", RUN, audit_log_size=20)


def test_a_replaced_model_or_a_shortened_audit_log_refuses_to_resume(tmp_path: Path) -> None:
    write_round_state(tmp_path, _state(3, log_size=30), _arrays(3))
    with pytest.raises(VerificationError, match="fewer than"):
        load_round_state(tmp_path, RUN, audit_log_size=29)
    model = tmp_path / RESUME_DIR / "round-3.safetensors"
    write_round_state(tmp_path / "other", _state(3, log_size=30), _arrays(4))
    model.write_bytes((tmp_path / "other" / RESUME_DIR / "round-3.safetensors").read_bytes())
    with pytest.raises(VerificationError, match="not the model"):
        load_round_state(tmp_path, RUN, audit_log_size=30)
    state = json.loads((tmp_path / RESUME_DIR / STATE_FILE).read_text())
    assert state["completed_round"] == 3


class _Recorder(Strategy):
    """Records the round numbers the wrapped strategy is called with."""

    def __init__(self) -> None:
        self.rounds: list[tuple[str, int]] = []

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> list[Any]:
        self.rounds.append(("configure_train", server_round))
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.rounds.append(("aggregate_train", server_round))
        return _arrays(server_round), None

    def configure_evaluate(
        self, server_round: int, arrays: Any, config: Any, grid: Any
    ) -> list[Any]:
        self.rounds.append(("configure_evaluate", server_round))
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> None:
        self.rounds.append(("aggregate_evaluate", server_round))

    def summary(self) -> None:
        pass


def test_a_resumed_strategy_keeps_the_real_round_numbers_and_reports_each_round() -> None:
    inner, done = _Recorder(), []
    strategy = ResumableStrategy(inner, 3, lambda r, arrays: done.append((r, arrays)))
    for flower_round in (1, 2):  # Flower always counts from 1
        strategy.configure_train(flower_round, _arrays(0), ConfigRecord(), None)  # type: ignore[arg-type]
        strategy.aggregate_train(flower_round, [])
        strategy.configure_evaluate(flower_round, _arrays(0), ConfigRecord(), None)  # type: ignore[arg-type]
        strategy.aggregate_evaluate(flower_round, [])
    assert {r for _, r in inner.rounds} == {3, 4}
    assert [r for r, _ in done] == [3, 4]
    np.testing.assert_array_equal(done[-1][1]["w"].numpy(), _arrays(4)["w"].numpy())
