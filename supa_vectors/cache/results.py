"""The results cache: search answers, query embeddings and store settings in a diskcache directory.

Why diskcache: it is SQLite underneath (safe between processes and threads, atomic ``incr``), bounds its
size by evicting the least recently stored entries, and keeps large values in files. Values are bytes
we encode ourselves (a JSON header plus raw float32 vectors), never pickles: a cache directory may be
shared or tampered with, and unpickling would run whatever it holds.

Every operation is guarded: a corrupted or unreadable cache (a truncated database, a garbled value,
a directory that is a file, a lock held too long) is logged once per kind of failure, counted in
``errors``, and treated as a miss; the store then simply asks the backend. A cache never crashes a
search.

Invalidation. A write through the SDK bumps the store's *generation* and records what it wrote (ids,
new vectors, new metadata) under that generation. Each cached answer remembers the generation it was
computed at; before serving it, the writes since then are checked against it (:func:`still_valid`):
an answer is invalidated when it lists a written document, or when a written document's vector and
metadata could enter its top-k. Answers that no write could change keep being served, which matters
during an outage, when the app's own queued writes must not throw away the whole cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from supa_vectors.cache.filtering import compile_predicate
from supa_vectors.cache.keys import generation_key, write_log_key
from supa_vectors.cache.private import private_file
from supa_vectors.cache.writebehind import WriteBehind
from supa_vectors.errors import ConfigurationError

__all__ = ["CachedAnswer", "Change", "ResultsCache", "pack", "still_valid", "unpack"]

logger = logging.getLogger("supa_vectors.cache")

T = TypeVar("T")

_MAGIC = b"SVC1"
# A write of more documents than this is recorded as "everything may have changed".
MAX_CHANGES_PER_RECORD = 256
# An answer older than this many writes is not checked write by write: it is invalid.
MAX_WRITES_CHECKED = 64
# How long write records are kept; an answer whose writes have expired is invalid.
WRITE_LOG_SECONDS = 7 * 24 * 3600.0
# Similarities are float32 on both sides; a document exactly at the k-th similarity could tie in.
_SIMILARITY_SLACK = 1e-5


def pack(header: Mapping[str, Any], vectors: npt.NDArray[np.float32] | None = None) -> bytes:
    """``SVC1`` + header length + JSON header + float32 matrix bytes (little-endian)."""
    body = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    tail = b"" if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return _MAGIC + struct.pack("<I", len(body)) + body + tail


def unpack(value: Any) -> tuple[dict[str, Any], npt.NDArray[np.float32]]:
    """The header and the vectors (shape ``header["shape"]``, or empty); ValueError if garbled."""
    if not isinstance(value, bytes) or not value.startswith(_MAGIC) or len(value) < 8:
        raise ValueError("not a supa-vectors cache value")
    (length,) = struct.unpack_from("<I", value, 4)
    header = json.loads(value[8 : 8 + length])
    if not isinstance(header, dict):
        raise ValueError("cache value header is not an object")
    shape = header.get("shape")
    tail = value[8 + length :]
    if shape is None:
        if tail:
            raise ValueError("cache value has trailing bytes")
        return header, np.zeros((0, 0), dtype=np.float32)
    rows, dims = int(shape[0]), int(shape[1])
    if len(tail) != rows * dims * 4:
        raise ValueError("cache value is truncated")
    return header, np.frombuffer(tail, dtype="<f4").reshape(rows, dims).astype(np.float32)


@dataclass(frozen=True)
class Change:
    """One document written through the SDK: deleted, or upserted with (when known) its new vector."""

    id: str
    deleted: bool = False
    vector: npt.NDArray[np.float32] | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class CachedAnswer:
    """A cached search answer and what is needed to decide whether a later write could change it."""

    mode: str  # "search" | "hybrid"
    rows: list[dict[str, Any]]
    created_at: float  # wall clock, shared between processes
    generation: int
    k: int
    threshold: float | None
    filter: dict[str, Any]
    query_vector: npt.NDArray[np.float32] | None

    def to_bytes(self) -> bytes:
        header = {
            "mode": self.mode,
            "rows": self.rows,
            "created_at": self.created_at,
            "generation": self.generation,
            "k": self.k,
            "threshold": self.threshold,
            "filter": self.filter,
        }
        vectors = None
        if self.query_vector is not None:
            vectors = self.query_vector.reshape(1, -1)
            header["shape"] = list(vectors.shape)
        return pack(header, vectors)

    @classmethod
    def from_bytes(cls, value: Any) -> CachedAnswer:
        header, vectors = unpack(value)
        rows = header["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValueError("cached rows are not a list of objects")
        threshold = header["threshold"]
        return cls(
            mode=str(header["mode"]),
            rows=rows,
            created_at=float(header["created_at"]),
            generation=int(header["generation"]),
            k=int(header["k"]),
            threshold=None if threshold is None else float(threshold),
            filter=dict(header["filter"]),
            query_vector=vectors[0] if vectors.size else None,
        )


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def still_valid(answer: CachedAnswer, changes: Sequence[Change] | None) -> bool:
    """Whether no write in ``changes`` could change ``answer`` (None: the writes are unknown).

    A written document that the answer lists changes it (new content, metadata or gone). Otherwise a
    deletion cannot; an upsert can only if the document now passes the answer's filter and, for a
    vector search with a known new vector, its similarity would place it in the top k (or above the
    threshold when the answer had fewer than k rows). Without a vector (content unchanged, or queued
    before any embedding was possible) a document passing a non-empty filter is assumed to enter; with
    no filter and unchanged content it was a candidate before too, and it did not make the list.
    """
    if changes is None:
        return False
    listed = {str(row.get("id")) for row in answer.rows}
    predicate = compile_predicate(answer.filter)
    similarities = [float(row["similarity"]) for row in answer.rows if row.get("similarity") is not None]
    floor = min(similarities) if similarities and len(answer.rows) >= answer.k else None
    query = _unit(answer.query_vector) if answer.query_vector is not None else None
    for change in changes:
        if change.id in listed:
            return False
        if change.deleted:
            continue
        if change.metadata is None:
            return False
        if not predicate(change.metadata):
            continue
        if answer.mode != "search" or query is None:
            return False  # hybrid ranks by words too: any matching write may enter
        if change.vector is None:
            if answer.filter:
                return False
            continue
        similarity = float(np.dot(query, _unit(change.vector)))
        if answer.threshold is not None and similarity < answer.threshold - _SIMILARITY_SLACK:
            continue
        if floor is None or similarity >= floor - _SIMILARITY_SLACK:
            return False
    return True


def _pack_changes(changes: Sequence[Change] | None) -> bytes:
    if changes is None or len(changes) > MAX_CHANGES_PER_RECORD:
        return pack({"all": True})
    vectors = [c.vector for c in changes if c.vector is not None]
    items = []
    index = 0
    for change in changes:
        position = -1
        if change.vector is not None:
            position = index
            index += 1
        items.append({"id": change.id, "deleted": change.deleted, "metadata": change.metadata, "v": position})
    header: dict[str, Any] = {"all": False, "changes": items}
    matrix = None
    if vectors:
        matrix = np.stack([np.asarray(v, dtype=np.float32) for v in vectors])
        header["shape"] = list(matrix.shape)
    return pack(header, matrix)


def _unpack_changes(value: Any) -> list[Change] | None:
    header, vectors = unpack(value)
    if header.get("all"):
        return None
    out = []
    for item in header["changes"]:
        position = int(item["v"])
        metadata = item.get("metadata")
        out.append(
            Change(
                id=str(item["id"]),
                deleted=bool(item["deleted"]),
                vector=vectors[position] if position >= 0 else None,
                metadata=dict(metadata) if isinstance(metadata, dict) else None,
            )
        )
    return out


def _private_disk() -> type[Any]:
    """diskcache's ``Disk`` whose value files are 0600 (it opens them with the process umask), and
    which never unpickles.

    We only ever store bytes, strings and integers, which diskcache keeps as they are; it pickles
    anything else, and unpickles whatever row says it holds a pickle. A cache database is a file on
    disk: a row planted there must not run code when the store reads it, so a pickle is read as the
    bytes it is, never loaded (then it is garbled like any stranger's value: reported, dropped, a miss).
    """
    import diskcache

    class PrivateDisk(diskcache.Disk):  # type: ignore[misc]
        def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
            size, mode, filename, db_value = super().store(value, read, key)
            if mode == diskcache.core.MODE_PICKLE:
                raise TypeError(f"the supa-vectors cache stores bytes, not {type(value).__name__}")
            if filename:
                os.chmod(os.path.join(self._directory, filename), 0o600)
            return size, mode, filename, db_value

        def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
            if mode == diskcache.core.MODE_PICKLE:
                return b"" if value is None else bytes(value)
            return super().fetch(mode, filename, value, read)

        def get(self, key: Any, raw: bool) -> Any:
            return super().get(key, True)  # a key that would need unpickling stays bytes

    return PrivateDisk


# What waits in the write-behind queue: an answer, a query embedding, or store settings.
_Queued = CachedAnswer | npt.NDArray[np.float32] | dict[str, Any]


def _encode(value: _Queued) -> bytes:
    if isinstance(value, CachedAnswer):
        return value.to_bytes()
    if isinstance(value, dict):
        return pack({"settings": value})
    matrix = np.asarray(value, dtype=np.float32).reshape(1, -1)
    return pack({"shape": list(matrix.shape)}, matrix)


class ResultsCache:
    """The diskcache directories shared by every store, process and identity on the machine.

    ``<directory>/results`` holds answers, embeddings, settings and write records, keyed per identity
    (see :mod:`supa_vectors.cache.keys`), bounded by ``size_limit`` (least recently stored entries go
    first). ``<directory>/generations`` holds one counter per store and never evicts: a counter that
    vanished would restart from 0 and make old answers look current.

    Answers, embeddings and settings are written behind (:mod:`supa_vectors.cache.writebehind`): queued
    in memory, visible to this cache's reads at once, on disk after the next batch, :meth:`flush` or
    :meth:`close`. Generations and write records are written at once: they are what tells every
    process which answers a write made stale.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size_limit: int,
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        max_pending: int = 1000,
    ) -> None:
        self.directory = directory
        self.size_limit = size_limit
        self.clock = clock
        self.errors = 0
        self.last_error: str | None = None
        self._reported: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._cache: Any = None
        self._counters: Any = None
        self._behind: WriteBehind[_Queued] = WriteBehind(self._write_batch, max_pending=max_pending)
        # Answers hold document text: the directories and their databases are private to this OS user
        # (a directory of someone else's is refused here, before the bypass below could hide it).
        try:
            for name in ("results", "generations"):
                private_file(directory / name / "cache.db")
            import diskcache

            cache = diskcache.Cache(
                str(directory / "results"),
                size_limit=size_limit,
                timeout=timeout,
                eviction_policy="least-recently-stored",
                # Our values are bytes already; keep files for the large ones only.
                disk_min_file_size=64 * 1024,
                disk=_private_disk(),
            )
            try:
                counters = diskcache.Cache(
                    str(directory / "generations"),
                    timeout=timeout,
                    eviction_policy="none",
                    disk=_private_disk(),
                )
            except Exception:
                cache.close()
                raise
            # Opening succeeds on a garbled database file; the first read is what fails. Fail here.
            cache.get(generation_key("probe"))
            counters.get(generation_key("probe"))
            self._cache, self._counters = cache, counters
        except ConfigurationError:
            raise  # someone else's directory: refused, not bypassed
        except Exception as exc:
            self._report("open", exc)

    @property
    def available(self) -> bool:
        return self._cache is not None

    def _report(self, operation: str, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{operation}: {type(exc).__name__}: {exc}"
            first = (operation, type(exc).__name__) not in self._reported
            self._reported.add((operation, type(exc).__name__))
        if first:
            logger.warning(
                "supa-vectors cache at %s is unusable for %s (%s: %s); answering without it",
                self.directory,
                operation,
                type(exc).__name__,
                exc,
            )

    @contextlib.contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._report(operation, exc)

    def _get(self, key: str, operation: str, decode: Callable[[Any], T]) -> T | None:
        if self._cache is None:
            return None
        raw: Any = None
        with self._guard(operation):
            raw = self._cache.get(key)
        if raw is None:
            return None
        try:
            return decode(raw)
        except Exception as exc:
            # A garbled value: drop it so it is reported once, not on every lookup.
            self._report(operation, exc)
            with self._guard("delete"):
                self._cache.delete(key)
            return None

    def _put(self, key: str, value: _Queued) -> None:
        if self._cache is not None:
            self._behind.put(key, value)

    def _write_batch(self, batch: Sequence[tuple[str, _Queued]]) -> None:
        """Encode a batch (on the writer thread) and store it in one transaction; a value that cannot
        be encoded is reported and skipped, a batch the disk refuses is reported and lost."""
        encoded = []
        for key, value in batch:
            with self._guard("write"):
                encoded.append((key, _encode(value)))
        with self._guard("write"), self._cache.transact():
            for key, raw in encoded:
                self._cache.set(key, raw)

    def flush(self) -> None:
        """Write what is queued now (the store's ``close()`` does; tests and benchmarks may)."""
        self._behind.flush()

    @property
    def dropped(self) -> int:
        """Entries dropped unwritten because more than ``max_pending`` waited for the disk."""
        return self._behind.dropped

    # ---- answers ---------------------------------------------------------------------------------

    def get_answer(self, key: str) -> CachedAnswer | None:
        queued = self._behind.get(key)
        if isinstance(queued, CachedAnswer):
            return queued
        return self._get(key, "read", CachedAnswer.from_bytes)

    def put_answer(self, key: str, answer: CachedAnswer) -> None:
        self._put(key, answer)

    # ---- query embeddings --------------------------------------------------------------------------

    def get_vector(self, key: str) -> npt.NDArray[np.float32] | None:
        queued = self._behind.get(key)
        if isinstance(queued, np.ndarray):
            return queued

        def decode(raw: Any) -> npt.NDArray[np.float32]:
            vector: npt.NDArray[np.float32] = unpack(raw)[1][0]
            return vector

        return self._get(key, "read", decode)

    def put_vector(self, key: str, vector: npt.NDArray[np.float32]) -> None:
        self._put(key, np.array(vector, dtype=np.float32).reshape(-1))

    # ---- store settings ----------------------------------------------------------------------------

    def get_settings(self, key: str) -> dict[str, Any] | None:
        queued = self._behind.get(key)
        if isinstance(queued, dict):
            return dict(queued)

        def decode(raw: Any) -> dict[str, Any]:
            return dict(unpack(raw)[0]["settings"])

        return self._get(key, "read", decode)

    def put_settings(self, key: str, settings: Mapping[str, Any]) -> None:
        self._put(key, dict(settings))

    # ---- generations and the write log -------------------------------------------------------------

    def generation(self, store: str) -> int:
        if self._counters is None:
            return 0
        value: Any = 0
        with self._guard("read"):
            value = self._counters.get(generation_key(store), default=0)
        return value if isinstance(value, int) else 0

    def record_writes(self, store: str, changes: Sequence[Change] | None) -> None:
        """Bump the store's generation and remember what changed (None: anything may have)."""
        if self._cache is None or (changes is not None and not changes):
            return
        with self._guard("write"):
            generation = int(self._counters.incr(generation_key(store), default=0))
            self._cache.set(
                write_log_key(store, generation), _pack_changes(changes), expire=WRITE_LOG_SECONDS
            )

    def writes_since(self, store: str, generation: int) -> list[Change] | None:
        """The changes recorded after ``generation``, or None when they cannot all be read."""
        current = self.generation(store)
        if current == generation:
            return []
        if current < generation:
            return None  # the counters were reset (deleted by hand): nothing can be vouched for
        if current - generation > MAX_WRITES_CHECKED:
            return None
        out: list[Change] = []
        for number in range(generation + 1, current + 1):
            found = self._get(write_log_key(store, number), "read", _unpack_changes)
            if found is None:
                return None  # expired, evicted or garbled: assume anything changed
            out.extend(found)
        return out

    def is_current(self, store: str, answer: CachedAnswer) -> bool:
        return still_valid(answer, self.writes_since(store, answer.generation))

    def volume(self) -> int:
        if self._cache is None:
            return 0
        value = 0
        with self._guard("read"):
            value = int(self._cache.volume())
        return value

    def close(self) -> None:
        """Write what is queued, then close the databases."""
        self._behind.close()
        for cache in (self._cache, self._counters):
            if cache is not None:
                with self._guard("close"):
                    cache.close()
