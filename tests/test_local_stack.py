"""The embedded local stack, for real: initdb, pg_ctl, psycopg, and the Supabase CLI when installed.

One cluster serves the whole module (each initdb costs ~1 s); tests that need a blank database create
one inside it. The order of the tests matters where they say so: they walk one stack through start,
restart, crash, rollback and reset. No sleeps: a killed server is awaited through a pidfd.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from supa_vectors.cli import main
from supa_vectors.errors import LocalStackError
from supa_vectors.local import (
    LocalStack,
    applied_versions,
    apply_migrations,
    find_supabase_cli,
    install_pgtap,
    rollback_last,
    split_statements,
)
from supa_vectors.local import server as server_module
from supa_vectors.local.migrations import Migrator

FIRST = """-- The extension and a table, as our real migrations do it.
create extension if not exists vector with schema extensions;

create table public.docs (
  id bigserial primary key,
  owner uuid not null default auth.uid(),
  body text not null,
  embedding extensions.vector(3)
);
create table public.private_notes (id int primary key, note text);
-- Default privileges grant everything to the API roles; a migration must revoke explicitly.
revoke all on table public.private_notes from anon, authenticated;
"""

SECOND = """create function public.doc_count() returns bigint
language sql stable
begin atomic
  select count(*) from public.docs;
end;

create table public.second (id int);
"""

SECOND_ROLLBACK = """drop table public.second;
drop function public.doc_count();
"""


def _write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, "utf-8")


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is mode 700, which the server's OS user (we run as
    # root) could not traverse.
    root = Path(tempfile.mkdtemp(prefix="supa-vectors-local-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def migrations_dir(workspace: Path) -> Path:
    project = workspace / "project" / "supabase"
    _write(project / "migrations", "20250101000000_first.sql", FIRST)
    _write(project / "migrations", "20250102000000_second.sql", SECOND)
    _write(project / "rollbacks", "20250102000000_second.sql", SECOND_ROLLBACK)
    return project / "migrations"


@pytest.fixture(scope="module")
def stack(workspace: Path, migrations_dir: Path) -> Iterator[LocalStack]:
    with pytest.MonkeyPatch.context() as patch:
        # The builtin applier here; the CLI gets its own test below.
        patch.setenv("SUPA_VECTORS_MIGRATOR", "builtin")
        patch.setenv("SUPA_VECTORS_MIGRATIONS_DIR", str(migrations_dir))
        local = LocalStack(workspace / "stack")
        try:
            yield local
        finally:
            local.stop()


@pytest.fixture
def url(stack: LocalStack) -> str:
    return stack.start()


@pytest.fixture
def scratch_db(url: str) -> Iterator[str]:
    """A blank database in the module's cluster (Supabase-shaped: the bootstrap ran in template1)."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"'.encode())
    try:
        yield url.replace("/postgres?", f"/{name}?")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)'.encode())


def _wait_for_exit(pid: int) -> None:
    descriptor = os.pidfd_open(pid)
    try:
        readable, _, _ = select.select([descriptor], [], [], 30)
        assert readable, f"process {pid} did not exit"
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------------------------------
# Lifecycle (these tests run in order on the module's stack)


def test_start_prints_url_and_status_reports_it(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["local", "start", "--data-dir", str(stack.base_dir)]) == 0
    url = capsys.readouterr().out.strip()
    assert re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:\d+/postgres\?sslmode=disable", url)

    status = stack.status()
    assert status.running
    assert status.url == url
    assert status.applied_migrations == ("20250101000000", "20250102000000")

    assert main(["local", "status", "--data-dir", str(stack.base_dir)]) == 0
    printed = capsys.readouterr().out
    assert "running" in printed
    assert url in printed
    assert str(stack.data_dir) in printed
    assert "2 applied" in printed

    assert main(["local", "url", "--data-dir", str(stack.base_dir)]) == 0
    assert capsys.readouterr().out.strip() == url


