"""``VectorStore`` and ``AsyncVectorStore``: embed -> RPC -> results.

The two are mirror images (like httpx's ``Client`` and ``AsyncClient``): every check, parameter and
parse lives in :mod:`supa_vectors._rpc` and :mod:`supa_vectors.filters`, and multi-step operations are
generators there, so the stores only perform I/O — a transport call or an embedder run — and cannot drift
apart. The async store runs the embedder in a worker thread so a large batch never blocks the event loop.

Offline behaviour (results cache, circuit breaker, outbox, mirror) lives in :mod:`supa_vectors.cache`
the same way: its flows yield the calls they need, and every call goes through the store's breaker.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from supa_vectors import _rpc
from supa_vectors._core import rpcs
from supa_vectors._rpc import (
    BULK_MIN_ROWS,
    DocumentInput,
    EmbedCall,
    EmbedderLike,
    Flow,
    RpcCall,
    StoreSettings,
)
from supa_vectors.cache.breaker import CircuitBreaker, is_outage
from supa_vectors.cache.layer import DEFAULT_CACHE_SIZE, DEFAULT_CACHE_TTL, CacheMode, OfflineLayer
from supa_vectors.cache.mirror import SyncResult
from supa_vectors.cache.outbox import FlushResult, PendingWrite
from supa_vectors.config import async_transport_for, target_from_env, target_from_url, transport_for
from supa_vectors.errors import (
    AuthError,
    BackendError,
    ConfigurationError,
    EmbeddingError,
    IndexRebuildError,
    NotFoundError,
    SupaVectorsError,
)
from supa_vectors.filters import Filter, validate_filter
from supa_vectors.models import (
    DeleteCount,
    HybridSearchResult,
    SearchResult,
    StoredDocument,
    StoreStats,
    UpsertResult,
)
from supa_vectors.transport.base import (
    AsyncSupportsSessionUser,
    AsyncTransport,
    SupportsSessionUser,
    Transport,
    identity_of,
)
from supa_vectors.transport.identity import Identity

if TYPE_CHECKING:
    # Only for annotations: importing the embedding package costs more than the rest of the SDK.
    from supa_vectors.embedding import Embedder

__all__ = ["AsyncVectorStore", "VectorStore"]

logger = logging.getLogger("supa_vectors")

T = TypeVar("T")
Query = str | Sequence[float] | npt.NDArray[np.floating[Any]]
CacheDir = str | os.PathLike[str] | None


def _default_embedder() -> EmbedderLike:
    try:
        from supa_vectors.embedding import OnnxEmbedder
    except ImportError as exc:
        raise EmbeddingError(
            f"the default embedder (OnnxEmbedder) is not available ({exc}); pass embedder="
        ) from exc
    try:
        embedder: EmbedderLike = OnnxEmbedder()
    except SupaVectorsError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"the default embedder could not be created: {exc}") from exc
    return embedder


def _run_embedder(embedder: EmbedderLike, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    try:
        return embedder.embed(texts)
    except SupaVectorsError:
        raise
    except Exception as exc:
        # An embedder is third-party code; its failures still arrive as one of ours.
        raise EmbeddingError(f"the embedder failed on {len(texts)} texts: {exc}") from exc


def _sender(transport: object, credentials: str | None) -> Callable[[str, Mapping[str, Any]], Any]:
    """``transport.rpc``, or the call that sends ``credentials`` (a queued write's own) instead."""
    if credentials is None:
        return cast(Callable[[str, Mapping[str, Any]], Any], getattr(transport, "rpc"))  # noqa: B009
    send = getattr(transport, "rpc_with_credentials", None)
    if send is None:
        raise ConfigurationError(
            f"{type(transport).__name__} cannot replay a write with the credentials that queued it"
        )
    return functools.partial(send, credentials=credentials)


def _use_bulk_path(bulk: bool | None, count: int) -> bool:
    if bulk is None:
        return count >= BULK_MIN_ROWS
    return bulk


def _begin_params(count: int) -> dict[str, Any]:
    return {"expected_rows": count}


def _after_rebuild_failure(exc: SupaVectorsError, results: list[UpsertResult]) -> list[UpsertResult]:
    """``finish_bulk_load`` failed after the documents were written (or queued): never hide them.

    When the backend died, so did the loader's session, and the server's ``restore_vector_index``
    rebuilds the index for whoever comes next (the owner's next write, ``supa-vectors local start``):
    the call returns what it did, with a warning. Any other failure raises ``IndexRebuildError``,
    which carries the same results.
    """
    if is_outage(exc):
        logger.warning(
            "supa-vectors: the documents are %s, but the vector index could not be rebuilt (%s); the "
            "next write as the table owner or `supa-vectors local start` rebuilds it",
            "queued" if any(r.status == "queued" for r in results) else "written",
            exc,
        )
        return results
    raise IndexRebuildError(
        f"the documents were written, but rebuilding the vector index failed: {exc}",
        results=results,
        code=exc.code if isinstance(exc, BackendError) else None,
    ) from exc


def _cleanup_failed(exc: SupaVectorsError) -> None:
    # The load itself failed; its error is the one the caller sees.
    logger.warning("supa-vectors: rebuilding the vector index after a failed load failed too (%s)", exc)


class _StoreState:
    """What both stores keep between calls: the embedder (created on first use), the settings, and the
    offline layer (cache, breaker, outbox, mirror)."""

    def __init__(
        self,
        embedder: EmbedderLike | None,
        transport: object,
        *,
        cache_dir: CacheDir,
        cache: CacheMode,
        cache_ttl: float,
        cache_size: int,
        outbox: bool,
        breaker: CircuitBreaker | None,
    ) -> None:
        self._embedder = embedder
        self._embedder_checked = False
        # Cleared when restore_vector_index cannot run for this connection (not the table owner).
        self._restore_index = True
        # Set when this store's own bulk load could not rebuild the index: its pooled session may live
        # on (so the server cannot tell the load is over), and the next write finishes it.
        self._unfinished_bulk_load = False
        self._settings: StoreSettings | None = None
        self._lock = threading.Lock()
        self._offline = OfflineLayer(
            transport,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker in front of the backend (``state``, ``failures``, ``retry_in()``)."""
        return self._offline.breaker

    @property
    def cache_errors(self) -> int:
        """How many cache or mirror failures (a corrupted or unreadable file) were reported and bypassed."""
        return self._offline.cache_errors

    def pending(self) -> list[PendingWrite]:
        """The writes waiting in the outbox, oldest first, then those the server refused on replay.

        Local: reads the outbox file only (also on the async store).
        """
        return self._offline.pending()

    def discard_rejected(self) -> int:
        """Forget the writes the server refused on replay, and those whose token expired before they
        could be replayed (after the app has dealt with them)."""
        return self._offline.discard_rejected()

    def _embedder_or_default(self) -> EmbedderLike:
        with self._lock:
            if self._embedder is None:
                self._embedder = _default_embedder()
            return self._embedder

    def _checked_embedder(self, settings: StoreSettings) -> EmbedderLike:
        embedder = self._embedder_or_default()
        if not self._embedder_checked:
            _rpc.check_embedder(embedder, settings)
            self._embedder_checked = True
        return embedder

    def _restore_rpc(self) -> str | None:
        """The RPC that restores the vector index before a write, or None to skip it: not the table
        owner, or a backend the breaker does not trust right now (the write's flow queues instead of
        waiting out the connection timeout twice). Our own unfinished load is finished outright;
        anyone else's only once its loader is gone."""
        if not self._restore_index or self._offline.breaker.state != "closed":
            return None
        return rpcs.FINISH_BULK_LOAD.name if self._unfinished_bulk_load else rpcs.RESTORE_VECTOR_INDEX.name

    def _restore_answered(self, rebuilt: Any, error: SupaVectorsError | None) -> None:
        self._offline.breaker.record(error)
        if error is None:
            self._unfinished_bulk_load = False
            if rebuilt:
                logger.warning("supa-vectors: rebuilt the vector index an interrupted bulk load had dropped")
        elif isinstance(error, AuthError | NotFoundError):
            self._restore_index = False  # not the table owner, or a schema from before the RPC
        elif not is_outage(error):  # an outage is left to the write's own flow (it may queue)
            raise error

    def _check_given_embedder(self, settings: StoreSettings) -> None:
        # A caller-supplied embedder is checked before any write, even one that ends up embedding
        # nothing; the default one is checked when it is first needed (creating it loads a model).
        if self._embedder is not None:
            self._checked_embedder(settings)


class VectorStore(_StoreState):
    """A document store with semantic search, over any :class:`~supa_vectors.transport.base.Transport`.

    Build one with :meth:`from_url` or :meth:`from_env`, or hand it a transport. The store owns the
    transport: :meth:`close` (or leaving a ``with`` block) closes it.

    It keeps answering while the backend is unreachable (see "When Supabase is down" in the README):

    * ``cache``: ``"network-first"`` (default) asks the backend and falls back to the cached answer,
      then to the mirror (:meth:`sync_mirror`), marking such results ``stale``; ``"cache-first"``
      serves cached answers younger than ``cache_ttl`` seconds without asking; ``"off"`` keeps nothing
      and falls back to nothing.
    * ``cache_dir``: where the cache, the outbox and the mirror live (default:
      ``$SUPA_VECTORS_CACHE_DIR``, else the user cache directory); ``cache_size`` bounds the results
      cache in bytes.
    * ``outbox``: writes the backend cannot take wait on disk (``status="queued"``) and are replayed
      by :meth:`flush` or the next successful call; ``False`` makes them raise instead.
    * ``breaker``: a :class:`~supa_vectors.cache.breaker.CircuitBreaker` (thresholds, clock).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        embedder: Embedder | None = None,
        cache_dir: CacheDir = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not isinstance(transport, Transport) or inspect.iscoroutinefunction(transport.rpc):
            raise ConfigurationError(
                f"VectorStore needs a blocking Transport, got {type(transport).__name__} "
                "(use AsyncVectorStore for an async transport)"
            )
        super().__init__(
            embedder,
            transport,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )
        self._transport = transport

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str | None = None,
        *,
        embedder: Embedder | None = None,
        identity: Identity | None = None,
        cache_dir: CacheDir = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> VectorStore:
        """``https://<project>.supabase.co`` with a key (PostgREST), or a ``postgresql://`` URL.

        ``identity`` (Postgres URLs only) is who the calls run as; the default is the service role.
        The other options are the constructor's.
        """
        return cls(
            transport_for(target_from_url(url, key), identity=identity),
            embedder=embedder,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )

    @classmethod
    def from_env(
        cls,
        *,
        embedder: Embedder | None = None,
        identity: Identity | None = None,
        cache_dir: CacheDir = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> VectorStore:
        """``SUPABASE_URL`` + ``SUPABASE_KEY``, else ``SUPA_VECTORS_DATABASE_URL``, else the local stack."""
        return cls(
            transport_for(target_from_env(), identity=identity),
            embedder=embedder,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def embedder(self) -> Embedder:
        return self._embedder_or_default()

    def settings(self) -> StoreSettings:
        """The store's model and limits, read once per store (they change only with a migration).

        While the backend is unreachable these are the last settings seen (kept in the cache), and
        they are asked for again on the next call.
        """
        return self._settings_now(force=False)

    def _checked_filter(self, filter: Filter | None) -> dict[str, Any]:
        """``filter`` checked against the store's own bounds (read with its settings, once per store;
        offline the last ones seen), so it is refused before any call that would carry it."""
        if filter is None:
            return {}
        return validate_filter(filter, limits=self.settings().filter_limits)

    def _settings_now(self, *, force: bool) -> StoreSettings:
        if self._settings is None:
            settings, live = self._run(self._offline.settings_flow(), force=force)
            if not live:
                return settings
            self._settings = settings
        return self._settings

    # ---------------------------------------------------------------------------------------- I/O

    def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return _run_embedder(self._checked_embedder(self.settings()), texts)

    def _call(
        self, name: str, params: Mapping[str, Any], *, force: bool = False, credentials: str | None = None
    ) -> Any:
        """One RPC through the breaker: refused at once while it is open (unless ``force``)."""
        breaker = self._offline.breaker
        if not force and not breaker.allow():
            raise breaker.refusal()
        try:
            reply = _sender(self._transport, credentials)(name, params)
        except SupaVectorsError as exc:
            breaker.record(exc)
            raise
        breaker.record_success()
        self._offline.note_accepted()
        return reply

    def _run(self, flow: Flow[T], *, force: bool = False) -> T:
        reply: Any = None
        error: SupaVectorsError | None = None
        while True:
            try:
                op = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            reply, error = None, None
            try:
                if isinstance(op, RpcCall):
                    reply = self._call(op.name, op.params, force=force, credentials=op.credentials)
                else:
                    reply = self._embed(op.texts)
            except SupaVectorsError as exc:
                error = exc

    def _maybe_flush(self) -> None:
        """Replay queued writes before anything else, so the server sees writes in the app's order and
        reads see them; a backend that is still down leaves them queued."""
        if not self._offline.has_pending() or self._offline.breaker.state == "open":
            return
        try:
            settings = self.settings()
            self._run(self._offline.flush_flow(settings, identity_of(self._transport), blocking=False))
        except SupaVectorsError as exc:
            if not is_outage(exc):
                logger.warning("supa-vectors: replaying the outbox failed (%s: %s)", type(exc).__name__, exc)

    def _settings_or_none(self) -> StoreSettings | None:
        """Settings for a write: None when they are unknown and the outbox can take the write anyway."""
        try:
            return self.settings()
        except SupaVectorsError as exc:
            if is_outage(exc) and self._offline.outbox_enabled:
                return None
            raise

    # ---------------------------------------------------------------------------------------- API

    def upsert(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """Insert or update documents; only new or changed content is embedded.

        ``documents`` are :class:`~supa_vectors.models.Document` objects, dicts with the same keys, or
        plain strings; an id missing is derived from the content (its sha256), so loading the same text
        twice is idempotent. Everything is checked before anything is sent. Large inputs go in several
        requests, each its own transaction: if one fails, the earlier ones stay written, and running
        the same call again finishes the job without re-embedding them. ``bulk=True`` (or ``None``
        with at least 10,000 documents) lets a direct Postgres connection as the table owner drop the
        vector index for the load and rebuild it after, when the load dwarfs what the store holds
        (decision 0012). As the table owner, a write first rebuilds an index that an interrupted bulk
        load left dropped. If only the rebuild at the end fails, the results are still returned (the
        backend died: the next writer rebuilds) or carried by :class:`~supa_vectors.errors.IndexRebuildError`.
        """
        prepared = _rpc.prepare_documents(documents)
        if not prepared:
            return []
        self._maybe_flush()
        settings = self._settings_or_none()
        if settings is not None:
            _rpc.check_limits(prepared, settings)
            self._check_given_embedder(settings)
        flow = self._offline.upsert_flow(prepared, settings, identity_of(self._transport))
        transport = self._transport
        if settings is None or not isinstance(transport, SupportsSessionUser):
            return self._run(flow)
        bulk_path = _use_bulk_path(bulk, len(prepared)) and not self._offline.has_pending()
        if not bulk_path or self._unfinished_bulk_load:
            self._restore_vector_index(transport)
        if not bulk_path:
            return self._run(flow)
        try:
            # begin_bulk_load restores an index an abandoned load left dropped, then decides.
            rebuild = bool(
                transport.rpc_as_session_user(rpcs.BEGIN_BULK_LOAD.name, _begin_params(len(prepared)))
            )
        except AuthError:
            rebuild = False  # not the table owner: load through the index
        except SupaVectorsError as exc:
            if not is_outage(exc):
                raise
            rebuild = False  # the flow meets the same outage and queues the documents
        if not rebuild:
            return self._run(flow)
        try:
            results = self._run(flow)
        except BaseException:
            try:
                transport.rpc_as_session_user(rpcs.FINISH_BULK_LOAD.name, {})
            except SupaVectorsError as exc:
                self._unfinished_bulk_load = True
                _cleanup_failed(exc)
            raise
        try:
            transport.rpc_as_session_user(rpcs.FINISH_BULK_LOAD.name, {})
        except SupaVectorsError as exc:
            self._unfinished_bulk_load = True
            return _after_rebuild_failure(exc, results)
        return results

    def _restore_vector_index(self, transport: SupportsSessionUser) -> None:
        """Before a write as the table owner: rebuild the index if a bulk load whose owner is gone
        (or this store's own, whose rebuild failed) left it dropped; one catalog lookup otherwise."""
        rpc = self._restore_rpc()
        if rpc is None:
            return
        try:
            rebuilt = transport.rpc_as_session_user(rpc, {})
        except SupaVectorsError as exc:
            self._restore_answered(None, exc)
        else:
            self._restore_answered(rebuilt, None)

    def add(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """Same as :meth:`upsert` (re-adding a document reports it ``unchanged``)."""
        return self.upsert(documents, bulk=bulk)

    def search(
        self,
        query: Query,
        *,
        k: int = 10,
        threshold: float | None = None,
        filter: Filter | None = None,
    ) -> list[SearchResult]:
        """The ``k`` documents most similar to ``query`` (a text, or a vector of the store's model).

        When the backend cannot answer, the cached answer to the same question or the mirror's answer
        is returned with ``stale=True`` (see the class docstring); with neither, the error is raised.
        """
        checked_filter = self._checked_filter(filter)
        threshold = _rpc.check_threshold(threshold)
        _rpc.check_k(k)
        self._maybe_flush()
        settings = self.settings()
        _rpc.check_k(k, settings)
        if isinstance(query, str):
            checked: str | npt.NDArray[np.float32] = _rpc.check_query_text(query)
            self._check_given_embedder(settings)
        else:
            checked = _rpc.query_vector(query, settings.embedding_dimension)
        return self._run(self._offline.search_flow(checked, k, threshold, checked_filter, settings))

    def hybrid_search(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Filter | None = None,
        full_text_weight: float = 1.0,
        semantic_weight: float = 1.0,
        rrf_k: int = 50,
    ) -> list[HybridSearchResult]:
        """Full-text and vector rankings fused by reciprocal rank: exact words and meaning both count.

        Offline it falls back to the cached answer only (the mirror has no full-text ranking).
        """
        checked_filter = self._checked_filter(filter)
        text = _rpc.check_query_text(query)
        _rpc.check_k(k)
        tuning = _rpc.hybrid_tuning(full_text_weight, semantic_weight, rrf_k)
        self._maybe_flush()
        settings = self.settings()
        _rpc.check_k(k, settings)
        self._check_given_embedder(settings)
        return self._run(self._offline.hybrid_flow(text, k, checked_filter, tuning, settings))

    def get(self, ids: Iterable[str] | str) -> list[StoredDocument]:
        """The visible documents with these ids, in the order asked (missing ids are left out)."""
        wanted = _rpc.check_ids(ids)
        self._maybe_flush()
        found: list[StoredDocument] = []
        for chunk in _rpc.id_chunks(wanted):
            found += _rpc.parse_documents(
                self._call(rpcs.GET_DOCUMENTS.name, {"external_ids": chunk}), rpcs.GET_DOCUMENTS.name
            )
        return _rpc.order_by_ids(found, wanted)

    def delete(self, ids: Iterable[str] | str) -> DeleteCount:
        """Delete the caller's documents with these ids; returns how many were deleted.

        With the backend unreachable the deletions are queued: ``DeleteCount.queued`` says how many.
        """
        wanted = _rpc.check_ids(ids)
        self._maybe_flush()
        return self._run(self._offline.delete_flow(wanted))

    def count(self, filter: Filter | None = None) -> int:
        params = _rpc.count_params(self._checked_filter(filter))
        self._maybe_flush()
        return int(self._call(rpcs.COUNT_DOCUMENTS.name, params))

    def iter_documents(
        self, *, filter: Filter | None = None, page_size: int = 500
    ) -> Iterator[StoredDocument]:
        """Every visible document matching ``filter``, in insertion order, one page per call.

        Pages follow the last id seen (keyset), so documents inserted meanwhile never shift a page:
        nothing is skipped or repeated. Arguments are checked now, not at the first ``next()``.
        """
        checked = self._checked_filter(filter)
        _rpc.check_page_size(page_size)
        return self._pages(checked, page_size)

    def _pages(self, checked: dict[str, Any], page_size: int) -> Iterator[StoredDocument]:
        self._maybe_flush()
        after = 0
        while True:
            reply = self._call(rpcs.LIST_DOCUMENTS.name, _rpc.list_params(after, page_size, checked))
            docs, last = _rpc.page_after(reply)
            yield from docs
            if last is None or len(docs) < page_size:
                return
            after = last

    def stats(self) -> StoreStats:
        self._maybe_flush()
        return _rpc.parse_stats(self._call(rpcs.STORE_STATS.name, {}))

    def flush(self) -> FlushResult:
        """Replay the outbox now, in order; raises the backend's error if it is still unreachable.

        An explicit flush goes out even while the breaker is open (it is the app's probe), and waits
        for a flush running in another thread or process to finish first.
        """
        settings = self._settings_now(force=True)
        identity = identity_of(self._transport)
        return self._run(self._offline.flush_flow(settings, identity, blocking=True), force=True)

    def sync_mirror(self, *, full: bool = False) -> SyncResult:
        """Update the local mirror that answers new queries while the backend is unreachable.

        Incremental: only documents changed since the last sync are fetched (with their vectors), and
        deletions are detected by count. ``full=True`` fetches everything again. Call it at start-up
        and then periodically (a background thread or a scheduled job).
        """
        self._maybe_flush()
        settings = self.settings()
        return self._run(self._offline.sync_flow(settings, full=full))

    def close(self) -> None:
        self._transport.close()
        self._offline.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._transport).__name__})"


