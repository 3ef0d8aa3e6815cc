-- Undoes 20261202000800_bulk_load_keeps_index.sql: the bulk-load pair and store_stats as
-- 20261125000300_store_rpcs.sql defined them, without the marker, the restore RPC and the settings.
-- An index dropped by an open load stays dropped: run finish_bulk_load() first.

create or replace function public.begin_bulk_load(expected_rows bigint)
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
  existing bigint;
begin
  if pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is null then
    return true;
  end if;
  select count(*) into existing from (select 1 from public.embeddings limit expected_rows + 1) s;
  -- Only worth it when the load is larger than the store: rebuilding costs time per existing row too.
  if expected_rows is null or expected_rows <= existing then
    return false;
  end if;
  drop index public.embeddings_embedding_hnsw_idx;
  return true;
end
$$;

create or replace function public.finish_bulk_load()
returns boolean
language sql
volatile
set search_path = ''
as $$
  select supa_vectors_internal.create_vector_index()
$$;

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
    'settings', public.store_settings()
  )
$$;

drop function public.restore_vector_index();
drop function supa_vectors_internal.bulk_load_state();
drop function supa_vectors_internal.lock_bulk_load();
drop function supa_vectors_internal.bulk_loader_alive();
drop table supa_vectors_internal.bulk_load;
delete from public.metadata_global where key in ('bulk_load_min_rows', 'bulk_load_growth_factor');
