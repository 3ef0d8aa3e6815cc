"""A LangChain ``VectorStore`` over a supa-vectors store (``pip install 'supa-vectors[langchain]'``).

::

    from supa_vectors import VectorStore
    from supa_vectors.integrations.langchain import SupaVectorsVectorStore

    vectorstore = SupaVectorsVectorStore(VectorStore.from_env())
    vectorstore.add_texts(["Espresso is brewed under pressure."], metadatas=[{"method": "pressure"}])
    retriever = vectorstore.as_retriever(search_type="hybrid", search_kwargs={"k": 5})

Everything goes through the wrapped store: its identity (RLS), its offline layer (an answer from the
cache or the mirror carries ``metadata["supa_vectors"] = {"source", "stale", "age_seconds"}``), its
filter grammar (``filter={"year": {"$gte": 2020}}``, the 13 operators of :mod:`supa_vectors.filters`)
and its id rule (a document without an id gets the sha256 of its content, so adding a text twice is
idempotent).

Who embeds: with ``embedding=None`` the store's embedder does (the local ONNX model by default), and
queries go to the store as text, so its results cache and hybrid search work as in the SDK. With an
app's ``Embeddings`` (vectors of the store's dimension), texts and queries are embedded by the app and
the store receives vectors; hybrid search then needs the store's own model for the query, so it is
offered only with ``embedding=None`` or :class:`SupaVectorsEmbeddings`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from supa_vectors._core.flows import default_embedder, run_embedder
from supa_vectors._core.settings import EmbedderLike
from supa_vectors._models import Document as StoreDocument
from supa_vectors._models import HybridSearchResult, SearchResult, StoredDocument
from supa_vectors._store import AsyncVectorStore
from supa_vectors._store import VectorStore as Store
from supa_vectors.errors import ConfigurationError, InvalidInputError
from supa_vectors.integrations._shared import (
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
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # pragma: no cover - exercised by tests/test_integrations_langchain.py
    raise missing_framework("langchain-core", "langchain") from exc

__all__ = ["SupaVectorsEmbeddings", "SupaVectorsRetriever", "SupaVectorsVectorStore"]

_SEARCH_OPTIONS = frozenset({"filter", "threshold"})
_MMR_OPTIONS = frozenset({"filter"})
_HYBRID_OPTIONS = frozenset({"filter", "full_text_weight", "semantic_weight", "rrf_k"})


class SupaVectorsEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over a supa-vectors embedder (default: the store's ONNX model), so an
    app embeds with the same local model in its other LangChain components."""

    def __init__(self, embedder: EmbedderLike | None = None) -> None:
        self._embedder = embedder

    @property
    def embedder(self) -> EmbedderLike:
        """The wrapped embedder (the default one is created, loading its model, on first use)."""
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = run_embedder(self.embedder, texts).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        result: list[list[float]] = await run_in_executor(None, self.embed_documents, texts)
        return result

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]


