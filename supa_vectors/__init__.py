"""supa-vectors: semantic document search for Python apps, persisted in Supabase.

The public API is what ``__all__`` lists (pinned by ``tests/test_public_api.py``): the two stores,
their transports and the transport protocols, the models they return, the errors, the filter type
and its check, the embedder protocol and default, the offline layer's breaker and results. Modules
whose name starts with ``_`` are private (as in httpx): ``_store`` (the stores), ``_models`` (what they
return), ``_config`` (URLs and the environment), ``_core``, ``_text``, ``cli._search``...; their public
names are re-exported here, and only from here. The packages without a ``_`` are public by path for a
reason each (also pinned there): ``errors`` and ``filters`` (imported by path in apps and the docs),
``transport`` (``supa_vectors.transport.postgres.PostgresTransport`` and the interface a custom
transport implements), ``embedding`` (the model install), ``migrate`` and ``local`` (APIs of their
own), ``cli`` (the console script) and ``cache`` (the offline layer, whose names are re-exported).

``import supa_vectors`` stays light (a command-line call pays for what it uses, not for the whole SDK):
only the exceptions, the filter check and the transport protocols are imported with the package; every
other name (the stores and models, which bring numpy and pydantic; the embedders, which bring
onnxruntime; the Postgres transport, which brings psycopg) is imported on its first access.
``tests/test_startup.py`` checks which heavy modules a bare import loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from supa_vectors.errors import (
    ArchiveError,
    AuthError,
    BackendError,
    BackendUnavailableError,
    BackupError,
    ConfigurationError,
    DocumentError,
    EmbeddingError,
    FilterError,
    IndexRebuildError,
    InvalidInputError,
    LocalStackError,
    ModelMismatchError,
    NotFoundError,
    QueryTimeoutError,
    SupaVectorsError,
)
from supa_vectors.filters import Filter, validate_filter
from supa_vectors.transport.base import AsyncTransport, Transport
from supa_vectors.transport.identity import Identity

if TYPE_CHECKING:
    from supa_vectors._models import (
        BackupResult,
        DeleteCount,
        Document,
        HybridSearchResult,
        ProcessStats,
        RestoreResult,
        RpcStats,
        SearchResult,
        StoredDocument,
        StoreStats,
        TableSize,
        UpsertResult,
    )
    from supa_vectors._store import AsyncVectorStore, VectorStore
    from supa_vectors.cache.breaker import CircuitBreaker
    from supa_vectors.cache.mirror import SyncResult
    from supa_vectors.cache.outbox import FlushResult, PendingWrite
    from supa_vectors.embedding import Embedder, OnnxEmbedder
    from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
    from supa_vectors.transport.postgrest import AsyncPostgrestTransport, PostgrestTransport
__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "AsyncPostgresTransport",
    "AsyncPostgrestTransport",
    "AsyncTransport",
    "AsyncVectorStore",
    "AuthError",
    "BackendError",
    "BackendUnavailableError",
    "BackupError",
    "BackupResult",
    "CircuitBreaker",
    "ConfigurationError",
    "DeleteCount",
    "Document",
    "DocumentError",
    "Embedder",
    "EmbeddingError",
    "Filter",
    "FilterError",
    "FlushResult",
    "HybridSearchResult",
    "Identity",
    "IndexRebuildError",
    "InvalidInputError",
    "LocalStackError",
    "ModelMismatchError",
    "NotFoundError",
    "OnnxEmbedder",
    "PendingWrite",
    "PostgresTransport",
    "PostgrestTransport",
    "ProcessStats",
    "QueryTimeoutError",
    "RestoreResult",
    "RpcStats",
    "SearchResult",
    "StoreStats",
    "StoredDocument",
    "SupaVectorsError",
    "SyncResult",
    "TableSize",
    "Transport",
    "UpsertResult",
    "VectorStore",
    "__version__",
    "validate_filter",
]

# name -> module it is imported from on first access
_LAZY = {
    "AsyncVectorStore": "supa_vectors._store",
    "VectorStore": "supa_vectors._store",
    "CircuitBreaker": "supa_vectors.cache.breaker",
    "SyncResult": "supa_vectors.cache.mirror",
    "FlushResult": "supa_vectors.cache.outbox",
    "PendingWrite": "supa_vectors.cache.outbox",
    **dict.fromkeys(
        (
            "BackupResult",
            "DeleteCount",
            "Document",
            "HybridSearchResult",
            "ProcessStats",
            "RestoreResult",
            "RpcStats",
            "SearchResult",
            "StoredDocument",
            "StoreStats",
            "TableSize",
            "UpsertResult",
        ),
        "supa_vectors._models",
    ),
    "Embedder": "supa_vectors.embedding",
    "OnnxEmbedder": "supa_vectors.embedding",
    "PostgresTransport": "supa_vectors.transport.postgres",
    "AsyncPostgresTransport": "supa_vectors.transport.postgres",
    "PostgrestTransport": "supa_vectors.transport.postgrest",
    "AsyncPostgrestTransport": "supa_vectors.transport.postgrest",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supa_vectors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
