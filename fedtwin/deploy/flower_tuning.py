"""Prompt polls in the site's SuperNode (Flower 1.42), applied by :mod:`.supernode_launcher`.

Flower's SuperNode asks the SuperLink for work, and when there is none sleeps a fixed 3 s
(``flwr.supernode.start_client_internal``): every train or evaluate message then waits 1.5 s on
average before the site even sees it, 3 s per round. It also sleeps 0.5 s between two checks
for the ClientApp's reply. And a process that asks for a message's object not there yet retries
after 1 s, doubling to 10 s (``flwr.supercore.constant`` ``PULL_INITIAL_BACKOFF`` and
``PULL_BACKOFF_CAP``), while on a working link the object follows within milliseconds.

:func:`prompt_supernode_polls` caps the SuperNode loop's sleeps at the site's
``fleet_poll_interval_s``; :func:`prompt_object_pulls` shortens the pull backoff (same retry
logic, same limits on tries and total time). Both change *when* Flower asks, never *what* it
sends or accepts: no message, object, check or credential is touched. Both apply to the calling
process only and raise :class:`RuntimeError` if the pinned Flower no longer has what they tune
(the node then does not start, rather than silently running untuned).
"""

from __future__ import annotations

import time
import types
from typing import Any

INITIAL_BACKOFF_S = 0.05
BACKOFF_CAP_S = 1.0


def _keyword_defaults(function: Any, names: tuple[str, ...]) -> dict[str, Any]:
    defaults = getattr(function, "__kwdefaults__", None)
    if not isinstance(defaults, dict) or any(name not in defaults for name in names):
        raise RuntimeError(
            f"flwr's {getattr(function, '__qualname__', function)} has no keyword defaults "
            f"{', '.join(names)}: not the Flower version fedtwin pins"
        )
    return defaults


def prompt_object_pulls(
    initial_backoff_s: float = INITIAL_BACKOFF_S, backoff_cap_s: float = BACKOFF_CAP_S
) -> None:
    """Retry an unavailable object after ``initial_backoff_s``, doubling up to ``backoff_cap_s``."""
    if not 0 < initial_backoff_s <= backoff_cap_s <= 10:
        raise ValueError("need 0 < initial_backoff_s <= backoff_cap_s <= 10")
    from flwr.supercore.inflatable import inflatable_utils

    for function in (
        inflatable_utils.pull_objects,
        inflatable_utils.pull_and_inflate_object_from_tree,
    ):
        defaults = _keyword_defaults(function, ("initial_backoff", "backoff_cap"))
        defaults["initial_backoff"] = initial_backoff_s
        defaults["backoff_cap"] = backoff_cap_s


def capped_time(cap_s: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` never sleeps longer than ``cap_s``."""
    proxy = types.ModuleType("time")
    proxy.__dict__.update(vars(time))

    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, cap_s))

    proxy.__dict__["sleep"] = sleep
    return proxy


def prompt_supernode_polls(poll_interval_s: float) -> None:
    """Cap the SuperNode loop's sleeps (3 s empty pull, 0.5 s reply wait) at ``poll_interval_s``."""
    if not 0.05 <= poll_interval_s <= 3:
        raise ValueError("poll_interval_s must be between 0.05 and 3 seconds")
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time or not callable(
        getattr(loop, "start_client_internal", None)
    ):
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer sleeps through the time module: "
            "not the Flower version fedtwin pins"
        )
    loop.__dict__["time"] = capped_time(poll_interval_s)
