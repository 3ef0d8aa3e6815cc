"""``supa-vectors search QUERY``: ask the store from a shell.

Kept apart from ``cli.py`` so the command group stays independent of the others; ``cli.build_parser``
registers it with :func:`add_search_parser`. Results go to stdout (``--json`` for scripts); errors are
``SupaVectorsError`` and become ``cli.main``'s one-line message and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from supa_vectors._rpc import EmbedderLike
from supa_vectors.errors import FilterError, InvalidInputError
from supa_vectors.models import HybridSearchResult, SearchResult
from supa_vectors.store import VectorStore

__all__ = ["add_search_parser", "search_command"]

_SNIPPET = 160


def add_search_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "search",
        help="search the store by meaning (or by meaning and words, with --hybrid)",
        description="Search the store. The backend comes from --database-url, else SUPABASE_URL + "
        "SUPABASE_KEY, else SUPA_VECTORS_DATABASE_URL, else the running local stack.",
    )
    parser.add_argument("query", metavar="QUERY", help="the text to search for")
    parser.add_argument("-k", type=int, default=10, metavar="N", help="number of results (default 10)")
    parser.add_argument(
        "--filter",
        metavar="JSON",
        default=None,
        help='metadata filter, e.g. \'{"topic": "vacuum", "year": {"$gte": 2020}}\'',
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="minimum cosine similarity (not with --hybrid)"
    )
    parser.add_argument(
        "--hybrid", action="store_true", help="fuse full-text and vector rankings (reciprocal rank fusion)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as a JSON array")
    parser.add_argument("--database-url", metavar="URL", default=None, help="postgresql:// or https:// URL")
    parser.add_argument("--key", default=None, help="Supabase API key, with an https:// --database-url")
    parser.set_defaults(handler=search_command)


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # not JSON, an over-long integer, absurd nesting
        raise FilterError(f"invalid filter: --filter is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise FilterError("invalid filter: --filter must be a JSON object")
    return value


def search_command(
    args: argparse.Namespace, *, embedder: EmbedderLike | None = None, out: TextIO | None = None
) -> int:
    """Run one search; ``embedder`` replaces the default model (tests use a small fake)."""
    out = out or sys.stdout
    filter = _parse_filter(args.filter)
    if args.database_url:
        store = VectorStore.from_url(args.database_url, args.key, embedder=embedder)
    else:
        store = VectorStore.from_env(embedder=embedder)
    with store:
        results: list[SearchResult | HybridSearchResult] = []
        if args.hybrid:
            if args.threshold is not None:
                raise InvalidInputError("--threshold applies to vector search, not to --hybrid")
            results += store.hybrid_search(args.query, k=args.k, filter=filter)
        else:
            results += store.search(args.query, k=args.k, threshold=args.threshold, filter=filter)
    if args.json:
        json.dump([r.model_dump() for r in results], out, ensure_ascii=False, indent=2)
        out.write("\n")
        return 0
    if not results:
        print("no results", file=sys.stderr)
    for rank, result in enumerate(results, start=1):
        if isinstance(result, HybridSearchResult):
            score = f"score {result.score:.4f}"
        else:
            score = f"similarity {result.similarity:.4f}"
        snippet = " ".join(result.content.split())
        if len(snippet) > _SNIPPET:
            snippet = snippet[: _SNIPPET - 1] + "…"
        out.write(f"{rank:>3}. {result.id}  ({score})\n     {snippet}\n")
    return 0
