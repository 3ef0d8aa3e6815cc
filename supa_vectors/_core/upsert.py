"""The write path: documents checked and prepared, planned into chunks, written by one flow.

The store's upsert and the outbox replay write through :func:`upsert_flow`. The migration keeps its
own pipeline (threads that look up and embed ahead of the writer, per-record rejection) but writes
each batch through the same step, :func:`send_chunk` (one ``bulk_upsert``, and the one resend when
the server finds a document without a vector), cuts its batches with the same rule
(:func:`cut_chunks`: ``MAX_REQUEST_BYTES``, :func:`vector_request_bytes`) and asks for a bulk load by
the same rule (:func:`use_bulk_path`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from supa_vectors._core import rpcs
from supa_vectors._core.checks import id_chunks
from supa_vectors._core.ops import EmbedCall, Flow
from supa_vectors._core.rows import _response, _rows
from supa_vectors._core.settings import StoreSettings
from supa_vectors._models import (
    Document,
    UpsertResult,
)
from supa_vectors._text import json_problem, printable, text_problem
from supa_vectors.errors import (
    BackendError,
    DocumentError,
    EmbeddingError,
)
from supa_vectors.transport.base import sends_binary_vectors
from supa_vectors.transport.identity import Identity

__all__ = [
    "BINARY_BYTES_PER_FLOAT",
    "BULK_MIN_ROWS",
    "EMBED_BATCH_SIZE",
    "JOB_BULK_MIN_ROWS",
    "JSON_BYTES_PER_FLOAT",
    "MAX_ID_LENGTH",
    "MAX_REQUEST_BYTES",
    "MAX_ROWS_PER_REQUEST",
    "DocumentInput",
    "EmbedCall",
    "PreparedDocument",
    "StoreSettings",
    "bytes_per_float",
    "check_embeddings",
    "check_limits",
    "content_hash",
    "cut_chunks",
    "lacks_vector",
    "plan_chunks",
    "prepare_documents",
    "send_chunk",
    "upsert_flow",
    "use_bulk_path",
    "vector_request_bytes",
]

# What bulk_upsert takes per call by default (max_batch_size in metadata_global); upsert_flow uses the
# store's own setting. Half of it cost 11% of an upsert in per-call work for nothing (decision 0024).
MAX_ROWS_PER_REQUEST = 1000
# PostgREST (and the proxies in front of it) refuse large bodies; stay far below the usual limits.
MAX_REQUEST_BYTES = 2_000_000
# A float32 written as JSON by Python ("-0.012345678,") takes ~21 bytes: 384 floats ~ 8 kB. A transport
# that sends vectors in binary (the Postgres transport's vector[]) pays 4, so its chunks are row-bound
# (why sizing them as JSON cost it: decision 0016, "Figures moved out of comments").
JSON_BYTES_PER_FLOAT = 21
BINARY_BYTES_PER_FLOAT = 4
# Texts per embedder call: bounds the memory of one ONNX run while keeping batches efficient.
EMBED_BATCH_SIZE = 64
# With bulk=None, dropping and rebuilding the vector index only pays off for large loads. These are
# only when the client *asks* (begin_bulk_load); the server decides whether the index is dropped
# (bulk_load_min_rows, bulk_load_growth_factor in metadata_global: decision 0012), so a lower figure
# costs at most one round trip. An app's upsert asks from 10,000 rows; a bulk job (the migration), which
# knows its whole size up front and runs for minutes, asks from 1,000 (decision 0016).
BULK_MIN_ROWS = 10_000
JOB_BULK_MIN_ROWS = 1_000
MAX_ID_LENGTH = 512


def use_bulk_path(bulk: bool | None, count: int, *, job: bool = False) -> bool:
    """The one bulk-load rule, the store's and the migration's: ``bulk`` says, and ``None`` means "when
    at least :data:`BULK_MIN_ROWS`" (:data:`JOB_BULK_MIN_ROWS` for a bulk ``job``)."""
    if bulk is None:
        return count >= (JOB_BULK_MIN_ROWS if job else BULK_MIN_ROWS)
    return bulk


def lacks_vector(exc: DocumentError, sent: Sequence[object | None]) -> bool:
    """``bulk_upsert`` refused a document this call sent without a vector: the one refusal a writer
    answers by embedding and resending (content changed since the lookup, or an owner the lookup could
    not tell). Recognised by what was sent, not by the message: the refusal names the document
    (``index``, from the server's ``detail``), and ``sent`` holds its vector or ``None``. Any other
    refusal of such a document is met again after the resend and raised then."""
    return exc.index is not None and 0 <= exc.index < len(sent) and sent[exc.index] is None


