"""SteadyNodesGrid: a site dropping out while a round is configured cannot stall the run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from unittest.mock import create_autospec

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, strategy_utils

from fedtwin.federation.grids import SteadyNodesGrid
from fedtwin.federation.resume import ResumableStrategy


def _connected(*reads: list[int]) -> Any:
    """A Grid whose successive reads of the connected nodes give ``reads`` (the last repeats)."""

    def answers() -> Iterator[list[int]]:
        yield from reads
        while True:
            yield reads[-1]

    grid = create_autospec(Grid, instance=True)
    grid.get_node_ids.side_effect = answers().__next__
    return grid


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower re-reads the nodes every second while too few are connected; reads are scripted.
    monkeypatch.setattr(strategy_utils, "sleep", lambda seconds: None)


def _destinations(messages: Iterable[Message]) -> list[int]:
    return sorted(m.metadata.dst_node_id for m in messages)


ARRAYS = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})


def test_a_site_dropping_between_flowers_two_reads_is_still_asked() -> None:
    # FedAvg sizes the sample from its first read (3) and waits for a read showing 3: with a
    # site gone in between, Flower 1.42 alone waits forever.
    strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    for configure in (strategy.configure_train, strategy.configure_evaluate):
        grid = SteadyNodesGrid(_connected([1, 2, 3], [1, 2]))
        messages = configure(1, ARRAYS, ConfigRecord(), grid)
        assert _destinations(messages) == [1, 2, 3]


def test_the_resumable_strategy_configures_rounds_through_the_steady_view() -> None:
    done: list[int] = []
    strategy = ResumableStrategy(
        FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2),
        first_round=1,
        on_round_done=lambda server_round, arrays: done.append(server_round),
    )
    train = strategy.configure_train(1, ARRAYS, ConfigRecord(), _connected([1, 2, 3], [1, 3]))
    assert _destinations(train) == [1, 2, 3]
    evaluate = strategy.configure_evaluate(1, ARRAYS, ConfigRecord(), _connected([4, 5], [4]))
    assert _destinations(evaluate) == [4, 5]


def test_sites_that_join_are_seen_and_too_few_sites_are_still_waited_for() -> None:
    view = SteadyNodesGrid(_connected([1, 2], [2, 3]))
    assert list(view.get_node_ids()) == [1, 2]
    assert list(view.get_node_ids()) == [1, 2, 3]  # 1 dropped: still counted; 3 joined
    strategy = FedAvg(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)
    grid = SteadyNodesGrid(_connected([1], [1], [1, 2], [1, 2, 3]))
    assert _destinations(strategy.configure_train(1, ARRAYS, ConfigRecord(), grid)) == [1, 2, 3]


def test_every_other_call_reaches_the_wrapped_grid() -> None:
    grid = _connected([1])
    view = SteadyNodesGrid(grid)
    message = create_autospec(Message, instance=True)
    view.push_messages([message])
    view.pull_messages(["id"])
    view.send_and_receive([message], timeout=3.0)
    grid.push_messages.assert_called_once_with([message])
    grid.pull_messages.assert_called_once_with(["id"])
    grid.send_and_receive.assert_called_once_with([message], timeout=3.0)
