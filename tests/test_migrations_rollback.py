"""Every migration has a tested way back: apply -> roll back -> apply again gives the same schema.

Runs on a scratch database of the session's stack (template1 carries the Supabase bootstrap), with
both appliers: the real Supabase CLI and our own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.types.json import Json

from supa_vectors.errors import LocalStackError
from supa_vectors.local import (
    applied_versions,
    apply_migrations,
    find_migrations_dir,
    rollback_last,
    rollback_to,
)
from supa_vectors.local.migrations import find_rollbacks_dir
from supa_vectors.transport.identity import Identity
from tests.conftest import USER_B, act_as

CATALOG_SNAPSHOT = """
select 'function ' || p.pronamespace::regnamespace::text || '.' || p.proname
       || '(' || pg_get_function_identity_arguments(p.oid) || ') ' || md5(pg_get_functiondef(p.oid))
       || ' ' || coalesce(array_to_string(p.proacl, ','), '')
  from pg_proc p where p.pronamespace::regnamespace::text in ('public', 'supa_vectors_internal')
union all
select 'index ' || indexdef from pg_indexes where schemaname = 'public'
union all
select 'policy ' || tablename || ' ' || policyname || ' ' || coalesce(qual, '') || coalesce(with_check, '')
  from pg_policies where schemaname = 'public'
union all
select 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || c.relrowsecurity::text || ' '
       || coalesce(array_to_string(c.relacl, ','), '')
  from pg_class c where c.relnamespace = 'public'::regnamespace
union all
select 'column ' || table_name || '.' || column_name || ' ' || data_type
       || ' ' || coalesce(column_default, '')
       || ' ' || coalesce(generation_expression, '')
  from information_schema.columns where table_schema = 'public'
union all
select 'setting ' || key || '=' || value::text from public.metadata_global
order by 1
"""


def snapshot(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute(CATALOG_SNAPSHOT).fetchall()]


def public_objects(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select (select count(*) from pg_class where relnamespace = 'public'::regnamespace)"
            " + (select count(*) from pg_proc where pronamespace = 'public'::regnamespace)"
            " + (select count(*) from pg_namespace where nspname = 'supa_vectors_internal')"
        ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(params=["builtin", "cli"])
def scratch(
    request: pytest.FixtureRequest, database_url: str
) -> Iterator[tuple[str, Literal["builtin", "cli"]]]:
    name = f"rollback_{request.param}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    parts = urlsplit(database_url)
    yield urlunsplit(parts._replace(path=f"/{name}")), request.param
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


def test_apply_roll_back_apply_gives_the_same_schema(scratch: tuple[str, Literal["builtin", "cli"]]) -> None:
    url, migrator = scratch
    versions = sorted(p.name.split("_")[0] for p in find_migrations_dir().glob("*.sql"))
    assert apply_migrations(url, migrator=migrator) == versions
    first = snapshot(url)
    assert any(line.startswith("function public.match_documents") for line in first)

    for version in reversed(versions):
        assert rollback_last(url) == version
    assert applied_versions(url) == []
    assert public_objects(url) == 0

    assert apply_migrations(url, migrator=migrator) == versions
    assert snapshot(url) == first


def test_upgrading_drops_history_rows_a_user_planted(database_url: str) -> None:
    """20261202000600 removes history rows that could only have been planted (issue 10) and keeps the rest."""
    name = "rollback_planted"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    try:
        apply_migrations(url, migrator="builtin")
        undone: list[str] = []
        while "20261202000600" not in undone:  # the migrations after it first
            version = rollback_last(url)
            assert version is not None
            undone.append(version)
        vector = "[" + ",".join(["0.05"] * 384) + "]"
        with psycopg.connect(url) as conn:
            act_as(conn, Identity.service())
            for external_id, run in (("handbook", "svc-old"), ("guide", "svc-run")):
                document = {
                    "external_id": external_id,
                    "content": f"The {external_id}",
                    "system": {"ingest_run_id": run},
                }
                conn.execute(
                    "select count(*) from public.bulk_upsert(%s, array[%s::extensions.vector])",
                    (Json([document]), vector),
                )
            act_as(conn, Identity.user(USER_B))
            conn.execute(
                "insert into public.document_history (run_id, document_id, owner_id, external_id, action,"
                " model, previous_content, previous_metadata, written_hash, written_metadata)"
                " select 'svc-run', d.id, %s, 'p1', 'updated', 'm', 'Handbook replaced by user B', '{}',"
                " d.content_hash, d.metadata from public.get_documents(array['handbook']) d",
                (USER_B,),
            )
            conn.commit()
        assert apply_migrations(url, migrator="builtin") == sorted(undone)
        with psycopg.connect(url) as conn:
            history = conn.execute(
                "select h.run_id, h.external_id, h.action from public.document_history h order by 1"
            ).fetchall()
        assert history == [("svc-old", "handbook", "inserted"), ("svc-run", "guide", "inserted")]
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


def test_rollback_to_checks_every_file_before_undoing_anything(database_url: str, tmp_path: Path) -> None:
    """A release whose rollback files are incomplete is refused whole, not rolled back halfway."""
    name = "rollback_to_checks"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    try:
        versions = apply_migrations(url, migrator="builtin")
        shipped = find_rollbacks_dir(find_migrations_dir())
        partial = tmp_path / "rollbacks"
        partial.mkdir()
        for path in sorted(shipped.glob("*.sql"))[:-2] + sorted(shipped.glob("*.sql"))[-1:]:
            shutil.copy(path, partial)  # all but the second newest
        with pytest.raises(LocalStackError, match=versions[-2]):
            rollback_to(url, versions[-3], rollbacks_dir=partial)
        assert applied_versions(url) == versions
        with pytest.raises(LocalStackError, match="not applied"):
            rollback_to(url, "19990101000000")
        assert rollback_to(url, versions[-3], dry_run=True) == [versions[-1], versions[-2]]
        assert applied_versions(url) == versions
        assert rollback_to(url, versions[-3]) == [versions[-1], versions[-2]]
        assert applied_versions(url) == versions[:-2]
        assert rollback_to(url, versions[-3]) == []
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
