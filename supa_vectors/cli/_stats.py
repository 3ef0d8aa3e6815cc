"""``supa-vectors stats``: what the store holds, how its RPCs perform and how large it is.

The store's counts come from ``store_stats`` (any caller sees what RLS lets it see); the per-RPC
figures and the sizes need the service role (``store_rpc_stats``, ``store_table_sizes``, decision
0018). A caller without it gets the counts and one line saying why the rest is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from supa_vectors.cli import GROUP_HELP
from supa_vectors.cli._search import add_backend_arguments, open_store
from supa_vectors.errors import AuthError

__all__ = ["add_stats_parser", "stats_command"]


def add_stats_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = commands.add_parser(
        "stats",
        help=GROUP_HELP["stats"],
        description="Documents, embeddings, the vector index and settings (store_stats); with the "
        "service role also each RPC's calls, mean and estimated p95 time (pg_stat_statements) and the "
        "size of each table and index.",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    add_backend_arguments(stats)
    stats.set_defaults(handler=stats_command, parser=stats)


def stats_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    with open_store(args, None, ask_anyway=True) as store:
        report: dict[str, Any] = {"store": store.stats().model_dump(mode="json")}
        try:
            report["rpcs"] = [row.model_dump() for row in store.rpc_stats()]
            report["tables"] = [row.model_dump() for row in store.table_sizes()]
        except AuthError:
            report["note"] = "RPC figures and sizes need the service role (decision 0018)"
    if args.json:
        print(json.dumps(report, indent=2), file=out)
        return 0
    held = report["store"]
    print(
        f"documents {held['documents']} ({held['shared_documents']} shared), embeddings "
        f"{held['embeddings']}, vector index {'present' if held['vector_index'] else 'MISSING'}",
        file=out,
    )
    if "note" in report:
        print(report["note"], file=out)
        return 0
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
    return 0


def _ms(value: float | None) -> str:
    return f"{value:>9.2f}" if value is not None else f"{'-':>9}"
