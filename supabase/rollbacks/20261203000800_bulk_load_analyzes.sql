-- Rollback of 20261203000800: finish_bulk_load as 20261202000800_bulk_load_keeps_index.sql defined it.
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
