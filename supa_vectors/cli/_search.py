"""``supa-vectors search QUERY`` and ``supa-vectors mirror sync``: ask the store from a shell.

Kept apart from ``cli.py`` so the command group stays independent of the others; ``cli.build_parser``
registers it with :func:`add_search_parser`. Results go to stdout (``--json`` for scripts); errors are
``SupaVectorsError`` and become ``cli.main``'s one-line message and exit code 1.

A shell command lives for one search, so what keeps it answering through an outage must be on disk:
its circuit breaker opens on the first failure and remembers it in the cache directory (the next
command does not wait for a dead backend again), an answer served offline says so in one line on
stderr (exit 0), and every search that reached the backend refreshes the mirror when it is older than
``$SUPA_VECTORS_MIRROR_SYNC`` seconds (default 600; ``off``, or ``--no-sync``, turns that off) so that
new questions can be answered offline too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from supa_vectors._config import (
    ENV_TIMEOUT,
    resolve_target,
    timeout_from_env,
    transport_for,
)
from supa_vectors._core.settings import EmbedderLike
from supa_vectors._models import HybridSearchResult, SearchResult
from supa_vectors._store import VectorStore
from supa_vectors.cache.breaker import CircuitBreaker
from supa_vectors.cache.layer import breaker_file, default_cache_dir
from supa_vectors.cli import GROUP_HELP
from supa_vectors.errors import ConfigurationError, FilterError, SupaVectorsError, UsageError
from supa_vectors.filters import comparisons, json_type

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_MIRROR_SYNC",
    "add_backend_arguments",
    "add_mirror_parser",
    "add_search_parser",
    "age_text",
    "mirror_command",
    "open_store",
    "search_command",
]

DEFAULT_TIMEOUT = 5.0
ENV_MIRROR_SYNC = "SUPA_VECTORS_MIRROR_SYNC"
DEFAULT_MIRROR_SYNC = 600.0
# How long a command trusts a remembered outage before it asks the backend again.
BREAKER_RESET = 30.0

_SNIPPET = 160


def add_search_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "search",
        help=GROUP_HELP["search"],
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
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help=f"do not refresh the offline mirror after the search (also: {ENV_MIRROR_SYNC}=off)",
    )
    add_backend_arguments(parser)
    parser.set_defaults(handler=search_command, parser=parser)


def add_backend_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--database-url, --key and --timeout, the same for every command that talks to the store."""
    parser.add_argument("--database-url", metavar="URL", default=None, help="postgresql:// or https:// URL")
    parser.add_argument("--key", default=None, help="Supabase API key, with an https:// --database-url")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"how long to wait for a connection to the backend before calling it down (default: "
        f"${ENV_TIMEOUT}, else {DEFAULT_TIMEOUT:g}); a refused connection is known at once",
    )


def add_mirror_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mirror = commands.add_parser(
        "mirror",
        help=GROUP_HELP["mirror"],
        description="The mirror (in the cache directory, $SUPA_VECTORS_CACHE_DIR) answers searches never "
        "asked before while the backend is unreachable. `migrate` and online searches keep it current; "
        "`sync` updates it now.",
    )
    actions = mirror.add_subparsers(dest="mirror_command", metavar="ACTION", required=True)
    sync = actions.add_parser(
        "sync",
        help="fetch what changed since the last sync (--full: everything)",
        description="Fetch the documents changed since the last sync, with their vectors, and drop the "
        "deleted ones; print how many the mirror holds.",
    )
    sync.add_argument("--full", action="store_true", help="rebuild the mirror from scratch")
    add_backend_arguments(sync)
    sync.set_defaults(handler=mirror_command, parser=sync)


def _timeout(args: argparse.Namespace) -> float:
    value = getattr(args, "timeout", None)
    if value is None:
        return timeout_from_env(DEFAULT_TIMEOUT)
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {value:g}")
    return float(value)


def open_store(
    args: argparse.Namespace, embedder: EmbedderLike | None, *, ask_anyway: bool = False
) -> VectorStore:
    """The store a command talks to, from --database-url/--key, else the environment (see ``config``).

    Its breaker opens on the first failure and keeps what it learned in the cache directory, so the
    next command answers offline at once instead of waiting again. ``ask_anyway`` (a write, a sync:
    nothing to answer offline) still calls the backend whatever the breaker remembers, and records
    the outcome for the commands after it.
    """
    target = resolve_target(args.database_url, args.key)
    transport = transport_for(target, connect_timeout=_timeout(args))
    breaker = CircuitBreaker(
        failure_threshold=1,
        reset_timeout=0.0 if ask_anyway else BREAKER_RESET,
        state_file=breaker_file(default_cache_dir(), transport),
    )
    try:
        return VectorStore(transport, embedder=embedder, breaker=breaker)
    except BaseException:
        transport.close()
        raise


