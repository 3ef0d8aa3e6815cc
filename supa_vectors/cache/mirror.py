"""The mirror: a local copy of the vectors and metadata one identity can see, for offline search.

The results cache only answers questions asked before; the mirror answers new ones while the backend
is down. ``sync_flow`` keeps it current incrementally through ``list_documents(updated_after=...)``
(rows changed since the last sync, with their vectors), and notices deletions by comparing its row
count with ``count_documents`` (only when they differ does it page through the ids).

Search is exact: one float32 matrix-vector product over the unit-normalised vectors, then the top k.
Measured on this machine (2 cores shared with other jobs), 2,889 x 384 takes ~0.4 ms and
100,000 x 384 ~40 ms (memory-bound: FAISS's flat index reads the same bytes), while an HNSW index
would add a dependency, a rebuild after every sync, and approximate answers, on a fallback path
already cheaper than one round trip. Exact answers make the mirror's recall@10 against the server
equal to the server's own HNSW recall (see docs/decisions/0005-offline-cache-and-outbox.md).

Filters use :mod:`supa_vectors.cache.filtering`, which reproduces the server's jsonb semantics.
The mirror is one SQLite file per store and identity (a mirror synced as the service role holds
every user's rows, so it is never consulted for anyone else), 0600 in a 0700 directory, and searched
only for a caller the offline layer trusts (:mod:`supa_vectors.cache.trust`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

from supa_vectors._core import rpcs
from supa_vectors._core.ops import Flow
from supa_vectors._core.settings import StoreSettings
from supa_vectors.cache.filtering import Predicate
from supa_vectors.cache.private import open_private_sqlite
from supa_vectors.errors import BackendError

__all__ = ["Mirror", "MirrorHit", "SyncResult", "sync_flow"]

logger = logging.getLogger("supa_vectors.cache")

PAGE_SIZE = 500
# Rows committed by a transaction that started before the last sync's newest row may carry an older
# updated_at (now() is the transaction's start time): re-read this much before the watermark.
WATERMARK_OVERLAP = timedelta(minutes=5)

_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)

_SCHEMA = """
create table if not exists docs (
  row_id integer primary key,
  external_id text not null,
  owner_id text,
  content text not null,
  content_hash text not null,
  metadata text not null,
  updated_at text,
  embedding blob
);
create index if not exists docs_external_id on docs (external_id);
create table if not exists meta (key text primary key, value text not null);
"""


@dataclass(frozen=True)
class SyncResult:
    """What one ``sync_mirror()`` did: rows fetched (new or changed), rows removed, rows held now."""

    fetched: int
    removed: int
    documents: int
    full: bool
    synced_at: datetime


@dataclass(frozen=True)
class MirrorHit:
    id: str
    content: str
    metadata: dict[str, Any]
    similarity: float


@dataclass
class _Index:
    version: str
    row_ids: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]  # unit rows
    metadata_json: list[str]
    metadata: list[dict[str, Any]] | None = None
    masks: dict[str, npt.NDArray[np.bool_]] | None = None


def _as_vector(value: Any) -> npt.NDArray[np.float32] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    array = np.asarray(value, dtype=np.float32)
    return array if array.ndim == 1 and array.size else None


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = _DATETIME.validate_python(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


class Mirror:
    """One store's and identity's mirror in ``path``; safe to share between threads and processes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.errors = 0
        self.last_error: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._index: _Index | None = None

    def __repr__(self) -> str:
        return f"Mirror({str(self.path)!r})"

    def report(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{operation}: {type(exc).__name__}: {exc}"
        logger.warning(
            "supa-vectors mirror at %s is unusable for %s (%s: %s); answering without it",
            self.path,
            operation,
            type(exc).__name__,
            exc,
        )

    # ---- storage -----------------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not create and not self.path.exists():
            return None
        # Document text: readable by this OS user only.
        self._conn = open_private_sqlite(self.path, _SCHEMA, pragmas=("journal_mode=wal",))
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connect(create=True)
            assert conn is not None
            conn.execute("begin immediate")
            try:
                yield conn
                conn.execute(
                    "insert into meta values ('version', '1') on conflict (key) do update"
                    " set value = cast(cast(value as integer) + 1 as text)"
                )
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")

    def _meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        return dict(conn.execute("select key, value from meta").fetchall())

    def recreate(self) -> None:
        """Throw the file away (it is only a copy): used when it cannot be read."""
        with self._lock:
            self.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(self.path.name + suffix).unlink()
            self._index = None

    def state(self) -> dict[str, str]:
        """The mirror's meta (model, dimension, watermark, synced_at, version); empty when absent."""
        with self._lock:
            conn = self._connect(create=False)
            return {} if conn is None else self._meta(conn)

    def count(self) -> int:
        with self._lock:
            conn = self._connect(create=False)
            return 0 if conn is None else int(conn.execute("select count(*) from docs").fetchone()[0])

    def synced_at(self) -> float | None:
        value = self.state().get("synced_at")
        return float(value) if value is not None else None

    def reset(self, settings: StoreSettings, schema_version: str) -> None:
        with self._write() as conn:
            conn.execute("delete from docs")
            conn.execute("delete from meta where key <> 'version'")
            conn.executemany(
                "insert or replace into meta values (?, ?)",
                [
                    ("model", settings.embedding_model),
                    ("dimension", str(settings.embedding_dimension)),
                    ("schema_version", schema_version),
                ],
            )

    def apply(self, rows: Sequence[Mapping[str, Any]], dimension: int) -> int:
        """Insert or replace ``list_documents`` rows (with embeddings); returns how many."""
        records = []
        for row in rows:
            vector = _as_vector(row.get("embedding"))
            if vector is not None and vector.shape != (dimension,):
                raise BackendError(f"list_documents returned a {vector.size}-dimensional embedding")
            updated = _as_datetime(row.get("updated_at"))
            owner = row.get("owner_id")
            records.append(
                (
                    int(row["id"]),
                    str(row["external_id"]),
                    str(owner).lower() if owner is not None else None,
                    str(row["content"]),
                    str(row["content_hash"]),
                    json.dumps(row.get("metadata") or {}, separators=(",", ":")),
                    updated.isoformat() if updated else None,
                    None if vector is None else np.ascontiguousarray(vector, dtype="<f4").tobytes(),
                )
            )
        if records:
            with self._write() as conn:
                conn.executemany("insert or replace into docs values (?, ?, ?, ?, ?, ?, ?, ?)", records)
        return len(records)

    def retain(self, row_ids: set[int]) -> int:
        """Drop every row whose server id is not in ``row_ids`` (deleted on the server)."""
        with self._write() as conn:
            held = {int(r[0]) for r in conn.execute("select row_id from docs").fetchall()}
            gone = held - row_ids
            conn.executemany("delete from docs where row_id = ?", [(r,) for r in gone])
        return len(gone)

    def forget(self, external_ids: Sequence[str], owner: str | None) -> None:
        """Drop rows the SDK just deleted (or queued for deletion): ``owner``'s rows with these ids."""
        if not external_ids or not self.path.exists():
            return
        with self._write() as conn:
            conn.executemany(
                "delete from docs where external_id = ? and owner_id is ?",
                [(doc_id, owner) for doc_id in external_ids],
            )

    def finish_sync(self, watermark: datetime | None, synced_at: float) -> None:
        with self._write() as conn:
            values = [("synced_at", repr(synced_at))]
            if watermark is not None:
                values.append(("watermark", watermark.isoformat()))
            conn.executemany("insert or replace into meta values (?, ?)", values)

    # ---- search ------------------------------------------------------------------------------------

    def _load(self) -> _Index | None:
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return None
            row = conn.execute("select value from meta where key = 'version'").fetchone()
            version = row[0] if row else "0"
            if self._index is not None and self._index.version == version:
                return self._index
            rows = conn.execute(
                "select row_id, metadata, embedding from docs where embedding is not null order by row_id"
            ).fetchall()
        dimension = len(rows[0][2]) // 4 if rows else 0
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").astype(np.float32)
        matrix = matrix.reshape(len(rows), dimension) if rows else np.zeros((0, 0), dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix /= np.where(norms > 0, norms, 1.0)
        index = _Index(
            version=version,
            row_ids=np.array([r[0] for r in rows], dtype=np.int64),
            matrix=matrix,
            metadata_json=[r[1] for r in rows],
        )
        self._index = index
        return index

    def _mask(self, index: _Index, key: str, predicate: Predicate) -> npt.NDArray[np.bool_]:
        if index.metadata is None:
            index.metadata = [json.loads(text) for text in index.metadata_json]
        if index.masks is None:
            index.masks = {}
        mask = index.masks.get(key)
        if mask is None:
            mask = np.fromiter(
                (predicate(m) for m in index.metadata), dtype=np.bool_, count=len(index.metadata)
            )
            if len(index.masks) >= 32:
                index.masks.clear()
            index.masks[key] = mask
        return mask

    def search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        threshold: float | None,
        filter_key: str,
        predicate: Predicate | None,
    ) -> list[MirrorHit] | None:
        """The exact top ``k`` by cosine similarity among rows passing the filter; None: no usable mirror."""
        index = self._load()
        if index is None or index.matrix.shape[0] == 0 or index.matrix.shape[1] != vector.shape[0]:
            return None
        norm = float(np.linalg.norm(vector))
        query = np.asarray(vector, dtype=np.float32) / (norm if norm > 0 else 1.0)
        # einsum, not `@`: BLAS wakes its worker threads for a matrix this size, and that wait dwarfs
        # the product itself (figures: docs/decisions/0016, "Figures moved out of comments").
        scores = np.einsum("ij,j->i", index.matrix, query)
        candidates = np.arange(scores.shape[0])
        if predicate is not None:
            candidates = candidates[self._mask(index, filter_key, predicate)]
        if threshold is not None:
            candidates = candidates[scores[candidates] >= threshold]
        if candidates.size > k:
            top = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        else:
            top = candidates
        top = top[np.argsort(-scores[top], kind="stable")]
        wanted = [int(index.row_ids[i]) for i in top]
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return None
            marks = ",".join("?" * len(wanted))
            rows = conn.execute(
                f"select row_id, external_id, content, metadata from docs where row_id in ({marks})",
                wanted,
            ).fetchall()
        by_id = {int(r[0]): r for r in rows}
        hits = []
        for i, row_id in zip(top, wanted, strict=True):
            row = by_id.get(row_id)
            if row is not None:  # deleted between the two reads
                hits.append(MirrorHit(row[1], row[2], json.loads(row[3]), float(scores[i])))
        return hits

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _page(rows: Any) -> list[Mapping[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise BackendError(f"list_documents returned {type(rows).__name__}, not a list of rows")
    return rows


def sync_flow(
    mirror: Mirror,
    settings: StoreSettings,
    schema_version: str,
    *,
    full: bool = False,
    _refetch_allowed: bool = True,
) -> Flow[SyncResult]:
    """Bring ``mirror`` up to date: changed rows since the watermark, then deletions if the counts differ.

    A sync interrupted half-way leaves the watermark where it was, so the next one reads those pages
    again; rows are keyed by the server's id, so reading them twice changes nothing.
    """
    started = mirror.clock()
    state = mirror.state()
    if (
        full
        or state.get("model") != settings.embedding_model
        or state.get("dimension") != str(settings.embedding_dimension)
        or state.get("schema_version") != schema_version
    ):
        mirror.reset(settings, schema_version)
        full, watermark = True, None
    else:
        watermark = _as_datetime(state.get("watermark"))
    since = watermark - WATERMARK_OVERLAP if watermark is not None else None
    newest = watermark
    fetched = 0
    after = 0
    while True:
        params: dict[str, Any] = {
            "page_size": PAGE_SIZE,
            "after_id": after,
            "with_embeddings": True,
            "model": settings.embedding_model,
        }
        if since is not None:
            params["updated_after"] = since
        rows = _page((yield rpcs.LIST_DOCUMENTS.call(params)))
        fetched += mirror.apply(rows, settings.embedding_dimension)
        for row in rows:
            stamp = _as_datetime(row.get("updated_at"))
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
        if len(rows) < PAGE_SIZE:
            break
        after = int(rows[-1]["id"])

    removed = 0
    server_count = int((yield rpcs.COUNT_DOCUMENTS.call({})))
    if mirror.count() != server_count:
        # Deleted on the server (or by another client): keep only the ids the server still lists.
        seen: set[int] = set()
        after = 0
        while True:
            rows = _page((yield rpcs.LIST_DOCUMENTS.call({"page_size": PAGE_SIZE, "after_id": after})))
            seen.update(int(r["id"]) for r in rows)
            if len(rows) < PAGE_SIZE:
                break
            after = int(rows[-1]["id"])
        removed = mirror.retain(seen)
        if mirror.count() < len(seen) and _refetch_allowed:
            # Rows the incremental pass missed (a long transaction committed behind the watermark).
            result: SyncResult = yield from sync_flow(
                mirror, settings, schema_version, full=True, _refetch_allowed=False
            )
            return result
    mirror.finish_sync(newest, started)
    return SyncResult(
        fetched=fetched,
        removed=removed,
        documents=mirror.count(),
        full=full,
        synced_at=datetime.fromtimestamp(started, tz=timezone.utc),
    )
