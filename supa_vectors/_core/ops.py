"""What a flow asks its runner to do: call an RPC, run the embedder, or read the store's settings.

A flow is a generator that *yields* these and receives the answer (or has the failure thrown in), so
the sync and async stores differ only in how they perform them (the approach of h11 and httpx).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Driver", "EmbedCall", "Flow", "Op", "RpcCall", "SettingsCall"]

T = TypeVar("T")


@dataclass(frozen=True)
class RpcCall:
    """One RPC, named as in :mod:`supa_vectors._core.rpcs` (build it with ``Rpc.call``)."""

    name: str
    params: dict[str, Any]
    # Send with these Authorization credentials instead of the transport's current ones: a queued
    # write replays as the caller that queued it (see supa_vectors.cache.outbox).
    credentials: str | None = field(default=None, repr=False)
    # Run as the connecting role itself (the table owner), past the breaker: the bulk-load RPCs.
    session_user: bool = False


@dataclass(frozen=True)
class EmbedCall:
    texts: list[str]


@dataclass(frozen=True)
class SettingsCall:
    """The store's settings (read once per store and kept; offline, the last ones seen)."""


Op = RpcCall | EmbedCall | SettingsCall
Flow = Generator[Op, Any, T]


class Driver:
    """Steps a flow: hands it each answer (or throws each failure in) and says what it wants next."""

    def __init__(self, flow: Flow[Any]) -> None:
        self._flow = flow
        self._reply: Any = None
        self._error: BaseException | None = None
        self.result: Any = None

    def next(self) -> Op | None:
        reply, error, self._reply, self._error = self._reply, self._error, None, None
        try:
            return self._flow.send(reply) if error is None else self._flow.throw(error)
        except StopIteration as done:
            self.result = done.value
            return None

    def answer(self, reply: Any) -> None:
        self._reply = reply

    def fail(self, error: BaseException) -> None:
        self._error = error
