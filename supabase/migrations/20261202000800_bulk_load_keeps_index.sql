-- The vector index never stays missing (decision 0012).
--
-- Before this migration begin_bulk_load dropped the HNSW index whenever the load was larger than the
-- rows already stored, and only the loader's own finish_bulk_load rebuilt it: a loader killed mid-load
-- (client or database) left the store without its index until someone rebuilt it by hand, and every
-- tenant's search fell back to a sequential scan while any large load ran (p95 39 -> 370 ms).
--
-- Now:
--   * a load that drops the index leaves a durable marker (supa_vectors_internal.bulk_load) naming the
--     loader's session (pid + backend start time). The session is alive while it is in
--     pg_stat_activity; after a client crash its backend exits, after a server crash every backend is
--     new. A missing index whose loader is gone (or that no marker explains) is rebuilt by
--     restore_vector_index(), which begin_bulk_load runs first, the SDK runs before a write as the
--     table owner, and `supa-vectors local start` runs after a restart. A live load is left alone.
--   * the index is dropped only when the load dwarfs what is stored: expected_rows >=
--     max(bulk_load_min_rows, bulk_load_growth_factor x existing rows), 1,000 and 100 by default
--     (metadata_global), so loads into a store that others search keep the index.
--   * store_stats reports the marker ('bulk_load': started_at, expected_rows, abandoned) to the
--     service role, so an operator sees a load in progress or one that needs finishing.

insert into public.metadata_global (key, value) values
  ('bulk_load_min_rows', '1000'),
  ('bulk_load_growth_factor', '100');

-- One row at most: the load that dropped the index and has not rebuilt it yet.
create table supa_vectors_internal.bulk_load (
  singleton boolean primary key default true check (singleton),
  owner_pid integer not null,
  owner_backend_start timestamptz,
  expected_rows bigint,
  existing_rows bigint not null,
  started_at timestamptz not null default now()
);
alter table supa_vectors_internal.bulk_load enable row level security;
revoke all on supa_vectors_internal.bulk_load from public, anon, authenticated, service_role;
-- The service role (BYPASSRLS) may read it, for store_stats; only the table owner writes it.
grant select on supa_vectors_internal.bulk_load to service_role;

-- Whether the session that began the recorded load still exists: the same pid with the same start
-- time (after a server restart pids are reused by new sessions). A role that may not see the
-- loader's backend_start (the service role reading store_stats) goes by the pid alone; the loader
-- and the restorer are both the table owner, so they see each other's.
create function supa_vectors_internal.bulk_loader_alive()
returns boolean
language sql
stable
set search_path = ''
as $$
  select exists (
    select 1
      from supa_vectors_internal.bulk_load b
      join pg_catalog.pg_stat_activity a
        on a.pid = b.owner_pid
       and (a.backend_start is null or a.backend_start = b.owner_backend_start)
  )
$$;

-- Begin, finish and restore take this transaction lock, so two of them never build or drop at once
-- (the second waits, then finds the index back).
create function supa_vectors_internal.lock_bulk_load()
returns void
language sql
volatile
set search_path = ''
as $$
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('supa_vectors.bulk_load'))
$$;

