-- Undoes 20261203000400_filtered_search_plan.sql: match_documents counts the caller's matching rows
-- (up to exact_scan_max_rows + 1) to pick its plan again, as 20261125000300_store_rpcs.sql defined it.

create or replace function public.match_documents(
  query_embedding extensions.vector(384),
  match_count integer default 10,
  match_threshold double precision default null,
  filter jsonb default '{}'::jsonb,
  model text default null,
  ef_search integer default null,
  exact_scan_max_rows integer default 5000
)
returns table (id bigint, external_id text, content text, metadata jsonb, similarity double precision)
language plpgsql
volatile
set search_path = ''
set hnsw.iterative_scan = 'off'
set hnsw.ef_search = 40
as $$
declare
  filter_sql constant text := supa_vectors_internal.compile_filter(match_documents.filter);
  model_name constant text := coalesce(match_documents.model,
    supa_vectors_internal.setting('embedding_model') #>> '{}');
  visible_rows bigint;
  select_list constant text :=
    'd.id, d.external_id, d.content, d.metadata, 1 - (e.embedding operator(extensions.<=>) $1) as similarity';
begin
  perform supa_vectors_internal.check_result_limit(match_count, 'match_count');
  if query_embedding is null then
    raise exception using errcode = '22023', message = 'query_embedding must not be null';
  end if;
  -- Postgres ignores the (384) of a parameter's type, so a wrong-sized vector would otherwise meet
  -- an empty store or a narrow filter silently.
  if extensions.vector_dims(query_embedding) <> (supa_vectors_internal.setting('embedding_dimension'))::integer then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'query_embedding has %s dimensions; this store holds %s-dimensional vectors',
      extensions.vector_dims(query_embedding), supa_vectors_internal.setting('embedding_dimension'));
  end if;
  if match_threshold is not null and (match_threshold < -1 or match_threshold > 1) then
    raise exception using errcode = '22023',
      message = pg_catalog.format('match_threshold is %s; cosine similarity lies between -1 and 1', match_threshold);
  end if;
  if ef_search is not null and (ef_search < 1 or ef_search > 1000) then
    raise exception using errcode = '22023', message = 'ef_search must lie between 1 and 1000';
  end if;

  if filter_sql = 'true' and supa_vectors_internal.caller_sees_all_rows() then
    -- ef_search 100: on 100k clustered rows, 40 (pgvector's default) gave recall@10 0.93, 100 gave 0.96.
    perform pg_catalog.set_config('hnsw.ef_search',
      greatest(coalesce(ef_search, 100), match_count)::text, true);
    return query execute pg_catalog.format(
      'select * from (select %s from public.embeddings e join public.documents d on d.id = e.document_id'
      ' where e.model = $2 order by e.embedding operator(extensions.<=>) $1 limit $3) r'
      ' where $4 is null or r.similarity >= $4 order by r.similarity desc', select_list)
      using query_embedding, model_name, match_count, match_threshold;
    return;
  end if;

  execute pg_catalog.format(
    'select count(*) from (select 1 from public.documents d where %s limit $1) s', filter_sql)
    into visible_rows using exact_scan_max_rows + 1;

  if visible_rows <= exact_scan_max_rows then
    -- Distances are computed inside a MATERIALIZED CTE, so no plan can order by the HNSW index and
    -- post-filter: every visible, matching row is ranked exactly.
    return query execute pg_catalog.format(
      'with ranked as materialized (select d.id, e.embedding operator(extensions.<=>) $1 as distance'
      ' from public.documents d join public.embeddings e on e.document_id = d.id and e.model = $2 where %s)'
      ' select d.id, d.external_id, d.content, d.metadata, 1 - r.distance as similarity'
      ' from (select * from ranked order by distance limit $3) r join public.documents d on d.id = r.id'
      ' where $4 is null or 1 - r.distance >= $4 order by r.distance', filter_sql)
      using query_embedding, model_name, match_count, match_threshold;
    return;
  end if;

  perform pg_catalog.set_config('hnsw.iterative_scan', 'relaxed_order', true);
  perform pg_catalog.set_config('hnsw.ef_search',
    -- 200: with a 10% filter, iterative scan at ef_search 40 measured recall@10 0.93; 200 measured 0.995.
    greatest(coalesce(ef_search, 200), match_count)::text, true);
  return query execute pg_catalog.format(
    'with ann as materialized (select %s from public.embeddings e join public.documents d on d.id = e.document_id'
    ' where e.model = $2 and %s order by e.embedding operator(extensions.<=>) $1 limit $3)'
    ' select * from ann r where $4 is null or r.similarity >= $4 order by r.similarity desc',
    select_list, filter_sql)
    using query_embedding, model_name, match_count, match_threshold;
end
$$;
