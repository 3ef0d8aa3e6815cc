"""A LlamaIndex vector store over a supa-vectors store (``pip install 'supa-vectors[llama-index]'``).

::

    from llama_index.core import StorageContext, VectorStoreIndex
    from supa_vectors import VectorStore
    from supa_vectors.integrations.llama_index import SupaVectorsEmbedding, SupaVectorsVectorStore

    store = VectorStore.from_env()
    vector_store = SupaVectorsVectorStore(store)
    index = VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=SupaVectorsEmbedding(store.embedder),
    )

A node is one document of the store: its id is the node id, its content the node's text, its metadata
the node's metadata plus LlamaIndex's own keys (``_node_content`` with the relationships, ``ref_doc_id``,
...), as LlamaIndex's ``node_to_metadata_dict`` writes them, so ids, text, metadata and relationships
round-trip and ``delete(ref_doc_id)`` is a metadata filter. ``MetadataFilters`` (nested, AND/OR/NOT)
become the SDK's filter grammar (:func:`to_filter`); the search is the store's own (filtered exact
scans or iterative HNSW, never a post-filter). Query modes: ``DEFAULT`` (dense), ``HYBRID`` (the
SDK's hybrid search; ``alpha`` weighs vector against full text), ``TEXT_SEARCH`` (its full-text
ranking alone) and ``MMR`` (over the dense candidates, by their stored vectors). Hybrid and text
search embed the query text with the store's embedder, so the index's ``embed_model`` should be the
store's model (:class:`SupaVectorsEmbedding`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from supa_vectors._core.flows import HybridOptions, default_embedder, run_embedder
from supa_vectors._core.settings import EmbedderLike
from supa_vectors._models import Document, HybridSearchResult, SearchResult, StoredDocument
from supa_vectors._store import AsyncVectorStore, VectorStore
from supa_vectors.errors import FilterError, InvalidInputError
from supa_vectors.integrations._shared import (
    OFFLINE_KEY,
    StorePair,
    acandidate_vectors,
    astore_embed,
    candidate_vectors,
    check_options,
    missing_framework,
    result_metadata,
    store_embed,
)

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
    from llama_index.core.schema import BaseNode, MetadataMode, TextNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as exc:  # pragma: no cover - exercised by tests/test_integrations_llama_index.py
    raise missing_framework("llama-index-core", "llama-index") from exc

__all__ = ["SupaVectorsEmbedding", "SupaVectorsVectorStore", "to_filter"]

P = ParamSpec("P")
T = TypeVar("T")

_QUERY_MODES = (
    VectorStoreQueryMode.DEFAULT,
    VectorStoreQueryMode.HYBRID,
    VectorStoreQueryMode.TEXT_SEARCH,
    VectorStoreQueryMode.MMR,
)
# LlamaIndex's MMR options (``vector_store_kwargs``): the relevance weight, and how many candidates
# to fetch (``mmr_prefetch_k``, else ``mmr_prefetch_factor`` times ``similarity_top_k``).
_MMR_OPTIONS = frozenset({"mmr_threshold", "mmr_prefetch_k", "mmr_prefetch_factor"})
_MMR_PREFETCH_FACTOR = 4.0


class SupaVectorsEmbedding(BaseEmbedding):
    """LlamaIndex ``BaseEmbedding`` over a supa-vectors embedder (default: the store's ONNX model)."""

    _embedder: EmbedderLike | None = PrivateAttr(default=None)

    def __init__(self, embedder: EmbedderLike | None = None, **kwargs: Any) -> None:
        model_name = embedder.model_id if embedder is not None else "supa-vectors default"
        super().__init__(model_name=model_name, **kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "SupaVectorsEmbedding"

    @property
    def embedder(self) -> EmbedderLike:
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = run_embedder(self.embedder, texts).tolist() if texts else []
        return vectors

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


class SupaVectorsVectorStore(BasePydanticVectorStore):
    """LlamaIndex's vector-store interface, answered by a :class:`supa_vectors.VectorStore` and/or
    :class:`supa_vectors.AsyncVectorStore` (the async methods use the latter when given, else run the
    blocking call in a worker thread). See the module docstring."""

    stores_text: bool = True
    flat_metadata: bool = False

    _stores: StorePair = PrivateAttr()

    def __init__(
        self, store: VectorStore | None = None, *, async_store: AsyncVectorStore | None = None
    ) -> None:
        super().__init__(stores_text=True)
        self._stores = StorePair(store, async_store)

    @classmethod
    def class_name(cls) -> str:
        return "SupaVectorsVectorStore"

    @property
    def client(self) -> VectorStore | AsyncVectorStore:
        """The wrapped store (the blocking one when there are both)."""
        return self._stores.sync_or_async

    # ---------------------------------------------------------------------------------------- writes

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Upsert the nodes (with their embeddings when they have them; the store embeds the others)."""
        _no_options("add", kwargs)
        return [r.id for r in self._stores.sync.upsert(_documents(nodes))] if nodes else []

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        store = self._stores.async_store
        if store is None:
            return await _in_thread(self.add, nodes, **kwargs)
        _no_options("add", kwargs)
        return [r.id for r in await store.upsert(_documents(nodes))] if nodes else []

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the caller's nodes of the source document ``ref_doc_id``."""
        self.delete_nodes(filters=_ref_doc_filter(ref_doc_id), **delete_kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await self.adelete_nodes(filters=_ref_doc_filter(ref_doc_id), **delete_kwargs)

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete the caller's nodes with these ids and/or matching ``filters``."""
        _no_options("delete_nodes", delete_kwargs)
        doomed = [doc.id for doc in self._stored(node_ids, filters, needed=True)]
        if doomed:
            self._stores.sync.delete(doomed)

    async def adelete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        store = self._stores.async_store
        if store is None:
            await _in_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)
            return
        _no_options("delete_nodes", delete_kwargs)
        doomed = [doc.id for doc in await self._astored(node_ids, filters, needed=True)]
        if doomed:
            await store.delete(doomed)

    def clear(self) -> None:
        """Delete every node the caller owns (RLS: shared and other users' documents stay)."""
        ids = [doc.id for doc in self._stores.sync.iter_documents()]
        if ids:
            self._stores.sync.delete(ids)

    async def aclear(self) -> None:
        store = self._stores.async_store
        if store is None:
            await _in_thread(self.clear)
            return
        ids = [doc.id async for doc in store.iter_documents()]
        if ids:
            await store.delete(ids)

    # ----------------------------------------------------------------------------------------- reads

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """The visible nodes with these ids and/or matching ``filters`` (all of them with neither)."""
        return [
            _node(doc.id, doc.content, doc.metadata) for doc in self._stored(node_ids, filters, needed=False)
        ]

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        if self._stores.async_store is None:
            return await _in_thread(self.get_nodes, node_ids, filters)
        found = await self._astored(node_ids, filters, needed=False)
        return [_node(doc.id, doc.content, doc.metadata) for doc in found]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Dense, hybrid, full-text or MMR search (``query.mode``), with ``query.filters`` in the store.

        MMR runs over the candidates a dense search returns, compared by their stored vectors (one
        ``get(ids, with_vectors=True)`` call; offline, their text embedded by the store)."""
        store = self._stores.sync
        mode, text, vector, k, filter, tuning = _plan(query)
        if mode == VectorStoreQueryMode.MMR:
            fetch_k, threshold = _mmr_options(query, k, kwargs)
            candidates = store.search(_mmr_query(vector), k=fetch_k, filter=filter)
            found = candidate_vectors(store, candidates, store_embed(store))
            return _mmr_result(_mmr_query(vector), *found, k, threshold)
        _no_options("query", kwargs)
        if mode == VectorStoreQueryMode.DEFAULT:
            return _result(store.search(vector if vector is not None else text, k=k, filter=filter))
        return _result(store.hybrid_search(text, k=k, filter=filter, **tuning))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        store = self._stores.async_store
        if store is None:
            return await _in_thread(self.query, query, **kwargs)
        mode, text, vector, k, filter, tuning = _plan(query)
        if mode == VectorStoreQueryMode.MMR:
            fetch_k, threshold = _mmr_options(query, k, kwargs)
            candidates = await store.search(_mmr_query(vector), k=fetch_k, filter=filter)
            found = await acandidate_vectors(store, candidates, astore_embed(store))
            return _mmr_result(_mmr_query(vector), *found, k, threshold)
        _no_options("query", kwargs)
        if mode == VectorStoreQueryMode.DEFAULT:
            return _result(await store.search(vector if vector is not None else text, k=k, filter=filter))
        return _result(await store.hybrid_search(text, k=k, filter=filter, **tuning))

    def _stored(
        self, node_ids: list[str] | None, filters: MetadataFilters | None, *, needed: bool
    ) -> list[StoredDocument]:
        store = self._stores.sync
        flt = _selection(node_ids, filters, needed=needed)
        if flt is None:
            return store.get(node_ids or []) if node_ids else []
        return _keep(store.iter_documents(filter=flt), node_ids)

    async def _astored(
        self, node_ids: list[str] | None, filters: MetadataFilters | None, *, needed: bool
    ) -> list[StoredDocument]:
        store = self._stores.async_store
        assert store is not None  # callers without one ran the blocking method instead
        flt = _selection(node_ids, filters, needed=needed)
        if flt is None:
            return await store.get(node_ids or []) if node_ids else []
        return _keep([doc async for doc in store.iter_documents(filter=flt)], node_ids)


# ------------------------------------------------------------------------------------------------
# filters


def to_filter(filters: MetadataFilters | None) -> dict[str, Any]:
    """LlamaIndex's ``MetadataFilters`` in the SDK's filter grammar (:mod:`supa_vectors.filters`).

    Every ``FilterOperator`` maps except ``TEXT_MATCH`` and ``TEXT_MATCH_INSENSITIVE`` (the grammar has
    no substring match: :class:`~supa_vectors.errors.FilterError` says so). ``NOT`` matches when none of
    its filters do, as LlamaIndex's own in-memory store evaluates it.
    """
    if filters is None or not filters.filters:
        return {}
    parts = [to_filter(f) if isinstance(f, MetadataFilters) else _clause(f) for f in filters.filters]
    parts = [p for p in parts if p]
    if not parts:
        return {}
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return parts[0] if len(parts) == 1 else {"$and": parts}
    if condition == FilterCondition.OR:
        return parts[0] if len(parts) == 1 else {"$or": parts}
    if condition == FilterCondition.NOT:
        return {"$not": parts[0] if len(parts) == 1 else {"$or": parts}}
    raise FilterError(f"invalid filter: the condition {condition!r} has no counterpart in supa-vectors")


def _clause(f: MetadataFilter) -> dict[str, Any]:
    key, value, op = f.key, f.value, f.operator
    simple = {
        FilterOperator.EQ: "$eq",
        FilterOperator.NE: "$ne",
        FilterOperator.GT: "$gt",
        FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt",
        FilterOperator.LTE: "$lte",
        FilterOperator.CONTAINS: "$contains",
    }
    if op in simple:
        return {key: {simple[op]: value}}
    if op in (FilterOperator.IN, FilterOperator.NIN):
        values = value if isinstance(value, list) else [value]
        return {key: {"$in" if op == FilterOperator.IN else "$nin": values}}
    if op == FilterOperator.ANY:  # the array field holds at least one of the values
        values = value if isinstance(value, list) else [value]
        return (
            {"$or": [{key: {"$contains": v}} for v in values]}
            if len(values) > 1
            else {key: {"$contains": values[0]}}
        )
    if op == FilterOperator.ALL:  # the array field holds every value
        return {key: {"$contains": value if isinstance(value, list) else [value]}}
    if op == FilterOperator.IS_EMPTY:  # missing, null, "" or []
        return {"$or": [{key: {"$exists": False}}, {key: None}, {key: ""}, {key: {"$eq": []}}]}
    raise FilterError(
        f'invalid filter: LlamaIndex\'s {op.name} on "{key}" has no counterpart in supa-vectors (no '
        "substring or full-text match in metadata filters); use hybrid search or TEXT_SEARCH for words"
    )


# ------------------------------------------------------------------------------------------------
# helpers


def _no_options(operation: str, given: dict[str, Any]) -> None:
    if given:
        raise InvalidInputError(f"{operation} takes no options, got {', '.join(sorted(given))}")


async def _in_thread(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(call, *args, **kwargs)


def _documents(nodes: Sequence[BaseNode]) -> list[Document]:
    return [
        Document(
            id=node.node_id,
            content=node.get_content(metadata_mode=MetadataMode.NONE),
            metadata=node_to_metadata_dict(node, remove_text=True, flat_metadata=False),
            embedding=node.embedding,
        )
        for node in nodes
    ]


def _node(node_id: str, text: str, metadata: dict[str, Any]) -> BaseNode:
    """The node a document holds; a document the SDK or a migration wrote (no ``_node_content``) reads
    as a ``TextNode`` with the document's id, text and metadata."""
    if "_node_content" not in metadata:
        return TextNode(id_=node_id, text=text, metadata=metadata)
    node = metadata_dict_to_node({k: v for k, v in metadata.items() if k != OFFLINE_KEY}, text=text)
    if OFFLINE_KEY in metadata:
        node.metadata[OFFLINE_KEY] = metadata[OFFLINE_KEY]
    return node


def _ref_doc_filter(ref_doc_id: str) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value=ref_doc_id)])


