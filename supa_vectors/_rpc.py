"""The sans-I/O core shared by the sync and async stores.

Everything here is plain computation: checking input, building RPC parameters, planning batches, parsing
rows. Multi-step operations (an upsert reads existing hashes, embeds what changed, writes in chunks) are
generators that *yield* what they need done (:class:`RpcCall`, :class:`EmbedCall`) and receive the result,
so ``VectorStore`` and ``AsyncVectorStore`` only differ in how they perform those two kinds of I/O (the
approach of h11 and httpx). A failed call is thrown back into the generator, which may recover.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from supa_vectors._core import rpcs
from supa_vectors._core.ops import EmbedCall, Flow, Op, RpcCall
from supa_vectors._text import json_problem, printable, text_problem
from supa_vectors.errors import (
    BackendError,
    DocumentError,
    EmbeddingError,
    InvalidInputError,
    ModelMismatchError,
)
from supa_vectors.filters import DEFAULT_FILTER_LIMITS, FilterLimits
from supa_vectors.models import (
    Document,
    HybridSearchResult,
    SearchResult,
    StoredDocument,
    StoreStats,
    UpsertResult,
)
from supa_vectors.transport.base import sends_binary_vectors
from supa_vectors.transport.identity import Identity

__all__ = [
    "BULK_MIN_ROWS",
    "EMBED_BATCH_SIZE",
    "ID_CHUNK_SIZE",
    "JSON_BYTES_PER_FLOAT",
    "MAX_REQUEST_BYTES",
    "MAX_ROWS_PER_REQUEST",
    "DocumentInput",
    "EmbedCall",
    "EmbedderLike",
    "Flow",
    "HybridTuning",
    "Op",
    "PreparedDocument",
    "RpcCall",
    "StoreSettings",
    "check_embedder",
    "check_ids",
    "check_k",
    "check_page_size",
    "check_query_text",
    "check_threshold",
    "content_hash",
    "count_params",
    "hybrid_params",
    "hybrid_tuning",
    "list_params",
    "match_params",
    "parse_hybrid_rows",
    "parse_search_rows",
    "parse_stats",
    "parse_stored_document",
    "prepare_documents",
    "query_vector",
    "upsert_flow",
]

T = TypeVar("T")

# bulk_upsert accepts 1000 rows; half leaves room and keeps one failed call cheap to redo.
MAX_ROWS_PER_REQUEST = 500
# PostgREST (and the proxies in front of it) refuse large bodies; stay far below the usual limits.
MAX_REQUEST_BYTES = 2_000_000
# A float32 written as JSON by Python ("-0.012345678,") takes ~21 bytes: 384 floats ~ 8 kB. A transport
# that sends vectors in binary (the Postgres transport's vector[]) pays 4, so its chunks are row-bound:
# with JSON sizes its 384-d chunks were ~240 rows and the SDK loaded at 0.54x the RPC's 1,000-row rate.
JSON_BYTES_PER_FLOAT = 21
BINARY_BYTES_PER_FLOAT = 4
# get_documents / delete_documents take at most max_result_rows - 1 ids (999 by default).
ID_CHUNK_SIZE = 500
# Texts per embedder call: bounds the memory of one ONNX run while keeping batches efficient.
EMBED_BATCH_SIZE = 64
# With bulk=None, dropping and rebuilding the vector index only pays off for large loads.
BULK_MIN_ROWS = 10_000
MAX_ID_LENGTH = 512

DocumentInput = Document | Mapping[str, Any] | str


class EmbedderLike(Protocol):
    """What the store needs of an embedder (``supa_vectors.embedding.Embedder`` satisfies it)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def content_hash(content: str) -> str:
    """sha256 hex of the UTF-8 text: the same as ``supa_vectors_internal.content_hash`` in SQL."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def bytes_per_float(transport: object) -> int:
    """What one vector component costs in a request; a transport that sends vectors in binary says so
    with ``sends_binary_vectors = True`` (the Postgres transports do)."""
    return BINARY_BYTES_PER_FLOAT if sends_binary_vectors(transport) else JSON_BYTES_PER_FLOAT


def vector_request_bytes(dimension: int, vector_bytes_per_float: int) -> int:
    """What one document's vector adds to a bulk_upsert request (with its separators)."""
    return dimension * vector_bytes_per_float + 16


