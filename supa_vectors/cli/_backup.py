"""``supa-vectors backup PATH`` and ``supa-vectors restore PATH``: the SDK's ``store.backup`` and
``store.restore`` over the command's backend (``--database-url``/``--key``, else the environment).

The summary goes to stdout as one line (``--json``: one object); a restore reports its progress on
stderr. Exit statuses are every command's: 0 done, 1 an error (a damaged archive is refused before
anything is written; a failed restore is finished by running it again), 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from supa_vectors.cli import GROUP_HELP
from supa_vectors.cli._search import add_backend_arguments, open_store

__all__ = ["add_backup_parser", "add_restore_parser", "backup_command", "restore_command"]


def add_backup_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = commands.add_parser(
        "backup",
        help=GROUP_HELP["backup"],
        description="Write the caller's documents, metadata and vectors (a signed-in user's own; every "
        "document for the service role) to PATH, a new directory: JSON Lines shards and a manifest of "
        "SHA-256 checksums, taken as one snapshot. See docs/operations/backups.md.",
    )
    backup.add_argument("path", metavar="PATH", help="a directory that does not exist yet (or is empty)")
    backup.add_argument("--page-size", type=int, default=500, help="documents per call (default 500)")
    backup.add_argument("--shard-size", type=int, default=10_000, help="documents per file (default 10000)")
    backup.add_argument(
        "--attempts", type=int, default=3, help="passes tried for one snapshot while writes go on (default 3)"
    )
    backup.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_backend_arguments(backup)
    backup.set_defaults(handler=backup_command, parser=backup)


def add_restore_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    restore = commands.add_parser(
        "restore",
        help=GROUP_HELP["restore"],
        description="Check the archive at PATH (every checksum and record), write its documents with "
        "their vectors (no re-embedding) as the caller, then read them back and compare content hashes "
        "and vectors. Idempotent: after an interruption, run it again.",
    )
    restore.add_argument("path", metavar="PATH", help="a directory written by `supa-vectors backup`")
    restore.add_argument(
        "--chunk-rows", type=int, default=500, help="documents per transaction (default 500)"
    )
    restore.add_argument("--no-verify", action="store_true", help="skip reading the documents back")
    restore.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_backend_arguments(restore)
    restore.set_defaults(handler=restore_command, parser=restore)


def backup_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    with open_store(args, None, ask_anyway=True) as store:
        result = store.backup(
            args.path, page_size=args.page_size, shard_size=args.shard_size, attempts=args.attempts
        )
    if args.json:
        print(json.dumps(result.model_dump()), file=out or sys.stdout)
    else:
        print(
            f"{result.documents} documents in {result.files} files ({result.bytes} bytes) at {result.path}, "
            f"snapshot of {result.snapshot_at}",
            file=out or sys.stdout,
        )
    return 0


def restore_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    def progress(done: int, total: int) -> None:
        print(f"restore: {done}/{total} documents written", file=sys.stderr, flush=True)

    with open_store(args, None, ask_anyway=True) as store:
        result = store.restore(
            args.path, chunk_rows=args.chunk_rows, verify=not args.no_verify, progress=progress
        )
    if args.json:
        print(json.dumps(result.model_dump()), file=out or sys.stdout)
    else:
        print(
            f"{result.documents} documents from {result.path}: {result.inserted} inserted, "
            f"{result.updated} updated, {result.unchanged} unchanged; {result.verified} verified",
            file=out or sys.stdout,
        )
    return 0
