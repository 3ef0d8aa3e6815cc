"""What a flow asks its runner to do: call an RPC, or run the embedder.

A flow is a generator that *yields* these and receives the answer (or has the failure thrown in), so
the sync and async stores differ only in how they perform them (the approach of h11 and httpx).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["EmbedCall", "Flow", "Op", "RpcCall"]

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


Op = RpcCall | EmbedCall
Flow = Generator[Op, Any, T]
