-- Undoes 20261126000500_hybrid_full_text_rank.sql: hybrid_search ranks full text by ts_rank_cd again,
-- as 20261125000300_store_rpcs.sql defined it.

-- ---------------------------------------------------------------------------------------------
-- hybrid_search: reciprocal rank fusion of full-text and vector rankings.
-- score = full_text_weight / (rrf_k + full-text rank) + semantic_weight / (rrf_k + vector rank).
-- Each side contributes its best min(match_count * 4, 1000) candidates. The full-text side matches
-- any query word (OR), ranked by ts_rank_cd, so a query need not repeat every word of a document.
create or replace function public.hybrid_search(
  query_text text,
  query_embedding extensions.vector(384),
  match_count integer default 10,
  filter jsonb default '{}'::jsonb,
  full_text_weight double precision default 1,
  semantic_weight double precision default 1,
  rrf_k integer default 50,
  model text default null
)
returns table (
  id bigint, external_id text, content text, metadata jsonb,
  score double precision, similarity double precision, full_text_rank integer, semantic_rank integer
)
language plpgsql
volatile
set search_path = ''
as $$
declare
  filter_sql constant text := supa_vectors_internal.compile_filter(hybrid_search.filter);
  candidate_count integer;
  words tsquery;
begin
  perform supa_vectors_internal.check_result_limit(match_count, 'match_count');
  if query_text is null or pg_catalog.btrim(query_text) = '' then
    raise exception using errcode = '22023', message = 'query_text must not be empty';
  end if;
  if full_text_weight is null or semantic_weight is null or full_text_weight < 0 or semantic_weight < 0
     or full_text_weight + semantic_weight = 0 then
    raise exception using errcode = '22023',
      message = 'full_text_weight and semantic_weight must be >= 0 and not both 0';
  end if;
  if rrf_k is null or rrf_k < 0 then
    raise exception using errcode = '22023', message = 'rrf_k must be >= 0';
  end if;
  candidate_count := least(match_count * 4, 1000);
  words := pg_catalog.replace(
    pg_catalog.plainto_tsquery('english'::regconfig, query_text)::text, ' & ', ' | ')::tsquery;

  return query execute pg_catalog.format(
    'with semantic as ('
    '  select s.id, s.similarity, row_number() over (order by s.similarity desc)::integer as rank_ix'
    '  from public.match_documents($2, $3, null, $4, $8) s'
    '), full_text as ('
    '  select d.id, row_number() over (order by pg_catalog.ts_rank_cd(d.fts, $1) desc, d.id)::integer as rank_ix'
    '  from public.documents d where d.fts @@ $1 and %s'
    '  order by pg_catalog.ts_rank_cd(d.fts, $1) desc, d.id limit $3'
    '), fused as ('
    '  select coalesce(s.id, f.id) as id,'
    '    coalesce($5 / ($7 + f.rank_ix), 0.0) + coalesce($6 / ($7 + s.rank_ix), 0.0) as score,'
    '    s.similarity, f.rank_ix as full_text_rank, s.rank_ix as semantic_rank'
    '  from semantic s full outer join full_text f on f.id = s.id'
    ')'
    ' select d.id, d.external_id, d.content, d.metadata, u.score, u.similarity, u.full_text_rank, u.semantic_rank'
    ' from fused u join public.documents d on d.id = u.id'
    ' order by u.score desc, u.id limit $9', filter_sql)
    using words, query_embedding, candidate_count, hybrid_search.filter, full_text_weight, semantic_weight,
      rrf_k::double precision, hybrid_search.model, match_count;
end
$$;
