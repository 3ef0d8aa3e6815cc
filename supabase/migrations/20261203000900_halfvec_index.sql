-- The HNSW index holds half-precision copies of the vectors; the table keeps them in full (decision 0027).
--
-- At 1M rows the vector(384) index took 2.0x the raw float32 bytes of the vectors it indexes and
-- outgrew the 256 MB a build is given. An index over embedding::halfvec(384) is 0.57x the size of the
-- vector index, builds in less time, and found the same neighbours within 0.5 point of recall@10
-- (BENCHMARKS.md section 13). The column stays vector(384): what a backup, get(with_vectors=True),
-- MMR and the exact scan read is the vector as written, and the similarity every search returns is
-- computed from it, so only the order in which the graph is walked is half precision.
--
-- The indexed expression is l2_normalize(embedding)::halfvec(384). Cosine distance ignores length,
-- so normalising changes no ranking, and it keeps every component within [-1, 1]: halfvec's range
-- ends at 65504, and a stored vector with a larger component would otherwise fail its insert.
--
-- The index keeps its name, so begin/finish/restore of a bulk load, store_stats, store_diagnostics
-- and `supa-vectors doctor` find it as before. On a store that has the vector index, the new one is
-- built beside it under another name while searches keep reading the old (CREATE INDEX blocks
-- writes, not reads), then the old is dropped and the new renamed, so reads wait only for the drop.
-- A store whose index a live bulk load has dropped gets the new definition from finish_bulk_load.
--
-- Also in match_documents: a filter the planner puts between exact_scan_max_rows and twice it is
-- counted (a bounded count, no vector read) before its rows are ranked. Ranking up to 5,001 rows only
-- to learn there were more cost 41-99 ms where the iterative scan answers in 5-20 ms; at 100k rows a
-- 10% filter's estimate (10,013 in one ANALYZE sample, at most 10,000 in another) fell either side of the
-- margin, so the same search took 5 or 56 ms. The count halves that (37 ms; BENCHMARKS.md section 13).

-- The memory a build may use is a store setting, index_build_memory (256MB by default): the SET
-- clause of this function used to fix it, so an operator could not raise it, and at 1M rows the graph
-- outgrew 256MB after 119k rows and the build ran ~6x slower from there (BENCHMARKS.md section 13).
-- Only the service role writes metadata_global; a value Postgres does not take fails the build with
-- its own message, and the index stays as it was.
insert into public.metadata_global (key, value) values ('index_build_memory', '"256MB"');

