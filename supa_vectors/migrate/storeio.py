"""The store calls a migration makes: its lookups, and the store's flows performed under the one
retry rule (:mod:`supa_vectors._core.retry`), so a lost connection does not end a run."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from supa_vectors._core import rpcs
from supa_vectors._core.checks import ID_CHUNK_SIZE
from supa_vectors._core.flows import sender
from supa_vectors._core.ops import Driver, EmbedCall, Flow, RpcCall
from supa_vectors._core.retry import Retry, call
from supa_vectors.errors import BackendError
from supa_vectors.transport.base import Transport, identity_of

__all__ = ["Retry", "StoredRow", "drive", "lookup"]

T = TypeVar("T")


def drive(
    flow: Flow[T],
    transport: Transport,
    retry: Retry,
    stop: threading.Event | None,
    embed: Callable[[Sequence[str]], Any],
) -> T:
    """Perform a store flow's calls for a migration: each RPC by :func:`call` (so it rides out an
    outage), each embedding by ``embed``; every failure is thrown into the flow, as the store does."""
    driver = Driver(flow)
    while (op := driver.next()) is not None:
        try:
            if isinstance(op, EmbedCall):
                driver.answer(embed(op.texts))
            elif isinstance(op, RpcCall):
                driver.answer(call(sender(transport, op), op, retry, stop))
            else:
                raise TypeError(f"a migration does not answer {op!r}")
        except BaseException as exc:
            driver.fail(exc)
    return cast(T, driver.result)


@dataclass(frozen=True)
class StoredRow:
    content_hash: str
    metadata: dict[str, Any]


def lookup(
    transport: Transport, ids: Sequence[str], retry: Retry, stop: threading.Event | None = None
) -> dict[str, StoredRow]:
    """What the store holds under these ids, as the caller would overwrite it.

    A signed-in user sees its own rows and shared ones under the same id but writes only its own; the
    service role writes the shared ones (owner null). Rows the caller would not write are left out.
    """
    identity = identity_of(transport)
    owner = identity.subject.lower() if identity is not None and identity.subject else None
    found: dict[str, StoredRow] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), ID_CHUNK_SIZE):
        chunk = unique[start : start + ID_CHUNK_SIZE]
        rows = call(transport.rpc, rpcs.GET_DOCUMENTS.call({"external_ids": chunk}), retry, stop)
        if not isinstance(rows, list):
            raise BackendError(f"get_documents returned {type(rows).__name__}, not a list of rows")
        for row in rows:
            if not isinstance(row, Mapping):
                raise BackendError("get_documents returned a row that is not an object")
            row_owner = str(row.get("owner_id")).lower() if row.get("owner_id") else None
            if identity is not None and row_owner != owner:
                continue
            metadata = row.get("metadata")
            found[str(row["external_id"])] = StoredRow(
                str(row["content_hash"]), metadata if isinstance(metadata, dict) else {}
            )
    return found
