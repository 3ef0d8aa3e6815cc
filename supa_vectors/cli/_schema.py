"""``supa-vectors schema``: which migrations a database has, and rolling it back to a release.

``supabase db push`` applies migrations and ``supabase migration list`` shows them, but the Supabase
CLI has no way down. A release is rolled back with the files in ``supabase/rollbacks/`` (one per
migration, tested by ``tests/test_migrations_rollback.py``); the steps around it are in
``docs/operations/rollback.md``, which ``tests/test_rollback_guide.py`` runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from supa_vectors.errors import ConfigurationError, UsageError

__all__ = ["add_schema_parser", "schema_command"]


def add_schema_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        metavar="URL",
        help="a direct Postgres URL with the table owner's rights (default: $SUPA_VECTORS_DATABASE_URL, "
        "else the local stack); for hosted Supabase, the session pooler or direct connection string",
    )
    schema = commands.add_parser(
        "schema",
        help="the database's migrations: what is applied, and rolling back to a release",
        description="Which of the shipped migrations a database has, and rolling it back.",
    )
    actions = schema.add_subparsers(dest="schema_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", parents=[common], help="list the shipped migrations and whether each is applied"
    )
    status.set_defaults(handler=schema_command, parser=status)
    rollback = actions.add_parser(
        "rollback",
        parents=[common],
        help="undo the migrations newer than a version, newest first",
        description="Undo, newest first, every applied migration newer than --to, with the files in "
        "supabase/rollbacks/. Each one commits with its schema_migrations row: run it again to continue "
        "after an interruption. Roll back data first (`supa-vectors migrate rollback`) if the release "
        "wrote any you do not want.",
    )
    rollback.add_argument(
        "--to", required=True, metavar="VERSION", help="the newest migration to keep (0: undo all)"
    )
    rollback.add_argument("--dry-run", action="store_true", help="list what would be undone; change nothing")
    rollback.set_defaults(handler=schema_command, parser=rollback)


def _database_url(args: argparse.Namespace) -> str:
    from supa_vectors._config import resolve_target

    target = resolve_target(args.database_url)
    if target.kind != "postgres":
        raise ConfigurationError(
            "schema commands need a direct Postgres connection (--database-url postgresql://...), not the "
            "Supabase API URL"
        )
    return target.url


def schema_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    from supa_vectors.local import applied_versions, find_migrations_dir, rollback_to
    from supa_vectors.local.migrations import list_local_migrations

    out = out or sys.stdout
    url = _database_url(args)
    if args.schema_command == "status":
        applied = set(applied_versions(url))
        shipped = list_local_migrations(find_migrations_dir())
        for migration in shipped:
            mark = "applied" if migration.version in applied else "pending"
            print(f"{migration.version}  {mark:<8} {migration.name}", file=out)
        for version in sorted(applied - {m.version for m in shipped}):
            print(f"{version}  applied  (not shipped with this version of supa-vectors)", file=out)
        return 0
    version = args.to.strip()
    if not version.isdigit():
        raise UsageError(
            f"--to takes a migration version (digits, as `schema status` shows), not {version!r}"
        )
    undone = rollback_to(url, version, dry_run=args.dry_run)
    verb = "would undo" if args.dry_run else "undone"
    for done in undone:
        print(f"{done}  {verb}", file=out)
    if not undone:
        print(f"nothing to undo: {version} is the newest applied migration", file=out)
    return 0