DocumentInput = Document | Mapping[str, Any] | str


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


def _json_text_bytes(text: str) -> int:
    """``len(json.dumps(text))`` without encoding the common text (printable ASCII, nothing to escape)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return len(json.dumps(text))


def _json_bytes(doc_id: str, content: str, metadata: Mapping[str, Any]) -> int:
    """``len(json.dumps(PreparedDocument.as_json()))``, exactly: what a chunk's JSON body grows by."""
    # '{"external_id": ' + id + ', "content": ' + content + ', "metadata": ' + metadata + '}'
    meta = len(json.dumps(metadata)) if metadata else 2
    return 44 + _json_text_bytes(doc_id) + _json_text_bytes(content) + meta


def _array_vector(value: Any) -> npt.NDArray[np.float32] | None:
    """A caller's 1-d numeric ndarray as a float32 copy, the same values the ``list[float]`` field gives
    (integers go through float64 first, as Python ints do); None for anything else, which then goes
    through pydantic (and its messages) as before. Spares a 384-float list per document (decision 0024).
    """
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "fiu":
        return None
    if value.dtype.kind != "f":
        value = value.astype(np.float64)
    return np.array(value, dtype=np.float32)


def _as_document(item: Any, index: int) -> tuple[Document, npt.NDArray[np.float32] | None]:
    """The checked document and its caller-supplied vector as float32 (None without one)."""
    if isinstance(item, Document):
        return item, (None if item.embedding is None else np.asarray(item.embedding, dtype=np.float32))
    if isinstance(item, str):
        item = {"content": item}
    if not isinstance(item, Mapping):
        raise DocumentError(
            f"document {index}: expected a Document, a dict or a string, got {type(item).__name__}",
            index=index,
        )
    raw_id = item.get("id")
    vector = _array_vector(item.get("embedding"))
    if vector is not None:
        item = {key: value for key, value in item.items() if key != "embedding"}
    try:
        doc = Document.model_validate(item)
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
    if vector is None and doc.embedding is not None:
        vector = np.asarray(doc.embedding, dtype=np.float32)
    return doc, vector