-- restore_vector_index: rebuild the index when it is missing and no live bulk load explains it (its
-- loader's session is gone: client killed, server restarted; or the index was dropped by hand).
-- Returns whether it rebuilt. A no-op costing one catalog lookup when the index is there.
create function public.restore_vector_index()
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
begin
  if pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is not null
     and not exists (select 1 from supa_vectors_internal.bulk_load) then
    return false;
  end if;
  perform supa_vectors_internal.lock_bulk_load();
  if pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is not null then
    delete from supa_vectors_internal.bulk_load;  -- rebuilt by someone else meanwhile
    return false;
  end if;
  if supa_vectors_internal.bulk_loader_alive() then
    return false;
  end if;
  perform supa_vectors_internal.create_vector_index();
  delete from supa_vectors_internal.bulk_load;
  return true;
end
$$;

-- begin_bulk_load: finish an abandoned load first, then drop the index only for a load that dwarfs
-- the stored rows. Returns true when the caller must call finish_bulk_load (it dropped the index, or
-- this session's own earlier load is still open); false to load through the index.
create or replace function public.begin_bulk_load(expected_rows bigint)
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
  min_rows constant bigint := coalesce((supa_vectors_internal.setting('bulk_load_min_rows') #>> '{}')::bigint, 1000);
  factor constant bigint := coalesce((supa_vectors_internal.setting('bulk_load_growth_factor') #>> '{}')::bigint, 100);
  existing bigint;
begin
  -- Dropping and building the index needs the table owner; say so before deciding anything.
  if not (select pg_catalog.pg_has_role(c.relowner, 'USAGE') from pg_catalog.pg_class c
           where c.oid = 'public.embeddings'::regclass) then
    raise exception 'must be owner of table embeddings to drop its index for a bulk load'
      using errcode = 'insufficient_privilege';
  end if;
  perform public.restore_vector_index();
  perform supa_vectors_internal.lock_bulk_load();
  if pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is null then
    -- A live load holds the index dropped: this session's own (say so), or another's (load through;
    -- that loader's finish builds the index over these rows too).
    return exists (select 1 from supa_vectors_internal.bulk_load b where b.owner_pid = pg_catalog.pg_backend_pid());
  end if;
  if expected_rows is null or expected_rows < min_rows then
    return false;
  end if;
  select count(*) into existing
    from (select 1 from public.embeddings limit expected_rows / greatest(factor, 1) + 1) s;
  if expected_rows < greatest(factor, 1) * existing then
    return false;
  end if;
  drop index public.embeddings_embedding_hnsw_idx;
  insert into supa_vectors_internal.bulk_load (owner_pid, owner_backend_start, expected_rows, existing_rows)
  select pg_catalog.pg_backend_pid(), a.backend_start, expected_rows, existing
    from (select 1) one
    left join pg_catalog.pg_stat_activity a on a.pid = pg_catalog.pg_backend_pid();
  return true;
end
$$;

-- finish_bulk_load: build the index (whoever began the load) and clear the marker.
create or replace function public.finish_bulk_load()
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
  built boolean;
begin
  perform supa_vectors_internal.lock_bulk_load();
  built := supa_vectors_internal.create_vector_index();
  delete from supa_vectors_internal.bulk_load;
  return built;
end
$$;

-- The open bulk load as store_stats shows it; null when there is none or the caller may not read it
-- (plpgsql, so the table is only touched once the privilege check has passed).
create function supa_vectors_internal.bulk_load_state()
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  if not pg_catalog.has_table_privilege('supa_vectors_internal.bulk_load', 'select') then
    return null;
  end if;
  return (select pg_catalog.jsonb_build_object(
                   'started_at', b.started_at,
                   'expected_rows', b.expected_rows,
                   'abandoned', not supa_vectors_internal.bulk_loader_alive())
            from supa_vectors_internal.bulk_load b);
end
$$;

-- store_stats: as before, plus the open bulk load (null when none, or when the caller may not see it).
create or replace function public.store_stats()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'documents', (select count(*) from public.documents),
    'shared_documents', (select count(*) from public.documents d where d.owner_id is null),
    'embeddings', (select count(*) from public.embeddings),
    'models', (select coalesce(pg_catalog.jsonb_object_agg(m.model, m.n), '{}'::jsonb)
                 from (select e.model, count(*) as n from public.embeddings e group by e.model) m),
    'vector_index', pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is not null,
    'last_updated_at', (select max(d.updated_at) from public.documents d),
    'settings', public.store_settings(),
    'bulk_load', supa_vectors_internal.bulk_load_state()
  )
$$;

revoke all on function supa_vectors_internal.bulk_load_state() from public, anon;
grant execute on function supa_vectors_internal.bulk_load_state() to authenticated, service_role;
revoke all on function supa_vectors_internal.bulk_loader_alive() from public, anon, authenticated;
revoke all on function supa_vectors_internal.lock_bulk_load() from public, anon, authenticated;
revoke all on function public.restore_vector_index() from public, anon, authenticated;
grant execute on function supa_vectors_internal.bulk_loader_alive() to service_role;
grant execute on function supa_vectors_internal.lock_bulk_load() to service_role;
-- Like the bulk-load pair: service role only, and building the index needs the table owner (others
-- get 42501 when there is something to rebuild, and nothing when the index is there).
grant execute on function public.restore_vector_index() to service_role;
