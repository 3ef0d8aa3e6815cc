-- What a hosted Supabase database already has before the first migration, so that our migrations in
-- supabase/migrations run unmodified against the embedded local Postgres.
--
-- Not a migration: `supa-vectors local start` runs it once, right after initdb. It is idempotent all the
-- same, so a start interrupted between initdb and the end of this script simply runs it again.
--
-- Mirrors supabase/postgres (migrations/db/init-scripts) and supabase/auth (auth.uid() & co), minus what
-- we do not use (storage, realtime, supabase_admin, pg_cron/pg_net event triggers). Differences that
-- remain: `postgres` is a superuser here (it is not on hosted Supabase), and the vector extension is NOT
-- created: our migrations do that themselves with `create extension if not exists vector with schema
-- extensions`, exactly as they must on a fresh hosted project.

-- ---------------------------------------------------------------------------------------------------
-- API roles. PostgREST logs in as `authenticator` and switches to one of the three per request.
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;
-- So that tests and the SDK's direct-Postgres transport can `set role authenticated` as the owner.
grant anon, authenticated, service_role to postgres;

-- Hosted Supabase caps API roles' statements; keep the same limits so timeouts behave alike locally.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- ---------------------------------------------------------------------------------------------------
-- Extensions live in their own schema, reachable from the API roles and on postgres' search_path.
create schema if not exists extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
alter role postgres set search_path to "$user", public, extensions;
-- pg_stat_statements, as hosted Supabase has it (the server preloads its library): store_rpc_stats.
create extension if not exists pg_stat_statements with schema extensions;

-- ---------------------------------------------------------------------------------------------------
-- Default privileges of schema public: every new table, sequence and function is fully granted to the
-- API roles. That is why our migrations must revoke explicitly, and why the local stack must reproduce
-- it: a revoke that is missing would otherwise go unnoticed in tests.
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to postgres, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------------
-- The part of GoTrue's `auth` schema that RLS policies use: the JWT claims PostgREST puts into
-- `request.jwt.claims` (and, for PostgREST < 9, the per-claim `request.jwt.claim.*` settings).
-- Same bodies as supabase/auth's current definitions.
create schema if not exists auth;

create or replace function auth.uid()
  returns uuid
  set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.sub', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$func$ language sql stable;

create or replace function auth.role()
  returns text
  set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.role', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$func$ language sql stable;

create or replace function auth.email()
  returns text
  set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.email', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
    )::text
$func$ language sql stable;

create or replace function auth.jwt()
  returns jsonb
  set search_path to ''
as $func$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim', true), ''),
      nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$func$ language sql stable;

grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;
