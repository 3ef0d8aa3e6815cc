"""Applying ``supabase/migrations`` to a database, with the Supabase CLI or without it.

The real CLI (``supabase db push``) is what deploys to hosted projects, so it is preferred whenever it
is installed. Our own applier exists for machines without Node/the CLI, and it records migrations in
``supabase_migrations.schema_migrations`` exactly as the CLI (2.117) does -- same DDL, hence the same
column order ``version, statements, name``; the same statement splitting; ``'{}'`` for a file without
statements -- and runs files the same way (one transaction per file, ``create index concurrently`` and
the like outside it, files with their own ``begin``/``commit`` statement by statement), so that either
one can take over a database the other migrated.

Rollbacks are our addition: ``supabase/rollbacks/<same file name>`` undoes the migration of that name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import errors as pg_errors

from supa_vectors._core import rpcs
from supa_vectors.errors import LocalStackError

__all__ = [
    "ENV_MIGRATIONS_DIR",
    "ENV_MIGRATOR",
    "ENV_SUPABASE_CLI",
    "Migration",
    "applied_versions",
    "apply_migrations",
    "find_migrations_dir",
    "find_rollbacks_dir",
    "find_supabase_cli",
    "list_local_migrations",
    "parse_migration",
    "rebuild_dropped_index",
    "rollback_last",
    "split_statements",
]

ENV_MIGRATIONS_DIR = "SUPA_VECTORS_MIGRATIONS_DIR"
ENV_MIGRATOR = "SUPA_VECTORS_MIGRATOR"
ENV_SUPABASE_CLI = "SUPA_VECTORS_SUPABASE_CLI"

Migrator = Literal["cli", "builtin"]

# The CLI's own statements, kept verbatim so that the table is identical.
_SET_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '4s'"
_CREATE_VERSION_SCHEMA = "CREATE SCHEMA IF NOT EXISTS supabase_migrations"
_CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text NOT NULL PRIMARY KEY)"
)
_ADD_STATEMENTS_COLUMN = (
    "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[]"
)
_ADD_NAME_COLUMN = "ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text"
_INSERT_VERSION = (
    "INSERT INTO supabase_migrations.schema_migrations(version, name, statements) VALUES (%s, %s, %s)"
)
_DELETE_VERSION = "DELETE FROM supabase_migrations.schema_migrations WHERE version = %s"
_LIST_VERSIONS = "SELECT version FROM supabase_migrations.schema_migrations ORDER BY version"

_MIGRATION_FILE = re.compile(r"([0-9]+)_(.*)\.sql")
_LEGACY_INIT = re.compile(r"([0-9]{14})_init\.sql")
_CLI_TIMEOUT_S = 600


# --------------------------------------------------------------------------------------------------
# Where the files are


def find_migrations_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The migrations directory: the argument, else ``SUPA_VECTORS_MIGRATIONS_DIR``, else the shipped one.

    An installed wheel carries the migrations as the package resource ``supa_vectors/_migrations``
    (pyproject force-includes ``supabase/migrations`` there); a source checkout has them at
    ``<repo>/supabase/migrations``. The packaged copy is tried first because, installed, ``parents[2]``
    is site-packages, where ``supabase/`` is the unrelated supabase-py package.
    """
    chosen = override or os.environ.get(ENV_MIGRATIONS_DIR)
    if chosen:
        path = Path(chosen).expanduser().absolute()
        if not path.is_dir():
            raise LocalStackError(f"migrations directory {path} does not exist")
        return path
    shipped = shipped_supabase_dir("migrations")
    if shipped is not None:
        return shipped
    raise LocalStackError(
        "cannot find the supabase migrations (no packaged supa_vectors/_migrations, no supabase/migrations "
        f"in a checkout); set {ENV_MIGRATIONS_DIR}"
    )