# --------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class StoreSettings:
    """The store's ``metadata_global``: which model its vectors come from, and the shared limits."""

    embedding_model: str
    embedding_dimension: int
    max_content_bytes: int = 1_000_000
    max_result_rows: int = 1000
    max_batch_size: int = 1000
    filter_limits: FilterLimits = DEFAULT_FILTER_LIMITS

    @classmethod
    def from_json(cls, value: Any) -> StoreSettings:
        if not isinstance(value, Mapping):
            raise BackendError(f"store_settings() returned {type(value).__name__}, not an object")
        try:
            return cls(
                embedding_model=str(value["embedding_model"]),
                embedding_dimension=int(value["embedding_dimension"]),
                max_content_bytes=int(value.get("max_content_bytes", 1_000_000)),
                max_result_rows=int(value.get("max_result_rows", 1000)),
                max_batch_size=int(value.get("max_batch_size", 1000)),
                filter_limits=FilterLimits.from_settings(value),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"store_settings() is incomplete: {exc!r}") from exc


def check_embedder(embedder: EmbedderLike, settings: StoreSettings) -> None:
    """Refuse an embedder whose vectors would not be comparable with the store's."""
    if embedder.model_id != settings.embedding_model or embedder.dimension != settings.embedding_dimension:
        raise ModelMismatchError(
            f"the embedder produces {embedder.dimension}-dimensional vectors of {embedder.model_id!r}, "
            f"but this store holds {settings.embedding_dimension}-dimensional vectors of "
            f"{settings.embedding_model!r}; use the store's model (or migrate the store to the new one)"
        )


# --------------------------------------------------------------------------------------------------
# documents


@dataclass(frozen=True)
class PreparedDocument:
    """A checked document, with what planning needs precomputed."""

    index: int  # position in the caller's input
    id: str
    content: str
    metadata: dict[str, Any]
    content_hash: str
    content_bytes: int
    json_bytes: int  # size of its JSON object without an embedding
    embedding: npt.NDArray[np.float32] | None

    def as_json(self) -> dict[str, Any]:
        return {"external_id": self.id, "content": self.content, "metadata": self.metadata}


def _as_document(item: Any, index: int) -> Document:
    if isinstance(item, Document):
        return item
    if isinstance(item, str):
        item = {"content": item}
    if not isinstance(item, Mapping):
        raise DocumentError(
            f"document {index}: expected a Document, a dict or a string, got {type(item).__name__}",
            index=index,
        )
    raw_id = item.get("id")
    try:
        return Document.model_validate(item)
    except ValidationError as exc:
        problems = printable(  # a misspelt key may hold a lone surrogate; the message must stay writable
            "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'document'}: {err['msg']}" for err in exc.errors()
            )
        )
        raise DocumentError(
            f"document {index}: {problems}",
            index=index,
            document_id=raw_id if isinstance(raw_id, str) else None,
        ) from None


