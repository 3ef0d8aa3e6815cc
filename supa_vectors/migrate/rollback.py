"""Undoing one run: the database does it (``rollback_ingest_run``), in one transaction.

The previous state of every document a run changed was saved by ``bulk_upsert`` in the transaction
that changed it (see ``supabase/migrations/20261125000400_ingest_runs.sql``), so undoing needs nothing
from the machine that ran the migration: no checkpoint, no backup, no source files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from supa_vectors._core import rpcs
from supa_vectors.errors import BackendError, InvalidInputError
from supa_vectors.migrate.report import RollbackReport
from supa_vectors.transport.base import Transport, identity_of

__all__ = ["list_runs", "rollback_run"]


def rollback_run(transport: Transport, run_id: str, *, force: bool = False) -> RollbackReport:
    """Delete what ``run_id`` inserted and restore what it updated; see ``RollbackReport``.

    A document changed after the run is a conflict and stays as it is (roll back the later run
    first), unless ``force``; one that a later run rewrote, or that the run's history does not match
    (owner, id, provenance), is a conflict even with ``force``.
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidInputError("run_id must be a non-empty string")
    before = _run(transport, run_id)
    if before is not None and before.get("status") == "rolled_back":
        return RollbackReport(run_id=run_id, deleted=0, restored=0, conflicts=[], already_rolled_back=True)
    rows = transport.rpc(rpcs.ROLLBACK_INGEST_RUN.name, {"run_id": run_id, "force": force})
    if not isinstance(rows, list):
        raise BackendError(f"rollback_ingest_run returned {type(rows).__name__}, not a list of rows")
    outcomes = [(str(r["external_id"]), str(r["outcome"])) for r in rows if isinstance(r, Mapping)]
    return RollbackReport(
        run_id=run_id,
        deleted=sum(1 for _, o in outcomes if o == "deleted"),
        restored=sum(1 for _, o in outcomes if o == "restored"),
        conflicts=[i for i, o in outcomes if o == "conflict"],
    )


def list_runs(transport: Transport, limit: int = 100) -> list[dict[str, Any]]:
    """The runs the caller can see, newest first, with what each inserted and updated."""
    rows = transport.rpc(rpcs.LIST_INGEST_RUNS.name, {"page_size": limit})
    if not isinstance(rows, list):
        raise BackendError(f"list_ingest_runs returned {type(rows).__name__}, not a list of rows")
    return [dict(r) for r in rows if isinstance(r, Mapping)]


def _run(transport: Transport, run_id: str) -> Mapping[str, Any] | None:
    """The caller's own run of that name. Runs are per owner: the service role sees every owner's runs
    and owns those with ``owner_id`` null; a signed-in user sees only its own."""
    identity = identity_of(transport)
    subject = identity.subject if identity is not None else None
    matches = [row for row in list_runs(transport, 1000) if row.get("run_id") == run_id]
    for row in matches:
        owner = row.get("owner_id")
        if (None if owner is None else str(owner)) == subject:
            return row
    # A transport that does not say who it is (PostgREST: the key decides): a user sees one run at most.
    return matches[0] if identity is None and len(matches) == 1 else None