create or replace function supa_vectors_internal.create_vector_index()
returns boolean
language plpgsql
set search_path = ''
set maintenance_work_mem = '256MB'
as $$
begin
  if pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is not null then
    return false;
  end if;
  perform pg_catalog.set_config('maintenance_work_mem',
    coalesce(supa_vectors_internal.setting('index_build_memory') #>> '{}', '256MB'), true);
  create index embeddings_embedding_hnsw_idx on public.embeddings
    using hnsw (((extensions.l2_normalize(embedding))::extensions.halfvec(384)) extensions.halfvec_cosine_ops)
    with (m = 16, ef_construction = 64);
  return true;
end
$$;

do $$
declare
  existing pg_catalog.regclass;
begin
  perform supa_vectors_internal.lock_bulk_load();
  existing := pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx');
  if pg_catalog.pg_get_indexdef(existing) not like '%halfvec%' then  -- null (no index): nothing to swap
    alter index public.embeddings_embedding_hnsw_idx rename to embeddings_embedding_hnsw_vector_idx;
    perform supa_vectors_internal.create_vector_index();
    drop index public.embeddings_embedding_hnsw_vector_idx;
  end if;
end
$$;

-- match_documents: the graph is walked by the half-precision expression the index holds; distances
-- and similarities are computed from the stored vector and the rows re-sorted by them.
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
#variable_conflict use_column
declare
  filter_sql constant text := supa_vectors_internal.compile_filter(match_documents.filter);
  model_name constant text := coalesce(match_documents.model,
    supa_vectors_internal.setting('embedding_model') #>> '{}');
  query_half extensions.halfvec(384);
  candidates integer;
  plan json;
  estimated_rows double precision;
  matching_rows bigint;
  ids bigint[];
  distances double precision[];
  -- The exact scan: distances computed inside a MATERIALIZED CTE, so no plan can order by the HNSW
  -- index and post-filter; every visible matching row (up to $4, or all when $4 is null) is ranked.
  exact_sql constant text := pg_catalog.format(
    'with ranked as materialized (select d.id, e.embedding operator(extensions.<=>) $1 as distance'
    ' from public.documents d join public.embeddings e on e.document_id = d.id and e.model = $2'
    ' where %s limit $4)'
    ' select (select count(*) from ranked),'
    ' array(select r.id from ranked r order by r.distance, r.id limit $3),'
    ' array(select r.distance from ranked r order by r.distance, r.id limit $3)', filter_sql);
  -- The bounded count: how many rows the filter lets the caller see, up to $1.
  count_sql constant text := pg_catalog.format(
    'select count(*) from (select 1 from public.documents d where %s limit $1) c', filter_sql);
  -- The iterative scan: relaxed order by the indexed expression inside the CTE ($3 candidates),
  -- re-sorted here by the full-precision distance and cut to match_count ($5).
  iterative_sql constant text := pg_catalog.format(
    'with ann as materialized (select d.id, e.embedding operator(extensions.<=>) $1 as distance'
    ' from public.embeddings e join public.documents d on d.id = e.document_id'
    ' where e.model = $2 and %s'
    ' order by (extensions.l2_normalize(e.embedding))::extensions.halfvec(384) operator(extensions.<=>) $4'
    ' limit $3)'
    ' select (select count(*) from ann),'
    ' array(select a.id from ann a order by a.distance, a.id limit $5),'
    ' array(select a.distance from ann a order by a.distance, a.id limit $5)', filter_sql);
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
  if exact_scan_max_rows is null or exact_scan_max_rows < 0 then
    raise exception using errcode = '22023', message = 'exact_scan_max_rows must be >= 0';
  end if;
  query_half := extensions.l2_normalize(query_embedding)::extensions.halfvec(384);
  -- Twice the rows asked for, re-ranked by the full-precision distance: half precision may swap two
  -- rows whose distances differ by less than its rounding, and one of them may be the k-th.
  candidates := greatest(match_count, least(2 * match_count, 1000));

  if filter_sql = 'true' and supa_vectors_internal.caller_sees_all_rows() then
    -- ef_search 100: on 100k clustered rows, 40 (pgvector's default) gave recall@10 0.93, 100 gave 0.96.
    perform pg_catalog.set_config('hnsw.ef_search',
      greatest(coalesce(ef_search, 100), candidates)::text, true);
    return query
      select d.id, d.external_id, d.content, d.metadata, r.similarity
        from (select c.id, c.similarity
                -- The caller bypasses RLS and every embedding has its document (foreign key): the
                -- documents are joined once, for the rows returned.
                from (select e.document_id as id,
                             1 - (e.embedding operator(extensions.<=>) query_embedding) as similarity
                        from public.embeddings e
                       where e.model = model_name
                       order by (extensions.l2_normalize(e.embedding))::extensions.halfvec(384)
                                operator(extensions.<=>) query_half
                       limit candidates) c
               order by c.similarity desc, c.id
               limit match_count) r
        join public.documents d on d.id = r.id
       where match_threshold is null or r.similarity >= match_threshold
       order by r.similarity desc, r.id;
    return;
  end if;

  -- The planner's estimate of the rows the caller sees through the filter; RLS policies are part of
  -- the plan EXPLAIN shows, so they are part of the estimate.
  execute 'explain (format json) select 1 from public.documents d where ' || filter_sql
    into plan;
  estimated_rows := (plan -> 0 -> 'Plan' ->> 'Plan Rows')::double precision;

  -- bigint: the bound may be any integer, and twice it, or one more, may not be.
  if estimated_rows <= 2 * exact_scan_max_rows::bigint
     and not (filter_sql = 'true' and estimated_rows > exact_scan_max_rows
              and estimated_rows >= 0.1 * (select greatest(c.reltuples, 0)
                                   from pg_catalog.pg_class c
                                  where c.oid = 'public.documents'::pg_catalog.regclass)) then
    if estimated_rows > exact_scan_max_rows then
      -- Within the margin the estimate decides nothing: count first (no vector is read), rank only
      -- when the count is within the bound.
      execute count_sql into matching_rows using exact_scan_max_rows::bigint + 1;
    end if;
    if matching_rows is null or matching_rows <= exact_scan_max_rows then
      execute exact_sql into matching_rows, ids, distances
        using query_embedding, model_name, match_count, exact_scan_max_rows::bigint + 1;
    end if;
  end if;
  if ids is null or matching_rows > exact_scan_max_rows then
    perform pg_catalog.set_config('hnsw.iterative_scan', 'relaxed_order', true);
    -- 200: with a 10% filter, iterative scan at ef_search 40 measured recall@10 0.93; 200 measured
    -- 0.99 in the same time (one pass of the graph finds the 10 rows instead of several).
    perform pg_catalog.set_config('hnsw.ef_search',
      greatest(coalesce(ef_search, 200), candidates)::text, true);
    execute iterative_sql into matching_rows, ids, distances
      using query_embedding, model_name, candidates, query_half, match_count;
    if matching_rows < match_count then
      -- Fewer rows than asked: the filter is narrower than estimated, or the scan stopped at
      -- hnsw.max_scan_tuples. Only an exact scan over every matching row can say there are no more.
      execute exact_sql into matching_rows, ids, distances
        using query_embedding, model_name, match_count, null::integer;
    end if;
  end if;

  return query
    select d.id, d.external_id, d.content, d.metadata, 1 - u.distance
      from rows from (pg_catalog.unnest(ids), pg_catalog.unnest(distances)) with ordinality as u(id, distance, ord)
      join public.documents d on d.id = u.id
     where match_threshold is null or 1 - u.distance >= match_threshold
     order by u.ord;
end
$$;
