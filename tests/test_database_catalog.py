"""The catalog itself: the security rules every migration must keep, checked on the real schema."""

from __future__ import annotations

import psycopg

OUR_SCHEMAS = ("public", "supa_vectors_internal")


def rows(conn: psycopg.Connection, sql: str) -> list[tuple[object, ...]]:
    return conn.execute(sql).fetchall()


def test_every_public_table_has_row_level_security(conn: psycopg.Connection) -> None:
    missing = rows(
        conn,
        """select c.relname from pg_class c
            where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
              and not c.relrowsecurity""",
    )
    assert missing == []


def test_every_function_has_a_fixed_empty_search_path_and_runs_as_invoker(conn: psycopg.Connection) -> None:
    offenders = rows(
        conn,
        f"""select p.oid::regprocedure::text, p.prosecdef, p.proconfig from pg_proc p
             where p.pronamespace::regnamespace::text in {OUR_SCHEMAS}
               and (p.prosecdef or not coalesce('search_path=""' = any (p.proconfig), false))""",
    )
    assert offenders == []


def test_no_extension_lives_in_public(conn: psycopg.Connection) -> None:
    assert rows(conn, "select extname from pg_extension where extnamespace = 'public'::regnamespace") == []
    assert rows(
        conn, "select extnamespace::regnamespace::text from pg_extension where extname = 'vector'"
    ) == [("extensions",)]


def test_every_foreign_key_is_indexed(conn: psycopg.Connection) -> None:
    # A foreign key is covered when some index starts with exactly its columns.
    unindexed = rows(
        conn,
        """select con.conrelid::regclass::text, con.conname from pg_constraint con
            where con.contype = 'f' and con.connamespace = 'public'::regnamespace
              and not exists (
                select 1 from pg_index i
                 where i.indrelid = con.conrelid
                   and (i.indkey::int2[])[0:cardinality(con.conkey) - 1] = con.conkey)""",
    )
    assert unindexed == []


def test_anon_has_no_privilege_on_tables_or_functions(conn: psycopg.Connection) -> None:
    tables = rows(
        conn,
        """select c.relname, p.privilege_type from pg_class c,
                  unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                               'TRIGGER']) as p(privilege_type)
            where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'm', 'p')
              and has_table_privilege('anon', c.oid, p.privilege_type)""",
    )
    assert tables == []
    functions = rows(
        conn,
        f"""select p.oid::regprocedure::text from pg_proc p
             where p.pronamespace::regnamespace::text in {OUR_SCHEMAS}
               and p.prokind = 'f' and p.prorettype <> 'trigger'::regtype
               and has_function_privilege('anon', p.oid, 'execute')""",
    )
    assert functions == []


def test_rpcs_are_executable_by_authenticated_and_service_role(conn: psycopg.Connection) -> None:
    for rpc in (
        "match_documents",
        "hybrid_search",
        "bulk_upsert",
        "delete_documents",
        "get_documents",
        "list_documents",
        "count_documents",
        "store_stats",
        "store_settings",
    ):
        grants = rows(
            conn,
            f"""select has_function_privilege('authenticated', p.oid, 'execute'),
                       has_function_privilege('service_role', p.oid, 'execute')
                  from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname = '{rpc}'""",
        )
        assert grants == [(True, True)], rpc


def test_policies_read_the_user_id_once_per_statement(conn: psycopg.Connection) -> None:
    # `(select auth.uid())` is evaluated once (an InitPlan); a bare auth.uid() runs per row.
    bare = rows(
        conn,
        """select tablename, policyname from pg_policies
            where schemaname = 'public'
              and (coalesce(qual, '') || coalesce(with_check, '')) ~ '(?<!SELECT )auth\\.uid\\(\\)'""",
    )
    assert bare == []


def test_store_settings_are_seeded(conn: psycopg.Connection) -> None:
    settings = conn.execute("select public.store_settings()").fetchone()
    assert settings is not None
    assert settings[0]["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert settings[0]["embedding_dimension"] == 384
    assert settings[0]["schema_version"] == 1


def test_signed_in_users_hold_only_row_level_privileges(conn: psycopg.Connection) -> None:
    # TRUNCATE ignores Row Level Security; Supabase's default privileges would grant it.
    granted = rows(
        conn,
        """select c.relname, p.privilege_type from pg_class c,
                  unnest(array['TRUNCATE', 'REFERENCES', 'TRIGGER']) as p(privilege_type)
            where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
              and (has_table_privilege('authenticated', c.oid, p.privilege_type)
                   or has_table_privilege('service_role', c.oid, p.privilege_type))""",
    )
    assert granted == []