class SupaVectorsVectorStore(VectorStore):
    """LangChain's ``VectorStore`` interface, answered by a :class:`supa_vectors.VectorStore` (``store``)
    and/or :class:`supa_vectors.AsyncVectorStore` (``async_store``); see the module docstring.

    Scores are cosine similarities (1 = same direction), which are also the relevance scores; hybrid
    scores are the reciprocal-rank-fusion scores. ``search_type="hybrid"`` is offered by :meth:`search`
    and :meth:`as_retriever` beside LangChain's ``similarity``, ``similarity_score_threshold`` and ``mmr``.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        async_store: AsyncVectorStore | None = None,
        embedding: Embeddings | None = None,
    ) -> None:
        self._stores = StorePair(store, async_store)
        if embedding is not None and not isinstance(embedding, Embeddings):
            raise ConfigurationError(
                f"embedding= takes a LangChain Embeddings, got {type(embedding).__name__}"
                " (wrap a supa-vectors embedder in SupaVectorsEmbeddings)"
            )
        self._embedding = embedding

    @property
    def embeddings(self) -> Embeddings | None:
        """The app's embeddings (None: the store embeds with its own embedder)."""
        return self._embedding

    @property
    def store(self) -> Store:
        """The wrapped blocking store."""
        return self._stores.sync

    @property
    def async_store(self) -> AsyncVectorStore | None:
        return self._stores.async_store

    # ---------------------------------------------------------------------------------------- writes

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Upsert the texts (an id missing gets the sha256 of its content); returns their ids."""
        check_options("add_texts", kwargs, frozenset())
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if self._embedding is not None and texts else None
        results = self._stores.sync.upsert(_documents(texts, metadatas, ids, vectors))
        return [r.id for r in results]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        store = self._stores.async_store
        if store is None:
            result: list[str] = await run_in_executor(
                None, self.add_texts, texts, metadatas, ids=ids, **kwargs
            )
            return result
        check_options("add_texts", kwargs, frozenset())
        texts = list(texts)
        vectors = (
            await self._embedding.aembed_documents(texts) if self._embedding is not None and texts else None
        )
        results = await store.upsert(_documents(texts, metadatas, ids, vectors))
        return [r.id for r in results]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the caller's documents with these ids (ids already gone are not an error)."""
        check_options("delete", kwargs, frozenset())
        self._stores.sync.delete(_ids_to_delete(ids))
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        store = self._stores.async_store
        if store is None:
            result: bool | None = await run_in_executor(None, self.delete, ids, **kwargs)
            return result
        check_options("delete", kwargs, frozenset())
        await store.delete(_ids_to_delete(ids))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The visible documents with these ids, in the order asked; missing ids are left out."""
        return _stored_documents(self._stores.sync.get(list(ids))) if ids else []

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        store = self._stores.async_store
        if store is None:
            result: list[Document] = await run_in_executor(None, self.get_by_ids, ids)
            return result
        return _stored_documents(await store.get(list(ids))) if ids else []

    # -------------------------------------------------------------------------------------- searches

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """``filter=`` (the 13-operator grammar) and ``threshold=`` (minimum similarity) are the SDK's."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        check_options("similarity_search", kwargs, _SEARCH_OPTIONS)
        wanted = query if self._embedding is None else self._embedding.embed_query(query)
        return _scored(self._stores.sync.search(wanted, k=k, **kwargs))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        store = self._stores.async_store
        if store is None:
            result: list[tuple[Document, float]] = await run_in_executor(
                None, self.similarity_search_with_score, query, k, **kwargs
            )
            return result
        check_options("similarity_search", kwargs, _SEARCH_OPTIONS)
        wanted = query if self._embedding is None else await self._embedding.aembed_query(query)
        return _scored(await store.search(wanted, k=k, **kwargs))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        check_options("similarity_search_by_vector", kwargs, _SEARCH_OPTIONS)
        return [doc for doc, _ in _scored(self._stores.sync.search(embedding, k=k, **kwargs))]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        store = self._stores.async_store
        if store is None:
            result: list[Document] = await run_in_executor(
                None, self.similarity_search_by_vector, embedding, k, **kwargs
            )
            return result
        check_options("similarity_search_by_vector", kwargs, _SEARCH_OPTIONS)
        return [doc for doc, _ in _scored(await store.search(embedding, k=k, **kwargs))]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # The score is already the cosine similarity, LangChain's cosine relevance (1 - distance).
        return _similarity_is_relevance

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        """Maximal marginal relevance over the ``fetch_k`` candidates the store returns, compared by
        the vectors stored for them (one ``get(ids, with_vectors=True)`` call; nothing is embedded
        but the query). Offline, the candidates' content is embedded instead (decision 0022)."""
        vector = (
            self._embed_texts([query])[0] if self._embedding is None else self._embedding.embed_query(query)
        )
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, **kwargs)

    async def amax_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        if self._stores.async_store is None:
            result: list[Document] = await run_in_executor(
                None, self.max_marginal_relevance_search, query, k, fetch_k, lambda_mult, **kwargs
            )
            return result
        if self._embedding is None:
            vector = (await self._aembed_texts([query]))[0]
        else:
            vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, **kwargs)

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        check_options("max_marginal_relevance_search", kwargs, _MMR_OPTIONS)
        store = self._stores.sync
        candidates = store.search(embedding, k=max(k, fetch_k), **kwargs)
        return _most_relevant(
            embedding, *candidate_vectors(store, candidates, self._embed_texts), k, lambda_mult
        )

    async def amax_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        store = self._stores.async_store
        if store is None:
            result: list[Document] = await run_in_executor(
                None,
                self.max_marginal_relevance_search_by_vector,
                embedding,
                k,
                fetch_k,
                lambda_mult,
                **kwargs,
            )
            return result
        check_options("max_marginal_relevance_search", kwargs, _MMR_OPTIONS)
        candidates = await store.search(embedding, k=max(k, fetch_k), **kwargs)
        found = await acandidate_vectors(store, candidates, self._aembed_texts)
        return _most_relevant(embedding, *found, k, lambda_mult)

    def hybrid_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """Full-text and vector rankings fused (the SDK's ``hybrid_search``): ``filter=``,
        ``full_text_weight=``, ``semantic_weight=``, ``rrf_k=``."""
        return [doc for doc, _ in self.hybrid_search_with_score(query, k, **kwargs)]

    async def ahybrid_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.ahybrid_search_with_score(query, k, **kwargs)]

    def hybrid_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        check_options("hybrid_search_with_score", kwargs, _HYBRID_OPTIONS)
        self._check_hybrid()
        return _scored(self._stores.sync.hybrid_search(query, k=k, **kwargs))

    async def ahybrid_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        store = self._stores.async_store
        if store is None:
            result: list[tuple[Document, float]] = await run_in_executor(
                None, self.hybrid_search_with_score, query, k, **kwargs
            )
            return result
        check_options("hybrid_search_with_score", kwargs, _HYBRID_OPTIONS)
        self._check_hybrid()
        return _scored(await store.hybrid_search(query, k=k, **kwargs))

    def search(self, query: str, search_type: str, **kwargs: Any) -> list[Document]:
        """LangChain's search types, plus ``"hybrid"``."""
        if search_type == "hybrid":
            return self.hybrid_search(query, **kwargs)
        return super().search(query, search_type, **kwargs)

    async def asearch(self, query: str, search_type: str, **kwargs: Any) -> list[Document]:
        if search_type == "hybrid":
            return await self.ahybrid_search(query, **kwargs)
        return await super().asearch(query, search_type, **kwargs)

    def as_retriever(self, **kwargs: Any) -> SupaVectorsRetriever:
        """LangChain's retriever, which also takes ``search_type="hybrid"``."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return SupaVectorsRetriever(vectorstore=self, tags=tags, **kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        store: Store | None = None,
        async_store: AsyncVectorStore | None = None,
        **kwargs: Any,
    ) -> SupaVectorsVectorStore:
        """The adapter over ``store`` with ``texts`` added (the store is the app's: no URL here)."""
        vectorstore = cls(store, async_store=async_store, embedding=embedding)
        vectorstore.add_texts(texts, metadatas, ids=ids, **kwargs)
        return vectorstore

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        store: Store | None = None,
        async_store: AsyncVectorStore | None = None,
        **kwargs: Any,
    ) -> SupaVectorsVectorStore:
        vectorstore = cls(store, async_store=async_store, embedding=embedding)
        await vectorstore.aadd_texts(texts, metadatas, ids=ids, **kwargs)
        return vectorstore

    # ---------------------------------------------------------------------------------------- helpers

    def _check_hybrid(self) -> None:
        if self._embedding is not None and not isinstance(self._embedding, SupaVectorsEmbeddings):
            raise ConfigurationError(
                "hybrid search embeds the query with the store's own model, but this adapter's vectors "
                f"come from the app's {type(self._embedding).__name__}; use embedding=None (the store "
                "embeds) or SupaVectorsEmbeddings to search both ways"
            )

    def _embed_texts(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts`` by whoever embeds this adapter's documents (the MMR query; offline,
        the MMR candidates too)."""
        if self._embedding is not None:
            return self._embedding.embed_documents(texts)
        return store_embed(self._stores.sync)(texts)

    async def _aembed_texts(self, texts: list[str]) -> list[list[float]]:
        if self._embedding is not None:
            return await self._embedding.aembed_documents(texts)
        store = self._stores.async_store
        assert store is not None  # callers without one ran the blocking method instead
        return await astore_embed(store)(texts)


class SupaVectorsRetriever(VectorStoreRetriever):
    """LangChain's ``VectorStoreRetriever`` with one more search type, ``"hybrid"``."""

    allowed_search_types: ClassVar[Collection[str]] = (
        *VectorStoreRetriever.allowed_search_types,
        "hybrid",
    )

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type == "hybrid":
            return self.vectorstore.search(query, "hybrid", **(self.search_kwargs | kwargs))
        return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type == "hybrid":
            return await self.vectorstore.asearch(query, "hybrid", **(self.search_kwargs | kwargs))
        return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)


