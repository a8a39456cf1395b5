"""PromptGrid against a Grid whose replies arrive after a given number of pulls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedtwin.deploy.polling import PromptGrid
from fedtwin.federation.packing import PACKED_KEY, is_packed, packed_arrays_mod


class ScriptedGrid(Grid):
    """Replies to message ``i`` on pull number ``ready_after[i]`` (or never, if ``None``)."""

    def __init__(
        self,
        ready_after: list[int | None],
        site: Callable[[Message], Message] | None = None,
    ) -> None:
        self.ready_after = ready_after
        self.site = site or (lambda message: Message(RecordDict(), reply_to=message))
        self.pulls = 0
        self.pushed: list[Message] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2, 3]

    def get_nodes(self) -> Iterable[NodeInfo]:
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.pushed = list(messages)
        for message in self.pushed:  # as the SuperLink does on receipt
            message.metadata.__dict__["_message_id"] = message.object_id
        return [message.metadata.message_id for message in self.pushed]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise AssertionError("PromptGrid must not call the wrapped send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        wanted = set(message_ids)
        return [
            self.site(message)
            for message, ready in zip(self.pushed, self.ready_after, strict=True)
            if ready == self.pulls and message.metadata.message_id in wanted
        ]


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _messages(count: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=i + 1, message_type="train") for i in range(count)]


def test_every_reply_is_returned_once_and_pulling_stops_when_all_arrived() -> None:
    grid = ScriptedGrid([1, 3, 2])
    messages = _messages(3)
    replies = list(PromptGrid(grid, interval_s=0.01).send_and_receive(messages, timeout=30))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(
        m.metadata.message_id for m in messages
    )
    assert grid.pulls == 3


def test_a_missing_reply_is_dropped_at_the_timeout_with_the_others_kept() -> None:
    grid = ScriptedGrid([1, None])
    messages = _messages(2)
    started = time.monotonic()
    replies = list(PromptGrid(grid, interval_s=0.01).send_and_receive(messages, timeout=0.3))
    assert 0.3 <= time.monotonic() - started < 5
    assert [r.metadata.reply_to_message_id for r in replies] == [messages[0].metadata.message_id]


def test_replies_are_pulled_at_the_prompt_interval_not_every_3_s() -> None:
    grid = ScriptedGrid([4])
    started = time.monotonic()
    PromptGrid(grid, interval_s=0.05).send_and_receive(_messages(1), timeout=30)
    assert time.monotonic() - started < 1.5


def test_an_unreasonable_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        PromptGrid(ScriptedGrid([]), interval_s=0)


def _site(message: Message) -> Message:
    """A site behind the SuperLink: Flower's wire copy of the message, the ClientApp's mod."""
    received = message
    assert is_packed(received.content.array_records["arrays"])  # what went on the wire

    def handler(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        doubled = ArrayRecord({k: Array(v.numpy() * 2) for k, v in arrays.items()})
        return Message(RecordDict({"arrays": doubled}), reply_to=msg)

    context = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = packed_arrays_mod(received, context, handler)
    assert is_packed(reply.content.array_records["arrays"])
    return reply


def test_arrays_travel_packed_and_come_back_unpacked_and_equal() -> None:
    weights: dict[str, np.ndarray] = {
        "conv.weight": np.arange(12, dtype=np.float32).reshape(2, 2, 3),
        "b": np.ones(2),
    }
    message = Message(
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                "config": ConfigRecord({"server-round": 1}),
            }
        ),
        dst_node_id=1,
        message_type="train",
    )
    grid = ScriptedGrid([1], site=_site)
    (reply,) = PromptGrid(grid, interval_s=0.01).send_and_receive([message], timeout=30)
    arrays = reply.content.array_records["arrays"]
    assert list(arrays.keys()) == list(weights)
    for name, values in weights.items():
        np.testing.assert_array_equal(arrays[name].numpy(), values * 2)
    assert grid.pushed[0].content.config_records["config"]["server-round"] == 1


def test_a_packed_reply_that_does_not_parse_comes_back_as_it_came() -> None:
    def broken_site(message: Message) -> Message:
        garbage = ArrayRecord({PACKED_KEY: Array(np.frombuffer(b"\xff" * 9, dtype=np.uint8))})
        return Message(RecordDict({"arrays": garbage}), reply_to=message)

    grid = ScriptedGrid([1], site=broken_site)
    (reply,) = PromptGrid(grid, interval_s=0.01).send_and_receive(_messages(1), timeout=30)
    # Still packed: the update validation sees arrays that match nothing and rejects them.
    assert is_packed(reply.content.array_records["arrays"])