def prepare_documents(documents: Iterable[DocumentInput] | DocumentInput) -> list[PreparedDocument]:
    """Check every document before anything is sent, and derive missing ids from the content hash.

    Checks that need the store's settings (size limit, vector dimension) are in :func:`check_limits`.
    """
    if isinstance(documents, str | Document | Mapping):
        documents = [documents]
    prepared: list[PreparedDocument] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(documents):
        doc, vector = _as_document(item, index)

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
        if vector is not None and not np.isfinite(vector).all():
            raise fail("embedding must contain only finite numbers (no NaN or infinity)", doc_id=doc_id)
        prepared.append(
            PreparedDocument(
                index=index,
                id=doc_id,
                content=content,
                metadata=dict(doc.metadata),
                content_hash=digest,
                content_bytes=len(content.encode("utf-8")),
                json_bytes=_json_bytes(doc_id, content, doc.metadata),
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


T = TypeVar("T")


def cut_chunks(
    items: Iterable[T],
    cost: Callable[[T], int],
    *,
    max_rows: int = MAX_ROWS_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
    first_rows: int | None = None,
) -> Iterator[tuple[list[T], bool]]:
    """The one chunking rule: ``bulk_upsert`` calls of at most ``max_rows`` (``first_rows`` for the
    first) and about ``max_bytes`` each, ``cost`` being what an item adds to the request. An item
    larger than ``max_bytes`` on its own travels alone. Lazy, so a migration cuts a source of any size
    as it reads; each chunk comes with whether it is the last.
    """
    current: list[T] = []
    size = 2  # "[]"
    limit = max_rows if first_rows is None else min(first_rows, max_rows)
    for item in items:
        item_size = cost(item)
        if current and (len(current) >= limit or size + item_size > max_bytes):
            yield current, False
            current, size, limit = [], 2, max_rows
        current.append(item)
        size += item_size
    if current:
        yield current, True


def plan_chunks(
    prepared: Sequence[PreparedDocument],
    dimension: int,
    *,
    max_rows: int = MAX_ROWS_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
    vector_bytes_per_float: int = JSON_BYTES_PER_FLOAT,
) -> list[list[PreparedDocument]]:
    """Split into bulk_upsert calls by :func:`cut_chunks`.

    Sizes assume every document carries its vector, at ``vector_bytes_per_float`` per component (JSON
    by default, what PostgREST receives).
    """
    per_vector = vector_request_bytes(dimension, vector_bytes_per_float)
    chunks = cut_chunks(
        prepared, lambda doc: doc.json_bytes + per_vector, max_rows=max_rows, max_bytes=max_bytes
    )
    return [chunk for chunk, _ in chunks]


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


def embed_flow(texts: Sequence[str], dimension: int) -> Flow[list[npt.NDArray[np.float32]]]:
    """Vectors for ``texts``, asked of the embedder :data:`EMBED_BATCH_SIZE` at a time and checked."""
    vectors: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(texts), EMBED_BATCH_SIZE):
        batch = texts[start : start + EMBED_BATCH_SIZE]
        output = yield EmbedCall(list(batch))
        vectors.extend(check_embeddings(output, len(batch), dimension))
    return vectors


def send_chunk(
    documents: Sequence[Mapping[str, Any]],
    vectors: list[npt.NDArray[np.float32] | None],
    dimension: int,
    *,
    resend: bool = True,
    given: Sequence[npt.NDArray[np.float32] | None] = (),
) -> Flow[list[Mapping[str, Any]]]:
    """One ``bulk_upsert`` of a chunk (one transaction), and its rows.

    ``vectors`` parallels ``documents`` (``None``: the store keeps the stored vector). If the server
    finds a document sent without a vector it needs (:func:`lacks_vector`) and ``resend``, every
    document sent without one gets its caller's vector (``given``, parallel to ``documents``) or is
    embedded, into ``vectors`` (so a caller that resends the chunk later keeps them), and the chunk is
    sent once more. Other refusals go up as they came.
    """
    while True:
        params: dict[str, Any] = {"documents": list(documents)}
        if any(v is not None for v in vectors):
            params["embeddings"] = list(vectors)
        try:
            rows = yield rpcs.BULK_UPSERT.call(params)
        except DocumentError as exc:
            if not (resend and lacks_vector(exc, vectors)):
                raise
            resend = False
            for i, vector in enumerate(given):
                if vectors[i] is None:
                    vectors[i] = vector
            missing = [i for i, v in enumerate(vectors) if v is None]
            texts = [str(documents[i]["content"]) for i in missing]
            for i, vector in zip(missing, (yield from embed_flow(texts, dimension)), strict=True):
                vectors[i] = vector
            continue
        with _response(rpcs.BULK_UPSERT.name):
            return _rows(rows, rpcs.BULK_UPSERT.name)


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
    max_rows = min(settings.max_batch_size, MAX_ROWS_PER_REQUEST)
    for chunk in plan_chunks(
        prepared, dimension, max_rows=max_rows, vector_bytes_per_float=vector_bytes_per_float
    ):
        existing: dict[str, str] = {}
        if any(d.embedding is None for d in chunk):
            # get_documents takes fewer ids than bulk_upsert takes documents: look up in its pieces.
            found: list[Mapping[str, Any]] = []
            for ids in id_chunks([d.id for d in chunk]):
                rows = yield rpcs.GET_DOCUMENTS.call({"external_ids": ids})
                with _response(rpcs.GET_DOCUMENTS.name):
                    found.extend(_rows(rows, rpcs.GET_DOCUMENTS.name))
            with _response(rpcs.GET_DOCUMENTS.name):
                existing = _existing_hashes(found, identity)
        todo = [d for d in chunk if d.embedding is None and existing.get(d.id) != d.content_hash]
        embedded = yield from embed_flow([d.content for d in todo], dimension)
        fresh = {d.index: v for d, v in zip(todo, embedded, strict=True)}
        vectors = [
            fresh.get(d.index, d.embedding if existing.get(d.id) != d.content_hash else None) for d in chunk
        ]
        given = [d.embedding for d in chunk]
        try:
            rows = yield from send_chunk([d.as_json() for d in chunk], vectors, dimension, given=given)
        except DocumentError as exc:
            raise _renumber(exc, chunk) from exc
        with _response(rpcs.BULK_UPSERT.name):
            by_ordinal = {int(row["ordinal"]): row for row in rows}
            for ordinal, doc in enumerate(chunk, start=1):
                row = by_ordinal.get(ordinal)
                if row is None:
                    raise BackendError(f"bulk_upsert returned no row for document {doc.index}")
                results.append(UpsertResult(id=doc.id, status=row["status"]))
    return results