def _selection(
    node_ids: list[str] | None, filters: MetadataFilters | None, *, needed: bool
) -> dict[str, Any] | None:
    """The SDK filter that selects the nodes (None: the ids alone do)."""
    flt = to_filter(filters)
    if not flt and node_ids is None:
        if needed:
            raise InvalidInputError("delete_nodes needs node_ids or filters (clear() deletes every node)")
        return {}
    return flt or None


def _keep(found: Any, node_ids: list[str] | None) -> list[StoredDocument]:
    wanted = set(node_ids) if node_ids is not None else None
    return [doc for doc in found if wanted is None or doc.id in wanted]


def _plan(
    query: VectorStoreQuery,
) -> tuple[VectorStoreQueryMode, str, list[float] | None, int, dict[str, Any], HybridOptions]:
    """What to ask the store for ``query``, checked before anything is sent."""
    if query.mode not in _QUERY_MODES:
        raise InvalidInputError(
            f"query mode {query.mode.value!r} is not offered; use default, hybrid, text_search or mmr"
        )
    if query.node_ids:
        raise InvalidInputError("querying a subset of node_ids is not offered; filter on metadata instead")
    filters = to_filter(query.filters)
    if query.doc_ids:
        by_doc = {"ref_doc_id": {"$in": list(query.doc_ids)}}
        filters = {"$and": [filters, by_doc]} if filters else by_doc
    text = query.query_str or ""
    k = query.similarity_top_k
    if query.mode == VectorStoreQueryMode.MMR and query.query_embedding is None:
        raise InvalidInputError("an MMR query needs query_embedding")
    if query.mode in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
        if query.query_embedding is None and not text:
            raise InvalidInputError("a dense query needs query_embedding or query_str")
        return query.mode, text, query.query_embedding, k, filters, {}
    if not text:
        raise InvalidInputError(f"a {query.mode.value} query needs query_str")
    tuning: HybridOptions = {}
    if query.mode == VectorStoreQueryMode.TEXT_SEARCH:
        tuning = {"full_text_weight": 1.0, "semantic_weight": 0.0}
    elif query.alpha is not None:  # LlamaIndex: 0 is keyword search only, 1 vector search only
        tuning = {"full_text_weight": 1.0 - query.alpha, "semantic_weight": query.alpha}
    return query.mode, text, None, query.hybrid_top_k or k, filters, tuning