def test_server_listens_on_loopback_only(url: str) -> None:
    with psycopg.connect(url) as conn:
        assert conn.execute("show listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("select current_user").fetchone() == ("postgres",)


def test_database_is_shaped_like_supabase(url: str) -> None:
    with psycopg.connect(url) as conn:
        roles = {
            row[0]: row[1:]
            for row in conn.execute(
                "select rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles "
                "where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')"
            )
        }
        assert roles == {
            "anon": (False, False, False),
            "authenticated": (False, False, False),
            "service_role": (False, False, True),
            "authenticator": (True, False, False),
        }
        for role in ("anon", "authenticated", "service_role"):
            assert conn.execute("select pg_has_role('authenticator', %s, 'member')", (role,)).fetchone() == (
                True,
            )
        extension = conn.execute(
            "select n.nspname, e.extversion from pg_extension e "
            "join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector'"
        ).fetchone()
        assert extension is not None
        assert extension[0] == "extensions"
        assert extension[1].startswith("0.8")
        for function in ("auth.uid()", "auth.role()", "auth.jwt()"):
            assert conn.execute(
                "select has_function_privilege('anon', %s, 'execute')", (function,)
            ).fetchone() == (True,)
        assert conn.execute("select has_schema_privilege('anon', 'extensions', 'usage')").fetchone() == (
            True,
        )
        # Supabase's default privileges, and a migration's explicit revoke taking effect against them.
        assert conn.execute("select has_table_privilege('anon', 'public.docs', 'select')").fetchone() == (
            True,
        )
        assert conn.execute(
            "select has_table_privilege('anon', 'public.private_notes', 'select')"
        ).fetchone() == (False,)
        assert conn.execute(
            "select has_table_privilege('service_role', 'public.private_notes', 'select')"
        ).fetchone() == (True,)
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations order by version"
        ).fetchall()
        assert [row[:2] for row in rows] == [("20250101000000", "first"), ("20250102000000", "second")]
        assert rows[1][2] == split_statements(SECOND)
        assert conn.execute("select public.doc_count()").fetchone() == (0,)


def test_auth_functions_read_the_jwt_claims(url: str) -> None:
    subject = uuid.uuid4()
    claims = f'{{"sub": "{subject}", "role": "authenticated", "email": "a@example.com"}}'
    with psycopg.connect(url) as conn:
        assert conn.execute("select auth.uid(), auth.role(), auth.jwt()").fetchone() == (None, None, None)
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("set local role authenticated")
        assert conn.execute("select auth.uid(), auth.role(), auth.jwt() ->> 'email'").fetchone() == (
            subject,
            "authenticated",
            "a@example.com",
        )
        # The column default uses auth.uid(), as RLS-owned rows do on Supabase.
        owner = conn.execute("insert into public.docs (body) values ('mine') returning owner").fetchone()
        assert owner == (subject,)
        conn.rollback()
        # PostgREST < 9 set one setting per claim; it wins over request.jwt.claims, as on Supabase.
        legacy = uuid.uuid4()
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(legacy),))
        assert conn.execute("select auth.uid()").fetchone() == (legacy,)