def prepare_documents(documents: Iterable[DocumentInput] | DocumentInput) -> list[PreparedDocument]:
    """Check every document before anything is sent, and derive missing ids from the content hash.

    Checks that need the store's settings (size limit, vector dimension) are in :func:`check_limits`.
    """
    if isinstance(documents, str | Document | Mapping):
        documents = [documents]
    prepared: list[PreparedDocument] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(documents):
        doc = _as_document(item, index)

        def fail(problem: str, doc_id: str | None = doc.id, index: int = index) -> DocumentError:
            label = f"document {index}" + (f" (id {doc_id!r})" if doc_id is not None else "")
            return DocumentError(f"{label}: {problem}", index=index, document_id=doc_id)

        # Text first: the content hash, the request and the report all need it encodable.
        if doc.id is not None and (problem := text_problem(doc.id, "id")):
            raise fail(problem)
        content = doc.content
        if not content.strip():
            raise fail("content is empty")
        if problem := text_problem(content, "content"):
            raise fail(problem)
        digest = content_hash(content)
        doc_id = doc.id if doc.id is not None else digest
        if not 1 <= len(doc_id) <= MAX_ID_LENGTH:
            raise fail(f"id must have 1 to {MAX_ID_LENGTH} characters")
        problem = json_problem(doc.metadata, "metadata")
        if problem:
            raise fail(problem, doc_id=doc_id)
        if doc_id in seen:
            what = "content (its id is derived from it)" if doc.id is None else "id"
            raise fail(f"the same {what} appears earlier in this call, at index {seen[doc_id]}", doc_id)
        seen[doc_id] = index
        vector = None
        if doc.embedding is not None:
            vector = np.asarray(doc.embedding, dtype=np.float32)
            if not np.isfinite(vector).all():
                raise fail("embedding must contain only finite numbers (no NaN or infinity)", doc_id=doc_id)
        encoded = content.encode("utf-8")
        json_bytes = len(json.dumps({"external_id": doc_id, "content": content, "metadata": doc.metadata}))
        prepared.append(
            PreparedDocument(
                index=index,
                id=doc_id,
                content=content,
                metadata=dict(doc.metadata),
                content_hash=digest,
                content_bytes=len(encoded),
                json_bytes=json_bytes,
                embedding=vector,
            )
        )
    return prepared


def check_limits(prepared: Sequence[PreparedDocument], settings: StoreSettings) -> None:
    """The checks that need the store's settings: content size and caller-supplied vector dimensions."""
    for doc in prepared:
        if doc.content_bytes > settings.max_content_bytes:
            raise DocumentError(
                f"document {doc.index} (id {doc.id!r}): content has {doc.content_bytes} bytes; "
                f"the limit is {settings.max_content_bytes} (split the document, or raise "
                "max_content_bytes in public.metadata_global: see Limits in the README)",
                index=doc.index,
                document_id=doc.id,
            )
        if doc.embedding is not None and doc.embedding.shape != (settings.embedding_dimension,):
            raise DocumentError(
                f"document {doc.index} (id {doc.id!r}): embedding has {doc.embedding.size} dimensions; "
                f"this store holds {settings.embedding_dimension}-dimensional vectors of "
                f"{settings.embedding_model}",
                index=doc.index,
                document_id=doc.id,
            )


def plan_chunks(
    prepared: Sequence[PreparedDocument],
    dimension: int,
    *,
    max_rows: int = MAX_ROWS_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
    vector_bytes_per_float: int = JSON_BYTES_PER_FLOAT,
) -> list[list[PreparedDocument]]:
    """Split into bulk_upsert calls of at most ``max_rows`` and about ``max_bytes`` each.

    Sizes assume every document carries its vector, at ``vector_bytes_per_float`` per component (JSON
    by default, what PostgREST receives); a document larger than ``max_bytes`` on its own travels alone.
    """
    chunks: list[list[PreparedDocument]] = []
    current: list[PreparedDocument] = []
    size = 2
    per_vector = vector_request_bytes(dimension, vector_bytes_per_float)
    for doc in prepared:
        doc_size = doc.json_bytes + per_vector
        if current and (len(current) >= max_rows or size + doc_size > max_bytes):
            chunks.append(current)
            current, size = [], 2
        current.append(doc)
        size += doc_size
    if current:
        chunks.append(current)
    return chunks


