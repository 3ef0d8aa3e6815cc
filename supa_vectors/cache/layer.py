"""The offline layer: what ``VectorStore`` and ``AsyncVectorStore`` do when the backend may be down.

It wraps the operations' flows (:mod:`supa_vectors._core.flows`) with the store's cache, breaker,
outbox and mirror. Like them, every multi-step part here is a generator that yields the network and
embedder work it needs (:class:`~supa_vectors._core.ops.RpcCall`, :class:`~supa_vectors._core.ops.EmbedCall`)
and receives the result or the failure; the two stores only perform those, through the circuit
breaker. Local disk reads (the results cache, the outbox, the mirror) happen inline: they take
microseconds, so the async store does them on the loop rather than in a thread. The results cache's
writes, one per answer, are queued and written behind by a thread (decision 0025).

Reads (network first, by default): ask the backend; when it cannot answer (:func:`is_outage`), serve
the cached answer to the same question if no write since could have changed it, else search the
mirror, else raise the original error. Answers served that way are ``stale`` with their age. In
cache-first mode a cached answer younger than the TTL is served without asking.

Writes: when the backend cannot take them, ``upsert``/``delete`` queue them in the outbox (in order,
once per id and content) and say so (``status="queued"``, ``DeleteCount.queued``). While anything
waits, new writes queue behind it, so the server sees writes in the order the app made them.

Trust: everything stored for an identity (answers, settings, mirror, outbox) is used only for a caller
:meth:`OfflineLayer.trusted` vouches for (see :mod:`supa_vectors.cache.trust`); anyone else gets the
backend's own error, and queued writes replay with the credentials that queued them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from supa_vectors._core import checks, rpcs, upsert
from supa_vectors._core.ops import EmbedCall, Flow, Op, RpcCall
from supa_vectors._core.settings import StoreSettings
from supa_vectors._core.telemetry import note_answer
from supa_vectors._core.upsert import EMBED_BATCH_SIZE, PreparedDocument
from supa_vectors._models import (
    DeleteCount,
    HybridSearchResult,
    SearchResult,
    UpsertResult,
    UpsertStatus,
)
from supa_vectors.cache.breaker import CircuitBreaker, is_outage
from supa_vectors.cache.filtering import compile_predicate
from supa_vectors.cache.keys import Scope, canonical_json, settings_key, store_label, transport_subject
from supa_vectors.cache.mirror import Mirror, SyncResult, sync_flow
from supa_vectors.cache.outbox import FlushResult, Outbox, PendingWrite, QueuedWrite, next_batch
from supa_vectors.cache.private import private_dir
from supa_vectors.cache.results import CachedAnswer, Change, ResultsCache
from supa_vectors.cache.trust import AcceptedCredentials, expired
from supa_vectors.errors import (
    AuthError,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    DocumentError,
    SupaVectorsError,
)
from supa_vectors.transport.identity import Identity

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_CACHE_TTL",
    "ENV_CACHE_DIR",
    "CacheMode",
    "OfflineLayer",
    "breaker_file",
    "default_cache_dir",
]

logger = logging.getLogger("supa_vectors.cache")

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

CacheMode = Literal["network-first", "cache-first", "off"]
ENV_CACHE_DIR = "SUPA_VECTORS_CACHE_DIR"
DEFAULT_CACHE_SIZE = 256 * 1024 * 1024
DEFAULT_CACHE_TTL = 300.0
_MODES = ("network-first", "cache-first", "off")


def default_cache_dir() -> Path:
    """``$SUPA_VECTORS_CACHE_DIR``, else the user cache directory (``~/.cache/supa-vectors`` on Linux)."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    import platformdirs

    return platformdirs.user_cache_path("supa-vectors")


def breaker_file(cache_dir: Path, transport: object) -> Path:
    """Where a breaker in front of ``transport`` keeps its state: one file per backend (whether it
    answers does not depend on who asks), named by a hash of the store label so it leaks nothing."""
    return cache_dir / "breaker" / f"{Scope(store_label(transport), '', '', '').file_stem}.json"


@dataclass(frozen=True)
class _Tracked:
    """What an online upsert learned before it finished (or failed half-way)."""

    statuses: dict[str, str]
    vectors: dict[str, npt.NDArray[np.float32]]  # by content


