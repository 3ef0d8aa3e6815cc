"""``VectorStore`` and ``AsyncVectorStore``: each method runs one flow and performs its I/O.

The two are mirror images (like httpx's ``Client`` and ``AsyncClient``): every check, parameter and
parse of an operation lives in its flow (:mod:`supa_vectors._core.flows`), a generator that yields
the calls it needs, so a store only performs them: an RPC through the breaker, an embedder run (the
async store runs it in a worker thread, so a large batch never blocks the event loop), or a read of
the store's settings. The offline layer (results cache, breaker, outbox, mirror) wraps the flows'
calls the same way for both.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from supa_vectors._config import async_transport_for, transport_for
from supa_vectors._core.checks import check_page_size
from supa_vectors._core.flows import (
    BackupOptions,
    HybridOptions,
    Query,
    RestoreOptions,
    StoreCore,
    StoreOptions,
    run_embedder,
)
from supa_vectors._core.ops import Driver, EmbedCall, Flow, Op, RpcCall
from supa_vectors._core.settings import StoreSettings
from supa_vectors._core.upsert import DocumentInput
from supa_vectors._models import (
    BackupResult,
    DeleteCount,
    HybridSearchResult,
    RestoreResult,
    RpcStats,
    SearchResult,
    StoredDocument,
    StoreStats,
    TableSize,
    UpsertResult,
)
from supa_vectors.cache.mirror import SyncResult
from supa_vectors.cache.outbox import FlushResult
from supa_vectors.errors import ConfigurationError, SupaVectorsError
from supa_vectors.filters import Filter, validate_filter
from supa_vectors.transport.base import AsyncTransport, Transport

if TYPE_CHECKING:
    # Only for annotations: importing the embedding package costs more than the rest of the SDK.
    from typing_extensions import Unpack


__all__ = ["AsyncVectorStore", "VectorStore"]

_Opts = StoreOptions

T = TypeVar("T")


class VectorStore(StoreCore):
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

    _transport_for = staticmethod(transport_for)

    def __init__(self, transport: Transport, **options: Unpack[_Opts]) -> None:
        if not isinstance(transport, Transport) or inspect.iscoroutinefunction(transport.rpc):
            raise ConfigurationError(
                f"VectorStore needs a blocking Transport, got {type(transport).__name__} "
                "(use AsyncVectorStore for an async transport)"
            )
        super().__init__(transport, **options)
        self._transport = transport

    @property
    def transport(self) -> Transport:
        return self._transport

    def settings(self) -> StoreSettings:
        """The store's model and limits, read once per store (they change only with a migration).

        While the backend is unreachable these are the last settings seen (kept in the cache), and
        they are asked for again on the next call.
        """
        return self._settings_now(force=False)

    def _settings_now(self, *, force: bool) -> StoreSettings:
        if self._settings is None:
            return self._remember_settings(self._run(self._settings_flow(), force=force))
        return self._settings

    def _run(self, flow: Flow[T], *, force: bool = False) -> T:
        """Perform what ``flow`` asks, through the breaker (unless ``force``), until it returns."""
        driver = Driver(flow)
        while (op := driver.next()) is not None:
            try:
                driver.answer(self._perform(op, force))
            except BaseException as exc:  # the flow decides: a bulk load rebuilds its index first
                driver.fail(exc)
        return cast(T, driver.result)

    def _perform(self, op: Op, force: bool) -> Any:
        if isinstance(op, EmbedCall):
            return run_embedder(self._checked_embedder(self.settings()), op.texts)
        if not isinstance(op, RpcCall):
            return self._settings_now(force=force)
        send = self._before_call(op, force)
        try:
            reply = send(op.name, op.params)
        except SupaVectorsError as exc:
            self._call_failed(op, exc)
            raise
        self._call_answered(op)
        return reply

    # ---------------------------------------------------------------------------------------- API

    def upsert(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """Insert or update documents; only new or changed content is embedded.

        ``documents`` are :class:`~supa_vectors._models.Document` objects, dicts with the same keys, or
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
        return self._run(self._upsert_flow(documents, bulk))

    add = upsert  # the same call (re-adding a document reports it ``unchanged``)

    def search(
        self,
        query: Query,
        *,
        k: int = 10,
        threshold: float | None = None,
        filter: Filter | None = None,
        ef_search: int | None = None,
    ) -> list[SearchResult]:
        """The ``k`` documents most similar to ``query`` (a text, or a vector of the store's model).

        When the backend cannot answer, the cached answer to the same question or the mirror's answer
        is returned with ``stale=True`` (see the class docstring); with neither, the error is raised.
        ``ef_search`` (1-1000) widens the HNSW walk: on a large store recall at the default (100
        unfiltered, 200 filtered) falls, and a wider walk buys it back for time (docs: Scaling).
        """
        return self._run(self._search_flow(query, k, threshold, filter, ef_search))

    def hybrid_search(
        self, query: str, *, k: int = 10, filter: Filter | None = None, **tuning: Unpack[HybridOptions]
    ) -> list[HybridSearchResult]:
        """Full-text and vector rankings fused by reciprocal rank: exact words and meaning both count.

        ``full_text_weight`` and ``semantic_weight`` (both 1.0) weigh the two rankings, ``rrf_k`` (50)
        flattens the fusion. Offline it falls back to the cached answer only (the mirror has no
        full-text ranking).
        """
        return self._run(self._hybrid_flow(query, k, filter, tuning))

    def get(self, ids: Iterable[str] | str, *, with_vectors: bool = False) -> list[StoredDocument]:
        """The visible documents with these ids, in the order asked (missing ids are left out).

        ``with_vectors=True`` fills each document's ``embedding`` with the vector stored for it (of
        the store's model; None if it has none), in the same one call per chunk of ids: the vectors
        the app or the embedder wrote, not recomputed. Both need the backend: unreachable, this
        raises ``BackendUnavailableError`` (the mirror answers searches, not reads by id).
        """
        return self._run(self._get_with_vectors_flow(ids) if with_vectors else self._get_flow(ids))

    def delete(self, ids: Iterable[str] | str) -> DeleteCount:
        """Delete the caller's documents with these ids; returns how many were deleted.

        With the backend unreachable the deletions are queued: ``DeleteCount.queued`` says how many.
        """
        return self._run(self._delete_flow(ids))

    def count(self, filter: Filter | None = None) -> int:
        """How many visible documents match ``filter``."""
        return self._run(self._count_flow(filter))

    def iter_documents(
        self, *, filter: Filter | None = None, page_size: int = 500
    ) -> Iterator[StoredDocument]:
        """Every visible document matching ``filter``, in insertion order, one page per call.

        Pages follow the last id seen (keyset), so documents inserted meanwhile never shift a page:
        nothing is skipped or repeated. Arguments are checked now, not at the first ``next()``.
        """
        checked = self._run(self._checked_filter(filter))
        return self._pages(checked, check_page_size(page_size))

    def _pages(self, checked: dict[str, Any], page_size: int) -> Iterator[StoredDocument]:
        self._run(self._maybe_flush())
        after: int | None = 0
        while after is not None:
            docs, after = self._run(self._page_flow(after, page_size, checked))
            yield from docs

    def stats(self) -> StoreStats:
        """What the store holds (documents, embeddings, models) and its settings."""
        return self._run(self._stats_flow())

    def rpc_stats(self) -> list[RpcStats]:
        """How each RPC performs (calls, time, rows; every role's calls), for the service role."""
        return self._run(self._rpc_stats_flow())

    def table_sizes(self) -> list[TableSize]:
        """Bytes of each table and index of the store, for the service role."""
        return self._run(self._table_sizes_flow())

    def flush(self) -> FlushResult:
        """Replay the outbox now, in order; raises the backend's error if it is still unreachable.

        An explicit flush goes out even while the breaker is open (it is the app's probe), and waits
        for a flush running in another thread or process to finish first.
        """
        return self._run(self._flush_flow(blocking=True), force=True)

    def sync_mirror(self, *, full: bool = False) -> SyncResult:
        """Update the local mirror that answers new queries while the backend is unreachable.

        Incremental: only documents changed since the last sync are fetched (with their vectors), and
        deletions are detected by count. ``full=True`` fetches everything again. Call it at start-up
        and then periodically (a background thread or a scheduled job).
        """
        return self._run(self._sync_flow(full))

    def backup(self, path: str | os.PathLike[str], **options: Unpack[BackupOptions]) -> BackupResult:
        """Archive the caller's documents, metadata and vectors at ``path`` (a new directory), as one
        snapshot: a signed-in user's own documents, or every document for the service role.

        Streamed (memory does not grow with the store); ``path`` appears only once the archive is
        whole and its snapshot check passed. ``page_size`` (500) documents per call, ``shard_size``
        (10,000) per file, ``attempts`` (3) passes before a store that keeps changing raises
        :class:`~supa_vectors.errors.BackupError`. See docs/operations/backups.md.
        """
        return self._run(self._backup_flow(path, options))

    def restore(self, path: str | os.PathLike[str], **options: Unpack[RestoreOptions]) -> RestoreResult:
        """Write the archive at ``path`` into this store with its vectors (nothing is re-embedded).

        The whole archive is checked first (a damaged or edited one raises
        :class:`~supa_vectors.errors.ArchiveError`, nothing written); documents go in ``chunk_rows``
        (500) per transaction, as the caller (a user's restore writes the user's own documents; the
        service role keeps each document's owner); then every document is read back and compared
        (``verify``). Idempotent: after a crash, the same call finishes the job without duplicates.
        """
        return self._run(self._restore_flow(path, options))

    def close(self) -> None:
        """Close the transport, and write what the results cache still holds in memory to disk."""
        self._transport.close()
        self._offline.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncVectorStore(StoreCore):
    """The asyncio twin of :class:`VectorStore`, over an ``AsyncTransport``; same options."""

    _transport_for = staticmethod(async_transport_for)

    def __init__(self, transport: AsyncTransport, **options: Unpack[_Opts]) -> None:
        if not isinstance(transport, AsyncTransport) or not inspect.iscoroutinefunction(transport.rpc):
            raise ConfigurationError(
                f"AsyncVectorStore needs an AsyncTransport, got {type(transport).__name__} "
                "(use VectorStore for a blocking transport)"
            )
        super().__init__(transport, **options)
        self._transport = transport
        self._settings_lock = asyncio.Lock()

    @property
    def transport(self) -> AsyncTransport:
        return self._transport

    async def settings(self) -> StoreSettings:
        """See :meth:`VectorStore.settings`."""
        return await self._settings_now(force=False)

    async def _settings_now(self, *, force: bool) -> StoreSettings:
        if self._settings is None:
            async with self._settings_lock:
                if self._settings is None:
                    return self._remember_settings(await self._run(self._settings_flow(), force=force))
        return self._settings

    async def _run(self, flow: Flow[T], *, force: bool = False) -> T:
        """See :meth:`VectorStore._run`."""
        driver = Driver(flow)
        while (op := driver.next()) is not None:
            try:
                driver.answer(await self._perform(op, force))
            except BaseException as exc:
                driver.fail(exc)
        return cast(T, driver.result)

    async def _perform(self, op: Op, force: bool) -> Any:
        if isinstance(op, EmbedCall):
            embedder = await asyncio.to_thread(self._checked_embedder, await self.settings())
            return await asyncio.to_thread(run_embedder, embedder, op.texts)
        if not isinstance(op, RpcCall):
            return await self._settings_now(force=force)
        send = self._before_call(op, force)
        try:
            reply = await send(op.name, op.params)
        except SupaVectorsError as exc:
            self._call_failed(op, exc)
            raise
        self._call_answered(op)
        return reply

    # ---------------------------------------------------------------------------------------- API

    async def upsert(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """See :meth:`VectorStore.upsert`."""
        return await self._run(self._upsert_flow(documents, bulk))

    add = upsert

    async def search(
        self,
        query: Query,
        *,
        k: int = 10,
        threshold: float | None = None,
        filter: Filter | None = None,
        ef_search: int | None = None,
    ) -> list[SearchResult]:
        """See :meth:`VectorStore.search`."""
        return await self._run(self._search_flow(query, k, threshold, filter, ef_search))

    async def hybrid_search(
        self, query: str, *, k: int = 10, filter: Filter | None = None, **tuning: Unpack[HybridOptions]
    ) -> list[HybridSearchResult]:
        """See :meth:`VectorStore.hybrid_search`."""
        return await self._run(self._hybrid_flow(query, k, filter, tuning))

    async def get(self, ids: Iterable[str] | str, *, with_vectors: bool = False) -> list[StoredDocument]:
        """See :meth:`VectorStore.get`."""
        return await self._run(self._get_with_vectors_flow(ids) if with_vectors else self._get_flow(ids))

    async def delete(self, ids: Iterable[str] | str) -> DeleteCount:
        """See :meth:`VectorStore.delete`."""
        return await self._run(self._delete_flow(ids))

    async def count(self, filter: Filter | None = None) -> int:
        """See :meth:`VectorStore.count`."""
        return await self._run(self._count_flow(filter))

    async def backup(self, path: str | os.PathLike[str], **options: Unpack[BackupOptions]) -> BackupResult:
        """See :meth:`VectorStore.backup` (the archive's files are written from the event loop's thread)."""
        return await self._run(self._backup_flow(path, options))

    async def restore(self, path: str | os.PathLike[str], **options: Unpack[RestoreOptions]) -> RestoreResult:
        """See :meth:`VectorStore.restore`."""
        return await self._run(self._restore_flow(path, options))

    def iter_documents(
        self, *, filter: Filter | None = None, page_size: int = 500
    ) -> AsyncIterator[StoredDocument]:
        """See :meth:`VectorStore.iter_documents`; use with ``async for``.

        Reading the settings needs a round trip this method cannot await: until the store has read
        them, the filter's grammar is checked now and its bounds before the first page is asked for.
        """
        limits = self._settings.filter_limits if self._settings is not None else None
        checked = validate_filter(filter, limits=limits)
        return self._pages(checked, check_page_size(page_size), bounds_checked=limits is not None)

    async def _pages(
        self, checked: dict[str, Any], page_size: int, *, bounds_checked: bool
    ) -> AsyncIterator[StoredDocument]:
        if not bounds_checked:
            checked = await self._run(self._checked_filter(checked))
        await self._run(self._maybe_flush())
        after: int | None = 0
        while after is not None:
            docs, after = await self._run(self._page_flow(after, page_size, checked))
            for doc in docs:
                yield doc

    async def stats(self) -> StoreStats:
        """See :meth:`VectorStore.stats`."""
        return await self._run(self._stats_flow())

    async def rpc_stats(self) -> list[RpcStats]:
        """See :meth:`VectorStore.rpc_stats`."""
        return await self._run(self._rpc_stats_flow())

    async def table_sizes(self) -> list[TableSize]:
        """See :meth:`VectorStore.table_sizes`."""
        return await self._run(self._table_sizes_flow())

    async def flush(self) -> FlushResult:
        """See :meth:`VectorStore.flush`; a flush already running elsewhere is not waited for
        (``remaining`` then counts what it still has to do), so the event loop never blocks on it."""
        return await self._run(self._flush_flow(blocking=False), force=True)

    async def sync_mirror(self, *, full: bool = False) -> SyncResult:
        """See :meth:`VectorStore.sync_mirror`."""
        return await self._run(self._sync_flow(full))

    async def aclose(self) -> None:
        """See :meth:`VectorStore.close`; the cache's last writes happen in a thread, off the loop."""
        await self._transport.aclose()
        await asyncio.to_thread(self._offline.close)

    async def __aenter__(self) -> AsyncVectorStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
