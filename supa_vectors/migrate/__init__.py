"""Moving an app's JSON documents into the store: batched, validated, backed up, resumable, reversible.

The Python API behind ``supa-vectors migrate``::

    from supa_vectors import VectorStore
    from supa_vectors.migrate import migrate, rollback, verify

    with VectorStore.from_env() as store:
        report = migrate(["documents/"], store)        # MigrationReport; report.json on disk too
        assert report.all_landed
        verify(["documents/"], store).ok                # the integrity check, alone
        rollback(report.run_id, store)                  # undo exactly that run

One concern per module: ``readers`` (files and streaming JSON), ``validation`` (record rules),
``backup`` (archive + checksums), ``checkpoint`` (durable run state), ``runner`` (the pipeline),
``storeio`` (store calls and retries), ``verify``, ``rollback``, ``report``, ``progress``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from supa_vectors._core.retry import Retry
from supa_vectors._store import VectorStore
from supa_vectors.migrate.progress import LogProgress, NullProgress, Progress, progress_for
from supa_vectors.migrate.readers import DEFAULT_RECORDS_KEYS, discover
from supa_vectors.migrate.report import (
    Counts,
    FileReport,
    MigrationReport,
    Problem,
    RollbackReport,
    VerifyDifference,
    VerifyFile,
    VerifyReport,
)
from supa_vectors.migrate.rollback import list_runs, rollback_run
from supa_vectors.migrate.runner import (
    DEFAULT_STATE_DIR,
    MigrationOptions,
    find_resumable,
    migrate,
    new_run_id,
)
from supa_vectors.migrate.validation import DEFAULT_MAX_METADATA_DEPTH, EmbeddingPolicy, FieldMap, Rules
from supa_vectors.migrate.verify import verify_files

__all__ = [
    "DEFAULT_STATE_DIR",
    "Counts",
    "FieldMap",
    "FileReport",
    "LogProgress",
    "MigrationOptions",
    "MigrationReport",
    "NullProgress",
    "Problem",
    "Progress",
    "Retry",
    "RollbackReport",
    "VerifyDifference",
    "VerifyFile",
    "VerifyReport",
    "find_resumable",
    "migrate",
    "new_run_id",
    "progress_for",
    "rollback",
    "runs",
    "verify",
]


def verify(
    paths: Sequence[str | os.PathLike[str]],
    store: VectorStore,
    *,
    fields: FieldMap | None = None,
    records_keys: Sequence[str] = DEFAULT_RECORDS_KEYS,
    embeddings_model: str | None = None,
    embedding_mismatch: EmbeddingPolicy = "recompute",
    max_metadata_depth: int = DEFAULT_MAX_METADATA_DEPTH,
) -> VerifyReport:
    """Is every record under ``paths`` in ``store`` with the same content and metadata?

    Pass the reading options the migration used (fields, records keys, embedding policy): they decide
    which records are valid and what their ids are.
    """
    rules = Rules(
        settings=store.settings(),
        fields=fields or FieldMap(),
        embeddings_model=embeddings_model,
        embedding_mismatch=embedding_mismatch,
        max_metadata_depth=max_metadata_depth,
    )
    return verify_files(discover(paths), store.transport, rules, records_keys=tuple(records_keys))


def rollback(run_id: str, store: VectorStore, *, force: bool = False) -> RollbackReport:
    """Undo one run: delete what it inserted, restore what it updated (conflicts are left alone)."""
    return rollback_run(store.transport, run_id, force=force)


def runs(store: VectorStore, *, limit: int = 100) -> list[dict[str, object]]:
    """The ingest runs the store knows, newest first."""
    return list_runs(store.transport, limit)