def test_start_when_running_is_a_no_op(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    before = stack.status()
    assert main(["local", "start", "--data-dir", str(stack.base_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == before.url
    assert "already running" in captured.err
    assert stack.start() == before.url
    assert stack.status().pid == before.pid


def test_stop_then_restart_keeps_data_and_port(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    url = stack.start()
    with psycopg.connect(url) as conn:
        conn.execute("insert into public.docs (owner, body) values (gen_random_uuid(), 'kept')")

    assert main(["local", "stop", "--data-dir", str(stack.base_dir)]) == 0
    assert stack.url() is None
    status = stack.status()
    assert not status.running
    assert status.pid is None
    assert main(["local", "status", "--data-dir", str(stack.base_dir)]) == 0
    assert "stopped" in capsys.readouterr().out
    assert main(["local", "url", "--data-dir", str(stack.base_dir)]) == 1
    err = capsys.readouterr().err
    assert "not running" in err
    assert len(err.strip().splitlines()) == 1
    stack.stop()  # stopping a stopped stack is fine too

    assert stack.start() == url  # the previous port is reused when free
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from public.docs where body = 'kept'").fetchone() == (1,)


def test_start_after_a_crash(stack: LocalStack) -> None:
    url = stack.start()
    pid = stack.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_for_exit(pid)
    assert (stack.data_dir / "postmaster.pid").exists()  # stale, naming a dead (maybe zombie) pid
    assert stack.url() is None

    assert stack.start() == url
    assert stack.status().pid not in (None, pid)
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from public.docs where body = 'kept'").fetchone() == (1,)


def test_rollback_last(url: str, migrations_dir: Path) -> None:
    assert rollback_last(url) == "20250102000000"
    assert applied_versions(url) == ["20250101000000"]
    with psycopg.connect(url) as conn:
        assert conn.execute("select to_regclass('public.second')").fetchone() == (None,)

    # No rollback file for the first migration: refuse, change nothing.
    with pytest.raises(LocalStackError, match="no rollback file"):
        rollback_last(url)
    assert applied_versions(url) == ["20250101000000"]

    assert apply_migrations(url) == ["20250102000000"]
    assert apply_migrations(url) == []


def test_rollback_failure_changes_nothing(scratch_db: str, workspace: Path) -> None:
    project = workspace / "broken-rollback" / "supabase"
    _write(project / "migrations", "20250101000000_t.sql", "create table t (id int);")
    _write(project / "rollbacks", "20250101000000_t.sql", "drop table t; select 1/0;")
    assert apply_migrations(scratch_db, project / "migrations", migrator="builtin") == ["20250101000000"]
    with pytest.raises(LocalStackError, match=r"statement 2: division by zero"):
        rollback_last(scratch_db, project / "migrations")
    assert applied_versions(scratch_db) == ["20250101000000"]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("select to_regclass('public.t')::text").fetchone() == ("t",)


def test_failed_migration_is_not_recorded(scratch_db: str, workspace: Path) -> None:
    directory = workspace / "failing" / "supabase" / "migrations"
    _write(directory, "20250101000000_ok.sql", "create table ok (id int);")
    _write(directory, "20250102000000_bad.sql", "create table half (id int);\nselect no_such_column;")
    with pytest.raises(LocalStackError, match=r"20250102000000_bad\.sql failed at statement 2"):
        apply_migrations(scratch_db, directory, migrator="builtin")
    assert applied_versions(scratch_db) == ["20250101000000"]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("select to_regclass('public.half')").fetchone() == (None,)


def test_reset_starts_from_scratch(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "reset", "--data-dir", str(stack.base_dir)]) == 0
    url = capsys.readouterr().out.strip()
    assert url == stack.url()
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from public.docs").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_roles where rolname = 'authenticator'").fetchone() == (
            1,
        )
    assert applied_versions(url) == ["20250101000000", "20250102000000"]


def test_start_failure_is_one_line_with_exit_code_1(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = workspace / "bad-migrations"
    _write(bad, "20250101000000_bad.sql", "this is not sql;")
    monkeypatch.setenv("SUPA_VECTORS_MIGRATOR", "builtin")
    base = workspace / "failing-stack"
    assert main(["local", "start", "--data-dir", str(base), "--migrations-dir", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("supa-vectors: error: ")
    assert "20250101000000_bad.sql failed at statement 1" in err
    assert len(err.strip().splitlines()) == 1
    assert LocalStack(base).url() is None  # a failed start does not leave a server behind


# --------------------------------------------------------------------------------------------------
# The Supabase CLI and our applier take over from each other


def _cli_migration_list(cli: Path, url: str, workdir: Path) -> list[tuple[str, str]]:
    proc = subprocess.run(
        [str(cli), "migration", "list", "--db-url", url, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = re.findall(r"^\s*`?(\d*)`?\s*\|\s*`?(\d*)`?\s*\|", proc.stdout, re.MULTILINE)
    return [(local, remote) for local, remote in rows if local or remote]


def _history(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "select column_name, data_type, is_nullable from information_schema.columns "
            "where table_schema = 'supabase_migrations' and table_name = 'schema_migrations' "
            "order by ordinal_position"
        ).fetchall()
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations order by version"
        ).fetchall()
    return [*columns, *rows]


INTERCHANGE = {
    "20250301000000_schema.sql": """-- comment; with a semicolon
create table public.items (id int primary key, note text default 'a;b');
create function public.f() returns int language plpgsql as $$
begin
  return 1; -- inner ;
end;
$$;
/* block ; comment */ insert into public.items values (1, 'it''s; fine');
create function public.add(a int, b int) returns int language sql
begin atomic
  select a + b;
end;
""",
    "20250302000000_empty.sql": "\n-- nothing but a comment\n",
    "20250303000000_concurrent_index.sql": """create table public.more (id int);
create index concurrently more_id on public.more (id);
insert into public.more values (1)
""",
    "20250304000000_no_transaction.sql": """-- pg-delta: transaction=false
create table public.nt (id int);
create index concurrently nt_id on public.nt (id);
""",
    "20250305000000_own_transaction.sql": """begin;
create table public.own (id int);
commit;
""",
}


@pytest.fixture
def supabase_cli() -> Path:
    cli = find_supabase_cli()
    assert cli is not None, "Supabase CLI missing: `npm ci` installs it (node_modules/.bin/supabase)"
    return cli


def _apply_in_turns(
    target: str, first: Migrator, second: Migrator, cli: Path, partial: Path, full: Path
) -> None:
    """``first`` applies two files; ``second`` must see them applied, then apply the third alone."""
    assert apply_migrations(target, partial, migrator=first) == ["20250301000000", "20250302000000"]
    if second == "cli":
        assert _cli_migration_list(cli, target, partial.parent.parent) == [
            ("20250301000000", "20250301000000"),
            ("20250302000000", "20250302000000"),
        ]
    assert apply_migrations(target, partial, migrator=second) == []
    assert apply_migrations(target, full, migrator=second) == [
        "20250303000000",
        "20250304000000",
        "20250305000000",
    ]
    assert apply_migrations(target, full, migrator=first) == []
    with psycopg.connect(target) as conn:
        assert conn.execute("select public.add(2, 3), count(*) from public.more").fetchone() == (5, 1)
        valid = conn.execute(
            "select bool_and(indisvalid), count(*) from pg_index where indexrelid in ('more_id'::regclass, "
            "'nt_id'::regclass)"
        )
        assert valid.fetchone() == (True, 2)
        assert conn.execute("select to_regclass('public.own')::text").fetchone() == ("own",)


def test_cli_and_builtin_applier_take_over_from_each_other(
    supabase_cli: Path, url: str, workspace: Path
) -> None:
    partial = workspace / "interchange-partial" / "supabase" / "migrations"
    full = workspace / "interchange-full" / "supabase" / "migrations"
    names = sorted(INTERCHANGE)
    for name in names[:2]:
        _write(partial, name, INTERCHANGE[name])
    for name in names:
        _write(full, name, INTERCHANGE[name])

    targets: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for first in ("builtin", "cli"):
            database = f"interchange_{first}_first"
            conn.execute(f"drop database if exists {database} with (force)".encode())
            conn.execute(f"create database {database}".encode())
            targets[first] = url.replace("/postgres?", f"/{database}?")

    _apply_in_turns(targets["builtin"], "builtin", "cli", supabase_cli, partial, full)
    _apply_in_turns(targets["cli"], "cli", "builtin", supabase_cli, partial, full)

    # Each file was recorded by the builtin applier in one database and by the CLI in the other:
    # same table layout, same rows.
    builtin_first = _history(targets["builtin"])
    cli_first = _history(targets["cli"])
    assert builtin_first == cli_first
    assert builtin_first[:3] == [
        ("version", "text", "NO"),
        ("statements", "ARRAY", "YES"),
        ("name", "text", "YES"),
    ]
    assert ("20250302000000", "empty", ["-- nothing but a comment"]) in cli_first


# --------------------------------------------------------------------------------------------------
# Smaller pieces


def test_split_statements_matches_the_cli_rules() -> None:
    assert split_statements("select 1; select 2;;\n") == ["select 1", "select 2"]
    assert split_statements("select ';' ; select $t$ ; $t$;") == ["select ';'", "select $t$ ; $t$"]
    assert split_statements("-- a ; comment\nselect 1; /* ; */ select 2") == [
        "-- a ; comment\nselect 1",
        "/* ; */ select 2",
    ]
    body = "create function f() returns int language sql begin atomic select 1; select 2; end"
    assert split_statements(body + "; select 3") == [body, "select 3"]
    # The CLI's quirks, kept on purpose: "atomic" must follow the word "begin"...
    assert split_statements("select x.atomic; select 1") == ["select x.atomic", "select 1"]
    # ...and an identifier ending in "end" closes the body.
    assert split_statements("begin atomic select append(); select 1") == [
        "begin atomic select append()",
        "select 1",
    ]
    assert split_statements(" \n\t") == []


def test_migrations_dir_must_exist(url: str, workspace: Path) -> None:
    with pytest.raises(LocalStackError, match="does not exist"):
        apply_migrations(url, workspace / "nope")


def test_invalid_migrator_is_rejected(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPA_VECTORS_MIGRATOR", "flyway")
    with pytest.raises(LocalStackError, match="SUPA_VECTORS_MIGRATOR"):
        apply_migrations(url)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="copying only happens as root")
def test_copied_binaries_run_as_the_server_user(workspace: Path) -> None:
    user = server_module._server_os_user()
    assert user is not None
    assert user.uid != 0
    pginstall = server_module._resolve_pginstall(workspace / "copy", user, force_copy=True)
    assert pginstall.is_relative_to(workspace / "copy")
    # initdb loads the bundled libpq through $ORIGIN: this fails if the copy broke the layout.
    proc = server_module._run(
        [pginstall / "bin" / "initdb", "--version"], user=user, cwd=workspace, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "18." in proc.stdout


def test_pgtap_can_be_installed(stack: LocalStack, scratch_db: str) -> None:
    assert list(Path("/usr/share/postgresql").glob("*/extension/pgtap.control")), "apt: postgresql-15-pgtap"
    install_pgtap(stack.base_dir)
    with psycopg.connect(scratch_db) as conn:
        conn.execute("create extension pgtap")
        assert conn.execute("select plan(1)").fetchone() == ("1..1",)
        assert conn.execute("select has_function('auth', 'uid', 'auth.uid exists')").fetchone() == (
            "ok 1 - auth.uid exists",
        )
