"""Grid wrappers the coordinator's strategy and ServerApp use around the Grid Flower gives them.

:class:`DelegatingGrid` forwards every call to the wrapped Grid; subclasses override what they
change. :class:`SteadyNodesGrid` closes a race in Flower 1.42's strategies: ``FedAvg``'s
``configure_train`` / ``configure_evaluate`` read the connected nodes once to size the sample
(``fraction × connected``) and then wait, in ``sample_nodes``, until a *second* read shows at
least that many. A site whose SuperNode drops out between the two reads (its heartbeat expires)
leaves the coordinator waiting for it forever, instead of running the round with the sites
still there and ``min_sites`` rules. Within one configure call, the view answers every read
with at least the nodes the first read saw: a site that just dropped is asked like any site
that dies mid-round (its reply never comes; the round completes with the others if
``min_sites`` still holds, and the gap is logged).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

if TYPE_CHECKING:
    from flwr.proto.node_pb2 import NodeInfo


class DelegatingGrid(Grid):
    """A Grid that forwards every call to ``grid``."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        """Delegate."""
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped Grid's run."""
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate."""
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Delegate."""
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate."""
        return self._grid.send_and_receive(messages, timeout=timeout)


class SteadyNodesGrid(DelegatingGrid):
    """For one configure call: no read of the connected nodes shows fewer than the first did.

    Each read asks the wrapped Grid again and returns what it says plus any node the first
    read saw that has since gone (in the first read's order, new nodes after), so the sample
    size Flower computes from the first read can always be met. Nodes that join are seen.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self._first: list[int] | None = None

    def get_node_ids(self) -> Iterable[int]:
        """The connected node IDs, never fewer than the first read's."""
        now = list(self._grid.get_node_ids())
        if self._first is None:
            self._first = now
            return list(now)
        seen = set(self._first)
        return [*self._first, *(node for node in now if node not in seen)]
