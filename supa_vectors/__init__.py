"""supa-vectors: semantic document search for Python apps, persisted in Supabase.

The public API is what ``__all__`` lists; everything in underscore-free submodules
that is not re-exported here may change without notice.
"""

from __future__ import annotations

from supa_vectors.errors import (
    AuthError,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    DocumentError,
    EmbeddingError,
    FilterError,
    InvalidInputError,
    LocalStackError,
    ModelMismatchError,
    NotFoundError,
    QueryTimeoutError,
    SupaVectorsError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BackendError",
    "BackendUnavailableError",
    "ConfigurationError",
    "DocumentError",
    "EmbeddingError",
    "FilterError",
    "InvalidInputError",
    "LocalStackError",
    "ModelMismatchError",
    "NotFoundError",
    "QueryTimeoutError",
    "SupaVectorsError",
    "__version__",
]
