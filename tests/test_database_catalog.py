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


def test_every_function_has_a_fixed_empty_search_path(conn: psycopg.Connection) -> None:
    offenders = rows(
        conn,
        f"""select p.oid::regprocedure::text, p.proconfig from pg_proc p
             where p.pronamespace::regnamespace::text in {OUR_SCHEMAS}
               and not coalesce('search_path=""' = any (p.proconfig), false)""",
    )
    assert offenders == []


# The only functions that run as their owner (docs/decisions/0010-history-written-by-its-run.md): the
# trigger that writes run history from real row changes (nobody may call it), the run-state function
# the ingest-run RPCs call, and the monitoring read of pg_stat_statements (decision 0018). Each checks
# its caller itself or is callable by service_role only; every other function runs as its caller, under
# Row Level Security. Columns: schema, owned by the tables' owner, a trigger function, callers.
SECURITY_DEFINER = [
    # The applied migrations' versions for `supa-vectors doctor` (decision 0019): service_role only.
    ("supa_vectors_internal.applied_migrations()", "supa_vectors_internal", True, False, "service_role"),
    ("supa_vectors_internal.record_run_history()", "supa_vectors_internal", True, True, ""),
    # pg_stat_statements' figures for the store's RPCs, whoever called them (decision 0018): returns no
    # statement text, service_role only.
    ("supa_vectors_internal.rpc_statement_stats()", "supa_vectors_internal", True, False, "service_role"),
    (
        "supa_vectors_internal.update_ingest_run(text,text,jsonb,jsonb,jsonb)",
        "supa_vectors_internal",  # never an RPC: PostgREST does not expose this schema
        True,
        False,
        "authenticated,service_role",
    ),
]


def test_only_the_listed_functions_run_as_their_owner_and_only_their_callers_may_call_them(
    conn: psycopg.Connection,
) -> None:
    definers = rows(
        conn,
        f"""select p.oid::regprocedure::text, p.pronamespace::regnamespace::text,
                  p.proowner = (select relowner from pg_class where oid = 'public.documents'::regclass),
                  p.prorettype = 'trigger'::regtype,
                  array_to_string(array(
                    select r.rolname::text from pg_roles r
                     where r.rolname in ('anon', 'authenticated', 'service_role')
                       and has_function_privilege(r.oid, p.oid, 'execute') order by 1), ',')
             from pg_proc p
            where p.pronamespace::regnamespace::text in {OUR_SCHEMAS} and p.prosecdef
            order by 1""",
    )
    assert definers == SECURITY_DEFINER
    # PUBLIC holds EXECUTE on new functions by default; has_function_privilege counts it for every role.
    public_grants = rows(
        conn,
        f"""select p.oid::regprocedure::text from pg_proc p, aclexplode(p.proacl) a
             where p.pronamespace::regnamespace::text in {OUR_SCHEMAS} and p.prosecdef and a.grantee = 0""",
    )
    assert public_grants == []


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


def test_each_role_has_at_most_one_permissive_policy_per_action(conn: psycopg.Connection) -> None:
    # Supabase's linter (splinter) warns multiple_permissive_policies: permissive policies are OR-ed, so
    # every one that applies runs on every row. A `for all` policy applies to each action.
    overlapping = rows(
        conn,
        """select p.tablename, r.role, a.action, array_agg(p.policyname::text order by p.policyname)
             from pg_policies p,
                  unnest(case when 'public' = any (p.roles)
                              then array['anon', 'authenticated', 'service_role']
                              else p.roles::text[] end) as r(role),
                  unnest(case p.cmd when 'ALL' then array['SELECT', 'INSERT', 'UPDATE', 'DELETE']
                                    else array[p.cmd] end) as a(action)
            where p.schemaname = 'public' and p.permissive = 'PERMISSIVE'
            group by 1, 2, 3 having count(*) > 1""",
    )
    assert overlapping == []