def _sync_after(args: argparse.Namespace) -> float | None:
    """Seconds after which a search refreshes the mirror; None: never."""
    if getattr(args, "no_sync", False):
        return None
    text = os.environ.get(ENV_MIRROR_SYNC, "").strip().lower()
    if not text:
        return DEFAULT_MIRROR_SYNC
    if text in ("off", "no", "false", "never"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{ENV_MIRROR_SYNC} must be a number of seconds or 'off', got {text!r}")
    return value


def age_text(seconds: float) -> str:
    """A duration as people say it: 40 s, 12 min, 5 h, 3 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def offline_note(results: Sequence[SearchResult | HybridSearchResult]) -> str | None:
    """The one line that says an answer did not come from the backend, and how old it is."""
    stale = [r for r in results if r.stale]
    if not stale:
        return None
    first = stale[0]
    what = "the results cache" if first.source == "cache" else "the offline mirror"
    age = f", {age_text(first.age_seconds)} old" if first.age_seconds is not None else ""
    return f"supa-vectors: offline: the backend did not answer; results from {what}{age}"


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
    if args.hybrid and args.threshold is not None:
        raise UsageError("--threshold applies to vector search, not to --hybrid")
    sync_after = _sync_after(args)
    with open_store(args, embedder) as store:
        results: list[SearchResult | HybridSearchResult] = []
        if args.hybrid:
            results += store.hybrid_search(args.query, k=args.k, filter=filter)
        else:
            results += store.search(args.query, k=args.k, threshold=args.threshold, filter=filter)
        _print_results(results, args.json, out, filter)
        note = offline_note(results)
        if note is not None:
            print(note, file=sys.stderr)
        elif sync_after is not None and store.breaker.state == "closed":
            out.flush()  # the answer first; the refresh only delays the exit
            _refresh_mirror(store, sync_after)
    return 0


def _refresh_mirror(store: VectorStore, older_than: float) -> None:
    """Sync the mirror if it is older than ``older_than`` seconds (or was never synced); a failure
    leaves the old mirror and is not the search's failure."""
    age = store._offline.mirror_age()
    if age is not None and age < older_than:
        return
    try:
        store.sync_mirror()
    except SupaVectorsError as exc:
        print(f"supa-vectors: note: the offline mirror was not refreshed ({exc})", file=sys.stderr)


def _empty_filter_notes(filter: dict[str, Any] | None) -> list[str]:
    """Why a filtered search may find nothing: a comparison matches only values of its operand's JSON
    type, so ``{"minutes": {"$lt": "abc"}}`` never matches a number. Said, not changed: the server's
    semantics are jsonb's, and a string comparison is right for ISO dates stored as strings."""
    return [
        f"note: {json.dumps(field)} {op} {json.dumps(operand)} matches only {json_type(operand)} values "
        f"(a comparison never matches values of another JSON type)"
        for field, op, operand in comparisons(filter or {})
    ]


def _print_results(
    results: list[SearchResult | HybridSearchResult],
    as_json: bool,
    out: TextIO,
    filter: dict[str, Any] | None = None,
) -> None:
    if as_json:
        json.dump([r.model_dump() for r in results], out, ensure_ascii=False, indent=2)
        out.write("\n")
        return
    if not results:
        print("no results", file=sys.stderr)
        for note in _empty_filter_notes(filter):
            print(note, file=sys.stderr)
    for rank, result in enumerate(results, start=1):
        if isinstance(result, HybridSearchResult):
            score = f"score {result.score:.4f}"
        else:
            score = f"similarity {result.similarity:.4f}"
        snippet = " ".join(result.content.split())
        if len(snippet) > _SNIPPET:
            snippet = snippet[: _SNIPPET - 1] + "…"
        out.write(f"{rank:>3}. {result.id}  ({score})\n     {snippet}\n")


def mirror_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``mirror sync``: bring the mirror up to date now (it asks the backend, whatever the breaker
    remembered: the user asked for exactly that)."""
    out = out or sys.stdout
    with open_store(args, None, ask_anyway=True) as store:
        result = store.sync_mirror(full=args.full)
    out.write(
        f"mirror: {result.documents} documents ({result.fetched} fetched, {result.removed} removed"
        f"{', full sync' if result.full else ''})\n"
    )
    return 0