class OfflineLayer:
    """One store's cache, breaker, outbox and mirror, and the flows that use them."""

    def __init__(
        self,
        transport: object,
        *,
        cache_dir: str | os.PathLike[str] | None,
        cache: CacheMode,
        cache_ttl: float,
        cache_size: int,
        outbox: bool,
        breaker: CircuitBreaker | None,
    ) -> None:
        if cache not in _MODES:
            raise ConfigurationError(f"cache must be one of {', '.join(_MODES)}; got {cache!r}")
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, int | float) or not cache_ttl >= 0:
            raise ConfigurationError(f"cache_ttl must be a number of seconds >= 0, got {cache_ttl!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1024 * 1024:
            raise ConfigurationError(f"cache_size must be at least 1 MiB (in bytes), got {cache_size!r}")
        if not isinstance(outbox, bool):
            raise ConfigurationError(f"outbox must be True or False, got {outbox!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(f"breaker must be a CircuitBreaker, got {type(breaker).__name__}")
        self._transport = transport
        self.mode: CacheMode = cache
        self.ttl = float(cache_ttl)
        self.cache_size = cache_size
        self.outbox_enabled = outbox
        self.directory = Path(cache_dir).expanduser().absolute() if cache_dir is not None else None
        self.store = store_label(transport)
        self._checked_directory = False
        if breaker is None:
            # Its own breaker remembers across processes, next to the cache (none when the cache is off).
            state_file = None if cache == "off" else breaker_file(self.cache_directory, transport)
            breaker = CircuitBreaker(state_file=state_file)
        self.breaker = breaker
        self.clock = time.time
        self.schema_version = "unknown"
        self._results: ResultsCache | None = None
        self._outboxes: dict[str, Outbox] = {}
        self._mirrors: dict[str, Mirror] = {}
        self._accepted: AcceptedCredentials | None = None

    # ---- components --------------------------------------------------------------------------------

    @property
    def cache_directory(self) -> Path:
        if self.directory is None:
            self.directory = default_cache_dir()
        if not self._checked_directory:
            # ConfigurationError: another user's, or writable by others. OSError: a file in the way,
            # which the cache and the mirror bypass and the outbox reports.
            with contextlib.suppress(OSError):
                private_dir(self.directory)
            self._checked_directory = True
        return self.directory

    # ---- trust -------------------------------------------------------------------------------------

    def _credentials(self) -> str | None:
        credentials = getattr(self._transport, "credentials", None)
        return credentials if isinstance(credentials, str) and credentials else None

    def _registry(self) -> AcceptedCredentials:
        if self._accepted is None:
            self._accepted = AcceptedCredentials(self.cache_directory / "trust.sqlite3")
        return self._accepted

    def note_accepted(self) -> None:
        """After a call the backend answered: remember the credentials it accepted (PostgREST)."""
        accepted = getattr(self._transport, "accepted_credentials", None)
        if not isinstance(accepted, str) or not accepted or (self.mode == "off" and not self.outbox_enabled):
            return
        try:
            self._registry().remember(accepted, self.clock())
        except (sqlite3.Error, OSError) as exc:
            logger.warning("supa-vectors: cannot record accepted credentials (%s)", type(exc).__name__)

    def trusted(self) -> bool:
        """Whether what is stored for the current caller's identity may be used without the backend.

        A transport without per-request credentials (Postgres: the app sets the identity itself) is
        trusted. Otherwise the current credentials must be unexpired and either accepted by the
        backend before (exactly these bytes) or verified by a key the transport holds. A token's claims
        alone prove nothing: anyone can write a token that claims to be user A.
        """
        if not hasattr(self._transport, "credentials"):
            return True
        credentials = self._credentials()
        now = self.clock()
        if credentials is None or expired(credentials, now):
            return False
        try:
            if self._registry().accepted(credentials, now):
                return True
        except (sqlite3.Error, OSError) as exc:
            logger.warning("supa-vectors: cannot read accepted credentials (%s)", type(exc).__name__)
        verifies = getattr(self._transport, "verifies", None)
        return bool(verifies(credentials, now)) if callable(verifies) else False

    def _untrusted(self) -> AuthError:
        return AuthError(
            "the backend has not verified this caller's credentials (never accepted while online, not "
            "verifiable with the keys given, or expired): nothing stored offline is used for it"
        )

    def _caller_outbox(self) -> Outbox | None:
        """The outbox, for a trusted caller only: an unverified one can neither queue nor list writes."""
        return self.outbox() if self.trusted() else None

    @property
    def identity(self) -> str:
        fingerprint = getattr(self._transport, "identity_fingerprint", None)
        return str(fingerprint) if fingerprint else "unknown"

    @property
    def results(self) -> ResultsCache | None:
        if self.mode == "off":
            return None
        if self._results is None:
            self._results = ResultsCache(self.cache_directory, size_limit=self.cache_size, clock=self.clock)
        return self._results

    def _stem(self) -> str:
        return Scope(self.store, self.identity, "", "").file_stem

    def outbox(self) -> Outbox | None:
        if not self.outbox_enabled:
            return None
        stem = self._stem()
        found = self._outboxes.get(stem)
        if found is None:
            found = self._outboxes[stem] = Outbox(self.cache_directory / "outbox" / f"{stem}.sqlite3")
        return found

    def mirror(self) -> Mirror | None:
        if self.mode == "off":
            return None
        stem = self._stem()
        found = self._mirrors.get(stem)
        if found is None:
            found = self._mirrors[stem] = Mirror(self.cache_directory / "mirror" / f"{stem}.sqlite3")
        return found

    def mirror_age(self) -> float | None:
        """Seconds since the mirror was last synced; None when it never was (or the cache is off)."""
        mirror = self.mirror()
        if mirror is None:
            return None
        try:
            synced_at = mirror.synced_at()
        except (sqlite3.Error, OSError, ValueError) as exc:
            mirror.report("state", exc)
            return None
        return None if synced_at is None else self._age(synced_at)

    @property
    def cache_errors(self) -> int:
        """Failures of the cache and the mirror that were reported and bypassed."""
        errors = self._results.errors if self._results is not None else 0
        return errors + sum(m.errors for m in self._mirrors.values())

    def scope(self, settings: StoreSettings) -> Scope:
        return Scope(self.store, self.identity, settings.embedding_model, self.schema_version)

    def has_pending(self) -> bool:
        """Whether writes wait that this caller can replay (none for an unverified caller)."""
        outbox = self.outbox()
        # The file check first: most calls find no outbox, and need no trust decision.
        if outbox is None or not outbox.path.exists() or not self.trusted():
            return False
        try:
            return outbox.has_pending(self.clock())
        except (sqlite3.Error, OSError) as exc:
            logger.warning("supa-vectors outbox %s cannot be read: %s", outbox.path, exc)
            return False

    def _listable_outbox(self) -> Outbox | None:
        if not self.outbox_enabled:
            return None
        outbox = self._caller_outbox()
        if outbox is None:
            raise self._untrusted()
        return outbox

    def pending(self) -> list[PendingWrite]:
        outbox = self._listable_outbox()
        return [] if outbox is None else outbox.pending(self.clock())

    def outbox_depth(self) -> tuple[int | None, float | None]:
        """How many writes wait for this caller and the oldest one's age in seconds (None, None with
        the outbox off or for a caller not trusted; a file that cannot be read counts as empty)."""
        outbox = self._caller_outbox() if self.outbox_enabled else None
        if outbox is None:
            return None, None
        try:
            count, oldest = outbox.depth()
        except (sqlite3.Error, OSError) as exc:
            logger.warning("supa-vectors outbox %s cannot be read: %s", outbox.path, exc)
            return 0, None
        return count, None if oldest is None else self._age(oldest)

    def discard_rejected(self) -> int:
        outbox = self._listable_outbox()
        return 0 if outbox is None else outbox.discard_rejected(self.clock())

    def close(self) -> None:
        if self._accepted is not None:
            self._accepted.close()
        if self._results is not None:
            self._results.close()
        for outbox in self._outboxes.values():
            outbox.close()
        for mirror in self._mirrors.values():
            mirror.close()

    # ---- settings ----------------------------------------------------------------------------------

    def settings_flow(
        self, call: RpcCall, parse: Callable[[Any], StoreSettings]
    ) -> Flow[tuple[StoreSettings, bool]]:
        """Wrap the settings operation's ``call``: the settings and whether they are live; offline,
        the last ones seen (persisted per store and identity, with the schema version)."""
        key = settings_key(self.store, self.identity)
        try:
            raw = yield call
        except SupaVectorsError as exc:
            if not is_outage(exc) or not self.trusted():
                raise
            cached = self.results.get_settings(key) if self.results is not None else None
            if cached is None:
                raise
            self.schema_version = str(cached.get("schema_version", "unknown"))
            return parse(cached), False
        settings = parse(raw)
        if isinstance(raw, Mapping):
            self.schema_version = str(raw.get("schema_version", "unknown"))
            if self.results is not None:
                self.results.put_settings(key, raw)
        return settings, True

    # ---- reads -------------------------------------------------------------------------------------

    def _age(self, since: float) -> float:
        return max(0.0, self.clock() - since)

    def _embed_query(self, scope: Scope, text: str, dimension: int) -> Flow[npt.NDArray[np.float32]]:
        results = self.results
        key = scope.embedding_key(text)
        cached = results.get_vector(key) if results is not None else None
        if cached is not None and cached.shape == (dimension,):
            return cached
        vector: npt.NDArray[np.float32] = upsert.check_embeddings((yield EmbedCall([text])), 1, dimension)[0]
        if results is not None:
            results.put_vector(key, vector)
        return vector

    def _cached(self, key: str) -> CachedAnswer | None:
        results = self.results
        if results is None:
            return None
        answer = results.get_answer(key)
        if answer is None or not results.is_current(self.store, answer):
            return None
        return answer

    def read_flow(
        self,
        kind: Literal["search", "hybrid"],
        query: str | npt.NDArray[np.float32],
        k: int,
        threshold: float | None,
        filter: dict[str, Any],
        settings: StoreSettings,
        *,
        ask: Callable[[npt.NDArray[np.float32]], RpcCall],
        parse: Callable[[Any], Sequence[R]],
        tuning: dict[str, Any] | None = None,
    ) -> Flow[list[R]]:
        """Wrap a search operation's call (``ask`` builds it from the query vector, ``parse`` reads its
        reply) with the results cache: cache-first answers, the query's vector cached, the answer
        stored, and when the backend cannot answer, the cached answer or (vector search only, the
        mirror has no full-text index to fuse with) the mirror's."""
        result_type: type[Any] = SearchResult if kind == "search" else HybridSearchResult
        scope = self.scope(settings)
        key = scope.search_key(kind, query, k, threshold, filter, tuning)
        results = self.results
        generation = results.generation(self.store) if results is not None else 0
        if self.mode == "cache-first" and self.trusted():
            hit = self._cached(key)
            if hit is not None and self._age(hit.created_at) <= self.ttl:
                note_answer("cache", stale=False)
                return _cached_results(result_type, hit.rows, "cache", False, self._age(hit.created_at))
        if isinstance(query, str):
            vector = yield from self._embed_query(scope, query, settings.embedding_dimension)
        else:
            vector = query
        try:
            reply = yield ask(vector)
        except SupaVectorsError as exc:
            if not is_outage(exc) or self.mode == "off" or not self.trusted():
                raise
            hit = self._cached(key)
            if hit is not None:
                note_answer("cache", stale=True)
                return _cached_results(result_type, hit.rows, "cache", True, self._age(hit.created_at))
            if kind == "search":
                return cast(list[R], self._mirror_answer(vector, k, threshold, filter, settings, exc))
            raise
        found = list(parse(reply))
        note_answer("backend", stale=False)
        if results is not None:
            # Queued, written behind (the caller may change its own array and filter in the meantime:
            # the answer keeps copies).
            rows = [r.model_dump(exclude={"source", "stale", "age_seconds"}) for r in found]
            answer = CachedAnswer(
                kind, rows, self.clock(), generation, k, threshold, dict(filter), vector.copy()
            )
            results.put_answer(key, answer)
        return found

    def _mirror_answer(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        threshold: float | None,
        filter: dict[str, Any],
        settings: StoreSettings,
        error: SupaVectorsError,
    ) -> list[SearchResult]:
        mirror = self.mirror()
        if mirror is not None:
            try:
                state = mirror.state()
                if state.get("model") == settings.embedding_model and "synced_at" in state:
                    hits = mirror.search(
                        vector, k, threshold, canonical_json(filter), compile_predicate(filter)
                    )
                    if hits is not None:
                        note_answer("mirror", stale=True)
                        age = self._age(float(state["synced_at"]))
                        return [
                            SearchResult(
                                id=h.id,
                                content=h.content,
                                metadata=h.metadata,
                                similarity=h.similarity,
                                source="mirror",
                                stale=True,
                                age_seconds=age,
                            )
                            for h in hits
                        ]
            except (sqlite3.Error, OSError, ValueError) as exc:
                mirror.report("search", exc)
        raise error

    # ---- writes ------------------------------------------------------------------------------------

    def _record(self, changes: Sequence[Change] | None) -> None:
        if self.results is not None:
            self.results.record_writes(self.store, changes)

    def _forget_in_mirror(self, ids: Sequence[str]) -> None:
        mirror = self.mirror()
        if mirror is None or not ids:
            return
        try:
            mirror.forget(ids, transport_subject(self._transport))
        except (sqlite3.Error, OSError) as exc:
            mirror.report("delete", exc)

    def _enqueue(self, outbox: Outbox, writes: Sequence[QueuedWrite], error: SupaVectorsError | None) -> None:
        try:
            outbox.enqueue(writes)
        except (sqlite3.Error, OSError) as exc:
            # The write can neither reach the backend nor wait on disk: the caller must know.
            message = f"the backend is unreachable and the outbox {outbox.path} cannot take the write: {exc}"
            raise BackendUnavailableError(message) from (error or exc)

    def _queue_upserts(
        self,
        outbox: Outbox,
        documents: Sequence[PreparedDocument],
        settings: StoreSettings | None,
        vectors: Mapping[str, npt.NDArray[np.float32]],
        error: SupaVectorsError | None,
    ) -> Flow[None]:
        """Queue ``documents`` with their vectors (embedding now what is still missing, when the
        store's model is known), so the replay needs no embedder and the cache can tell which
        answers the writes may change."""
        found: dict[int, npt.NDArray[np.float32]] = {}
        for doc in documents:
            vector = doc.embedding if doc.embedding is not None else vectors.get(doc.content)
            if vector is not None:
                found[doc.index] = vector
        if settings is not None:
            todo = [d for d in documents if d.index not in found]
            for start in range(0, len(todo), EMBED_BATCH_SIZE):
                batch = todo[start : start + EMBED_BATCH_SIZE]
                output = yield EmbedCall([d.content for d in batch])
                array = upsert.check_embeddings(output, len(batch), settings.embedding_dimension)
                for doc, vector in zip(batch, array, strict=True):
                    found[doc.index] = vector
        writes = [
            QueuedWrite(
                op="upsert",
                id=d.id,
                content=d.content,
                content_hash=d.content_hash,
                metadata=d.metadata,
                embedding=found.get(d.index),
                credentials=self._credentials(),
            )
            for d in documents
        ]
        self._enqueue(outbox, writes, error)
        self._record([Change(d.id, vector=found.get(d.index), metadata=d.metadata) for d in documents])

    def _write_flow(
        self, prepared: Sequence[PreparedDocument], settings: StoreSettings, identity: Identity | None
    ) -> Flow[list[UpsertResult]]:
        """The online write, with chunks sized for how this store's transport sends vectors."""
        return upsert.upsert_flow(
            prepared, settings, identity, vector_bytes_per_float=upsert.bytes_per_float(self._transport)
        )

    def upsert_flow(
        self, prepared: Sequence[PreparedDocument], settings: StoreSettings | None, identity: Identity | None
    ) -> Flow[list[UpsertResult]]:
        """Write online when possible; queue what the backend could not take (``settings`` is None when
        the store was never reached: everything queues). An unverified caller never queues."""
        outbox = self._caller_outbox()
        if outbox is not None and (settings is None or self.has_pending()):
            yield from self._queue_upserts(outbox, prepared, settings, {}, None)
            return [UpsertResult(id=d.id, status="queued") for d in prepared]
        if settings is None:
            raise BackendUnavailableError("the backend is unreachable and the store's settings are unknown")
        tracked = _Tracked({}, {})
        try:
            results: list[UpsertResult] = yield from _tracking(
                self._write_flow(prepared, settings, identity), tracked
            )
        except SupaVectorsError as exc:
            if outbox is None or not is_outage(exc):
                raise
            rest = [d for d in prepared if d.id not in tracked.statuses]
            self._record_upserts(prepared, tracked)
            yield from self._queue_upserts(outbox, rest, settings, tracked.vectors, exc)
            return [
                UpsertResult(id=d.id, status=cast(UpsertStatus, tracked.statuses.get(d.id, "queued")))
                for d in prepared
            ]
        self._record_upserts(prepared, tracked)
        return results

    def _record_upserts(self, prepared: Sequence[PreparedDocument], tracked: _Tracked) -> None:
        changes = []
        for doc in prepared:
            if tracked.statuses.get(doc.id) in ("inserted", "updated"):
                vector = doc.embedding if doc.embedding is not None else tracked.vectors.get(doc.content)
                changes.append(Change(doc.id, vector=vector, metadata=doc.metadata))
        self._record(changes)

    def delete_flow(self, ids: Sequence[str]) -> Flow[DeleteCount]:
        """Delete chunk by chunk; from the first chunk the backend cannot take (or while older writes
        still wait in the outbox), the rest of the ids are queued. An unverified caller never queues."""
        outbox = self._caller_outbox()
        chunks = checks.id_chunks(ids)
        deleted = 0
        for position, chunk in enumerate(chunks):
            error: SupaVectorsError | None = None
            if outbox is None or not self.has_pending():
                try:
                    rows = yield rpcs.DELETE_DOCUMENTS.call({"external_ids": chunk})
                except SupaVectorsError as exc:
                    if outbox is None or not is_outage(exc):
                        raise
                    error = exc
                else:
                    gone = [str(row["external_id"]) for row in _rows(rows, rpcs.DELETE_DOCUMENTS.name)]
                    deleted += len(gone)
                    self._record([Change(doc_id, deleted=True) for doc_id in gone])
                    self._forget_in_mirror(chunk)
                    continue
            assert outbox is not None
            rest = [doc_id for later in chunks[position:] for doc_id in later]
            credentials = self._credentials()
            queued = [QueuedWrite(op="delete", id=doc_id, credentials=credentials) for doc_id in rest]
            self._enqueue(outbox, queued, error)
            self._record([Change(doc_id, deleted=True) for doc_id in rest])
            self._forget_in_mirror(rest)
            return DeleteCount(deleted, queued=len(rest))
        return DeleteCount(deleted)

    def flush_flow(
        self, settings: StoreSettings, identity: Identity | None, *, blocking: bool
    ) -> Flow[FlushResult]:
        """Replay the outbox in order, removing each batch once the server confirmed it.

        A batch the backend cannot take stops the flush (the error propagates; everything from that
        batch on stays queued). A document the server refuses is moved to the rejected list, and the
        rest of its batch is sent again without it.
        """
        outbox = self.outbox() if self.outbox_enabled else None
        if outbox is None:
            return FlushResult()
        if not self.trusted():
            # Let the backend judge these credentials (a 2xx records them as accepted); a forged or
            # expired token gets its AuthError here, and never sees the outbox.
            yield rpcs.STORE_SETTINGS.call()
            if not self.trusted():
                raise self._untrusted()
        upserted = deleted = 0
        rejected: list[PendingWrite] = []
        with outbox.flushing(blocking=blocking) as acquired:
            if not acquired:
                return FlushResult(remaining=outbox.count())
            while batch := next_batch(outbox.head(now=self.clock())):
                try:
                    done, changes = yield from _as_caller(
                        self._replay(batch, settings, identity), batch[0].credentials
                    )
                except DocumentError as exc:
                    if exc.index is None or not 0 <= exc.index < len(batch):
                        raise
                    rejected.append(_reject(outbox, batch[exc.index], exc))
                    continue
                except AuthError as exc:
                    if batch[0].credentials is None:
                        raise
                    # The credentials that queued these no longer pass (a revoked key, a policy): they
                    # are set aside for the app, never sent as anyone else.
                    rejected.extend(_reject(outbox, entry, exc) for entry in batch)
                    continue
                if batch[0].op == "delete":
                    deleted += done
                else:
                    upserted += done
                outbox.remove([e.seq for e in batch])
                self._record(changes)
        return FlushResult(
            upserted=upserted,
            deleted=deleted,
            rejected=tuple(rejected),
            remaining=outbox.count(),
            expired=tuple(outbox.expired(self.clock())),
        )

    def _replay(
        self, batch: Sequence[QueuedWrite], settings: StoreSettings, identity: Identity | None
    ) -> Flow[tuple[int, list[Change]]]:
        """Send one batch of queued writes; returns how many the server took and the changes."""
        if batch[0].op == "delete":
            rows = yield rpcs.DELETE_DOCUMENTS.call({"external_ids": [e.id for e in batch]})
            return len(_rows(rows, rpcs.DELETE_DOCUMENTS.name)), [Change(e.id, deleted=True) for e in batch]
        prepared = upsert.prepare_documents(
            [
                {
                    "id": e.id,
                    "content": e.content or "",
                    "metadata": e.metadata or {},
                    "embedding": e.embedding,
                }
                for e in batch
            ]
        )
        upsert.check_limits(prepared, settings)
        yield from self._write_flow(prepared, settings, identity)
        return len(batch), [Change(e.id, vector=e.embedding, metadata=e.metadata) for e in batch]

    # ---- mirror ------------------------------------------------------------------------------------

    def sync_flow(self, settings: StoreSettings, *, full: bool) -> Flow[SyncResult]:
        mirror = self.mirror()
        if mirror is None:
            raise ConfigurationError("the mirror is part of the offline cache, which this store has off")
        try:
            mirror.state()
        except sqlite3.DatabaseError as exc:
            mirror.report("sync", exc)
            mirror.recreate()
            full = True
        result: SyncResult = yield from sync_flow(mirror, settings, self.schema_version, full=full)
        return result


def _rows(value: Any, rpc: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(row, Mapping) for row in value):
        raise BackendError(f"{rpc} returned {type(value).__name__}, not a list of rows")
    return value


def _relay(flow: Flow[T], rewrite: Callable[[Op], Op], observe: Callable[[Op, Any], None]) -> Flow[T]:
    """Pass ``flow``'s operations through ``rewrite``, showing each answer to ``observe``."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        op = rewrite(op)
        reply, error = None, None
        try:
            reply = yield op
        except SupaVectorsError as exc:
            error = exc
            continue
        observe(op, reply)


def _as_caller(flow: Flow[T], credentials: str | None) -> Flow[T]:
    """``flow`` with every RPC sent with ``credentials`` (a queued write's own), when there are any."""
    if credentials is None:
        return (yield from flow)

    def rewrite(op: Op) -> Op:
        return dataclasses.replace(op, credentials=credentials) if isinstance(op, RpcCall) else op

    return (yield from _relay(flow, rewrite, lambda op, reply: None))


def _reject(outbox: Outbox, entry: QueuedWrite, exc: SupaVectorsError) -> PendingWrite:
    refused = outbox.reject(entry, str(exc))
    logger.warning("supa-vectors outbox: the server refused queued %s of %r: %s", refused.op, refused.id, exc)
    return refused


def _tracking(flow: Flow[list[UpsertResult]], tracked: _Tracked) -> Flow[list[UpsertResult]]:
    """Pass ``flow``'s operations through, remembering confirmed statuses and computed vectors, so an
    upsert that fails half-way knows what the server already has."""

    def observe(op: Op, reply: Any) -> None:
        if isinstance(op, EmbedCall):
            try:
                for text, vector in zip(op.texts, np.asarray(reply, dtype=np.float32), strict=True):
                    tracked.vectors[text] = vector
            except (TypeError, ValueError):
                pass  # upsert_flow reports a malformed embedder output itself
        elif isinstance(op, RpcCall) and op.name == rpcs.BULK_UPSERT.name and isinstance(reply, list):
            for row in reply:
                if isinstance(row, Mapping) and "external_id" in row and "status" in row:
                    tracked.statuses[str(row["external_id"])] = str(row["status"])

    return (yield from _relay(flow, lambda op: op, observe))


def _cached_results(
    result_type: type[Any], rows: Sequence[Mapping[str, Any]], source: str, stale: bool, age: float
) -> list[Any]:
    return [
        result_type.model_validate({**row, "source": source, "stale": stale, "age_seconds": age})
        for row in rows
    ]