def _mmr_options(query: VectorStoreQuery, k: int, given: dict[str, Any]) -> tuple[int, float | None]:
    """How many candidates an MMR query fetches, and its relevance weight (LlamaIndex's names)."""
    check_options("an MMR query", given, _MMR_OPTIONS)
    threshold = given.get("mmr_threshold", query.mmr_threshold)
    fetch_k = given.get("mmr_prefetch_k") or int(k * given.get("mmr_prefetch_factor", _MMR_PREFETCH_FACTOR))
    return max(k, fetch_k), threshold


def _mmr_query(vector: list[float] | None) -> list[float]:
    assert vector is not None  # _plan refused an MMR query without one
    return vector


def _mmr_result(
    query: list[float],
    candidates: list[SearchResult],
    vectors: list[list[float]],
    k: int,
    threshold: float | None,
) -> VectorStoreQueryResult:
    """LlamaIndex's own MMR selection over the candidates; similarities stay the search's cosines."""
    if not candidates:
        return _result([])
    _, chosen = get_top_k_mmr_embeddings(
        query,
        vectors,
        similarity_top_k=k,
        embedding_ids=list(range(len(candidates))),
        mmr_threshold=threshold,
    )
    return _result([candidates[i] for i in chosen])


def _result(results: Sequence[SearchResult | HybridSearchResult]) -> VectorStoreQueryResult:
    return VectorStoreQueryResult(
        nodes=[_node(r.id, r.content, result_metadata(r)) for r in results],
        similarities=[r.similarity if isinstance(r, SearchResult) else r.score for r in results],
        ids=[r.id for r in results],
    )
