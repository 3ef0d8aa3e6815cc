"""``VectorStore`` and ``AsyncVectorStore``: embed -> RPC -> results.

The two are mirror images (like httpx's ``Client`` and ``AsyncClient``): every check, parameter and
parse lives in :mod:`supa_vectors._rpc` and :mod:`supa_vectors.filters`, and multi-step operations are
generators there, so the stores only perform I/O — a transport call or an embedder run — and cannot drift
apart. The async store runs the embedder in a worker thread so a large batch never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from supa_vectors import _rpc
from supa_vectors._rpc import (
    BULK_MIN_ROWS,
    DocumentInput,
    EmbedCall,
    EmbedderLike,
    Flow,
    RpcCall,
    StoreSettings,
    SupportsSessionUserRpc,
)
from supa_vectors.config import async_transport_for, target_from_env, target_from_url, transport_for
from supa_vectors.errors import (
    AuthError,
    ConfigurationError,
    EmbeddingError,
    SupaVectorsError,
)
from supa_vectors.filters import Filter, validate_filter
from supa_vectors.models import HybridSearchResult, SearchResult, StoredDocument, StoreStats, UpsertResult
from supa_vectors.transport.base import AsyncTransport, Transport
from supa_vectors.transport.identity import Identity

if TYPE_CHECKING:
    # Only for annotations: importing the embedding package costs more than the rest of the SDK.
    from supa_vectors.embedding import Embedder

__all__ = ["AsyncVectorStore", "VectorStore"]

T = TypeVar("T")
Query = str | Sequence[float] | npt.NDArray[np.floating[Any]]


@runtime_checkable
class _SupportsAsyncSessionUserRpc(Protocol):
    async def rpc_as_session_user(self, name: str, params: Mapping[str, Any]) -> Any: ...


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


def _use_bulk_path(bulk: bool | None, count: int) -> bool:
    if bulk is None:
        return count >= BULK_MIN_ROWS
    return bulk


class _StoreState:
    """What both stores keep between calls: the embedder (created on first use) and the settings."""

    def __init__(self, embedder: EmbedderLike | None) -> None:
        self._embedder = embedder
        self._embedder_checked = False
        self._settings: StoreSettings | None = None
        self._lock = threading.Lock()

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

    def _check_given_embedder(self, settings: StoreSettings) -> None:
        # A caller-supplied embedder is checked before any write, even one that ends up embedding
        # nothing; the default one is checked when it is first needed (creating it loads a model).
        if self._embedder is not None:
            self._checked_embedder(settings)


class VectorStore(_StoreState):
    """A document store with semantic search, over any :class:`~supa_vectors.transport.base.Transport`.

    Build one with :meth:`from_url` or :meth:`from_env`, or hand it a transport. The store owns the
    transport: :meth:`close` (or leaving a ``with`` block) closes it.
    """

    def __init__(self, transport: Transport, *, embedder: Embedder | None = None) -> None:
        if not isinstance(transport, Transport) or inspect.iscoroutinefunction(transport.rpc):
            raise ConfigurationError(
                f"VectorStore needs a blocking Transport, got {type(transport).__name__} "
                "(use AsyncVectorStore for an async transport)"
            )
        super().__init__(embedder)
        self._transport = transport

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str | None = None,
        *,
        embedder: Embedder | None = None,
        identity: Identity | None = None,
    ) -> VectorStore:
        """``https://<project>.supabase.co`` with a key (PostgREST), or a ``postgresql://`` URL.

        ``identity`` (Postgres URLs only) is who the calls run as; the default is the service role.
        """
        return cls(transport_for(target_from_url(url, key), identity=identity), embedder=embedder)

    @classmethod
    def from_env(cls, *, embedder: Embedder | None = None, identity: Identity | None = None) -> VectorStore:
        """``SUPABASE_URL`` + ``SUPABASE_KEY``, else ``SUPA_VECTORS_DATABASE_URL``, else the local stack."""
        return cls(transport_for(target_from_env(), identity=identity), embedder=embedder)

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def embedder(self) -> Embedder:
        return self._embedder_or_default()

    def settings(self) -> StoreSettings:
        """The store's model and limits, read once per store (they change only with a migration)."""
        if self._settings is None:
            self._settings = StoreSettings.from_json(self._transport.rpc("store_settings", {}))
        return self._settings

    # ---------------------------------------------------------------------------------------- I/O

    def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return _run_embedder(self._checked_embedder(self.settings()), texts)

    def _run(self, flow: Flow[T]) -> T:
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
                    reply = self._transport.rpc(op.name, op.params)
                else:
                    reply = self._embed(op.texts)
            except SupaVectorsError as exc:
                error = exc

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
        vector index for the load and rebuild it after, when the load is larger than the store.
        """
        prepared = _rpc.prepare_documents(documents)
        if not prepared:
            return []
        settings = self.settings()
        _rpc.check_limits(prepared, settings)
        self._check_given_embedder(settings)
        flow = _rpc.upsert_flow(prepared, settings, _rpc.transport_identity(self._transport))
        if not (_use_bulk_path(bulk, len(prepared)) and isinstance(self._transport, SupportsSessionUserRpc)):
            return self._run(flow)
        try:
            rebuild = bool(
                self._transport.rpc_as_session_user("begin_bulk_load", {"expected_rows": len(prepared)})
            )
        except AuthError:
            rebuild = False  # not the table owner: load through the index
        try:
            return self._run(flow)
        finally:
            if rebuild:
                self._transport.rpc_as_session_user("finish_bulk_load", {})

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
        """The ``k`` documents most similar to ``query`` (a text, or a vector of the store's model)."""
        checked_filter = validate_filter(filter)
        threshold = _rpc.check_threshold(threshold)
        _rpc.check_k(k)
        settings = self.settings()
        _rpc.check_k(k, settings)
        if isinstance(query, str):
            text = _rpc.check_query_text(query)
            vector = _rpc.check_embeddings(self._embed([text]), 1, settings.embedding_dimension)[0]
        else:
            vector = _rpc.query_vector(query, settings.embedding_dimension)
        reply = self._transport.rpc(
            "match_documents", _rpc.match_params(vector, k, threshold, checked_filter)
        )
        return _rpc.parse_search_rows(reply)

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
        """Full-text and vector rankings fused by reciprocal rank: exact words and meaning both count."""
        checked_filter = validate_filter(filter)
        text = _rpc.check_query_text(query)
        _rpc.check_k(k)
        settings = self.settings()
        _rpc.check_k(k, settings)
        tuning = _rpc.hybrid_tuning(full_text_weight, semantic_weight, rrf_k)
        vector = _rpc.check_embeddings(self._embed([text]), 1, settings.embedding_dimension)[0]
        params = _rpc.hybrid_params(text, vector, k, checked_filter, tuning)
        return _rpc.parse_hybrid_rows(self._transport.rpc("hybrid_search", params))

    def get(self, ids: Iterable[str] | str) -> list[StoredDocument]:
        """The visible documents with these ids, in the order asked (missing ids are left out)."""
        wanted = _rpc.check_ids(ids)
        found: list[StoredDocument] = []
        for chunk in _rpc.id_chunks(wanted):
            found += _rpc.parse_documents(
                self._transport.rpc("get_documents", {"external_ids": chunk}), "get_documents"
            )
        return _rpc.order_by_ids(found, wanted)

    def delete(self, ids: Iterable[str] | str) -> int:
        """Delete the caller's documents with these ids; returns how many were deleted."""
        deleted = 0
        for chunk in _rpc.id_chunks(_rpc.check_ids(ids)):
            deleted += len(self._transport.rpc("delete_documents", {"external_ids": chunk}))
        return deleted

    def count(self, filter: Filter | None = None) -> int:
        return int(self._transport.rpc("count_documents", _rpc.count_params(filter)))

    def iter_documents(
        self, *, filter: Filter | None = None, page_size: int = 500
    ) -> Iterator[StoredDocument]:
        """Every visible document matching ``filter``, in insertion order, one page per call.

        Pages follow the last id seen (keyset), so documents inserted meanwhile never shift a page:
        nothing is skipped or repeated. Arguments are checked now, not at the first ``next()``.
        """
        checked = validate_filter(filter)
        _rpc.check_page_size(page_size)
        return self._pages(checked, page_size)

    def _pages(self, checked: dict[str, Any], page_size: int) -> Iterator[StoredDocument]:
        after = 0
        while True:
            reply = self._transport.rpc("list_documents", _rpc.list_params(after, page_size, checked))
            docs, last = _rpc.page_after(reply)
            yield from docs
            if last is None or len(docs) < page_size:
                return
            after = last

    def stats(self) -> StoreStats:
        return _rpc.parse_stats(self._transport.rpc("store_stats", {}))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._transport).__name__})"


