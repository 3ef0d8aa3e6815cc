-- store_diagnostics: the catalog facts `supa-vectors doctor` checks (issue 15), for service_role only.
--
-- The SDK only calls RPCs, and PostgREST exposes no catalog, so what doctor needs from the database
-- is one read: which migrations are recorded, which tables have Row Level Security and which policies,
-- whether the vector index is there and valid (and an unfinished bulk load), pgvector's version, and
-- the settings that matter (maintenance_work_mem for index builds, hnsw.ef_search). Everything but the
-- migration list is readable by any role from pg_catalog; supabase_migrations.schema_migrations
-- belongs to the migrating role, hence the one definer function below, which returns versions only,
-- in the schema PostgREST does not expose, executable by service_role alone (decision 0019).

create function supa_vectors_internal.applied_migrations()
returns setof text
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  -- A database migrated by hand (psql) has no table: null, and doctor says it cannot tell.
  if pg_catalog.to_regclass('supabase_migrations.schema_migrations') is null then
    return;
  end if;
  return query execute 'select version::text from supabase_migrations.schema_migrations order by 1';
end
$$;

revoke all on function supa_vectors_internal.applied_migrations() from public, anon, authenticated;
grant execute on function supa_vectors_internal.applied_migrations() to service_role;

-- The facts, as one jsonb object (its keys are the contract with supa_vectors/cli/_doctor.py):
--   migrations        applied versions, oldest first; null when none are recorded (no schema_migrations)
--   schema_version    metadata_global's
--   tables            [{schema, name, rls, policies: [name, ...]}] for every table of the store's schemas
--   vector_index      {present, valid, ready, method, bytes}
--   bulk_load         the open bulk load as store_stats shows it (null: none)
--   embeddings        the planner's estimate of the embeddings' rows (sizes an index build)
--   dimension         the vector column's dimension
--   pgvector          the installed extension's version
--   settings          {maintenance_work_mem (bytes), hnsw.ef_search (server default, null when unset),
--                      match_documents_ef_search (what match_documents sets for itself; null: nothing)}
create function public.store_diagnostics()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'migrations', (select pg_catalog.jsonb_agg(v order by v) from supa_vectors_internal.applied_migrations() v),
    'schema_version', (select g.value #>> '{}' from public.metadata_global g where g.key = 'schema_version'),
    'tables', (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                        'schema', n.nspname,
                        'name', c.relname,
                        'rls', c.relrowsecurity,
                        'policies', (select coalesce(pg_catalog.jsonb_agg(p.polname::text order by p.polname), '[]')
                                       from pg_catalog.pg_policy p where p.polrelid = c.oid))
                      order by n.nspname, c.relname), '[]')
                 from pg_catalog.pg_class c
                 join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                where n.nspname in ('public', 'supa_vectors_internal')
                  and c.relkind in ('r', 'p')),
    'vector_index', (select pg_catalog.jsonb_build_object(
                              'present', i.indexrelid is not null,
                              'valid', coalesce(i.indisvalid, false),
                              'ready', coalesce(i.indisready, false),
                              'method', a.amname,
                              'bytes', pg_catalog.pg_relation_size(c.oid))
                       from (select pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') as oid) c
                       left join pg_catalog.pg_index i on i.indexrelid = c.oid
                       left join pg_catalog.pg_class ic on ic.oid = c.oid
                       left join pg_catalog.pg_am a on a.oid = ic.relam),
    'bulk_load', supa_vectors_internal.bulk_load_state(),
    'embeddings', (select greatest(c.reltuples, 0)::bigint from pg_catalog.pg_class c
                    where c.oid = 'public.embeddings'::regclass),
    'dimension', (select nullif(a.atttypmod, -1) from pg_catalog.pg_attribute a
                   where a.attrelid = 'public.embeddings'::regclass and a.attname = 'embedding'),
    'pgvector', (select e.extversion from pg_catalog.pg_extension e where e.extname = 'vector'),
    'settings', pg_catalog.jsonb_build_object(
      'maintenance_work_mem', (select s.setting::bigint * 1024 from pg_catalog.pg_settings s
                                where s.name = 'maintenance_work_mem'),
      'hnsw.ef_search', pg_catalog.current_setting('hnsw.ef_search', true),
      'match_documents_ef_search', (select pg_catalog.split_part(c, '=', 2)
                                      from pg_catalog.pg_proc p, pg_catalog.unnest(p.proconfig) c
                                     where p.pronamespace = 'public'::regnamespace
                                       and p.proname = 'match_documents'
                                       and c like 'hnsw.ef_search=%'
                                     limit 1))
  )
$$;

revoke all on function public.store_diagnostics() from public, anon, authenticated;
grant execute on function public.store_diagnostics() to service_role;
