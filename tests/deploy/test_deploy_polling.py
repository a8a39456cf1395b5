"""PromptGrid against a Grid whose replies arrive after a given number of pulls."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import pytest
from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedtwin.deploy.polling import PromptGrid


class ScriptedGrid(Grid):
    """Replies to message ``i`` on pull number ``ready_after[i]`` (or never, if ``None``)."""

    def __init__(self, ready_after: list[int | None]) -> None:
        self.ready_after = ready_after
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
            Message(RecordDict(), reply_to=message)
            for message, ready in zip(self.pushed, self.ready_after, strict=True)
            if ready == self.pulls and message.metadata.message_id in wanted
        ]


@pytest.fixture(autouse=True)
def serverapp_identity() -> Iterator[None]:
    """What Flower sets in a ServerApp process before messages can be created."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


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
