"""The one table of RPCs: every database function the client calls, declared once.

The names and parameter shapes are the contract of ``supabase/migrations``; this table adds what the
client must know to move them, and nothing else reads an RPC name from anywhere but here:

* ``scalar``: returns one value (``count_documents``), not a set of rows.
* ``idempotent``: may be sent again after a failure that leaves unknown whether it ran. Reads are
  (``match_documents`` and ``hybrid_search`` are VOLATILE only because they set ``hnsw.*`` for their
  own statement); ``bulk_upsert`` is keyed by (owner, external_id) and compares content hashes, so a
  replay converges to the same rows; ``delete_documents`` of ids already gone deletes nothing (in
  both, a replay after a lost response reports what the *replay* did). The bulk-load RPCs drop and
  build an index (DDL that can outlive a timeout): never replayed blindly. ``begin_ingest_run`` marks
  a run running by its id (a replay finds it and says ``resumed``).
* ``vectors``: carries vectors, in its parameters or its rows. ``vectors_beside`` names the record
  parameter a separate vector array (``embeddings``) parallels: the Postgres transport sends it as one
  binary ``vector[]``, PostgREST moves vector i into record i.
* ``owner``: runs as the connecting role (the table owner), which only a direct connection can.

Adding an RPC: one migration, one entry here, one flow in :mod:`supa_vectors._core.flows`, tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supa_vectors._core.ops import RpcCall

__all__ = [
    "BEGIN_BULK_LOAD",
    "BEGIN_INGEST_RUN",
    "BULK_UPSERT",
    "COUNT_DOCUMENTS",
    "DELETE_DOCUMENTS",
    "EXPORT_DOCUMENTS",
    "EXPORT_SNAPSHOT",
    "FINISH_BULK_LOAD",
    "FINISH_INGEST_RUN",
    "GET_DOCUMENTS",
    "GET_EMBEDDINGS",
    "HYBRID_SEARCH",
    "LIST_DOCUMENTS",
    "LIST_INGEST_RUNS",
    "MATCH_DOCUMENTS",
    "RESTORE_VECTOR_INDEX",
    "ROLLBACK_INGEST_RUN",
    "RPCS",
    "STORE_DIAGNOSTICS",
    "STORE_SETTINGS",
    "STORE_STATS",
    "Rpc",
    "rpc_named",
]


@dataclass(frozen=True)
class Rpc:
    """One database function, as the client moves it (see the module docstring for the fields)."""

    name: str
    scalar: bool = False
    idempotent: bool = False
    vectors: bool = False
    vectors_beside: str | None = None
    owner: bool = False

    def call(self, params: Mapping[str, Any] | None = None) -> RpcCall:
        """The operation a flow yields to have this RPC called with ``params``."""
        return RpcCall(self.name, dict(params or {}), session_user=self.owner)


MATCH_DOCUMENTS = Rpc("match_documents", idempotent=True, vectors=True)
HYBRID_SEARCH = Rpc("hybrid_search", idempotent=True, vectors=True)
GET_DOCUMENTS = Rpc("get_documents", idempotent=True)
# get_documents' rows plus each one's stored vector (``VectorStore.get(ids, with_vectors=True)``).
GET_EMBEDDINGS = Rpc("get_embeddings", idempotent=True, vectors=True)
LIST_DOCUMENTS = Rpc("list_documents", idempotent=True, vectors=True)
COUNT_DOCUMENTS = Rpc("count_documents", scalar=True, idempotent=True)
STORE_STATS = Rpc("store_stats", scalar=True, idempotent=True)
STORE_SETTINGS = Rpc("store_settings", scalar=True, idempotent=True)
BULK_UPSERT = Rpc("bulk_upsert", idempotent=True, vectors=True, vectors_beside="documents")
DELETE_DOCUMENTS = Rpc("delete_documents", idempotent=True)
BEGIN_BULK_LOAD = Rpc("begin_bulk_load", scalar=True, owner=True)
FINISH_BULK_LOAD = Rpc("finish_bulk_load", scalar=True, owner=True)
RESTORE_VECTOR_INDEX = Rpc("restore_vector_index", scalar=True, owner=True)
BEGIN_INGEST_RUN = Rpc("begin_ingest_run", idempotent=True)
FINISH_INGEST_RUN = Rpc("finish_ingest_run")
LIST_INGEST_RUNS = Rpc("list_ingest_runs")
ROLLBACK_INGEST_RUN = Rpc("rollback_ingest_run")
# Backups (decision 0020): a page of the caller's documents with vectors and row versions; the count
# and XOR of the versions in one statement.
EXPORT_DOCUMENTS = Rpc("export_documents", idempotent=True, vectors=True)
EXPORT_SNAPSHOT = Rpc("export_snapshot", scalar=True, idempotent=True)
# Monitoring, service role only (decision 0018).
STORE_RPC_STATS = Rpc("store_rpc_stats", idempotent=True)
STORE_TABLE_SIZES = Rpc("store_table_sizes", idempotent=True)
# The catalog facts `supa-vectors doctor` checks, service role only (decision 0019).
STORE_DIAGNOSTICS = Rpc("store_diagnostics", scalar=True, idempotent=True)

RPCS: Mapping[str, Rpc] = {
    rpc.name: rpc
    for rpc in (
        MATCH_DOCUMENTS,
        HYBRID_SEARCH,
        GET_DOCUMENTS,
        GET_EMBEDDINGS,
        LIST_DOCUMENTS,
        COUNT_DOCUMENTS,
        STORE_STATS,
        STORE_SETTINGS,
        STORE_RPC_STATS,
        STORE_TABLE_SIZES,
        STORE_DIAGNOSTICS,
        BULK_UPSERT,
        DELETE_DOCUMENTS,
        EXPORT_DOCUMENTS,
        EXPORT_SNAPSHOT,
        BEGIN_BULK_LOAD,
        FINISH_BULK_LOAD,
        RESTORE_VECTOR_INDEX,
        BEGIN_INGEST_RUN,
        FINISH_INGEST_RUN,
        LIST_INGEST_RUNS,
        ROLLBACK_INGEST_RUN,
    )
}


def rpc_named(name: str) -> Rpc:
    """The table's entry for ``name``; a function the table does not know (an app calling its own
    RPC through a transport) returns rows, is never replayed, and may carry vectors."""
    found = RPCS.get(name)
    return found if found is not None else Rpc(name, vectors=True)
