"""Coordinator-side validation of site updates, as a wrapper around any Message-API strategy.

A reply is aggregated only if (1) it carries exactly the global model's arrays with the same
shapes and dtypes, (2) every value is finite, (3) the L2 norm of its change from the global
model is at most ``max_update_norm``, and (4) that norm is at most ``max_norm_ratio`` times the
median norm of the *other* updates of the round that passed (1)–(3) (a leave-one-out median, so
the rule works from two updates on; with one update only (3) applies). Anything else is dropped
before aggregation and recorded with the site and the reason; the wrapped strategy never sees
it. A round with fewer than ``min_updates`` accepted updates is not aggregated at all (the
global model stays as it was) and is recorded in :attr:`ValidatedStrategy.short_rounds`. The
wrapper holds no aggregation logic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtwin.federation.client import SITE_RECORD_KEY


@dataclass(frozen=True)
class RejectedUpdate:
    """An update the coordinator refused to aggregate."""

    server_round: int
    site_id: str
    reason: str


@dataclass(frozen=True)
class SiteRefusal:
    """A site that answered a round with a refusal (budget, policy, consent) or an error."""

    server_round: int
    node_id: int
    code: int
    reason: str


def site_of(message: Message) -> str:
    """The site id a reply claims (``"?"`` when it names none)."""
    record = message.content.config_records.get(SITE_RECORD_KEY) if message.has_content() else None
    return str(record["site-id"]) if record is not None and "site-id" in record else "?"


@dataclass(frozen=True)
class ShortRound:
    """A round that was not aggregated: fewer accepted updates than ``min_updates``."""

    server_round: int
    accepted: int
    required: int


class ValidatedStrategy(Strategy):
    """Drop malformed, non-finite or oversized updates, then delegate to ``inner``."""

    def __init__(
        self,
        inner: Strategy,
        max_update_norm: float,
        max_norm_ratio: float | None = None,
        min_updates: int = 1,
    ) -> None:
        self.inner = inner
        self.max_update_norm = max_update_norm
        self.max_norm_ratio = max_norm_ratio
        self.min_updates = min_updates
        self.rejected: list[RejectedUpdate] = []
        self.refusals: list[SiteRefusal] = []
        self.short_rounds: list[ShortRound] = []
        self._global: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model the updates must be compared with, then delegate."""
        self._global = {key: value.numpy() for key, value in arrays.items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate only the replies that pass validation; refusals are recorded, not passed.

        A refusal never reaches the inner strategy: Flower's DP wrappers would skip the whole
        round's aggregation for one refusing site.
        """
        passed: list[tuple[Message, float]] = []
        for reply in replies:
            if reply.has_error():
                self.refusals.append(
                    SiteRefusal(
                        server_round,
                        reply.metadata.src_node_id,
                        int(reply.error.code),
                        str(reply.error.reason),
                    )
                )
                continue
            reason, norm = self._problem(reply)
            if reason is None:
                passed.append((reply, norm))
            else:
                self.rejected.append(RejectedUpdate(server_round, site_of(reply), reason))
        accepted: list[Message] = []
        for index, (reply, norm) in enumerate(passed):
            # (4): bounded relative to the round's other updates (leave-one-out median).
            others = [n for i, (_, n) in enumerate(passed) if i != index]
            reference = float(np.median(others)) if others else 0.0
            ratio = self.max_norm_ratio
            if ratio is not None and reference > 0 and norm > ratio * reference:
                reason = (
                    f"update norm {norm:.3g} exceeds {ratio:g} x the median "
                    f"{reference:.3g} of the round's other updates"
                )
                self.rejected.append(RejectedUpdate(server_round, site_of(reply), reason))
                continue
            accepted.append(reply)
        if len(accepted) < self.min_updates:
            self.short_rounds.append(ShortRound(server_round, len(accepted), self.min_updates))
            return None, None
        return self.inner.aggregate_train(server_round, accepted)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def _problem(self, reply: Message) -> tuple[str | None, float]:
        """Checks (1)–(3): the reason to reject (or None) and the update's norm."""
        records = list(reply.content.array_records.values())
        # (1): exactly the global model's arrays, same shapes and dtypes.
        if len(records) != 1:
            return f"expected one array record, got {len(records)}", 0.0
        try:
            update = {key: value.numpy() for key, value in records[0].items()}
        except (ValueError, TypeError) as error:
            return f"arrays cannot be read ({error})", 0.0
        if update.keys() != self._global.keys():
            return "arrays do not match the global model's keys", 0.0
        squared = 0.0
        for key, value in update.items():
            expected = self._global[key]
            if value.shape != expected.shape:
                return f"array {key} has shape {value.shape}, expected {expected.shape}", 0.0
            if value.dtype != expected.dtype:
                return f"array {key} has dtype {value.dtype}, expected {expected.dtype}", 0.0
            # (2): finite values only.
            if not np.isfinite(value).all():
                return f"array {key} has non-finite values", 0.0
            squared += float(np.sum((value.astype(np.float64) - expected) ** 2))
        # (3): bounded change.
        norm = squared**0.5
        if norm > self.max_update_norm:
            return f"update norm {norm:.3g} exceeds {self.max_update_norm}", norm
        return None, norm
