"""The values the SDK hands in and out: documents, search results, upsert outcomes, store statistics.

They are pydantic models so a caller's dict is checked field by field, and so results print, compare
and serialise (``model_dump``) without glue code. Everywhere a document's ``id`` is the caller's id (the
database's ``external_id``); the database's own numeric key never leaves the SDK.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from supa_vectors.cache.breaker import BreakerState

__all__ = [
    "BackupResult",
    "DeleteCount",
    "Document",
    "HybridSearchResult",
    "OperationStats",
    "ProcessStats",
    "RestoreResult",
    "ResultSource",
    "RpcStats",
    "SearchResult",
    "StoreStats",
    "StoredDocument",
    "TableSize",
    "UpsertResult",
    "UpsertStatus",
]

# "queued": the backend was unreachable; the write waits in the store's outbox (``store.pending()``)
# and is replayed by ``store.flush()`` or the next successful call.
UpsertStatus = Literal["inserted", "updated", "unchanged", "queued"]
# Where a search answer came from: the backend, the results cache, or the local mirror.
ResultSource = Literal["backend", "cache", "mirror"]


class Document(BaseModel):
    """A document to store: text, the caller's id (derived from the content when omitted) and metadata.

    ``embedding`` is for callers that already hold this store's model's vector (a migration from another
    store); it is used instead of running the embedder, and only when the content is new or changed.
    """

    # Unknown keys are refused rather than dropped: {"text": ...} is a typo, not a document without content.
    model_config = ConfigDict(extra="forbid")

    # Strict: bytes are not text (which encoding?), and a number is not an id.
    id: StrictStr | None = None
    content: StrictStr
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = Field(default=None, repr=False)

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata_is_empty(cls, value: Any) -> Any:
        # JSON exports commonly write "metadata": null for "none".
        return {} if value is None else value

    @field_validator("embedding", mode="before")
    @classmethod
    def _array_to_list(cls, value: Any) -> Any:
        # numpy arrays (what embedders return) are accepted without the caller calling .tolist().
        tolist = getattr(value, "tolist", None)
        return tolist() if callable(tolist) else value


class StoredDocument(Document):
    """A document as read back: adds what the store knows about it.

    ``owner_id`` is None for a shared document (readable by every signed-in user, written by the
    service role) and the owning user's id otherwise; one id can exist once per owner.
    """

    id: str
    content_hash: str
    owner_id: str | None = None
    updated_at: datetime | None = None


class SearchResult(BaseModel):
    """One vector-search hit; ``similarity`` is the cosine similarity (1 = same direction)."""

    model_config = ConfigDict(frozen=True)

    id: str
    content: str
    metadata: dict[str, Any]
    similarity: float
    # Offline answers: ``stale`` is true when the backend could not be asked (the answer is from the
    # cache or the mirror, ``age_seconds`` old); a cache-first hit is ``source="cache"``, not stale.
    source: ResultSource = "backend"
    stale: bool = False
    age_seconds: float | None = None


class HybridSearchResult(BaseModel):
    """One hybrid-search hit, ordered by the reciprocal-rank-fusion ``score``.

    A hit found by only one side has no rank (and, without a semantic rank, no similarity) on the other.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    content: str
    metadata: dict[str, Any]
    score: float
    similarity: float | None = None
    full_text_rank: int | None = None
    semantic_rank: int | None = None
    source: ResultSource = "backend"
    stale: bool = False
    age_seconds: float | None = None


class UpsertResult(BaseModel):
    """What an upsert did to one document, in the order the documents were given."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: UpsertStatus


class DeleteCount(int):
    """How many documents ``delete`` removed; ``queued`` counts ids left in the outbox for later.

    An ``int`` so existing ``store.delete(ids) == n`` code keeps working; with the backend unreachable it
    is 0 (or what was deleted before the outage) and ``queued`` says how many deletions wait.
    """

    queued: int

    def __new__(cls, deleted: int = 0, *, queued: int = 0) -> DeleteCount:
        value = super().__new__(cls, deleted)
        value.queued = queued
        return value

    def __repr__(self) -> str:
        return f"DeleteCount({int(self)}, queued={self.queued})"


class StoreStats(BaseModel):
    """Counts of what the caller can see, the store's settings and whether the vector index exists."""

    model_config = ConfigDict(frozen=True)

    documents: int
    shared_documents: int
    embeddings: int
    models: dict[str, int]
    vector_index: bool
    last_updated_at: datetime | None = None
    settings: dict[str, Any]
    # The bulk load holding the vector index dropped ({started_at, expected_rows, abandoned}), shown
    # to the service role; ``abandoned`` means its loader is gone and the next owner write rebuilds.
    bulk_load: dict[str, Any] | None = None


class RpcStats(BaseModel):
    """One RPC's figures from ``pg_stat_statements`` since its last reset, every role's calls
    (``store_rpc_stats``, service role only). The p95 is an estimate (mean + 1.645 standard deviations,
    capped at the maximum): the extension keeps no percentiles (decision 0018)."""

    model_config = ConfigDict(frozen=True)

    rpc: str
    calls: int
    total_ms: float
    mean_ms: float | None
    p95_estimate_ms: float | None
    max_ms: float | None
    rows_returned: int


class TableSize(BaseModel):
    """A table (with its TOAST and indexes) or one index of the store, on disk (``store_table_sizes``,
    service role only); rows are the planner's estimate, not a count."""

    model_config = ConfigDict(frozen=True)

    relation: str
    kind: Literal["table", "index"]
    table_name: str
    bytes: int
    estimated_rows: int


class OperationStats(BaseModel):
    """One operation's figures in this process (``ProcessStats.operations``).

    ``p95_ms`` is read from a latency histogram whose buckets grow by 25 %: the upper bound of the
    bucket holding the 95th percentile, capped at the maximum. ``answers`` counts, for searches, where
    each answer came from (``backend``, ``cache``, ``mirror``).
    """

    model_config = ConfigDict(frozen=True)

    calls: int
    errors: dict[str, int]
    answers: dict[str, int]
    mean_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class ProcessStats(BaseModel):
    """What this store has seen in this process (``store.process_stats()``), not the database's view.

    ``errors`` counts failed operations by exception type; ``cache_hit_rate`` is the share of search
    answers served by the results cache or the mirror (None before any search). ``outbox_depth`` is how
    many writes wait in the outbox of the store's caller (None with the outbox off, or for a caller the
    offline layer does not trust), ``outbox_oldest_age_seconds`` how long the oldest has waited.
    """

    model_config = ConfigDict(frozen=True)

    since: datetime
    operations: dict[str, OperationStats]
    calls: int
    errors: dict[str, int]
    answers: dict[str, int]
    cache_hit_rate: float | None
    breaker_state: BreakerState
    breaker_failures: int
    breaker_times_opened: int
    outbox_depth: int | None
    outbox_oldest_age_seconds: float | None
    cache_errors: int


class BackupResult(BaseModel):
    """What ``store.backup(path)`` wrote: documents, shard files and their bytes, how many passes it
    took to get one snapshot, and the database time of that snapshot."""

    model_config = ConfigDict(frozen=True)

    path: str
    documents: int
    files: int
    bytes: int
    attempts: int
    snapshot_at: str


class RestoreResult(BaseModel):
    """What ``store.restore(path)`` did: documents in the archive, what ``bulk_upsert`` reported for
    them (a re-run after a crash reports the landed ones ``unchanged``), and how many were read back and
    found equal to the archive (content hash and vector)."""

    model_config = ConfigDict(frozen=True)

    path: str
    documents: int
    inserted: int
    updated: int
    unchanged: int
    verified: int