def check_embeddings(vectors: Any, count: int, dimension: int) -> npt.NDArray[np.float32]:
    """Refuse embedder output that would corrupt the store (wrong shape, NaN)."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"the embedder returned something that is not a float array: {exc}") from exc
    if array.shape != (count, dimension):
        raise EmbeddingError(
            f"the embedder returned an array of shape {array.shape} for {count} texts; "
            f"expected ({count}, {dimension})"
        )
    if not np.isfinite(array).all():
        raise EmbeddingError("the embedder returned NaN or infinite values")
    return array


def _existing_hashes(rows: Sequence[Mapping[str, Any]], identity: Identity | None) -> dict[str, str]:
    """external_id -> content_hash of the rows an upsert by ``identity`` would overwrite.

    A signed-in user sees its own rows and the shared ones (owner null) under the same id, but writes
    only its own; the service role writes the shared ones. With an unknown identity only unambiguous
    rows count, and bulk_upsert's "no embedding" refusal makes :func:`upsert_flow` embed and retry.
    """
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(str(row["external_id"]), []).append(row)
    hashes: dict[str, str] = {}
    for external_id, candidates in by_id.items():
        if identity is not None:
            owner = identity.subject.lower() if identity.subject else None
            candidates = [
                r for r in candidates if (str(r["owner_id"]).lower() if r.get("owner_id") else None) == owner
            ]
        if len(candidates) == 1:
            hashes[external_id] = str(candidates[0]["content_hash"])
    return hashes


def _renumber(exc: DocumentError, chunk: Sequence[PreparedDocument]) -> DocumentError:
    """bulk_upsert counts from 1 within one chunk; the caller wants its own 0-based index."""
    if exc.index is None or not 0 <= exc.index < len(chunk):
        return exc
    doc = chunk[exc.index]
    message = re.sub(r"^document \d+ ", f"document {doc.index} ", str(exc), count=1)
    return DocumentError(message, index=doc.index, document_id=exc.document_id or doc.id)


def _without(vectors: Mapping[int, object], docs: Iterable[PreparedDocument]) -> list[PreparedDocument]:
    return [d for d in docs if d.index not in vectors]


def upsert_flow(
    prepared: Sequence[PreparedDocument],
    settings: StoreSettings,
    identity: Identity | None,
    *,
    vector_bytes_per_float: int = JSON_BYTES_PER_FLOAT,
) -> Flow[list[UpsertResult]]:
    """Write ``prepared`` chunk by chunk, embedding only new or changed content.

    Per chunk: ``get_documents`` learns the stored hashes, the embedder runs on the rest, and one
    ``bulk_upsert`` writes the chunk in one transaction. If the server still finds a document without a
    vector (a concurrent writer changed it, or the identity was unknown), the chunk is embedded fully and
    sent once more. A chunk whose documents all carry their vectors skips the lookup: nothing would be
    embedded, and bulk_upsert itself reports unchanged content (one round trip per chunk, not two).
    """
    dimension = settings.embedding_dimension
    results: list[UpsertResult] = []
    for chunk in plan_chunks(prepared, dimension, vector_bytes_per_float=vector_bytes_per_float):
        existing: dict[str, str] = {}
        if any(d.embedding is None for d in chunk):
            rows = yield rpcs.GET_DOCUMENTS.call({"external_ids": [d.id for d in chunk]})
            with _response(rpcs.GET_DOCUMENTS.name):
                existing = _existing_hashes(_rows(rows, rpcs.GET_DOCUMENTS.name), identity)
        vectors: dict[int, npt.NDArray[np.float32]] = {}
        todo = _without(vectors, (d for d in chunk if existing.get(d.id) != d.content_hash))
        for attempt in range(2):
            for doc in todo:
                if doc.embedding is not None:
                    vectors[doc.index] = doc.embedding
            todo = _without(vectors, todo)
            for start in range(0, len(todo), EMBED_BATCH_SIZE):
                batch = todo[start : start + EMBED_BATCH_SIZE]
                output = yield EmbedCall([d.content for d in batch])
                array = check_embeddings(output, len(batch), dimension)
                for doc, vector in zip(batch, array, strict=True):
                    vectors[doc.index] = vector
            params: dict[str, Any] = {"documents": [d.as_json() for d in chunk]}
            if vectors:
                params["embeddings"] = [vectors.get(d.index) for d in chunk]
            try:
                rows = yield rpcs.BULK_UPSERT.call(params)
            except DocumentError as exc:
                if attempt == 0 and "no embedding" in str(exc) and _without(vectors, chunk):
                    todo = _without(vectors, chunk)
                    continue
                raise _renumber(exc, chunk) from exc
            break
        with _response(rpcs.BULK_UPSERT.name):
            by_ordinal = {int(row["ordinal"]): row for row in _rows(rows, rpcs.BULK_UPSERT.name)}
            for ordinal, doc in enumerate(chunk, start=1):
                row = by_ordinal.get(ordinal)
                if row is None:
                    raise BackendError(f"bulk_upsert returned no row for document {doc.index}")
                results.append(UpsertResult(id=doc.id, status=row["status"]))
    return results


# --------------------------------------------------------------------------------------------------
# ids, search parameters


def check_ids(ids: Iterable[str] | str) -> list[str]:
    """A bare string is one id (not its characters); ids must be non-empty strings."""
    if isinstance(ids, str):
        ids = [ids]
    out = list(ids)
    for i, value in enumerate(out):
        if not isinstance(value, str) or not value or text_problem(value, "id"):
            raise InvalidInputError(
                f"ids[{i}] must be a non-empty string without NUL or lone surrogates, got {value!r}"
            )
    return out


def id_chunks(ids: Sequence[str]) -> list[list[str]]:
    unique = list(dict.fromkeys(ids))
    return [unique[i : i + ID_CHUNK_SIZE] for i in range(0, len(unique), ID_CHUNK_SIZE)]


def check_k(k: int, settings: StoreSettings | None = None, *, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {k!r}")
    if settings is not None and k > settings.max_result_rows:
        raise InvalidInputError(
            f"{name} is {k}; the store returns at most {settings.max_result_rows} rows per call"
        )
    return k


def check_page_size(page_size: int) -> int:
    return check_k(page_size, name="page_size")


def check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise InvalidInputError(f"threshold must be a number, got {threshold!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise InvalidInputError(f"threshold is {threshold}; cosine similarity lies between -1 and 1")
    return float(threshold)


def check_query_text(query: Any) -> str:
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query must not be empty")
    if problem := text_problem(query, "query"):
        raise InvalidInputError(problem)
    return query


def check_weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def query_vector(value: Any, dimension: int) -> npt.NDArray[np.float32]:
    """A caller's query vector as float32, refusing the wrong dimension and non-finite values."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the query vector is not a sequence of numbers: {exc}") from exc
    if array.ndim != 1 or array.shape[0] != dimension:
        raise InvalidInputError(
            f"the query vector has shape {array.shape}; this store holds {dimension}-dimensional vectors"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError("the query vector contains NaN or infinite values")
    if not array.any():
        raise InvalidInputError("the query vector is all zeros; cosine similarity is undefined for it")
    return array


def match_params(
    vector: npt.NDArray[np.float32], k: int, threshold: float | None, filter: dict[str, Any]
) -> dict[str, Any]:
    params: dict[str, Any] = {"query_embedding": vector, "match_count": k}
    if threshold is not None:
        params["match_threshold"] = threshold
    if filter:
        params["filter"] = filter
    return params


@dataclass(frozen=True)
class HybridTuning:
    full_text_weight: float
    semantic_weight: float
    rrf_k: int


def hybrid_tuning(
    *, full_text_weight: float = 1.0, semantic_weight: float = 1.0, rrf_k: int = 50
) -> HybridTuning:
    """Checked before the query is embedded, so a bad argument costs no model run."""
    full_text_weight = check_weight(full_text_weight, "full_text_weight")
    semantic_weight = check_weight(semantic_weight, "semantic_weight")
    if full_text_weight + semantic_weight == 0:
        raise InvalidInputError("full_text_weight and semantic_weight must not both be 0")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise InvalidInputError(f"rrf_k must be an integer >= 0, got {rrf_k!r}")
    return HybridTuning(full_text_weight, semantic_weight, rrf_k)


def hybrid_params(
    text: str, vector: npt.NDArray[np.float32], k: int, filter: dict[str, Any], tuning: HybridTuning
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "query_text": text,
        "query_embedding": vector,
        "match_count": k,
        "full_text_weight": tuning.full_text_weight,
        "semantic_weight": tuning.semantic_weight,
        "rrf_k": tuning.rrf_k,
    }
    if filter:
        params["filter"] = filter
    return params


def list_params(after_id: int, page_size: int, filter: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"page_size": page_size, "after_id": after_id}
    if filter:
        params["filter"] = filter
    return params


def count_params(checked: dict[str, Any]) -> dict[str, Any]:
    return {"filter": checked} if checked else {}


# --------------------------------------------------------------------------------------------------
# parsing rows


@contextmanager
def _response(rpc: str) -> Iterator[None]:
    """A reply that does not fit the contract is the backend's fault, never the caller's input."""
    try:
        yield
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"{rpc} returned an unexpected reply: {exc}") from exc


