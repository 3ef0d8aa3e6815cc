"""``supa-vectors migrate``: move JSON documents into the store, check them, undo a run.

Kept apart from ``cli.py`` so the command group stays independent of the others;
``cli.build_parser`` registers it with :func:`add_migrate_parser`. The work is done by
:mod:`supa_vectors.migrate`; this module only turns flags into arguments and reports into text. The
summary goes to stdout (``--json`` for scripts), progress to stderr, and the exit status says whether
everything landed (see ``EXIT_STATUSES``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from supa_vectors._core.settings import EmbedderLike
from supa_vectors._store import VectorStore
from supa_vectors.cli import GROUP_HELP
from supa_vectors.cli._search import add_backend_arguments, open_store
from supa_vectors.errors import InvalidInputError, SupaVectorsError, UsageError

if TYPE_CHECKING:
    from supa_vectors.migrate import FieldMap, Progress

# The migration machinery (supa_vectors.migrate) is imported by the functions that use it, so that
# ``supa-vectors search`` and ``--help`` do not pay for it.

__all__ = ["EXIT_STATUSES", "add_migrate_parser", "migrate_command"]

ACTIONS = ("verify", "rollback", "runs")
EXIT_STATUSES = """exit status:
  0    every record landed (verify: every record is in the store as in the source)
  1    error: nothing more was written; an interrupted run continues with --resume
  2    usage error
  3    finished, but some records were rejected (each is listed in the report; verify: the valid
       records match, but the source has invalid ones, which were never migrated)
  4    the integrity check found differences (rollback: some documents changed since, left alone)
  130  interrupted (Ctrl-C); continue with --resume
