"""``supa-vectors stats``: what the store holds, how its RPCs perform and how large it is, and what
this machine's side holds: the circuit breaker and the outbox in the cache directory.

The store's counts come from ``store_stats`` (any caller sees what RLS lets it see); the per-RPC
figures and the sizes need the service role (``store_rpc_stats``, ``store_table_sizes``, decision
0018). A caller without it gets the counts and one line saying why the rest is missing.

The process's own figures (``store.process_stats()``, decision 0021) are, for a command that lives for
one call, mostly what earlier commands left on disk: the breaker as the next command will find it and
the writes waiting in the outbox. They are printed even when the backend does not answer (then after
its figures' place, and the command still fails with the backend's error).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from supa_vectors._models import ProcessStats
from supa_vectors._store import VectorStore
from supa_vectors.cache.breaker import CircuitBreaker, is_outage
from supa_vectors.cli import GROUP_HELP
from supa_vectors.cli._search import BREAKER_RESET, add_backend_arguments, age_text, open_store
from supa_vectors.errors import AuthError, SupaVectorsError

__all__ = ["add_stats_parser", "stats_command"]


def add_stats_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = commands.add_parser(
        "stats",
        help=GROUP_HELP["stats"],
        description="Documents, embeddings, the vector index and settings (store_stats); with the "
        "service role also each RPC's calls, mean and estimated p95 time (pg_stat_statements) and the "
        "size of each table and index; then this machine's side: the circuit breaker and the writes "
        "waiting in the outbox of the cache directory, and this command's own calls.",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    add_backend_arguments(stats)
    stats.set_defaults(handler=stats_command, parser=stats)


def stats_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    report: dict[str, Any] = {}
    failure: SupaVectorsError | None = None
    with open_store(args, None, ask_anyway=True) as store:
        try:
            report.update(_database_figures(store))
        except SupaVectorsError as exc:
            if not is_outage(exc):
                raise
            failure = exc
            report["database_error"] = f"{type(exc).__name__}: {exc}"
        report["process"] = _process_figures(store).model_dump(mode="json")
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_database(report, out)
        _print_process(report["process"], out)
    if failure is not None:
        raise failure
    return 0


def _database_figures(store: VectorStore) -> dict[str, Any]:
    figures: dict[str, Any] = {"store": store.stats().model_dump(mode="json")}
    try:
        figures["rpcs"] = [row.model_dump() for row in store.rpc_stats()]
        figures["tables"] = [row.model_dump() for row in store.table_sizes()]
    except AuthError:
        figures["note"] = "RPC figures and sizes need the service role (decision 0018)"
    return figures


def _process_figures(store: VectorStore) -> ProcessStats:
    """The store's own figures, with the breaker as the next command finds it: this command asks
    the backend whatever the breaker says, so its own breaker never refuses; a search's would."""
    figures = store.process_stats()
    remembered = CircuitBreaker(
        failure_threshold=1, reset_timeout=BREAKER_RESET, state_file=store.breaker.state_file
    )
    return figures.model_copy(
        update={"breaker_state": remembered.state, "breaker_failures": remembered.failures}
    )


def _print_database(report: dict[str, Any], out: TextIO) -> None:
    if "database_error" in report:
        print(f"database: no answer ({report['database_error']})", file=out)
        return
    held = report["store"]
    print(
        f"documents {held['documents']} ({held['shared_documents']} shared), embeddings "
        f"{held['embeddings']}, vector index {'present' if held['vector_index'] else 'MISSING'}",
        file=out,
    )
    if "note" in report:
        print(report["note"], file=out)
        return
    print(f"\n{'rpc':<22} {'calls':>8} {'mean ms':>9} {'p95~ ms':>9} {'max ms':>9} {'rows':>9}", file=out)
    for rpc in report["rpcs"]:
        print(
            f"{rpc['rpc']:<22} {rpc['calls']:>8} {_ms(rpc['mean_ms'])} {_ms(rpc['p95_estimate_ms'])} "
            f"{_ms(rpc['max_ms'])} {rpc['rows_returned']:>9}",
            file=out,
        )
    print(f"\n{'relation':<36} {'kind':<6} {'bytes':>12} {'rows~':>9}", file=out)
    for table in report["tables"]:
        print(
            f"{table['relation']:<36} {table['kind']:<6} {table['bytes']:>12} {table['estimated_rows']:>9}",
            file=out,
        )


def _print_process(process: dict[str, Any], out: TextIO) -> None:
    failures = process["breaker_failures"]
    print(
        f"\nthis machine: circuit breaker {process['breaker_state']} ({failures} failure"
        f"{'' if failures == 1 else 's'} in a row); outbox {_outbox(process)}",
        file=out,
    )
    if process["cache_hit_rate"] is not None:
        print(
            f"cache hit rate {process['cache_hit_rate']:.0%} of {sum(process['answers'].values())}", file=out
        )
    print(
        f"\n{'this command':<22} {'calls':>8} {'errors':>8} {'mean ms':>9} {'p95~ ms':>9} {'max ms':>9}",
        file=out,
    )
    for name, op in process["operations"].items():
        print(
            f"{name:<22} {op['calls']:>8} {sum(op['errors'].values()):>8} {_ms(op['mean_ms'])} "
            f"{_ms(op['p95_ms'])} {_ms(op['max_ms'])}",
            file=out,
        )


def _outbox(process: dict[str, Any]) -> str:
    depth = process["outbox_depth"]
    if depth is None:
        return "off or not readable for this caller"
    if not depth:
        return "empty"
    oldest = process["outbox_oldest_age_seconds"]
    waited = f", the oldest for {age_text(oldest)}" if oldest is not None else ""
    return f"{depth} write{'' if depth == 1 else 's'} waiting{waited}"


def _ms(value: float | None) -> str:
    return f"{value:>9.2f}" if value is not None else f"{'-':>9}"
