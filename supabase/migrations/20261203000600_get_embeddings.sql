-- get_embeddings (issue 17): the visible documents with these external ids, as get_documents returns
-- them, plus each one's stored vector of the store's model (null when it has none). Framework
-- adapters run maximal marginal relevance over the candidates a search returned: with the vectors
-- actually stored, not vectors recomputed from the content (wrong whenever the app wrote its own
-- precomputed vectors), and without an embedder call per search. match_documents stays as it is:
-- a vector is ~1.5 kB binary (~8 kB as PostgREST text), which every plain search would pay for.
--
-- Security invoker, so RLS decides what is visible (the caller's own documents and the shared
-- ones), exactly as for get_documents; bounded by the same result-limit check.
create function public.get_embeddings(external_ids text[])
returns table (
  id bigint, external_id text, owner_id uuid, content text, content_hash text, metadata jsonb,
  created_at timestamptz, updated_at timestamptz, embedding extensions.vector
)
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  model_name constant text := supa_vectors_internal.setting('embedding_model') #>> '{}';
begin
  perform supa_vectors_internal.check_result_limit(
    coalesce(pg_catalog.cardinality(get_embeddings.external_ids), 0) + 1, 'external_ids count + 1');
  return query
  select d.id, d.external_id, d.owner_id, d.content, d.content_hash, d.metadata, d.created_at,
         d.updated_at, e.embedding
    from public.documents d
    left join public.embeddings e on e.document_id = d.id and e.model = model_name
   where d.external_id = any (get_embeddings.external_ids)
   order by d.id;
end
$$;

revoke all on function public.get_embeddings(text[]) from public, anon, authenticated;
grant execute on function public.get_embeddings(text[]) to authenticated, service_role;
