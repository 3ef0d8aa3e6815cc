"""The exception tree: every failure the SDK reports is a ``SupaVectorsError``.

Callers catch one root, or a branch when they can act on it (retry on
``BackendUnavailableError``, fix input on ``InvalidInputError``). Exceptions from
psycopg, httpx, supabase-py or onnxruntime never leak: they are chained as
``__cause__`` so the original detail stays available for debugging.

    SupaVectorsError
    ├── ConfigurationError          settings, URLs, keys, environment
    ├── InvalidInputError           bad documents, filters or arguments (nothing was written)
    │   ├── FilterError             a malformed metadata filter
    │   ├── DocumentError           a bad record; names its position and id
    │   ├── ArchiveError            a backup archive that is damaged, tampered or of another format
    │   └── UsageError              a command line the CLI cannot run (exit status 2)
    ├── ModelMismatchError          the embedder is not the store's model or dimension
    ├── EmbeddingError              the local model cannot be installed, built or run
    ├── BackupError                 no consistent backup (the store kept changing), or a restore differs
    ├── BackendError                the database or PostgREST answered with a failure
    │   ├── AuthError               missing or insufficient privileges (RLS, JWT, grants)
    │   ├── NotFoundError           the RPC or the object does not exist
    │   ├── QueryTimeoutError       statement timeout (SQLSTATE 57014)
    │   ├── IndexRebuildError       written, but the vector index was not rebuilt; has the results
    │   └── BackendUnavailableError connection refused, reset, timed out, 502/503/504
    └── LocalStackError             the embedded local stack cannot start, stop or migrate
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supa_vectors._models import UpsertResult

__all__ = [
    "ArchiveError",
    "AuthError",
    "BackendError",
    "BackendUnavailableError",
    "BackupError",
    "ConfigurationError",
    "DocumentError",
    "EmbeddingError",
    "FilterError",
    "IndexRebuildError",
    "InvalidInputError",
    "LocalStackError",
    "ModelMismatchError",
    "NotFoundError",
    "QueryTimeoutError",
    "SupaVectorsError",
    "UsageError",
]


class SupaVectorsError(Exception):
    """Root of every error raised by supa-vectors."""


class ConfigurationError(SupaVectorsError):
    """The SDK was configured in a way that cannot work (missing URL, bad key, ...)."""


class InvalidInputError(SupaVectorsError):
    """The caller's input was rejected; nothing was written."""


class UsageError(InvalidInputError):
    """A command line that does not say what to do (a missing operand, options that exclude each
    other): the CLI prints its usage and exits with status 2, as for argparse's own errors."""


class FilterError(InvalidInputError):
    """A metadata filter is malformed (unknown operator, wrong operand type, too deep)."""


class DocumentError(InvalidInputError):
    """A document was rejected; ``index`` and ``document_id`` name the record."""

    def __init__(self, message: str, *, index: int | None = None, document_id: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.document_id = document_id


class ArchiveError(InvalidInputError):
    """A backup archive cannot be restored: no manifest, another format version, a file whose size or
    SHA-256 differs from the manifest (truncated, edited), or a record that does not parse. The whole
    archive is checked before the first write, so nothing was written."""


class ModelMismatchError(SupaVectorsError):
    """The embedder's model id or dimension differs from the store's ``metadata_global``."""


class EmbeddingError(SupaVectorsError):
    """The local embedding model could not be installed, built or run."""


class BackupError(SupaVectorsError):
    """A backup could not be taken as one snapshot (the store changed during every pass), or after a
    restore the store does not hold what the archive holds (content hash or vector differs)."""


class BackendError(SupaVectorsError):
    """The backend answered with an error; ``code`` is the SQLSTATE or HTTP status when known."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class AuthError(BackendError):
    """The caller lacks the privilege (JWT missing or expired, RLS, grants)."""


class NotFoundError(BackendError):
    """The RPC, table or object does not exist (for example migrations not applied)."""


class QueryTimeoutError(BackendError):
    """The statement was cancelled by a timeout (SQLSTATE 57014)."""


class BackendUnavailableError(BackendError):
    """The backend could not be reached or is temporarily unable to answer."""


class IndexRebuildError(BackendError):
    """The documents were written, but rebuilding the vector index after a bulk load failed.

    ``results`` says what the call wrote (or queued), as ``upsert`` would have returned it. The index
    is rebuilt by the table owner's next write, ``supa-vectors local start``, or ``finish_bulk_load()``;
    until then searches are exact, only slower.
    """

    def __init__(self, message: str, *, results: Sequence[UpsertResult], code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.results = list(results)


class LocalStackError(SupaVectorsError):
    """The embedded local Postgres could not be started, stopped or migrated."""
