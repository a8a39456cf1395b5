"""Prompt replies for the ServerApp: a Grid wrapper that polls more often and sends fewer objects.

In a deployment the ServerApp talks to the SuperLink through Flower's ``HttpGrid``, whose
``send_and_receive`` sleeps a fixed 3 s between two pulls for replies (Flower 1.42,
``flwr/superlink/grid/http_grid.py``); every train and evaluate message therefore waits on
average 1.5 s after the last site replied. :class:`PromptGrid` wraps any Grid, delegating every
call to it, and implements ``send_and_receive`` the same way (push, then pull until every reply
is in or the timeout passes) with a shorter sleep. The ServerApp and the SuperLink run on the
same host, so a pull every 0.2 s costs nothing that matters.

It also packs each outgoing message's ArrayRecords into one Array
(:mod:`fedtwin.federation.packing`) and unpacks the replies: Flower sends every Array as its
own objects, each a request with several SQL transactions in a SuperLink with a persistent
database, which made the SuperLink the bottleneck of a deployed round. Sites unpack with
:func:`~fedtwin.federation.packing.packed_arrays_mod` and answer packed.

The ServerApp built by :func:`prompt_polling` also retries a reply's object not yet at the
SuperLink after 50 ms (:func:`~fedtwin.deploy.flower_tuning.prompt_object_pulls`; Flower waits
1 s, doubling to 10 s).

Invariants: the wrapper changes *when* replies are pulled, never *which*: it pushes the same
messages (their arrays packed, byte for byte recoverable) and returns exactly the replies the
wrapped Grid's ``pull_messages`` returns, unpacked. A reply whose packed arrays do not parse is
returned as it came (still packed): the coordinator's update validation rejects it (its arrays
do not match the global model) and audits the rejection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedtwin.federation.grids import DelegatingGrid
from fedtwin.federation.packing import PackingError, has_packed, pack_content, unpack_content

DEFAULT_INTERVAL_S = 0.2


class PromptGrid(DelegatingGrid):
    """A Grid that delegates to ``grid`` and polls for replies every ``interval_s``.

    Parameters
    ----------
    grid : Grid
        The Grid Flower gave the ServerApp.
    interval_s : float
        Sleep between two pulls for replies.
    """

    def __init__(self, grid: Grid, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not 0.01 <= interval_s <= 10:
            raise ValueError("interval_s must be between 0.01 and 10 seconds")
        super().__init__(grid)
        self.interval_s = interval_s

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate, each message's ArrayRecords packed."""
        outgoing = list(messages)
        for message in outgoing:
            if message.has_content() and message.content.array_records:
                message.content = pack_content(message.content)
        return self._grid.push_messages(outgoing)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate; packed replies come back unpacked (one that does not parse, as it came)."""
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content() and has_packed(reply.content):
                # One that does not parse stays packed: update validation rejects and audits it.
                with contextlib.suppress(PackingError):
                    reply.content = unpack_content(reply.content)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull until every reply arrived or ``timeout`` passed."""
        pending = set(self.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < end:
            arrived = list(self.pull_messages(pending))
            replies.extend(arrived)
            pending.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
            if not pending:
                break
            time.sleep(self.interval_s)
        return replies


def prompt_polling(app: ServerApp, interval_s: float = DEFAULT_INTERVAL_S) -> ServerApp:
    """A ServerApp that runs ``app`` with its Grid wrapped in :class:`PromptGrid`."""
    outer = ServerApp()

    @outer.main()
    def main(grid: Grid, context: Context) -> None:
        from fedtwin.deploy.flower_tuning import prompt_object_pulls

        # Replies' objects not yet at the SuperLink are asked for again after 50 ms, not 1 s+.
        prompt_object_pulls()
        app(PromptGrid(grid, interval_s), context)

    return outer