def _rows(result: Any, rpc: str) -> list[Mapping[str, Any]]:
    if not isinstance(result, list) or not all(isinstance(row, Mapping) for row in result):
        raise BackendError(f"{rpc} returned {type(result).__name__}, not a list of rows")
    return result


def parse_search_rows(result: Any) -> list[SearchResult]:
    with _response(rpcs.MATCH_DOCUMENTS.name):
        return [
            SearchResult(
                id=row["external_id"],
                content=row["content"],
                metadata=row["metadata"],
                similarity=row["similarity"],
            )
            for row in _rows(result, rpcs.MATCH_DOCUMENTS.name)
        ]


def parse_hybrid_rows(result: Any) -> list[HybridSearchResult]:
    with _response(rpcs.HYBRID_SEARCH.name):
        return [
            HybridSearchResult(
                id=row["external_id"],
                content=row["content"],
                metadata=row["metadata"],
                score=row["score"],
                similarity=row.get("similarity"),
                full_text_rank=row.get("full_text_rank"),
                semantic_rank=row.get("semantic_rank"),
            )
            for row in _rows(result, rpcs.HYBRID_SEARCH.name)
        ]


def parse_stored_document(row: Mapping[str, Any]) -> StoredDocument:
    owner = row.get("owner_id")
    return StoredDocument(
        id=row["external_id"],
        content=row["content"],
        metadata=row["metadata"],
        content_hash=row["content_hash"],
        owner_id=str(owner) if owner is not None else None,
        updated_at=row.get("updated_at"),
    )


def parse_documents(result: Any, rpc: str) -> list[StoredDocument]:
    with _response(rpc):
        return [parse_stored_document(row) for row in _rows(result, rpc)]


def order_by_ids(documents: Iterable[StoredDocument], ids: Sequence[str]) -> list[StoredDocument]:
    """Documents in the order their ids were asked for (own before shared under the same id)."""
    position = {doc_id: i for i, doc_id in reversed(list(enumerate(ids)))}
    return sorted(documents, key=lambda d: (position.get(d.id, len(position)), d.owner_id is None))


def parse_stats(result: Any) -> StoreStats:
    with _response(rpcs.STORE_STATS.name):
        return StoreStats.model_validate(result)


def page_after(result: Any) -> tuple[list[StoredDocument], int | None]:
    """A list_documents page and the keyset cursor for the next one (None when none can follow)."""
    with _response(rpcs.LIST_DOCUMENTS.name):
        rows = _rows(result, rpcs.LIST_DOCUMENTS.name)
        docs = [parse_stored_document(row) for row in rows]
        return docs, (int(rows[-1]["id"]) if rows else None)
