"""One flow per public operation: its checks, its RPC parameters, its parsing, in one place.

``VectorStore.search`` and ``AsyncVectorStore.search`` are both ``self._run(self._search_flow(...))``: a
flow is a generator that yields what it needs done (:class:`~supa_vectors._core.ops.RpcCall`,
:class:`~supa_vectors._core.ops.EmbedCall`, :class:`~supa_vectors._core.ops.SettingsCall`) and
receives the answer, or has the failure thrown in, so the two stores only differ in how they perform
those. Offline behaviour (results cache, breaker, outbox, mirror) wraps these flows' calls in
:class:`~supa_vectors.cache.layer.OfflineLayer`; every check here runs before anything is sent, in
the order the arguments can be judged (what needs no settings first).

Adding an operation: its RPC in :mod:`supa_vectors._core.rpcs`, its flow here, one line per store.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypedDict, TypeVar, cast

import numpy as np
import numpy.typing as npt

from supa_vectors._config import target_from_env, target_from_url
from supa_vectors._core import backup, checks, rpcs, upsert
from supa_vectors._core.ops import Flow, RpcCall, SettingsCall
from supa_vectors._core.rows import (
    order_by_ids,
    page_after,
    parse_documents,
    parse_hybrid_rows,
    parse_rpc_stats,
    parse_search_rows,
    parse_stats,
    parse_table_sizes,
)
from supa_vectors._core.settings import EmbedderLike, StoreSettings, check_embedder
from supa_vectors._core.telemetry import Telemetry, count_rows, note_rpc
from supa_vectors._core.upsert import DocumentInput, use_bulk_path
from supa_vectors._models import (
    BackupResult,
    DeleteCount,
    HybridSearchResult,
    OperationStats,
    ProcessStats,
    RestoreResult,
    RpcStats,
    SearchResult,
    StoredDocument,
    StoreStats,
    TableSize,
    UpsertResult,
)
from supa_vectors.cache.breaker import CircuitBreaker, is_outage
from supa_vectors.cache.layer import DEFAULT_CACHE_SIZE, DEFAULT_CACHE_TTL, CacheMode, OfflineLayer
from supa_vectors.cache.mirror import SyncResult
from supa_vectors.cache.outbox import FlushResult, PendingWrite
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
from supa_vectors.transport.base import identity_of
from supa_vectors.transport.identity import Identity

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from supa_vectors.embedding import Embedder

__all__ = [
    "BackupOptions",
    "HybridOptions",
    "Query",
    "RestoreOptions",
    "StoreCore",
    "StoreOptions",
    "default_embedder",
    "operation",
    "run_embedder",
]

logger = logging.getLogger("supa_vectors")

Query = str | Sequence[float] | npt.NDArray[np.floating[Any]]
# What a bulk load's flow returns: an upsert's results, or a restore's.
Written = TypeVar("Written", list[UpsertResult], RestoreResult)


class HybridOptions(TypedDict, total=False):
    """How hybrid search fuses its rankings (defaults: :func:`supa_vectors.checks.hybrid_tuning`)."""

    full_text_weight: float
    semantic_weight: float
    rrf_k: int


class BackupOptions(TypedDict, total=False):
    """How a backup pages and shards (defaults in :mod:`supa_vectors._core.backup`)."""

    page_size: int  # documents per export_documents call (500)
    shard_size: int  # documents per archive file (10,000)
    attempts: int  # passes tried for one snapshot before BackupError (3)


class RestoreOptions(TypedDict, total=False):
    """How a restore writes (defaults in :mod:`supa_vectors._core.backup`)."""

    chunk_rows: int  # documents per bulk_upsert transaction (500)
    verify: bool  # read everything back and compare content hashes and vectors (True)
    progress: backup.Progress  # called with (written, total) after each chunk


def default_embedder() -> EmbedderLike:
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


def run_embedder(embedder: EmbedderLike, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    try:
        return embedder.embed(texts)
    except SupaVectorsError:
        raise
    except Exception as exc:
        # An embedder is third-party code; its failures still arrive as one of ours.
        raise EmbeddingError(f"the embedder failed on {len(texts)} texts: {exc}") from exc


class StoreOptions(TypedDict, total=False):
    """The options of both stores and of their ``from_url``/``from_env``, defined once (defaults in
    :class:`~supa_vectors._core.flows.StoreCore`; what each does: :class:`VectorStore`)."""

    embedder: Embedder | None
    cache_dir: str | os.PathLike[str] | None
    cache: CacheMode
    cache_ttl: float
    cache_size: int
    outbox: bool
    breaker: CircuitBreaker | None


def sender(transport: object, op: RpcCall) -> Callable[[str, Mapping[str, Any]], Any]:
    """How ``op`` goes out: ``transport.rpc``; as the session user (bulk loads); or with the
    credentials of the caller that queued it (an outbox replay)."""
    if op.session_user:
        return cast(Callable[[str, Mapping[str, Any]], Any], getattr(transport, "rpc_as_session_user"))  # noqa: B009
    if op.credentials is None:
        return cast(Callable[[str, Mapping[str, Any]], Any], getattr(transport, "rpc"))  # noqa: B009
    send = getattr(transport, "rpc_with_credentials", None)
    if send is None:
        raise ConfigurationError(
            f"{type(transport).__name__} cannot replay a write with the credentials that queued it"
        )
    return functools.partial(send, credentials=op.credentials)


S = TypeVar("S", bound="StoreCore")
P = ParamSpec("P")
R = TypeVar("R")


def operation(
    name: str, rpc: rpcs.Rpc, *, rows: Callable[[Any], int | None] = count_rows
) -> Callable[[Callable[Concatenate[S, P], Flow[R]]], Callable[Concatenate[S, P], Flow[R]]]:
    """Mark a flow as the public operation ``name`` whose RPC is ``rpc``: it is counted for
    ``process_stats()`` and traced (:meth:`~supa_vectors._core.telemetry.Telemetry.observe`);
    ``rows`` reads how many rows its result holds."""

    def wrap(method: Callable[Concatenate[S, P], Flow[R]]) -> Callable[Concatenate[S, P], Flow[R]]:
        @functools.wraps(method)
        def observed(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Flow[R]:
            return self._telemetry.observe(name, rpc.name, method(self, *args, **kwargs), rows)

        return observed

    return wrap


class StoreCore:
    """What a store keeps between calls (embedder, settings, offline layer, bulk-load state), and the
    flows of its operations. ``VectorStore`` and ``AsyncVectorStore`` inherit it and add only I/O."""

    def __init__(
        self,
        transport: object,
        *,
        embedder: EmbedderLike | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache: CacheMode = "network-first",
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        outbox: bool = True,
        breaker: CircuitBreaker | None = None,
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
        self._telemetry = Telemetry()
        self._transport_object = transport
        self._identity = identity_of(transport)
        self._session_user = callable(getattr(transport, "rpc_as_session_user", None))

    _transport_for: Callable[..., Any]  # the store's: which transport a URL or the environment gets

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str | None = None,
        *,
        identity: Identity | None = None,
        **options: Unpack[StoreOptions],
    ) -> Self:
        """``https://<project>.supabase.co`` with a key (PostgREST), or a ``postgresql://`` URL.

        ``identity`` (Postgres URLs only) is who the calls run as; the default is the service role.
        The other options are the constructor's.
        """
        return cls(cls._transport_for(target_from_url(url, key), identity=identity), **options)

    @classmethod
    def from_env(cls, *, identity: Identity | None = None, **options: Unpack[StoreOptions]) -> Self:
        """``SUPABASE_URL`` + ``SUPABASE_KEY``, else ``SUPA_VECTORS_DATABASE_URL``, else the local stack."""
        return cls(cls._transport_for(target_from_env(), identity=identity), **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._transport_object).__name__})"

    # ---- state -------------------------------------------------------------------------------------

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

    def process_stats(self) -> ProcessStats:
        """What this store has done in this process: calls, errors and latency per operation, where
        search answers came from (cache hit rate), the breaker's state and the outbox's depth.

        Local and cheap (counters kept as the operations run, one outbox query), also on the async
        store; the database's own figures are :meth:`stats` and :meth:`rpc_stats`.
        """
        operations: dict[str, OperationStats] = {}
        errors: dict[str, int] = {}
        answers: dict[str, int] = {}
        for name, counters in sorted(self._telemetry.snapshot().items()):
            operations[name] = OperationStats(
                calls=counters.calls,
                errors=counters.errors,
                answers=counters.answers,
                mean_ms=counters.total_seconds * 1000.0 / counters.calls if counters.calls else None,
                p95_ms=counters.quantile_ms(0.95),
                max_ms=counters.max_seconds * 1000.0 if counters.calls else None,
            )
            for totals, counts in ((errors, counters.errors), (answers, counters.answers)):
                for key, count in counts.items():
                    totals[key] = totals.get(key, 0) + count
        answered = sum(answers.values())
        served_offline = answers.get("cache", 0) + answers.get("mirror", 0)
        depth, oldest = self._offline.outbox_depth()
        breaker = self._offline.breaker
        return ProcessStats(
            since=datetime.fromtimestamp(self._telemetry.started_at, timezone.utc),
            operations=operations,
            calls=sum(op.calls for op in operations.values()),
            errors=errors,
            answers=answers,
            cache_hit_rate=served_offline / answered if answered else None,
            breaker_state=breaker.state,
            breaker_failures=breaker.failures,
            breaker_times_opened=breaker.times_opened,
            outbox_depth=depth,
            outbox_oldest_age_seconds=oldest,
            cache_errors=self._offline.cache_errors,
        )

    def discard_rejected(self) -> int:
        """Forget the writes the server refused on replay, and those whose token expired before they
        could be replayed (after the app has dealt with them)."""
        return self._offline.discard_rejected()

    @property
    def embedder(self) -> Embedder:
        """The store's embedder (the default one is created, loading its model, on first use)."""
        return self._embedder_or_default()

    def _embedder_or_default(self) -> EmbedderLike:
        with self._lock:
            if self._embedder is None:
                self._embedder = default_embedder()
            return self._embedder

    def _checked_embedder(self, settings: StoreSettings) -> EmbedderLike:
        embedder = self._embedder_or_default()
        if not self._embedder_checked:
            check_embedder(embedder, settings)
            self._embedder_checked = True
        return embedder

    def _check_given_embedder(self, settings: StoreSettings) -> None:
        # A caller-supplied embedder is checked before any write, even one that ends up embedding
        # nothing; the default one is checked when it is first needed (creating it loads a model).
        if self._embedder is not None:
            self._checked_embedder(settings)

    def _remember_settings(self, found: tuple[StoreSettings, bool]) -> StoreSettings:
        """Keep live settings for the store's life; offline ones are asked for again next time."""
        settings, live = found
        if live:
            self._settings = settings
        return settings

    def _before_call(self, op: RpcCall, force: bool) -> Callable[[str, Mapping[str, Any]], Any]:
        """The breaker's gate: an open breaker refuses at once (unless ``force``: an explicit flush).
        Session-user calls (bulk loads) pass it; their flow records what they show itself."""
        breaker = self._offline.breaker
        note_rpc()
        if not op.session_user and not force and not breaker.allow():
            raise breaker.refusal()
        return sender(self._transport_object, op)

    def _call_failed(self, op: RpcCall, error: SupaVectorsError) -> None:
        if not op.session_user:
            self._offline.breaker.record(error)

    def _call_answered(self, op: RpcCall) -> None:
        if not op.session_user:
            self._offline.breaker.record_success()
            self._offline.note_accepted()

    # ---- shared steps ------------------------------------------------------------------------------

    @operation("settings", rpcs.STORE_SETTINGS)
    def _settings_flow(self) -> Flow[tuple[StoreSettings, bool]]:
        """``store_settings``, parsed, through the offline layer's memory of the last ones seen."""
        return (yield from self._offline.settings_flow(rpcs.STORE_SETTINGS.call(), StoreSettings.from_json))

    def _checked_filter(self, filter: Filter | None) -> Flow[dict[str, Any]]:
        """``filter`` checked against the store's own bounds (read with its settings, once per store;
        offline the last ones seen), so it is refused before any call that would carry it."""
        if filter is None:
            return {}
        settings: StoreSettings = yield SettingsCall()
        return validate_filter(filter, limits=settings.filter_limits)

    def _maybe_flush(self) -> Flow[None]:
        """Replay queued writes before anything else, so the server sees writes in the app's order and
        reads see them; a backend that is still down leaves them queued."""
        if not self._offline.has_pending() or self._offline.breaker.state == "open":
            return
        try:
            settings: StoreSettings = yield SettingsCall()
            yield from self._offline.flush_flow(settings, self._identity, blocking=False)
        except SupaVectorsError as exc:
            if not is_outage(exc):
                logger.warning("supa-vectors: replaying the outbox failed (%s: %s)", type(exc).__name__, exc)

    def _settings_or_none(self) -> Flow[StoreSettings | None]:
        """Settings for a write: None when they are unknown and the outbox can take the write anyway."""
        try:
            settings: StoreSettings = yield SettingsCall()
        except SupaVectorsError as exc:
            if is_outage(exc) and self._offline.outbox_enabled:
                return None
            raise
        return settings

    # ---- flows -------------------------------------------------------------------------------------

    @operation("upsert", rpcs.BULK_UPSERT)
    def _upsert_flow(
        self, documents: Iterable[DocumentInput] | DocumentInput, bulk: bool | None
    ) -> Flow[list[UpsertResult]]:
        prepared = upsert.prepare_documents(documents)
        if not prepared:
            return []
        yield from self._maybe_flush()
        settings = yield from self._settings_or_none()
        if settings is not None:
            upsert.check_limits(prepared, settings)
            self._check_given_embedder(settings)
        flow = self._offline.upsert_flow(prepared, settings, self._identity)
        if settings is None or not self._session_user:
            return (yield from flow)
        bulk_path = use_bulk_path(bulk, len(prepared)) and not self._offline.has_pending()
        if not bulk_path or self._unfinished_bulk_load:
            yield from self._restore_vector_index()
        if not bulk_path:
            return (yield from flow)
        return (yield from self._bulk_load(flow, len(prepared)))

    def _bulk_load(self, flow: Flow[Written], count: int) -> Flow[Written]:
        """``flow`` between ``begin_bulk_load`` and ``finish_bulk_load`` (decision 0012): an upsert's,
        or a restore's."""
        try:
            # begin_bulk_load restores an index an abandoned load left dropped, then decides.
            rebuild = bool((yield rpcs.BEGIN_BULK_LOAD.call({"expected_rows": count})))
        except AuthError:
            rebuild = False  # not the table owner: load through the index
        except SupaVectorsError as exc:
            if not is_outage(exc):
                raise
            rebuild = False  # the flow meets the same outage and queues the documents
        if not rebuild:
            return (yield from flow)
        try:
            results = yield from flow
        except BaseException:
            try:
                yield rpcs.FINISH_BULK_LOAD.call()
            except SupaVectorsError as exc:
                self._unfinished_bulk_load = True
                # The load itself failed; its error is the one the caller sees.
                logger.warning(
                    "supa-vectors: rebuilding the vector index after a failed load failed too (%s)", exc
                )
            raise
        try:
            yield rpcs.FINISH_BULK_LOAD.call()
        except SupaVectorsError as exc:
            self._unfinished_bulk_load = True
            return _after_rebuild_failure(exc, results)
        return results

    def _restore_vector_index(self) -> Flow[None]:
        """Before a write as the table owner: rebuild the index if a bulk load whose owner is gone (or
        this store's own, whose rebuild failed) left it dropped; one catalog lookup otherwise. Skipped
        when not the table owner, or while the breaker does not trust the backend (the write's flow
        queues instead of waiting out the connection timeout twice). Our own unfinished load is
        finished outright; anyone else's only once its loader is gone."""
        if not self._restore_index or self._offline.breaker.state != "closed":
            return
        rpc = rpcs.FINISH_BULK_LOAD if self._unfinished_bulk_load else rpcs.RESTORE_VECTOR_INDEX
        try:
            rebuilt = yield rpc.call()
        except SupaVectorsError as exc:
            self._offline.breaker.record(exc)
            if isinstance(exc, AuthError | NotFoundError):
                self._restore_index = False  # not the table owner, or a schema from before the RPC
            elif not is_outage(exc):  # an outage is left to the write's own flow (it may queue)
                raise
            return
        self._offline.breaker.record(None)
        self._unfinished_bulk_load = False
        if rebuilt:
            logger.warning("supa-vectors: rebuilt the vector index an interrupted bulk load had dropped")

    @operation("search", rpcs.MATCH_DOCUMENTS)
    def _search_flow(
        self,
        query: Query,
        k: int,
        threshold: float | None,
        filter: Filter | None,
        ef_search: int | None = None,
    ) -> Flow[list[SearchResult]]:
        checked_filter = yield from self._checked_filter(filter)
        threshold = checks.check_threshold(threshold)
        checks.check_k(k)
        ef_search = checks.check_ef_search(ef_search)
        yield from self._maybe_flush()
        settings: StoreSettings = yield SettingsCall()
        checks.check_k(k, settings)
        if isinstance(query, str):
            checked: str | npt.NDArray[np.float32] = checks.check_query_text(query)
            self._check_given_embedder(settings)
        else:
            checked = checks.query_vector(query, settings.embedding_dimension)
        return (
            yield from self._offline.read_flow(
                "search",
                checked,
                k,
                threshold,
                checked_filter,
                settings,
                ask=functools.partial(
                    checks.match_call, k=k, threshold=threshold, filter=checked_filter, ef_search=ef_search
                ),
                parse=parse_search_rows,
                # A wider walk may find other rows: answers to other ef_search are other cache entries.
                tuning=None if ef_search is None else {"ef_search": ef_search},
            )
        )

    @operation("hybrid", rpcs.HYBRID_SEARCH)
    def _hybrid_flow(
        self, query: str, k: int, filter: Filter | None, options: HybridOptions
    ) -> Flow[list[HybridSearchResult]]:
        checked_filter = yield from self._checked_filter(filter)
        text = checks.check_query_text(query)
        checks.check_k(k)
        tuning = checks.hybrid_tuning(**options)
        yield from self._maybe_flush()
        settings: StoreSettings = yield SettingsCall()
        checks.check_k(k, settings)
        self._check_given_embedder(settings)
        return (
            yield from self._offline.read_flow(
                "hybrid",
                text,
                k,
                None,
                checked_filter,
                settings,
                ask=functools.partial(
                    checks.hybrid_call, text=text, k=k, filter=checked_filter, tuning=tuning
                ),
                parse=parse_hybrid_rows,
                tuning={"ft": tuning.full_text_weight, "sem": tuning.semantic_weight, "rrf_k": tuning.rrf_k},
            )
        )

    @operation("get", rpcs.GET_DOCUMENTS)
    def _get_flow(self, ids: Iterable[str] | str) -> Flow[list[StoredDocument]]:
        return (yield from self._read_documents(ids, rpcs.GET_DOCUMENTS))

    @operation("get", rpcs.GET_EMBEDDINGS)
    def _get_with_vectors_flow(self, ids: Iterable[str] | str) -> Flow[list[StoredDocument]]:
        return (yield from self._read_documents(ids, rpcs.GET_EMBEDDINGS))

    def _read_documents(self, ids: Iterable[str] | str, rpc: rpcs.Rpc) -> Flow[list[StoredDocument]]:
        """``get``: the visible documents with these ids, in the order asked, read by ``rpc``
        (``get_documents``, or ``get_embeddings`` for their stored vectors too). Like every read of
        documents by id it needs the backend: no cache or mirror answers it (decision 0022)."""
        wanted = checks.check_ids(ids)
        yield from self._maybe_flush()
        found: list[StoredDocument] = []
        for chunk in checks.id_chunks(wanted):
            rows = yield rpc.call({"external_ids": chunk})
            found += parse_documents(rows, rpc.name, vectors=rpc.vectors)
        return order_by_ids(found, wanted)

    @operation("delete", rpcs.DELETE_DOCUMENTS, rows=int)
    def _delete_flow(self, ids: Iterable[str] | str) -> Flow[DeleteCount]:
        wanted = checks.check_ids(ids)
        yield from self._maybe_flush()
        return (yield from self._offline.delete_flow(wanted))

    @operation("count", rpcs.COUNT_DOCUMENTS)
    def _count_flow(self, filter: Filter | None) -> Flow[int]:
        params = checks.count_params((yield from self._checked_filter(filter)))
        yield from self._maybe_flush()
        return int((yield rpcs.COUNT_DOCUMENTS.call(params)))

    @operation("iter_documents", rpcs.LIST_DOCUMENTS)
    def _page_flow(
        self, after: int, page_size: int, checked: dict[str, Any]
    ) -> Flow[tuple[list[StoredDocument], int | None]]:
        """One ``list_documents`` page after the keyset cursor ``after``, and the next cursor (None
        when no page can follow)."""
        reply = yield rpcs.LIST_DOCUMENTS.call(checks.list_params(after, page_size, checked))
        docs, last = page_after(reply)
        return docs, (None if len(docs) < page_size else last)

    @operation("stats", rpcs.STORE_STATS)
    def _stats_flow(self) -> Flow[StoreStats]:
        yield from self._maybe_flush()
        return parse_stats((yield rpcs.STORE_STATS.call()))

    @operation("rpc_stats", rpcs.STORE_RPC_STATS)
    def _rpc_stats_flow(self) -> Flow[list[RpcStats]]:
        return parse_rpc_stats((yield rpcs.STORE_RPC_STATS.call()))

    @operation("table_sizes", rpcs.STORE_TABLE_SIZES)
    def _table_sizes_flow(self) -> Flow[list[TableSize]]:
        return parse_table_sizes((yield rpcs.STORE_TABLE_SIZES.call()))

    @operation("flush", rpcs.BULK_UPSERT, rows=lambda result: result.upserted + result.deleted)
    def _flush_flow(self, *, blocking: bool) -> Flow[FlushResult]:
        settings: StoreSettings = yield SettingsCall()
        return (yield from self._offline.flush_flow(settings, self._identity, blocking=blocking))

    @operation("sync_mirror", rpcs.LIST_DOCUMENTS, rows=lambda result: result.fetched)
    def _sync_flow(self, full: bool) -> Flow[SyncResult]:
        yield from self._maybe_flush()
        settings: StoreSettings = yield SettingsCall()
        return (yield from self._offline.sync_flow(settings, full=full))

    @operation("backup", rpcs.EXPORT_DOCUMENTS, rows=lambda result: result.documents)
    def _backup_flow(self, path: str | os.PathLike[str], options: BackupOptions) -> Flow[BackupResult]:
        yield from self._maybe_flush()  # writes the app queued belong in its backup
        settings: StoreSettings = yield SettingsCall()
        return (yield from backup.backup_flow(Path(path), settings, **options))

    @operation("restore", rpcs.BULK_UPSERT, rows=lambda result: result.documents)
    def _restore_flow(self, path: str | os.PathLike[str], options: RestoreOptions) -> Flow[RestoreResult]:
        yield from self._maybe_flush()
        settings: StoreSettings = yield SettingsCall()
        manifest = backup.read_archive(Path(path), settings)  # all of it, before the first write
        flow = backup.restore_flow(Path(path), manifest, settings, **options)
        if not self._session_user:
            return (yield from flow)
        # As the table owner, a restore into a (nearly) empty store is a bulk load (decision 0012).
        if not use_bulk_path(None, int(manifest["documents"]), job=True) or self._unfinished_bulk_load:
            yield from self._restore_vector_index()
            return (yield from flow)
        return (yield from self._bulk_load(flow, int(manifest["documents"])))


def _after_rebuild_failure(exc: SupaVectorsError, results: Written) -> Written:
    """``finish_bulk_load`` failed after the documents were written (or queued): never hide them.

    When the backend died, so did the loader's session, and the server's ``restore_vector_index``
    rebuilds the index for whoever comes next (the owner's next write, ``supa-vectors local start``):
    the call returns what it did, with a warning. Any other failure raises ``IndexRebuildError``,
    which carries the same results.
    """
    upserted: list[UpsertResult] = results if isinstance(results, list) else []  # a restore: none
    if is_outage(exc):
        logger.warning(
            "supa-vectors: the documents are %s, but the vector index could not be rebuilt (%s); the "
            "next write as the table owner or `supa-vectors local start` rebuilds it",
            "queued" if any(r.status == "queued" for r in upserted) else "written",
            exc,
        )
        return results
    raise IndexRebuildError(
        f"the documents were written, but rebuilding the vector index failed: {exc}",
        results=upserted,
        code=exc.code if isinstance(exc, BackendError) else None,
    ) from exc
