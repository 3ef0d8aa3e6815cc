"""What both framework adapters share: the import guard, the stores they wrap, offline markers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from supa_vectors._core.flows import run_embedder
from supa_vectors._models import HybridSearchResult, SearchResult, StoredDocument
from supa_vectors._store import AsyncVectorStore, VectorStore
from supa_vectors.cache.breaker import is_outage
from supa_vectors.errors import ConfigurationError, InvalidInputError, SupaVectorsError

__all__ = [
    "OFFLINE_KEY",
    "StorePair",
    "acandidate_vectors",
    "astore_embed",
    "candidate_vectors",
    "check_options",
    "missing_framework",
    "result_metadata",
    "store_embed",
]

# The metadata key an answer from the cache or the mirror carries: LangChain's loaders already use
# metadata["source"] for the file a text came from, so the offline markers live under a key of ours.
OFFLINE_KEY = "supa_vectors"


def missing_framework(package: str, extra: str) -> ImportError:
    """The error an integration raises on import when its framework is not installed."""
    return ImportError(
        f"supa_vectors.integrations needs {package} for this adapter: pip install 'supa-vectors[{extra}]'"
    )


def result_metadata(result: SearchResult | HybridSearchResult) -> dict[str, Any]:
    """A hit's metadata, plus ``{"supa_vectors": {source, stale, age_seconds}}`` when it was not a
    fresh answer from the backend (so an app can tell a stale answer from a live one)."""
    metadata = dict(result.metadata)
    if result.stale or result.source != "backend":
        metadata[OFFLINE_KEY] = {
            "source": result.source,
            "stale": result.stale,
            "age_seconds": result.age_seconds,
        }
    return metadata


Vectors = list[list[float]]


def candidate_vectors(
    store: VectorStore, candidates: list[SearchResult], embed: Callable[[list[str]], Vectors]
) -> tuple[list[SearchResult], Vectors]:
    """MMR's candidates with their stored vectors (one ``get(ids, with_vectors=True)`` call).

    Offline (the search was answered stale, or the read fails as unreachable) no stored vector can be
    read, so the candidates' content is embedded by ``embed`` instead: the only vectors at hand, on an
    answer already marked stale (decision 0022).
    """
    if _reads_stored_vectors(candidates):
        try:
            stored = store.get([c.id for c in candidates], with_vectors=True)
        except SupaVectorsError as exc:
            _unless_outage(exc)
        else:
            return _with_stored_vectors(candidates, stored)
    return candidates, (embed([c.content for c in candidates]) if candidates else [])


async def acandidate_vectors(
    store: AsyncVectorStore, candidates: list[SearchResult], embed: Callable[[list[str]], Awaitable[Vectors]]
) -> tuple[list[SearchResult], Vectors]:
    """See :func:`candidate_vectors`."""
    if _reads_stored_vectors(candidates):
        try:
            stored = await store.get([c.id for c in candidates], with_vectors=True)
        except SupaVectorsError as exc:
            _unless_outage(exc)
        else:
            return _with_stored_vectors(candidates, stored)
    return candidates, ((await embed([c.content for c in candidates])) if candidates else [])


def _reads_stored_vectors(candidates: Sequence[SearchResult]) -> bool:
    """Whether to ask the backend for the candidates' vectors: not when there are none, nor when the
    search was answered offline (the backend was just found unreachable)."""
    return bool(candidates) and not any(c.stale for c in candidates)


def _unless_outage(exc: SupaVectorsError) -> None:
    if not is_outage(exc):
        raise exc


def _with_stored_vectors(
    candidates: Sequence[SearchResult], stored: Sequence[StoredDocument]
) -> tuple[list[SearchResult], Vectors]:
    """The candidates paired with their stored vectors. One deleted (or left without a vector) between
    the search and the read is dropped: it no longer exists to be recommended. Under an id held both
    by the caller and as a shared document, the caller's own vector wins, as in ``get``."""
    vectors: dict[str, list[float]] = {}
    for doc in stored:
        if doc.embedding is not None:
            vectors.setdefault(doc.id, doc.embedding)
    kept = [c for c in candidates if c.id in vectors]
    return kept, [vectors[c.id] for c in kept]


def store_embed(store: VectorStore) -> Callable[[list[str]], Vectors]:
    """Embed texts with ``store``'s own embedder (checked against the store's model)."""

    def embed(texts: list[str]) -> Vectors:
        vectors: Vectors = run_embedder(store._checked_embedder(store.settings()), texts).tolist()
        return vectors

    return embed


def astore_embed(store: AsyncVectorStore) -> Callable[[list[str]], Awaitable[Vectors]]:
    """See :func:`store_embed` (the embedder runs in a worker thread)."""

    async def embed(texts: list[str]) -> Vectors:
        embedder = store._checked_embedder(await store.settings())
        vectors: Vectors = await asyncio.to_thread(lambda: run_embedder(embedder, texts).tolist())
        return vectors

    return embed


def check_options(operation: str, given: Mapping[str, Any], known: frozenset[str]) -> None:
    """Refuse keyword arguments the operation does not take: a misspelt ``filters=`` silently
    ignored would return unfiltered documents."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidInputError(
            f"{operation} does not take {', '.join(unknown)}; it takes {', '.join(sorted(known)) or 'none'}"
        )


class StorePair:
    """The blocking and/or asyncio store an adapter wraps (at least one).

    Blocking calls need the blocking store; async calls use the async store when there is one and
    otherwise run the blocking call in a worker thread (as the frameworks' defaults do).
    """

    def __init__(self, store: VectorStore | None, async_store: AsyncVectorStore | None) -> None:
        if store is None and async_store is None:
            raise ConfigurationError(
                "pass a VectorStore (store=), an AsyncVectorStore (async_store=), or both"
            )
        if store is not None and not isinstance(store, VectorStore):
            raise ConfigurationError(
                f"store= takes a supa_vectors.VectorStore, got {type(store).__name__}"
                + (" (pass it as async_store=)" if isinstance(store, AsyncVectorStore) else "")
            )
        if async_store is not None and not isinstance(async_store, AsyncVectorStore):
            raise ConfigurationError(
                f"async_store= takes a supa_vectors.AsyncVectorStore, got {type(async_store).__name__}"
            )
        self.store = store
        self.async_store = async_store

    @property
    def sync_or_async(self) -> VectorStore | AsyncVectorStore:
        """The blocking store when there is one, else the async one (there is always one)."""
        found = self.store if self.store is not None else self.async_store
        assert found is not None  # __init__ refused neither
        return found

    @property
    def sync(self) -> VectorStore:
        if self.store is None:
            raise ConfigurationError(
                "this adapter wraps only an AsyncVectorStore: use its async methods, or pass store= too"
            )
        return self.store