class AsyncVectorStore(_StoreState):
    """The asyncio twin of :class:`VectorStore`, over an ``AsyncTransport``."""

    def __init__(self, transport: AsyncTransport, *, embedder: Embedder | None = None) -> None:
        if not isinstance(transport, AsyncTransport) or not inspect.iscoroutinefunction(transport.rpc):
            raise ConfigurationError(
                f"AsyncVectorStore needs an AsyncTransport, got {type(transport).__name__} "
                "(use VectorStore for a blocking transport)"
            )
        super().__init__(embedder)
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
    ) -> AsyncVectorStore:
        """See :meth:`VectorStore.from_url`."""
        return cls(async_transport_for(target_from_url(url, key), identity=identity), embedder=embedder)

    @classmethod
    def from_env(
        cls, *, embedder: Embedder | None = None, identity: Identity | None = None
    ) -> AsyncVectorStore:
        """See :meth:`VectorStore.from_env`."""
        return cls(async_transport_for(target_from_env(), identity=identity), embedder=embedder)

    @property
    def transport(self) -> AsyncTransport:
        return self._transport

    @property
    def embedder(self) -> Embedder:
        return self._embedder_or_default()

    async def settings(self) -> StoreSettings:
        if self._settings is None:
            async with self._settings_lock:
                if self._settings is None:
                    self._settings = StoreSettings.from_json(await self._transport.rpc("store_settings", {}))
        return self._settings

    # ---------------------------------------------------------------------------------------- I/O

    async def _embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        settings = await self.settings()
        embedder = await asyncio.to_thread(self._checked_embedder, settings)
        return await asyncio.to_thread(_run_embedder, embedder, texts)

    async def _run(self, flow: Flow[T]) -> T:
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
                    reply = await self._transport.rpc(op.name, op.params)
                elif isinstance(op, EmbedCall):
                    reply = await self._embed(op.texts)
            except SupaVectorsError as exc:
                error = exc

    # ---------------------------------------------------------------------------------------- API

    async def upsert(
        self, documents: Iterable[DocumentInput] | DocumentInput, *, bulk: bool | None = None
    ) -> list[UpsertResult]:
        """See :meth:`VectorStore.upsert`."""
        prepared = _rpc.prepare_documents(documents)
        if not prepared:
            return []
        settings = await self.settings()
        _rpc.check_limits(prepared, settings)
        self._check_given_embedder(settings)
        flow = _rpc.upsert_flow(prepared, settings, _rpc.transport_identity(self._transport))
        if not (
            _use_bulk_path(bulk, len(prepared)) and isinstance(self._transport, _SupportsAsyncSessionUserRpc)
        ):
            return await self._run(flow)
        try:
            rebuild = bool(
                await self._transport.rpc_as_session_user("begin_bulk_load", {"expected_rows": len(prepared)})
            )
        except AuthError:
            rebuild = False
        try:
            return await self._run(flow)
        finally:
            if rebuild:
                await self._transport.rpc_as_session_user("finish_bulk_load", {})

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
        checked_filter = validate_filter(filter)
        threshold = _rpc.check_threshold(threshold)
        _rpc.check_k(k)
        settings = await self.settings()
        _rpc.check_k(k, settings)
        if isinstance(query, str):
            text = _rpc.check_query_text(query)
            vector = _rpc.check_embeddings(await self._embed([text]), 1, settings.embedding_dimension)[0]
        else:
            vector = _rpc.query_vector(query, settings.embedding_dimension)
        reply = await self._transport.rpc(
            "match_documents", _rpc.match_params(vector, k, threshold, checked_filter)
        )
        return _rpc.parse_search_rows(reply)

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
        checked_filter = validate_filter(filter)
        text = _rpc.check_query_text(query)
        _rpc.check_k(k)
        settings = await self.settings()
        _rpc.check_k(k, settings)
        tuning = _rpc.hybrid_tuning(full_text_weight, semantic_weight, rrf_k)
        vector = _rpc.check_embeddings(await self._embed([text]), 1, settings.embedding_dimension)[0]
        params = _rpc.hybrid_params(text, vector, k, checked_filter, tuning)
        return _rpc.parse_hybrid_rows(await self._transport.rpc("hybrid_search", params))

    async def get(self, ids: Iterable[str] | str) -> list[StoredDocument]:
        """See :meth:`VectorStore.get`."""
        wanted = _rpc.check_ids(ids)
        found: list[StoredDocument] = []
        for chunk in _rpc.id_chunks(wanted):
            found += _rpc.parse_documents(
                await self._transport.rpc("get_documents", {"external_ids": chunk}), "get_documents"
            )
        return _rpc.order_by_ids(found, wanted)

    async def delete(self, ids: Iterable[str] | str) -> int:
        """See :meth:`VectorStore.delete`."""
        deleted = 0
        for chunk in _rpc.id_chunks(_rpc.check_ids(ids)):
            deleted += len(await self._transport.rpc("delete_documents", {"external_ids": chunk}))
        return deleted

    async def count(self, filter: Filter | None = None) -> int:
        return int(await self._transport.rpc("count_documents", _rpc.count_params(filter)))

    def iter_documents(
        self, *, filter: Filter | None = None, page_size: int = 500
    ) -> AsyncIterator[StoredDocument]:
        """See :meth:`VectorStore.iter_documents`; use with ``async for``."""
        checked = validate_filter(filter)
        _rpc.check_page_size(page_size)
        return self._pages(checked, page_size)

    async def _pages(self, checked: dict[str, Any], page_size: int) -> AsyncIterator[StoredDocument]:
        after = 0
        while True:
            reply = await self._transport.rpc("list_documents", _rpc.list_params(after, page_size, checked))
            docs, last = _rpc.page_after(reply)
            for doc in docs:
                yield doc
            if last is None or len(docs) < page_size:
                return
            after = last

    async def stats(self) -> StoreStats:
        return _rpc.parse_stats(await self._transport.rpc("store_stats", {}))

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncVectorStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._transport).__name__})"