def _similarity_is_relevance(score: float) -> float:
    return score


def _documents(
    texts: list[str],
    metadatas: list[dict[str, Any]] | None,
    ids: Sequence[str | None] | None,
    vectors: list[list[float]] | None,
) -> list[StoreDocument]:
    """The SDK's documents for LangChain's columns (lengths checked: zip would drop the extras)."""
    for name, column in (("metadatas", metadatas), ("ids", ids)):
        if column is not None and len(column) != len(texts):
            raise InvalidInputError(f"{len(texts)} texts but {len(column)} {name}")
    return [
        StoreDocument(
            id=ids[i] if ids is not None else None,
            content=text,
            metadata=metadatas[i] if metadatas is not None else {},
            embedding=vectors[i] if vectors is not None else None,
        )
        for i, text in enumerate(texts)
    ]


def _ids_to_delete(ids: list[str] | None) -> list[str]:
    if ids is None:
        # LangChain's "None deletes everything" is not offered: one wrong call would empty the store.
        raise InvalidInputError("delete needs the ids to delete (deleting everything is not offered)")
    return list(ids)


def _document(result: SearchResult | HybridSearchResult) -> Document:
    return Document(id=result.id, page_content=result.content, metadata=result_metadata(result))


def _scored(results: Sequence[SearchResult | HybridSearchResult]) -> list[tuple[Document, float]]:
    return [(_document(r), r.similarity if isinstance(r, SearchResult) else r.score) for r in results]


def _stored_documents(found: list[StoredDocument]) -> list[Document]:
    return [Document(id=d.id, page_content=d.content, metadata=d.metadata) for d in found]


def _most_relevant(
    query: list[float], candidates: list[SearchResult], vectors: list[list[float]], k: int, lambda_mult: float
) -> list[Document]:
    if not candidates:
        return []
    chosen = maximal_marginal_relevance(np.asarray(query, dtype=np.float32), vectors, lambda_mult, k)
    return [_document(candidates[i]) for i in chosen]