class AsyncVectorStore(_StoreState):
    """The asyncio twin of :class:`VectorStore`, over an ``AsyncTransport``; same options."""

    def __init__(
        self,
        transport: AsyncTransport,
        *,
        embedder: Embedder | None = None,
        cache_dir: CacheDir = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not isinstance(transport, AsyncTransport) or not inspect.iscoroutinefunction(transport.rpc):
            raise ConfigurationError(
                f"AsyncVectorStore needs an AsyncTransport, got {type(transport).__name__} "
                "(use VectorStore for a blocking transport)"
            )
        super().__init__(
            embedder,
            transport,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )
        self._transport = transport
        self._settings_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str | None = None,
        *,
        embedder: Embedder | None = None,
        identity: Identity | None = None,
        cache_dir: CacheDir = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> AsyncVectorStore:
        """See :meth:`VectorStore.from_url`."""
        return cls(
            async_transport_for(target_from_url(url, key), identity=identity),
            embedder=embedder,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )

    @classmethod
    def from_env(
        cls,
        *,
        embedder: Embedder | None = None,
        identity: Identity | None = None,
        cache_dir: CacheDir = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> AsyncVectorStore:
        """See :meth:`VectorStore.from_env`."""
        return cls(
            async_transport_for(target_from_env(), identity=identity),
            embedder=embedder,
            cache_dir=cache_dir,
            cache=cache,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            outbox=outbox,
            breaker=breaker,
        )

    @property
    def transport(self) -> AsyncTransport:
        return self._transport

    @property
    def embedder(self) -> Embedder:
        return self._embedder_or_default()

    async def settings(self) -> StoreSettings:
        """See :meth:`VectorStore.settings`."""
        return await self._settings_now(force=False)

    async def _checked_filter(self, filter: Filter | None) -> dict[str, Any]:
        """See :meth:`VectorStore._checked_filter`."""
        if filter is None:
            return {}
        return validate_filter(filter, limits=(await self.settings()).filter_limits)

    async def _settings_now(self, *, force: bool) -> StoreSettings:
        if self._settings is None:
            async with self._settings_lock:
                if self._settings is None:
                    settings, live = await self._run(self._offline.settings_flow(), force=force)
                    if not live:
                        return settings
                    self._settings = settings
        return self._settings

    # ---------------------------------------------------------------------------------------- I/O

    async def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        settings = await self.settings()
        embedder = await asyncio.to_thread(self._checked_embedder, settings)
        return await asyncio.to_thread(_run_embedder, embedder, texts)

    async def _call(
        self, name: str, params: Mapping[str, Any], *, force: bool = False, credentials: str | None = None
    ) -> Any:
        """See :meth:`VectorStore._call`."""
        breaker = self._offline.breaker
        if not force and not breaker.allow():
            raise breaker.refusal()
        try:
            reply = await _sender(self._transport, credentials)(name, params)
        except SupaVectorsError as exc:
            breaker.record(exc)
            raise
        breaker.record_success()
        self._offline.note_accepted()
        return reply

    async def _run(self, flow: Flow[T], *, force: bool = False) -> T:
        reply: Any = None
        error: SupaVectorsError | None = None
        while True:
            try:
                op = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            reply, error = None, None
            try:
                if isinstance(op, RpcCall):
                    reply = await self._call(op.name, op.params, force=force, credentials=op.credentials)
                elif isinstance(op, EmbedCall):
                    reply = await self._embed(op.texts)
            except SupaVectorsError as exc:
                error = exc

    async def _maybe_flush(self) -> None:
        """See :meth:`VectorStore._maybe_flush`."""
        if not self._offline.has_pending() or self._offline.breaker.state == "open":
            return
        try:
            settings = await self.settings()
            await self._run(self._offline.flush_flow(settings, identity_of(self._transport), blocking=False))
        except SupaVectorsError as exc:
            if not is_outage(exc):
                logger.warning("supa-vectors: replaying the outbox failed (%s: %s)", type(exc).__name__, exc)

    async def _settings_or_none(self) -> StoreSettings | None:
        try:
            return await self.settings()
        except SupaVectorsError as exc:
            if is_outage(exc) and self._offline.outbox_enabled:
                return None
            raise

    # ---------------------------------------------------------------------------------------- API

    async def upsert(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """See :meth:`VectorStore.upsert`."""
        prepared = _rpc.prepare_documents(documents)
        if not prepared:
            return []
        await self._maybe_flush()
        settings = await self._settings_or_none()
        if settings is not None:
            _rpc.check_limits(prepared, settings)
            self._check_given_embedder(settings)
        flow = self._offline.upsert_flow(prepared, settings, identity_of(self._transport))
        transport = self._transport
        if settings is None or not isinstance(transport, AsyncSupportsSessionUser):
            return await self._run(flow)
        bulk_path = _use_bulk_path(bulk, len(prepared)) and not self._offline.has_pending()
        if not bulk_path or self._unfinished_bulk_load:
            await self._restore_vector_index(transport)
        if not bulk_path:
            return await self._run(flow)
        try:
            began = await transport.rpc_as_session_user(
                rpcs.BEGIN_BULK_LOAD.name, _begin_params(len(prepared))
            )
            rebuild = bool(began)
        except AuthError:
            rebuild = False
        except SupaVectorsError as exc:
            if not is_outage(exc):
                raise
            rebuild = False
        if not rebuild:
            return await self._run(flow)
        try:
            results = await self._run(flow)
        except BaseException:
            try:
                await transport.rpc_as_session_user(rpcs.FINISH_BULK_LOAD.name, {})
            except SupaVectorsError as exc:
                self._unfinished_bulk_load = True
                _cleanup_failed(exc)
            raise
        try:
            await transport.rpc_as_session_user(rpcs.FINISH_BULK_LOAD.name, {})
        except SupaVectorsError as exc:
            self._unfinished_bulk_load = True
            return _after_rebuild_failure(exc, results)
        return results

    async def _restore_vector_index(self, transport: AsyncSupportsSessionUser) -> None:
        """See :meth:`VectorStore._restore_vector_index`."""
        rpc = self._restore_rpc()
        if rpc is None:
            return
        try:
            rebuilt = await transport.rpc_as_session_user(rpc, {})
        except SupaVectorsError as exc:
            self._restore_answered(None, exc)
        else:
            self._restore_answered(rebuilt, None)

    async def add(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """Same as :meth:`upsert`."""
        return await self.upsert(documents, bulk=bulk)

    async def search(
        self,
        query: Query,
        *,
        k: int = 10,
        threshold: float | None = None,
        filter: Filter | None = None,
    ) -> list[SearchResult]:
        """See :meth:`VectorStore.search`."""
        checked_filter = await self._checked_filter(filter)
        threshold = _rpc.check_threshold(threshold)
        _rpc.check_k(k)
        await self._maybe_flush()
        settings = await self.settings()
        _rpc.check_k(k, settings)
        if isinstance(query, str):
            checked: str | npt.NDArray[np.float32] = _rpc.check_query_text(query)
            self._check_given_embedder(settings)
        else:
            checked = _rpc.query_vector(query, settings.embedding_dimension)
        return await self._run(self._offline.search_flow(checked, k, threshold, checked_filter, settings))

    async def hybrid_search(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Filter | None = None,
        full_text_weight: float = 1.0,
        semantic_weight: float = 1.0,
        rrf_k: int = 50,
    ) -> list[HybridSearchResult]:
        """See :meth:`VectorStore.hybrid_search`."""
        checked_filter = await self._checked_filter(filter)
        text = _rpc.check_query_text(query)
        _rpc.check_k(k)
        tuning = _rpc.hybrid_tuning(full_text_weight, semantic_weight, rrf_k)
        await self._maybe_flush()
        settings = await self.settings()
        _rpc.check_k(k, settings)
        self._check_given_embedder(settings)
        return await self._run(self._offline.hybrid_flow(text, k, checked_filter, tuning, settings))

    async def get(self, ids: Iterable[str] | str) -> list[StoredDocument]:
        """See :meth:`VectorStore.get`."""
        wanted = _rpc.check_ids(ids)
        await self._maybe_flush()
        found: list[StoredDocument] = []
        for chunk in _rpc.id_chunks(wanted):
            found += _rpc.parse_documents(
                await self._call(rpcs.GET_DOCUMENTS.name, {"external_ids": chunk}), rpcs.GET_DOCUMENTS.name
            )
        return _rpc.order_by_ids(found, wanted)

    async def delete(self, ids: Iterable[str] | str) -> DeleteCount:
        """See :meth:`VectorStore.delete`."""
        wanted = _rpc.check_ids(ids)
        await self._maybe_flush()
        return await self._run(self._offline.delete_flow(wanted))

    async def count(self, filter: Filter | None = None) -> int:
        params = _rpc.count_params(await self._checked_filter(filter))
        await self._maybe_flush()
        return int(await self._call(rpcs.COUNT_DOCUMENTS.name, params))

    def iter_documents(
        self, *, filter: Filter | None = None, page_size: int = 500
    ) -> AsyncIterator[StoredDocument]:
        """See :meth:`VectorStore.iter_documents`; use with ``async for``.

        Reading the settings needs a round trip this method cannot await: until the store has read
        them, the filter's grammar is checked now and its bounds before the first page is asked for.
        """
        limits = self._settings.filter_limits if self._settings is not None else None
        checked = validate_filter(filter, limits=limits)
        _rpc.check_page_size(page_size)
        return self._pages(checked, page_size, bounds_checked=limits is not None)

    async def _pages(
        self, checked: dict[str, Any], page_size: int, *, bounds_checked: bool
    ) -> AsyncIterator[StoredDocument]:
        if not bounds_checked:
            checked = await self._checked_filter(checked)
        await self._maybe_flush()
        after = 0
        while True:
            reply = await self._call(rpcs.LIST_DOCUMENTS.name, _rpc.list_params(after, page_size, checked))
            docs, last = _rpc.page_after(reply)
            for doc in docs:
                yield doc
            if last is None or len(docs) < page_size:
                return
            after = last

    async def stats(self) -> StoreStats:
        await self._maybe_flush()
        return _rpc.parse_stats(await self._call(rpcs.STORE_STATS.name, {}))

    async def flush(self) -> FlushResult:
        """See :meth:`VectorStore.flush`; a flush already running elsewhere is not waited for
        (``remaining`` then counts what it still has to do), so the event loop never blocks on it."""
        settings = await self._settings_now(force=True)
        identity = identity_of(self._transport)
        return await self._run(self._offline.flush_flow(settings, identity, blocking=False), force=True)

    async def sync_mirror(self, *, full: bool = False) -> SyncResult:
        """See :meth:`VectorStore.sync_mirror`."""
        await self._maybe_flush()
        settings = await self.settings()
        return await self._run(self._offline.sync_flow(settings, full=full))

    async def aclose(self) -> None:
        await self._transport.aclose()
        self._offline.close()

    async def __aenter__(self) -> AsyncVectorStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._transport).__name__})"