def shipped_supabase_dir(name: str) -> Path | None:
    """``supabase/<name>`` as this installation ships it: the wheel's ``supa_vectors/_<name>``
    (pyproject force-includes it), else a source checkout's; None when neither exists."""
    packaged = Path(str(resources.files("supa_vectors").joinpath(f"_{name}")))
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2]
    checkout = repo / "supabase" / name
    if (repo / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return None


def find_rollbacks_dir(migrations_dir: Path) -> Path:
    """``supabase/rollbacks`` beside ``supabase/migrations`` (``_rollbacks`` beside a packaged copy)."""
    sibling = "_rollbacks" if migrations_dir.name == "_migrations" else "rollbacks"
    return migrations_dir.parent / sibling


def find_supabase_cli(migrations_dir: Path | None = None) -> Path | None:
    """The Supabase CLI binary, found without npx (which would try the network).

    Looked for, in order: ``SUPA_VECTORS_SUPABASE_CLI``, ``node_modules/.bin/supabase`` in the repo
    that holds the migrations and in this source checkout, then ``supabase`` on PATH.
    """
    explicit = os.environ.get(ENV_SUPABASE_CLI)
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LocalStackError(f"{ENV_SUPABASE_CLI}={explicit!r} is not an executable file")
        return path.absolute()
    roots: list[Path] = []
    if migrations_dir is not None and migrations_dir.parent.name == "supabase":
        roots.append(migrations_dir.parent.parent)
    roots.append(Path(__file__).resolve().parents[2])
    for root in roots:
        candidate = root / "node_modules" / ".bin" / "supabase"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("supabase")
    return Path(on_path) if on_path else None


# --------------------------------------------------------------------------------------------------
# Reading a file into statements exactly like the Supabase CLI
#
# The CLI stores each migration's statements in schema_migrations.statements, so our applier must cut a
# file at the very same places. Its tokenizer (CLI 2.117, TypeScript; formerly Go's pkg/parser) is a
# small state machine with quirks that are reproduced on purpose: a closing quote is only noticed on the
# next character; an inner ")" closes every open parenthesis; "END" ends a BEGIN ATOMIC body even at the
# end of an identifier such as "append". Whitespace means JavaScript's \s, not Python's.

_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"  # noqa: E501
_WS = f"[{_JS_SPACE}]"
_NO_TRANSACTION_MARKER = "-- pg-delta: transaction=false"
# Statements the CLI runs on their own, outside the migration's transaction.
_OUTSIDE_TRANSACTION = [
    re.compile(rf"^CREATE{_WS}+(?:UNIQUE{_WS}+)?INDEX{_WS}+CONCURRENTLY(?:{_WS}|\Z)"),
    re.compile(rf"^DROP{_WS}+INDEX{_WS}+CONCURRENTLY(?:{_WS}|\Z)"),
    re.compile(rf"^REINDEX(?:{_WS}|\()[^\n\r\u2028\u2029]*{_WS}CONCURRENTLY(?:{_WS}|\Z)"),
    re.compile(rf"^VACUUM(?:{_WS}|\(|\Z)"),
    re.compile(rf"^ALTER{_WS}+SYSTEM(?:{_WS}|\Z)"),
    re.compile(rf"^CLUSTER(?:{_WS}|\Z)"),
]
# Statements that mean the file manages its own transaction.
_TRANSACTION_CONTROL = re.compile(
    rf"^(?:BEGIN|START{_WS}+TRANSACTION|COMMIT|END|ABORT|PREPARE{_WS}+TRANSACTION)(?:{_WS}|\Z)"
)


def _is_identifier_char(ch: str) -> bool:
    return ch.isalpha() or ch.isdecimal() or ch in "_$"


class _Token:
    """The statement being scanned, ``text[start:end]``, without copying it for every character."""

    __slots__ = ("end", "start", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.start = 0
        self.end = 0

    def tail(self, length: int) -> str:
        return self.text[max(self.start, self.end - length) : self.end]

    def opens_atomic_body(self) -> bool:
        """Does the statement so far end in ``BEGIN <whitespace> ATOMIC`` as whole words?"""
        text, start = self.text, self.start
        atomic = self.end - 6
        if atomic < start or text[atomic : self.end].upper() != "ATOMIC":
            return False
        if atomic > start and _is_identifier_char(text[atomic - 1]):
            return False
        stop = atomic
        while stop > start and text[stop - 1] in _JS_SPACE:
            stop -= 1
        begin = stop - 5
        if begin < start or text[begin:stop].upper() != "BEGIN":
            return False
        return begin == start or not _is_identifier_char(text[begin - 1])


class _State:
    def next(self, ch: str, tok: _Token) -> _State | None:  # None: the statement ends here
        raise NotImplementedError


class _Ready(_State):
    def next(self, ch: str, tok: _Token) -> _State | None:
        if ch == "$":
            return _Tag(tok.end - 1)
        if ch in "'\"":
            return _Quote(ch)
        if ch == "-":
            return _Comment()
        if ch == "/":
            return _Block()
        if ch == "\\":
            return _Escape()
        if ch == ";":
            return None
        if ch == "(":
            return _Nested(_Ready(), ")")
        if ch in "cC" and tok.opens_atomic_body():
            return _Nested(_Ready(), "END")
        return self


class _Comment(_State):
    def next(self, ch: str, tok: _Token) -> _State | None:
        if ch == "-":
            return _Dollar("\n")
        return _Ready().next(ch, tok)


class _Block(_State):
    def __init__(self) -> None:
        self.depth = 0

    def next(self, ch: str, tok: _Token) -> _State | None:
        window = tok.tail(2)
        if window == "/*":
            self.depth += 1
            return self
        if self.depth == 0:
            return _Ready().next(ch, tok)
        if window == "*/":
            self.depth -= 1
            if self.depth == 0:
                return _Ready()
        return self


class _Quote(_State):
    def __init__(self, delimiter: str) -> None:
        self.delimiter = delimiter
        self.escape = False

    def next(self, ch: str, tok: _Token) -> _State | None:
        if self.escape:
            if ch == self.delimiter:
                self.escape = False
                return self
            return _Ready().next(ch, tok)
        if ch == self.delimiter:
            self.escape = True
        return self


class _Dollar(_State):
    def __init__(self, delimiter: str) -> None:
        self.delimiter = delimiter

    def next(self, ch: str, tok: _Token) -> _State | None:
        return _Ready() if tok.tail(len(self.delimiter)) == self.delimiter else self


class _Tag(_State):
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def next(self, ch: str, tok: _Token) -> _State | None:
        if ch == "$":
            return _Dollar(tok.text[self.offset : tok.end])
        if ch.isalpha() or ch.isdecimal() or ch == "_":
            return self
        return _Ready().next(ch, tok)


class _Escape(_State):
    def next(self, ch: str, tok: _Token) -> _State | None:
        return _Ready()


class _Nested(_State):
    """Inside ``( ... )`` or a ``BEGIN ATOMIC ... END`` body, where semicolons do not split."""

    def __init__(self, prev: _State, delimiter: str) -> None:
        self.prev = prev
        self.delimiter = delimiter

    def next(self, ch: str, tok: _Token) -> _State | None:
        current = self.prev.next(ch, tok)
        if current is not None:
            self.prev = current
        if isinstance(self.prev, _Ready) and tok.tail(len(self.delimiter)).upper() == self.delimiter:
            return _Ready()
        return self


def split_statements(sql: str) -> list[str]:
    """Cut SQL into statements at top-level semicolons, as ``supabase db push`` does.

    Comments and whitespace inside a statement are kept; trailing semicolons and surrounding
    whitespace are trimmed, and empty pieces dropped.
    """
    tok = _Token(sql)
    state: _State = _Ready()
    raw: list[str] = []
    for index, ch in enumerate(sql):
        tok.end = index + 1
        following = state.next(ch, tok)
        if following is None:
            raw.append(sql[tok.start : tok.end])
            tok.start = tok.end
            following = _Ready()
        state = following
    if tok.start < len(sql):
        raw.append(sql[tok.start :])
    trimmed = (piece.rstrip(";").strip(_JS_SPACE) for piece in raw)
    return [piece for piece in trimmed if piece]


def parse_migration(sql: str) -> tuple[list[str], bool]:
    """The statements of a migration file, and whether it runs inside a transaction.

    A first line ``-- pg-delta: transaction=false`` opts the whole file out of the transaction (for
    ``create index concurrently`` and friends), as the CLI honours it.
    """
    body = sql[1:] if sql.startswith("\ufeff") else sql
    first_line = body.split("\n", 1)[0]
    if first_line.removesuffix("\r") == _NO_TRANSACTION_MARKER:
        return split_statements(body), False
    return split_statements(sql), True


def _leading_keywords(statement: str) -> str:
    """The statement without leading comments, for classifying it."""
    text = statement.lstrip(" \t\n\r")
    while text.startswith("\ufeff"):
        text = text[1:].lstrip(" \t\n\r")
    while True:
        if text.startswith("--"):
            newline = text.find("\n")
            if newline < 0:
                return ""
            text = text[newline + 1 :].lstrip(" \t\n\r")
        elif text.startswith("/*"):
            close = text.find("*/")
            if close < 0:
                return text
            text = text[close + 2 :].lstrip(" \t\n\r")
        else:
            return text.strip(_JS_SPACE)


def _runs_outside_transaction(statement: str) -> bool:
    head = _leading_keywords(statement).upper()
    return any(pattern.search(head) for pattern in _OUTSIDE_TRANSACTION)


def _controls_transaction(statement: str) -> bool:
    head = _leading_keywords(statement).upper()
    words = re.split(f"{_WS}+", head)
    if words[0] == "ROLLBACK":
        index = 2 if len(words) > 1 and words[1] in ("WORK", "TRANSACTION") else 1
        return index >= len(words) or words[index] != "TO"
    return _TRANSACTION_CONTROL.search(head) is not None


# --------------------------------------------------------------------------------------------------
# Local and remote migration lists


@dataclass(frozen=True)
class Migration:
    """One ``<version>_<name>.sql`` file."""

    version: str
    name: str
    path: Path = field(compare=False)

    @property
    def filename(self) -> str:
        return self.path.name

    def read(self) -> str:
        try:
            return self.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LocalStackError(f"cannot read migration {self.path}: {exc}") from exc

    def statements(self) -> list[str]:
        """The statements as ``schema_migrations.statements`` records them."""
        return parse_migration(self.read())[0]


def list_local_migrations(migrations_dir: Path) -> list[Migration]:
    """Migration files in the CLI's order and with its filters.

    Sub-directories are ignored, and so is a pre-2021-12-09 ``<timestamp>_init.sql`` when it sorts
    first (old CLI versions generated one; the CLI still skips it).
    """
    try:
        names = sorted(entry.name for entry in migrations_dir.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LocalStackError(f"cannot list {migrations_dir}: {exc}") from exc
    found: list[Migration] = []
    for index, name in enumerate(names):
        path = migrations_dir / name
        if path.is_dir() and not path.is_symlink():
            continue
        legacy = _LEGACY_INIT.search(name)
        if index == 0 and legacy and int(legacy.group(1)) < 20211209000000:
            continue
        match = _MIGRATION_FILE.fullmatch(name)
        if match:
            found.append(Migration(match.group(1), match.group(2), path))
    return sorted(found, key=lambda migration: migration.version)


_Conn = psycopg.Connection[tuple[object, ...]]


def _remote_versions(conn: _Conn) -> list[str]:
    try:
        with conn.transaction():
            rows = conn.execute(_LIST_VERSIONS).fetchall()
    except pg_errors.UndefinedTable:
        return []
    return [str(row[0]) for row in rows]


def applied_versions(url: str) -> list[str]:
    """Versions recorded in ``supabase_migrations.schema_migrations``, oldest first."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            return _remote_versions(conn)
    except psycopg.Error as exc:
        raise LocalStackError(f"cannot read the applied migrations: {_one_line(exc)}") from exc


def rebuild_dropped_index(url: str) -> bool:
    """Rebuild the vector index if a bulk load left it dropped and its loader is gone (after a
    restart, every loader is): the database's ``restore_vector_index()``, as the table owner.

    Returns whether it rebuilt; False too on a schema without the function (other migrations).
    """
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            function = f"public.{rpcs.RESTORE_VECTOR_INDEX.name}()"
            found = conn.execute("select to_regprocedure(%s)", (function,)).fetchone()
            row = found and found[0] and conn.execute(f"select {function}").fetchone()
    except psycopg.Error as exc:
        raise LocalStackError(f"cannot rebuild the vector index: {_one_line(exc)}") from exc
    rebuilt = bool(row and row[0])
    if rebuilt:
        logging.getLogger("supa_vectors").warning(
            "supa-vectors: rebuilt the vector index that an interrupted bulk load had dropped"
        )
    return rebuilt


def _pending(local: list[Migration], remote: list[str], migrations_dir: Path) -> list[Migration]:
    """What ``db push`` would apply, refusing the same situations it refuses."""
    local_versions = {migration.version for migration in local}
    missing = [version for version in remote if version not in local_versions]
    if missing:
        raise LocalStackError(
            f"the database has migrations that are not in {migrations_dir}: {', '.join(missing)} "
            "(restore those files, roll them back, or reset the local stack)"
        )
    latest = remote[-1] if remote else ""
    applied = set(remote)
    pending = [migration for migration in local if migration.version not in applied]
    out_of_order = [migration.filename for migration in pending if migration.version < latest]
    if out_of_order:
        raise LocalStackError(
            f"migrations older than the last applied one ({latest}) are not applied: "
            f"{', '.join(out_of_order)}; give them a newer timestamp"
        )
    return pending


# --------------------------------------------------------------------------------------------------
# Applying


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _choose_migrator(migrations_dir: Path, migrator: Migrator | None) -> tuple[Migrator, Path | None]:
    wanted = migrator or os.environ.get(ENV_MIGRATOR, "").strip().lower() or None
    if wanted not in (None, "cli", "builtin"):
        raise LocalStackError(f"{ENV_MIGRATOR} must be 'cli' or 'builtin', not {wanted!r}")
    if wanted == "builtin":
        return "builtin", None
    cli = find_supabase_cli(migrations_dir)
    if cli is not None:
        return "cli", cli
    if wanted == "cli":
        raise LocalStackError(
            f"{ENV_MIGRATOR}=cli but no Supabase CLI was found (node_modules/.bin/supabase, PATH, "
            f"{ENV_SUPABASE_CLI})"
        )
    return "builtin", None


def apply_migrations(
    url: str,
    migrations_dir: str | os.PathLike[str] | None = None,
    *,
    migrator: Migrator | None = None,
) -> list[str]:
    """Apply the pending migrations; returns the versions applied now, oldest first.

    ``migrator`` (or ``SUPA_VECTORS_MIGRATOR``) forces ``"cli"`` or ``"builtin"``; by default the
    Supabase CLI is used when it can be found, so that local runs exercise what deploys.
    """
    directory = find_migrations_dir(migrations_dir)
    kind, cli = _choose_migrator(directory, migrator)
    if kind == "cli" and cli is not None:
        before = set(applied_versions(url))
        _push_with_cli(cli, url, directory)
        return [version for version in applied_versions(url) if version not in before]
    return _apply_builtin(url, directory)


def _apply_builtin(url: str, migrations_dir: Path) -> list[str]:
    local = list_local_migrations(migrations_dir)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            pending = _pending(local, _remote_versions(conn), migrations_dir)
            if pending:
                with conn.transaction():
                    for statement in (
                        _SET_LOCK_TIMEOUT,
                        _CREATE_VERSION_SCHEMA,
                        _CREATE_VERSION_TABLE,
                        _ADD_STATEMENTS_COLUMN,
                        _ADD_NAME_COLUMN,
                    ):
                        conn.execute(statement)
            for migration in pending:
                # Like the CLI: settings a previous file changed (search_path...) must not leak.
                conn.execute("RESET ALL")
                _apply_one(conn, migration)
    except psycopg.Error as exc:
        raise LocalStackError(f"applying migrations failed: {_one_line(exc)}") from exc
    return [migration.version for migration in pending]


def _apply_one(conn: _Conn, migration: Migration) -> None:
    """Run one file the way ``db push`` does, and record it in the same transaction as its last part.

    Normally the whole file is one transaction, except statements Postgres refuses inside one
    (``create index concurrently``, ``vacuum``...), which run on their own between the parts before
    and after them. A file that opts out with ``-- pg-delta: transaction=false``, or that issues its
    own ``begin``/``commit``, is run statement by statement.
    """
    statements, transactional = parse_migration(migration.read())
    record = (migration.version, migration.name, statements)
    if not transactional or any(_controls_transaction(statement) for statement in statements):
        cleanup = "ROLLBACK" if transactional else "RESET ALL"
        try:
            _execute_all(conn, migration.path, statements)
            conn.execute(_INSERT_VERSION, record)
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.execute(cleanup)
            raise
        return
    batch: list[tuple[int, str]] = []
    for number, statement in enumerate(statements, start=1):
        if _runs_outside_transaction(statement):
            if batch:
                with conn.transaction():
                    _execute_all(conn, migration.path, batch)
                batch = []
            _execute_all(conn, migration.path, [(number, statement)])
        else:
            batch.append((number, statement))
    with conn.transaction():
        _execute_all(conn, migration.path, batch)
        conn.execute(_INSERT_VERSION, record)


def _execute_all(conn: _Conn, path: Path, statements: Sequence[str] | Sequence[tuple[int, str]]) -> None:
    for position, item in enumerate(statements, start=1):
        number, statement = item if isinstance(item, tuple) else (position, item)
        try:
            conn.execute(statement.encode("utf-8"))
        except psycopg.Error as exc:
            raise LocalStackError(f"{path.name} failed at statement {number}: {_one_line(exc)}") from exc


def _push_with_cli(cli: Path, url: str, migrations_dir: Path) -> None:
    """``supabase db push --db-url`` from a workdir whose ``supabase/migrations`` is our directory.

    When the directory is not laid out as ``<workdir>/supabase/migrations`` (a scratch directory in
    tests, the packaged ``_migrations``), the files are copied into a temporary workdir.
    """
    if migrations_dir.name == "migrations" and migrations_dir.parent.name == "supabase":
        _run_cli(cli, url, migrations_dir.parent.parent)
        return
    with tempfile.TemporaryDirectory(prefix="supa-vectors-push-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(migrations_dir, workdir / "supabase" / "migrations")
        _run_cli(cli, url, workdir)


def _run_cli(cli: Path, url: str, workdir: Path) -> None:
    argv = [str(cli), "db", "push", "--db-url", url, "--yes", "--workdir", str(workdir)]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            timeout=_CLI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalStackError(f"supabase db push did not finish within {_CLI_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise LocalStackError(f"could not run the Supabase CLI {cli}: {exc}") from exc
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        detail = (errors or lines or ["no output"])[0]
        raise LocalStackError(f"supabase db push failed (exit {proc.returncode}): {detail}")


# --------------------------------------------------------------------------------------------------
# Rolling back


def rollback_last(
    url: str,
    migrations_dir: str | os.PathLike[str] | None = None,
    *,
    rollbacks_dir: str | os.PathLike[str] | None = None,
) -> str | None:
    """Undo the newest applied migration with its rollback file; returns its version, None if none.

    The rollback's statements and the removal of the ``schema_migrations`` row commit together, so a
    failing rollback leaves both the schema and the history as they were.
    """
    directory = (
        Path(rollbacks_dir) if rollbacks_dir else find_rollbacks_dir(find_migrations_dir(migrations_dir))
    )
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            remote = _remote_versions(conn)
            if not remote:
                return None
            version = remote[-1]
            candidates = [m for m in list_local_migrations(directory) if m.version == version]
            if not candidates:
                raise LocalStackError(f"no rollback file for migration {version} in {directory}")
            rollback = candidates[0]
            statements, _transactional = parse_migration(rollback.read())
            conn.execute("RESET ALL")
            with conn.transaction():
                _execute_all(conn, rollback.path, statements)
                conn.execute(_DELETE_VERSION, (version,))
    except psycopg.Error as exc:
        raise LocalStackError(f"rolling back failed: {_one_line(exc)}") from exc
    return version


def rollback_to(
    url: str,
    version: str,
    migrations_dir: str | os.PathLike[str] | None = None,
    *,
    rollbacks_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Undo, newest first, every applied migration newer than ``version`` (``"0"``: all of them);
    returns the versions undone, or with ``dry_run`` the ones that would be.

    Hosted Supabase has no down-migrations (``supabase db push`` only goes forward), so a release is
    rolled back with the files in ``supabase/rollbacks/``. Every rollback file is checked to exist
    before anything is undone; each then commits with its ``schema_migrations`` row, so a rollback
    that is interrupted or fails stops at a version boundary and, run again, continues from there.
    """
    directory = (
        Path(rollbacks_dir) if rollbacks_dir else find_rollbacks_dir(find_migrations_dir(migrations_dir))
    )
    applied = applied_versions(url)
    if version != "0" and version not in applied:
        recent = ", ".join(applied[-3:]) or "none"
        raise LocalStackError(f"migration {version} is not applied to this database (the newest: {recent})")
    newer = [v for v in reversed(applied) if v > version]
    available = {m.version for m in list_local_migrations(directory)}
    missing = [v for v in newer if v not in available]
    if missing:
        raise LocalStackError(
            f"no rollback file in {directory} for {', '.join(missing)}; nothing was rolled back"
        )
    if dry_run:
        return newer
    undone: list[str] = []
    for expected in newer:
        got = rollback_last(url, rollbacks_dir=directory)
        if got != expected:  # someone else migrated meanwhile: stop at a boundary, say where
            raise LocalStackError(
                f"rolled back {', '.join(undone) or 'nothing'}, then found {got} instead of {expected} "
                "as the newest migration; stopped"
            )
        undone.append(expected)
    return undone
