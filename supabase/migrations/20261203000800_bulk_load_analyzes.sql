-- finish_bulk_load analyzes what it loaded.
--
-- A bulk load writes thousands of rows into a store the planner still believes nearly empty:
-- until autovacuum analyzes the tables (about a minute later, more on a busy server), match_documents'
-- plans take the embeddings for a few dozen rows and rank every row by distance instead of walking the
-- HNSW index it has just built: 18 ms against 4 ms for the walk at 10,000 rows (BENCHMARKS.md
-- section 10). The owner finishing the load analyzes both tables right after building the index
-- (ANALYZE samples 30,000 rows whatever the size: about a second at 1M rows).
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
  analyze public.documents, public.embeddings;
  return built;
end
$$;
