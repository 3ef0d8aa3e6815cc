"""The outbox: writes made while the backend was unreachable, kept on disk until they are replayed.

Why sqlite3 directly (not diskcache): the outbox must never evict, must keep a total order across
processes (an ``autoincrement`` sequence), and needs "the last queued write of this id" and "remove
these" queries; diskcache's bounded key-value store offers none of that. One SQLite file per store and
identity (a queued write is replayed as the identity that made it), in WAL mode with
``synchronous=FULL``: an entry that ``add`` reported as queued survives a crash or a power cut.

Replaying is safe to repeat. Entries leave the outbox only after the server confirmed them, so a crash
between the server's commit and the removal replays them: ``bulk_upsert`` is idempotent by (owner,
external id, content hash) and deleting an absent id deletes nothing. Entries replay in order; one
flusher at a time per outbox (an ``flock`` on a lock file, released by the kernel if the process
dies), so two processes never interleave their replays.

Idempotent enqueueing: queueing the same write again (same id, same content hash and metadata, or a
second delete, by the same credentials) while the previous one still waits adds nothing.

Credentials: each entry keeps the ``Authorization`` it was queued with (PostgREST transports) and is
replayed with exactly that, never with whoever flushes. An entry whose token has expired is never
sent: it stays queued, is listed by ``pending()`` and ``FlushResult.expired`` with the reason, and
``discard_rejected()`` drops it. The file is private to the OS user (0600 in a 0700 directory).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from supa_vectors.cache.keys import canonical_json
from supa_vectors.cache.private import open_private_sqlite, private_dir, private_file
from supa_vectors.cache.trust import credentials_expiry

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one flusher per process only
    fcntl = None  # type: ignore[assignment]

__all__ = ["FlushResult", "Outbox", "PendingWrite", "QueuedWrite", "next_batch"]

WriteOp = Literal["upsert", "delete"]
# Entries replayed per request: bulk_upsert's chunking (500 rows) and delete_documents' id limit.
BATCH_SIZE = 500

_SCHEMA = """
create table if not exists entries (
  seq integer primary key autoincrement,
  op text not null check (op in ('upsert', 'delete')),
  doc_id text not null,
  content text,
  content_hash text,
  metadata text,
  embedding blob,
  queued_at real not null,
  credentials text,
  expires_at real
);
create index if not exists entries_doc_id on entries (doc_id, seq);
create table if not exists rejected (
  seq integer primary key,
  op text not null,
  doc_id text not null,
  content text,
  content_hash text,
  metadata text,
  queued_at real not null,
  rejected_at real not null,
  error text not null
);
"""


@dataclass(frozen=True)
class PendingWrite:
    """A write waiting in the outbox (``status="queued"``), or one the server refused on replay.

    A ``rejected`` write stays listed (with the server's ``error``) until
    ``discard_rejected()``: the app learns about it even when the replay happened in the background.
    """

    seq: int
    op: WriteOp
    id: str
    content_hash: str | None
    queued_at: datetime
    status: Literal["queued", "rejected"] = "queued"
    error: str | None = None


@dataclass(frozen=True)
class FlushResult:
    """What one flush replayed: documents upserted and deleted, entries refused, entries still waiting."""

    upserted: int = 0
    deleted: int = 0
    rejected: tuple[PendingWrite, ...] = ()
    remaining: int = 0
    # Still queued but not sent: the token that queued them has expired (see the module docstring).
    expired: tuple[PendingWrite, ...] = ()


@dataclass(frozen=True)
class QueuedWrite:
    """A write as it goes into and comes out of the outbox."""

    op: WriteOp
    id: str
    content: str | None = None
    content_hash: str | None = None
    metadata: dict[str, Any] | None = None
    embedding: npt.NDArray[np.float32] | None = None
    seq: int = 0
    queued_at: float = 0.0
    # The Authorization the write was queued with; None: the transport's own identity (Postgres).
    # Left out of repr: a logged entry must not carry a token.
    credentials: str | None = field(default=None, repr=False)

    def same_write(self, other: QueuedWrite) -> bool:
        if self.op != other.op or self.id != other.id or self.credentials != other.credentials:
            return False
        if self.op == "delete":
            return True
        return self.content_hash == other.content_hash and canonical_json(
            self.metadata or {}
        ) == canonical_json(other.metadata or {})


def next_batch(entries: Sequence[QueuedWrite], limit: int = BATCH_SIZE) -> list[QueuedWrite]:
    """The longest prefix of one kind and one caller, without a repeated id, that one request may carry.

    A repeated id ends the batch: bulk_upsert refuses an id twice in one call, and the second write
    of an id must land after the first. A change of credentials ends it too: one request runs as one
    caller.
    """
    batch: list[QueuedWrite] = []
    seen: set[str] = set()
    for entry in entries:
        if len(batch) >= limit or entry.id in seen:
            break
        if batch and (entry.op != batch[0].op or entry.credentials != batch[0].credentials):
            break
        batch.append(entry)
        seen.add(entry.id)
    return batch


_COLUMNS = "seq, op, doc_id, content, content_hash, metadata, embedding, queued_at, credentials"
# Replayable: queued without a token (Postgres transport), with an opaque key, or a JWT not yet expired.
_LIVE = "(expires_at is null or expires_at > ?)"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _expired_reason(expires_at: float) -> str:
    return (
        f"not replayed: the token that queued this write expired at {_utc(expires_at).isoformat()}; "
        "it is never sent with other credentials (write it again as the signed-in user, then "
        "discard_rejected())"
    )


def _add_new_columns(conn: sqlite3.Connection) -> None:
    """An outbox written by an older version lacks the columns of the credentials that queued a write."""
    columns = {row[1] for row in conn.execute("pragma table_info(entries)")}
    for column, kind in (("credentials", "text"), ("expires_at", "real")):
        if column not in columns:
            conn.execute(f"alter table entries add column {column} {kind}")


class Outbox:
    """One store's and identity's queued writes in ``path`` (created on the first queued write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not create and not self.path.exists():
            return None
        self._conn = open_private_sqlite(
            self.path, _SCHEMA, pragmas=("journal_mode=wal", "synchronous=full"), setup=_add_new_columns
        )
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        with self._lock:
            conn = self._connect(create)
            if conn is None:
                yield None
                return
            conn.execute("begin immediate")
            try:
                yield conn
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")

    # ---- queueing ----------------------------------------------------------------------------------

    def enqueue(self, writes: Sequence[QueuedWrite], *, now: float | None = None) -> int:
        """Append ``writes`` in order (skipping repeats of the last queued write of an id); returns how
        many were appended. Raises sqlite3/OSError errors: a write that cannot be queued must fail
        loudly, never be reported as queued."""
        stamp = time.time() if now is None else now
        added = 0
        with self._transaction(create=True) as conn:
            assert conn is not None
            for write in writes:
                last = self._last_for(conn, write.id)
                if last is not None and last.same_write(write):
                    continue
                embedding = None
                if write.embedding is not None:
                    embedding = np.ascontiguousarray(write.embedding, dtype="<f4").tobytes()
                conn.execute(
                    "insert into entries (op, doc_id, content, content_hash, metadata, embedding, queued_at,"
                    " credentials, expires_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        write.op,
                        write.id,
                        write.content,
                        write.content_hash,
                        None if write.metadata is None else canonical_json(write.metadata),
                        embedding,
                        stamp,
                        write.credentials,
                        None if write.credentials is None else credentials_expiry(write.credentials),
                    ),
                )
                added += 1
        return added

    @staticmethod
    def _row(row: tuple[Any, ...]) -> QueuedWrite:
        seq, op, doc_id, content, content_hash, metadata, embedding, queued_at, credentials = row
        return QueuedWrite(
            op=op,
            id=doc_id,
            content=content,
            content_hash=content_hash,
            metadata=json.loads(metadata) if metadata is not None else None,
            embedding=np.frombuffer(embedding, dtype="<f4").astype(np.float32) if embedding else None,
            seq=int(seq),
            queued_at=float(queued_at),
            credentials=credentials,
        )

    def _last_for(self, conn: sqlite3.Connection, doc_id: str) -> QueuedWrite | None:
        row = conn.execute(
            f"select {_COLUMNS} from entries where doc_id = ? order by seq desc limit 1",
            (doc_id,),
        ).fetchone()
        return self._row(row) if row else None

    # ---- reading -----------------------------------------------------------------------------------

    def has_pending(self, now: float | None = None) -> bool:
        """Whether an entry waits that can still be replayed (its token, if any, has not expired)."""
        stamp = time.time() if now is None else now
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return False
            found = conn.execute(f"select exists (select 1 from entries where {_LIVE})", (stamp,))
            return bool(found.fetchone()[0] == 1)

    def head(self, limit: int = BATCH_SIZE, *, now: float | None = None) -> list[QueuedWrite]:
        """The oldest entries that can still be replayed; those whose token expired are skipped."""
        stamp = time.time() if now is None else now
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return []
            rows = conn.execute(
                f"select {_COLUMNS} from entries where {_LIVE} order by seq limit ?", (stamp, limit)
            ).fetchall()
        return [self._row(row) for row in rows]

    def expired(self, now: float | None = None) -> list[PendingWrite]:
        """Entries that will not be replayed because the token that queued them has expired."""
        return [p for p in self.pending(now) if p.error is not None and p.status == "queued"]

    def count(self) -> int:
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return 0
            return int(conn.execute("select count(*) from entries").fetchone()[0])

    def depth(self) -> tuple[int, float | None]:
        """How many entries wait, and when the oldest was queued (epoch seconds; None when none)."""
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return 0, None
            count, oldest = conn.execute("select count(*), min(queued_at) from entries").fetchone()
            return int(count), None if oldest is None else float(oldest)

    def pending(self, now: float | None = None) -> list[PendingWrite]:
        stamp = time.time() if now is None else now
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return []
            queued = conn.execute(
                "select seq, op, doc_id, content_hash, queued_at, expires_at from entries order by seq"
            )
            out = [
                PendingWrite(
                    seq=seq,
                    op=op,
                    id=doc_id,
                    content_hash=digest,
                    queued_at=_utc(at),
                    error=None if expires is None or expires > stamp else _expired_reason(expires),
                )
                for seq, op, doc_id, digest, at, expires in queued.fetchall()
            ]
            refused = conn.execute(
                "select seq, op, doc_id, content_hash, queued_at, error from rejected order by seq"
            )
            out += [
                PendingWrite(
                    seq=seq,
                    op=op,
                    id=doc_id,
                    content_hash=digest,
                    queued_at=_utc(at),
                    status="rejected",
                    error=error,
                )
                for seq, op, doc_id, digest, at, error in refused.fetchall()
            ]
        return out

    # ---- replaying ---------------------------------------------------------------------------------

    def remove(self, seqs: Sequence[int]) -> None:
        with self._transaction() as conn:
            if conn is not None:
                conn.executemany("delete from entries where seq = ?", [(seq,) for seq in seqs])

    def reject(self, entry: QueuedWrite, error: str, *, now: float | None = None) -> PendingWrite:
        """Move an entry the server refused out of the queue, keeping it for the app to see."""
        stamp = time.time() if now is None else now
        with self._transaction() as conn:
            if conn is not None:
                conn.execute(
                    "insert or replace into rejected"
                    " select seq, op, doc_id, content, content_hash, metadata, queued_at, ?, ? from entries"
                    " where seq = ?",
                    (stamp, error, entry.seq),
                )
                conn.execute("delete from entries where seq = ?", (entry.seq,))
        return PendingWrite(
            seq=entry.seq,
            op=entry.op,
            id=entry.id,
            content_hash=entry.content_hash,
            queued_at=_utc(entry.queued_at),
            status="rejected",
            error=error,
        )

    def discard_rejected(self, now: float | None = None) -> int:
        """Drop the refused entries and those whose token expired (neither will ever be sent)."""
        stamp = time.time() if now is None else now
        with self._transaction() as conn:
            if conn is None:
                return 0
            gone = conn.execute("delete from entries where not " + _LIVE, (stamp,)).rowcount
            return gone + conn.execute("delete from rejected").rowcount

    @contextlib.contextmanager
    def flushing(self, *, blocking: bool) -> Iterator[bool]:
        """Hold the flush lock for the block; yields False (without waiting) when another flusher has it
        and ``blocking`` is false."""
        private_dir(self.path.parent)
        private_file(self._lock_path)
        with self._flush_thread_lock(blocking) as acquired:
            if not acquired:
                yield False
                return
            with open(self._lock_path, "a+b") as handle:
                if fcntl is not None:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                    except BlockingIOError:
                        yield False
                        return
                try:
                    yield True
                finally:
                    if fcntl is not None:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _flush_thread_lock(self, blocking: bool) -> Iterator[bool]:
        acquired = _FLUSH_LOCKS.setdefault(str(self.path), threading.Lock()).acquire(blocking)
        try:
            yield acquired
        finally:
            if acquired:
                _FLUSH_LOCKS[str(self.path)].release()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# flock excludes other processes (and other open files); this excludes other threads of ours, which
# would otherwise each open the lock file and, on some systems, share one process-wide lock.
_FLUSH_LOCKS: dict[str, threading.Lock] = {}
