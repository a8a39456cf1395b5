from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy

from fedtwin.federation import ValidatedStrategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")


GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


class _Recorder(Strategy):
    """Stands in for the inner strategy: records what reached aggregation."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
        self.seen = list(replies)
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return []

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        return None

    def summary(self) -> None:
        pass


def _reply(arrays: dict[str, np.ndarray], site: str) -> Message:
    request = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": 10}),
            "site": ConfigRecord({"site-id": site}),
        }
    )
    return Message(content, reply_to=request)


def _strategy() -> tuple[ValidatedStrategy, _Recorder]:
    inner = _Recorder()
    strategy = ValidatedStrategy(inner, max_update_norm=5.0)
    strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), grid=None
    )  # type: ignore[arg-type]
    return strategy, inner


def test_valid_updates_reach_the_inner_strategy() -> None:
    strategy, inner = _strategy()
    good = {"w": np.ones((2, 3), dtype=np.float32), "b": np.ones(3, dtype=np.float32)}
    strategy.aggregate_train(1, [_reply(good, "site-a")])
    assert len(inner.seen) == 1
    assert strategy.rejected == []


def test_malformed_non_finite_and_oversized_updates_are_rejected() -> None:
    strategy, inner = _strategy()
    wrong_shape = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    missing_key = {"w": np.zeros((2, 3), dtype=np.float32)}
    nan = {"w": np.full((2, 3), np.nan, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    huge = {"w": np.full((2, 3), 100.0, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    replies = [
        _reply(wrong_shape, "site-a"),
        _reply(missing_key, "site-b"),
        _reply(nan, "site-c"),
        _reply(huge, "site-d"),
    ]
    strategy.aggregate_train(1, replies)
    assert inner.seen == []
    reasons = {r.site_id: r.reason for r in strategy.rejected}
    assert "shape" in reasons["site-a"]
    assert "keys" in reasons["site-b"]
    assert "non-finite" in reasons["site-c"]
    assert "exceeds" in reasons["site-d"]
