"""The one retry rule for a job that must ride out an outage (the migration, its verify pass).

A migration runs for minutes to hours, so a database restart or a network blip must not end it: a call
that failed with "unavailable" or a timeout is sent again with backoff, if the table of RPCs says it
may be (:attr:`~supa_vectors._core.rpcs.Rpc.idempotent`, the rule the PostgREST transport's own retries
follow). Replaying ``bulk_upsert`` is safe because a batch is one transaction: it either committed (the
replay finds every record unchanged) or left nothing behind. When the retries run out, the error goes
up and the run can be resumed. An app's store does not retry on its own: its circuit breaker and
outbox answer an outage instead.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from supa_vectors._core.ops import RpcCall
from supa_vectors._core.rpcs import rpc_named
from supa_vectors.errors import BackendUnavailableError, QueryTimeoutError

__all__ = ["Retry", "call"]


@dataclass(frozen=True)
class Retry:
    """``attempts`` retries after the first try, waiting ``base * 2**n`` seconds (at most ``cap``)."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 10.0


def call(
    send: Callable[[str, Mapping[str, Any]], Any],
    op: RpcCall,
    retry: Retry,
    stop: threading.Event | None = None,
) -> Any:
    """``send(op.name, op.params)``, sent again after an outage or a timeout while ``retry`` allows
    and the RPC may be replayed; ``stop`` ends the waiting at once (Ctrl-C, a failed pipeline)."""
    attempt = functools.partial(send, op.name, op.params)
    attempts = retry.attempts if rpc_named(op.name).idempotent else 0
    failures = 0
    while True:
        try:
            return attempt()
        except (BackendUnavailableError, QueryTimeoutError):
            failures += 1
            if failures > attempts or (stop is not None and stop.is_set()):
                raise
            delay = min(retry.cap, retry.base * 2 ** (failures - 1))
            # Waiting on the stop event (not sleeping) lets Ctrl-C end the wait at once.
            if stop is not None and stop.wait(delay):
                raise
            if stop is None:
                threading.Event().wait(delay)
