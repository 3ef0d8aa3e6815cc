"""Parsing RPC replies: a reply that does not fit the contract is the backend's fault (``BackendError``),
never the caller's input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from supa_vectors._core import rpcs
from supa_vectors._models import (
    HybridSearchResult,
    RpcStats,
    SearchResult,
    StoredDocument,
    StoreStats,
    TableSize,
)
from supa_vectors.errors import (
    BackendError,
)

__all__ = [
    "order_by_ids",
    "page_after",
    "parse_documents",
    "parse_hybrid_rows",
    "parse_rpc_stats",
    "parse_search_rows",
    "parse_stats",
    "parse_stored_document",
    "parse_table_sizes",
]


@contextmanager
def _response(rpc: str) -> Iterator[None]:
    """A reply that does not fit the contract is the backend's fault, never the caller's input."""
    try:
        yield
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"{rpc} returned an unexpected reply: {exc}") from exc


def _rows(result: Any, rpc: str) -> list[Mapping[str, Any]]:
    if not isinstance(result, list) or not all(isinstance(row, Mapping) for row in result):
        raise BackendError(f"{rpc} returned {type(result).__name__}, not a list of rows")
    return result


def parse_search_rows(result: Any) -> list[SearchResult]:
    with _response(rpcs.MATCH_DOCUMENTS.name):
        return [
            SearchResult(
                id=row["external_id"],
                content=row["content"],
                metadata=row["metadata"],
                similarity=row["similarity"],
            )
            for row in _rows(result, rpcs.MATCH_DOCUMENTS.name)
        ]


def parse_hybrid_rows(result: Any) -> list[HybridSearchResult]:
    with _response(rpcs.HYBRID_SEARCH.name):
        return [
            HybridSearchResult(
                id=row["external_id"],
                content=row["content"],
                metadata=row["metadata"],
                score=row["score"],
                similarity=row.get("similarity"),
                full_text_rank=row.get("full_text_rank"),
                semantic_rank=row.get("semantic_rank"),
            )
            for row in _rows(result, rpcs.HYBRID_SEARCH.name)
        ]


def parse_stored_document(row: Mapping[str, Any], *, vectors: bool = False) -> StoredDocument:
    """A document row; with ``vectors``, its ``embedding`` column fills ``StoredDocument.embedding``
    (only ``get_embeddings`` is asked for that: other rows' vectors are the mirror's or a backup's)."""
    owner = row.get("owner_id")
    return StoredDocument(
        id=row["external_id"],
        content=row["content"],
        metadata=row["metadata"],
        content_hash=row["content_hash"],
        owner_id=str(owner) if owner is not None else None,
        updated_at=row.get("updated_at"),
        embedding=row["embedding"] if vectors else None,
    )


def parse_documents(result: Any, rpc: str, *, vectors: bool = False) -> list[StoredDocument]:
    with _response(rpc):
        return [parse_stored_document(row, vectors=vectors) for row in _rows(result, rpc)]


def order_by_ids(documents: Iterable[StoredDocument], ids: Sequence[str]) -> list[StoredDocument]:
    """Documents in the order their ids were asked for (own before shared under the same id)."""
    position = {doc_id: i for i, doc_id in reversed(list(enumerate(ids)))}
    return sorted(documents, key=lambda d: (position.get(d.id, len(position)), d.owner_id is None))


def parse_stats(result: Any) -> StoreStats:
    with _response(rpcs.STORE_STATS.name):
        return StoreStats.model_validate(result)


def parse_rpc_stats(result: Any) -> list[RpcStats]:
    with _response(rpcs.STORE_RPC_STATS.name):
        return [RpcStats.model_validate(row) for row in _rows(result, rpcs.STORE_RPC_STATS.name)]


def parse_table_sizes(result: Any) -> list[TableSize]:
    with _response(rpcs.STORE_TABLE_SIZES.name):
        return [TableSize.model_validate(row) for row in _rows(result, rpcs.STORE_TABLE_SIZES.name)]


def page_after(result: Any) -> tuple[list[StoredDocument], int | None]:
    """A list_documents page and the keyset cursor for the next one (None when none can follow)."""
    with _response(rpcs.LIST_DOCUMENTS.name):
        rows = _rows(result, rpcs.LIST_DOCUMENTS.name)
        docs = [parse_stored_document(row) for row in rows]
        return docs, (int(rows[-1]["id"]) if rows else None)