"""

_DESCRIPTION = """Move an app's JSON documents into the store: every .json/.jsonl file under PATH (a list of
{id, content, metadata} records, an object holding one like {"documents": [...]}, LangChain-style
page_content records, or one record per line). Batched, validated (bad records are listed, good ones
land exactly once), backed up, resumable (--resume), verified at the end, and reversible
(`migrate rollback RUN_ID`). The backend comes from --database-url, else SUPABASE_URL + SUPABASE_KEY,
else SUPA_VECTORS_DATABASE_URL, else the running local stack."""

_USAGE = """supa-vectors migrate [options] PATH [PATH ...]
       supa-vectors migrate --resume [RUN_ID]
       supa-vectors migrate verify [options] [PATH ...]
       supa-vectors migrate rollback RUN_ID [--force]
       supa-vectors migrate runs"""


_ACTION_HELP = {
    "verify": (
        "supa-vectors migrate verify [options] [PATH ...]",
        "Check that every record of the source is in the store as it is in the files (content and "
        "metadata). Without PATHs, the paths and reading options of a run: --run-id, else the newest "
        "run in --state-dir.",
    ),
    "rollback": (
        "supa-vectors migrate rollback [--force] RUN_ID",
        "Undo a run: delete the documents it inserted and restore those it updated. Documents changed "
        "since the run are left alone (and listed) unless --force.",
    ),
    "runs": ("supa-vectors migrate runs [--json]", "List the ingest runs recorded in the store."),
}


def add_migrate_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], *, action: str | None = None
) -> None:
    """``migrate``; ``action`` (verify, rollback, runs) builds that action's parser instead, so its
    ``--help`` describes it and lists only its options."""
    from supa_vectors.migrate import DEFAULT_STATE_DIR, FieldMap, Retry
    from supa_vectors.migrate.readers import DEFAULT_RECORDS_KEYS
    from supa_vectors.migrate.validation import DEFAULT_MAX_METADATA_DEPTH

    action = action if action in ACTIONS else None
    usage, description = _ACTION_HELP.get(action or "", (_USAGE, _DESCRIPTION))
    if action in _ACTION_HELP:
        description = textwrap.fill(description, 100)
    parser = commands.add_parser(
        "migrate",
        help=GROUP_HELP["migrate"],
        description=description,
        usage=usage,
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=migrate_command, parser=parser)
    if action == "rollback":
        parser.add_argument("paths", nargs="*", metavar="RUN_ID", help="the run to undo (see `migrate runs`)")
        parser.add_argument("--force", action="store_true", help="also undo documents changed since the run")
    elif action == "runs":
        parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    else:
        parser.add_argument(
            "paths",
            nargs="*",
            metavar="PATH",
            help="files or folders of .json/.jsonl"
            + ("" if action else "; or an action: verify, rollback RUN_ID, runs (each has its --help)"),
        )
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    if action in ("rollback", "runs"):
        add_backend_arguments(parser.add_argument_group("backend"))
        return

    run = parser.add_argument_group("the run")
    run.add_argument(
        "--run-id",
        default=None,
        help="verify: the run whose paths to check"
        if action
        else "name the run (default: the start time plus a random suffix)",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where checkpoints, backups and reports go (default {DEFAULT_STATE_DIR})",
    )
    if not action:
        _add_run_options(run, Retry().attempts)

    reading = parser.add_argument_group("reading the files")
    fields = FieldMap()
    reading.add_argument(
        "--id-field",
        action="append",
        metavar="NAME",
        help="where the id is; repeat to try several; dots reach into objects "
        f"(default: {', '.join(fields.id)}; without one, an id is derived from file and content)",
    )
    reading.add_argument(
        "--content-field", action="append", metavar="NAME", help=f"default: {', '.join(fields.content)}"
    )
    reading.add_argument(
        "--metadata-field", action="append", metavar="NAME", help=f"default: {', '.join(fields.metadata)}"
    )
    reading.add_argument(
        "--embedding-field", action="append", metavar="NAME", help=f"default: {', '.join(fields.embedding)}"
    )
    reading.add_argument(
        "--records-key",
        action="append",
        metavar="NAME",
        help=f"the key of the list in an object file (default: {', '.join(DEFAULT_RECORDS_KEYS)})",
    )
    reading.add_argument(
        "--embeddings-model",
        metavar="MODEL",
        default=None,
        help="the model that made the vectors in the files (they are reused only if it is the store's)",
    )
    reading.add_argument(
        "--embedding-mismatch",
        choices=("recompute", "reject"),
        default="recompute",
        help="a vector of another model or dimension (or NaN): re-compute it (default) or reject the record",
    )
    reading.add_argument(
        "--max-metadata-depth",
        type=int,
        default=DEFAULT_MAX_METADATA_DEPTH,
        metavar="N",
        help=f"reject metadata nested deeper (default {DEFAULT_MAX_METADATA_DEPTH})",
    )
    add_backend_arguments(parser.add_argument_group("backend"))


def _add_run_options(run: argparse._ArgumentGroup, retries: int) -> None:
    run.add_argument(
        "--dry-run", action="store_true", help="validate and report what would happen; write nothing"
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_ID",
        help="continue an interrupted run (default: the newest unfinished one)",
    )
    run.add_argument(
        "--batch-size", type=int, default=256, metavar="N", help="documents per write (default 256)"
    )
    run.add_argument("--workers", type=int, default=1, metavar="N", help="embedding threads (default 1)")
    run.add_argument("--no-backup", action="store_true", help="do not archive the source files first")
    run.add_argument("--no-verify", action="store_true", help="skip the integrity check at the end")
    bulk = run.add_mutually_exclusive_group()
    bulk.add_argument(
        "--bulk-load",
        dest="bulk_load",
        action="store_const",
        const=True,
        default=None,
        help="drop the vector index during the load and rebuild it after (default: when the run "
        "brings at least 1,000 documents and 100 times what the store holds)",
    )
    bulk.add_argument(
        "--no-bulk-load", dest="bulk_load", action="store_const", const=False, help="never drop the index"
    )
    run.add_argument(
        "--retries",
        type=int,
        default=retries,
        metavar="N",
        help="retries of a call that lost the database, with backoff, before the run stops "
        "(default 6, ~25 s)",
    )
    run.add_argument(
        "--quantized",
        action="store_true",
        help="embed with the int8 model even where the CPU lacks VNNI/AMX (where it has them, int8 is "
        "the default; SUPA_VECTORS_EMBEDDING_PRECISION=fp32 pins fp32)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="rollback: also undo documents changed since the run (not ones a later run rewrote)",
    )


def _fields(args: argparse.Namespace) -> FieldMap:
    from supa_vectors.migrate import FieldMap

    default = FieldMap()
    return FieldMap(
        id=tuple(args.id_field or default.id),
        content=tuple(args.content_field or default.content),
        metadata=tuple(args.metadata_field or default.metadata),
        embedding=tuple(args.embedding_field or default.embedding),
    )


def _store(args: argparse.Namespace, embedder: EmbedderLike | None) -> VectorStore:
    if embedder is None and getattr(args, "quantized", False):
        from supa_vectors.embedding import OnnxEmbedder

        embedder = OnnxEmbedder(precision="int8")
    return open_store(args, embedder, ask_anyway=True)


def _sync_mirror(store: VectorStore) -> None:
    """After a run that wrote, bring the offline mirror up to date, so that searches the backend cannot
    answer find the new documents too (incremental: only what changed since the last sync)."""
    try:
        result = store.sync_mirror()
    except SupaVectorsError as exc:
        print(f"supa-vectors: note: the offline mirror was not refreshed ({exc})", file=sys.stderr)
        return
    print(f"mirror: {result.documents} documents, for searches while offline", file=sys.stderr)


def migrate_command(
    args: argparse.Namespace,
    *,
    embedder: EmbedderLike | None = None,
    out: TextIO | None = None,
    progress: Progress | None = None,
) -> int:
    """Run the ``migrate`` group; ``embedder`` and ``progress`` replace the defaults (tests use fakes)."""
    from supa_vectors.migrate import rollback, runs
    from supa_vectors.migrate.report import render_rollback

    out = out or sys.stdout
    paths: list[str] = list(args.paths)
    action = paths[0] if paths and paths[0] in ACTIONS else None
    if action == "rollback":
        if len(paths) != 2:
            raise UsageError("rollback takes exactly one RUN_ID (see `supa-vectors migrate runs`)")
        with _store(args, embedder) as store:
            result = rollback(paths[1], store, force=args.force)
        _emit(out, args.json, result.model_dump(mode="json"), render_rollback(result))
        return result.exit_code
    if action == "runs":
        if len(paths) != 1:
            raise UsageError(f"`runs` takes no PATH, got {' '.join(paths[1:])}")
        with _store(args, embedder) as store:
            listed = runs(store)
        _emit(out, args.json, listed, _render_runs(listed))
        return 0
    if action == "verify":
        return _verify(args, paths[1:], embedder, out)
    return _migrate(args, paths, embedder, out, progress)


def _migrate(
    args: argparse.Namespace,
    paths: list[str],
    embedder: EmbedderLike | None,
    out: TextIO,
    progress: Progress | None,
) -> int:
    from supa_vectors.migrate import Retry, find_resumable, migrate, new_run_id, progress_for
    from supa_vectors.migrate.readers import DEFAULT_RECORDS_KEYS, discover
    from supa_vectors.migrate.report import EXIT_INTERRUPTED, render_migration

    if args.resume is True:
        run_id = find_resumable(args.state_dir)
        if run_id is None:
            raise UsageError(f"no unfinished run to resume in {args.state_dir}")
    elif args.resume:
        run_id = str(args.resume)
    else:
        if not paths:
            raise UsageError("nothing to migrate: give one or more PATHs (see --help)")
        if not discover(paths):
            raise InvalidInputError(f"nothing to migrate: no .json or .jsonl files in {', '.join(paths)}")
        run_id = args.run_id or new_run_id()
    with _store(args, embedder) as store:
        try:
            report = migrate(
                paths or None,
                store,
                dry_run=args.dry_run,
                resume=run_id if args.resume else False,
                run_id=run_id,
                state_dir=args.state_dir,
                fields=_fields(args),
                records_keys=tuple(args.records_key or DEFAULT_RECORDS_KEYS),
                batch_size=args.batch_size,
                workers=args.workers,
                embeddings_model=args.embeddings_model,
                embedding_mismatch=args.embedding_mismatch,
                max_metadata_depth=args.max_metadata_depth,
                backup=not args.no_backup,
                verify=not args.no_verify,
                bulk_load=args.bulk_load,
                retry=Retry(attempts=max(0, args.retries)),
                progress=progress or progress_for(sys.stderr),
            )
        except KeyboardInterrupt:
            print(
                f"supa-vectors: interrupted; what was written stays. Continue with: "
                f"supa-vectors migrate --resume {run_id}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except SupaVectorsError:
            if not args.dry_run and (Path(args.state_dir) / run_id / "checkpoint.sqlite3").is_file():
                print(
                    f"supa-vectors: run {run_id} stopped; what was written stays. Once the cause is fixed, "
                    f"continue with: supa-vectors migrate --resume {run_id}",
                    file=sys.stderr,
                )
            raise
        if report.status == "completed":
            _sync_mirror(store)
    if args.json:
        if report.report_path:
            out.write(Path(report.report_path).read_text(encoding="utf-8"))
        else:
            out.write(report.model_dump_json(indent=2) + "\n")
    else:
        out.write(render_migration(report) + "\n")
    return report.exit_code


def _verify(args: argparse.Namespace, paths: list[str], embedder: EmbedderLike | None, out: TextIO) -> int:
    from supa_vectors.migrate import MigrationOptions, verify
    from supa_vectors.migrate.checkpoint import Checkpoint
    from supa_vectors.migrate.readers import DEFAULT_RECORDS_KEYS
    from supa_vectors.migrate.report import render_verify

    fields = _fields(args)
    records_keys = tuple(args.records_key or DEFAULT_RECORDS_KEYS)
    embeddings_model, mismatch = args.embeddings_model, args.embedding_mismatch
    depth = args.max_metadata_depth
    if not paths:
        # The paths and reading options of a run: --run-id, else the newest run in the state dir.
        run_id = args.run_id or _newest_run(args.state_dir)
        checkpoint = Checkpoint(Path(args.state_dir) / run_id / "checkpoint.sqlite3")
        try:
            recorded = checkpoint.get("paths")
            options = MigrationOptions.from_json(checkpoint.get("options"))
        finally:
            checkpoint.close()
        if not recorded:
            raise UsageError(f"no run {run_id} in {args.state_dir}; give the PATHs to verify")
        paths = list(recorded)
        fields, records_keys = options.fields, options.records_keys
        embeddings_model, mismatch = options.embeddings_model, options.embedding_mismatch
        depth = options.max_metadata_depth
    with _store(args, embedder) as store:
        result = verify(
            paths,
            store,
            fields=fields,
            records_keys=records_keys,
            embeddings_model=embeddings_model,
            embedding_mismatch=mismatch,
            max_metadata_depth=depth,
        )
    _emit(out, args.json, result.model_dump(mode="json"), render_verify(result))
    return result.exit_code


def _newest_run(state_dir: Path) -> str:
    root = Path(state_dir)
    names = (
        sorted(p.name for p in root.iterdir() if (p / "checkpoint.sqlite3").is_file())
        if root.is_dir()
        else []
    )
    if not names:
        raise UsageError(f"no runs in {state_dir}; give the PATHs to verify")
    return names[-1]


def _emit(out: TextIO, as_json: bool, data: Any, text: str) -> None:
    if as_json:
        out.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        out.write(text + "\n")


def _render_runs(listed: Sequence[dict[str, Any]]) -> str:
    if not listed:
        return "no ingest runs"
    # Runs are per owner: the service role sees every owner's, and two may share a name.
    lines = [f"{'run':<26} {'status':<12} {'inserted':>9} {'updated':>8}  {'started':<32}  owner"]
    for run in listed:
        lines.append(
            f"{run['run_id']!s:<26} {run['status']!s:<12} {run['inserted']:>9} {run['updated']:>8}  "
            f"{run['started_at']!s:<32}  {run.get('owner_id') or 'service role'}"
        )
    return "\n".join(lines)
