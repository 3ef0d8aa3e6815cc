-- supa-vectors: the RPCs. They are the contract between the database and every client (the Python
-- SDK, the Edge Functions); clients never touch the tables directly.
--
-- Every function is SECURITY INVOKER (the default, so Row Level Security applies to the caller) with
-- an empty search_path and fully qualified names. Errors use SQLSTATE 22023 (bad input) or 54000
-- (a limit exceeded) with a message that names the offending record or filter clause; PostgREST
-- passes code and message through (as HTTP 400 and 500 respectively).

create function supa_vectors_internal.setting(setting_key text)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select g.value from public.metadata_global g where g.key = setting_key
$$;

create function supa_vectors_internal.check_result_limit(requested integer, argument text)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  max_rows constant integer := coalesce((supa_vectors_internal.setting('max_result_rows'))::integer, 1000);
begin
  if requested is null or requested < 1 then
    raise exception using errcode = '22023', message = pg_catalog.format('%s must be at least 1', argument);
  end if;
  if requested > max_rows then
    -- PostgREST caps responses at 1000 rows by default; silently truncating would lose results.
    raise exception using errcode = '54000',
      message = pg_catalog.format('%s is %s; the limit is %s rows per call', argument, requested, max_rows),
      hint = 'Page through list_documents, or ask for fewer results.';
  end if;
end
$$;

-- Whether Row Level Security filters what the caller sees. When it does not and there is no metadata
-- filter, the plain HNSW scan returns exactly match_count rows and no selectivity estimate is needed.
create function supa_vectors_internal.caller_sees_all_rows()
returns boolean
language sql
stable
set search_path = ''
as $$
  select coalesce((select r.rolbypassrls or r.rolsuper from pg_catalog.pg_roles r
                   where r.rolname = current_user), false)
$$;

-- ---------------------------------------------------------------------------------------------
-- match_documents: the k nearest documents by cosine similarity, filtered by metadata.
--
-- A filtered nearest-neighbour query cannot simply post-filter an HNSW scan: with a 10% filter that
-- returned 4 of 10 rows, with a 1% filter 0.4 (100k x 384, clustered). So the plan depends on how
-- many rows the caller can see through the filter (and RLS), counted up to exact_scan_max_rows:
--   * few rows  -> an exact scan over just those rows (a bitmap scan on the GIN index, then
--                  distances in memory: complete and exact; ~20 ms for 1,000 rows);
--   * many rows -> the HNSW index with pgvector's iterative scan (relaxed order, re-sorted here) and a
--                  larger ef_search, which returns all match_count rows with recall@10 >= 0.95.
create function public.match_documents(
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

-- ---------------------------------------------------------------------------------------------
-- hybrid_search: reciprocal rank fusion of full-text and vector rankings.
-- score = full_text_weight / (rrf_k + full-text rank) + semantic_weight / (rrf_k + vector rank).
-- Each side contributes its best min(match_count * 4, 1000) candidates. The full-text side matches
-- any query word (OR), ranked by ts_rank_cd, so a query need not repeat every word of a document.
create function public.hybrid_search(
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

-- ---------------------------------------------------------------------------------------------
-- bulk_upsert: insert, update or leave unchanged a batch of documents in one transaction.
--
-- documents: a JSON array of {"external_id", "content", "metadata"?, "embedding"?, "owner_id"?,
-- "system"?: {"source_file", "source_checksum", "ingest_run_id", "chunk_index", "extra"}}.
-- It is `json`, not `jsonb`: jsonb refuses "\u0000" while parsing, before this function could say
-- which record holds it; json keeps the text so the NUL check below can name the record.
-- embeddings: optionally the vectors as a binary vector[] (index i for record i), which the direct
-- Postgres transport sends instead of JSON number arrays (30x cheaper to transfer and parse).
-- An embedding is required for new documents and for changed content; unchanged content keeps its
-- vector (never re-embedded), and a metadata-only change rewrites only the documents row.
-- Returns one row per input record: ordinal (1-based), external_id, id, status
-- ('inserted' | 'updated' | 'unchanged').
create function public.bulk_upsert(
  documents json,
  embeddings extensions.vector[] default null,
  model text default null
)
returns table (ordinal integer, external_id text, id bigint, status text)
language plpgsql
volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
  model_name constant text := coalesce(bulk_upsert.model, supa_vectors_internal.setting('embedding_model') #>> '{}');
  dimension constant integer := (supa_vectors_internal.setting('embedding_dimension'))::integer;
  max_batch constant integer := (supa_vectors_internal.setting('max_batch_size'))::integer;
  max_bytes constant integer := (supa_vectors_internal.setting('max_content_bytes'))::integer;
  record_count integer;
  bad record;
begin
  if bulk_upsert.documents is null or pg_catalog.json_typeof(bulk_upsert.documents) <> 'array' then
    raise exception using errcode = '22023', message = 'documents must be a JSON array of objects';
  end if;
  record_count := pg_catalog.json_array_length(bulk_upsert.documents);
  if record_count > max_batch then
    raise exception using errcode = '54000',
      message = pg_catalog.format('a batch of %s documents exceeds the limit of %s', record_count, max_batch),
      hint = 'Split the batch; the SDK sends at most 500 documents per call.';
  end if;
  if bulk_upsert.embeddings is not null and pg_catalog.cardinality(bulk_upsert.embeddings) <> record_count then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'embeddings has %s vectors for %s documents', pg_catalog.cardinality(bulk_upsert.embeddings), record_count);
  end if;

  -- Validate every record before writing anything; report the first bad one by position and id.
  select r.ordinal, r.external_id, r.problem into bad
  from (
    select i.n::integer as ordinal,
      -- Any -> on a json value holding "\u0000" fails, so such a record's id is read from its text.
      case when i.has_nul
        then pg_catalog.substring(i.doc::text, '"external_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
        when pg_catalog.json_typeof(i.doc) = 'object' then i.doc ->> 'external_id'
      end as external_id,
      case
        when pg_catalog.json_typeof(i.doc) <> 'object' then 'is not a JSON object'
        when i.has_nul then 'contains a NUL character (\u0000), which Postgres text cannot store'
        when pg_catalog.json_typeof(i.doc -> 'external_id') is distinct from 'string' then 'external_id must be a string'
        when pg_catalog.length(i.doc ->> 'external_id') not between 1 and 512 then 'external_id must have 1 to 512 characters'
        when pg_catalog.json_typeof(i.doc -> 'content') is distinct from 'string' then 'content must be a string'
        when (i.doc ->> 'content') !~ '\S' then 'content is empty'
        when pg_catalog.octet_length(i.doc ->> 'content') > max_bytes then pg_catalog.format(
          'content has %s bytes; the limit is %s', pg_catalog.octet_length(i.doc ->> 'content'), max_bytes)
        when i.doc -> 'metadata' is not null and pg_catalog.json_typeof(i.doc -> 'metadata') not in ('object', 'null')
          then 'metadata must be a JSON object'
        when i.doc -> 'system' is not null and pg_catalog.json_typeof(i.doc -> 'system') not in ('object', 'null')
          then 'system must be a JSON object'
        when i.doc -> 'owner_id' is not null and pg_catalog.json_typeof(i.doc -> 'owner_id') not in ('string', 'null')
          then 'owner_id must be a uuid string'
        when pg_catalog.json_typeof(i.doc -> 'owner_id') = 'string'
          and (i.doc ->> 'owner_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then 'owner_id must be a uuid string'
        when i.doc -> 'embedding' is not null and pg_catalog.json_typeof(i.doc -> 'embedding') <> 'null' then
          case
            when pg_catalog.json_typeof(i.doc -> 'embedding') <> 'array' then 'embedding must be an array of numbers'
            when pg_catalog.json_array_length(i.doc -> 'embedding') <> dimension then pg_catalog.format(
              'embedding has %s dimensions; this store holds %s-dimensional vectors of %s',
              pg_catalog.json_array_length(i.doc -> 'embedding'), dimension, model_name)
            when (i.doc -> 'embedding')::jsonb @? '$[*] ? (@.type() != "number")' then
              'embedding must contain only finite numbers (NaN and Infinity are not JSON numbers)'
          end
        when bulk_upsert.embeddings is not null and bulk_upsert.embeddings[i.n] is not null
          and extensions.vector_dims(bulk_upsert.embeddings[i.n]) <> dimension then pg_catalog.format(
          'embedding has %s dimensions; this store holds %s-dimensional vectors of %s',
          extensions.vector_dims(bulk_upsert.embeddings[i.n]), dimension, model_name)
      end as problem
    from (select e.doc, e.n, e.doc::text ~ '(^|[^\\])(\\\\)*\\u0000' as has_nul
            from pg_catalog.json_array_elements(bulk_upsert.documents) with ordinality as e(doc, n)) i
  ) r
  where r.problem is not null
  order by r.ordinal
  limit 1;
  if found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('document %s (external_id %s): %s', bad.ordinal,
        coalesce(pg_catalog.quote_ident(bad.external_id), 'missing'), bad.problem),
      detail = pg_catalog.json_build_object('ordinal', bad.ordinal, 'external_id', bad.external_id)::text;
  end if;

  -- A per-call scratch table (dropped before returning; an error rolls its creation back), so that
  -- the batch is parsed once and every step below is one set-based statement.
  create temporary table pg_temp.supa_vectors_batch (
    ordinal integer primary key,
    external_id text not null,
    owner_id uuid,
    content text not null,
    content_hash text not null,
    metadata jsonb not null,
    system jsonb,
    embedding extensions.vector,
    previous_id bigint,
    previous_hash text,
    previous_metadata jsonb,
    has_embedding boolean not null default false
  ) on commit drop;

  insert into pg_temp.supa_vectors_batch
    (ordinal, external_id, owner_id, content, content_hash, metadata, system, embedding)
  select i.n, i.doc ->> 'external_id', coalesce((i.doc ->> 'owner_id')::uuid, auth.uid()),
    i.doc ->> 'content', supa_vectors_internal.content_hash(i.doc ->> 'content'),
    coalesce(nullif((i.doc -> 'metadata')::jsonb, 'null'::jsonb), '{}'::jsonb),
    nullif((i.doc -> 'system')::jsonb, 'null'::jsonb),
    coalesce(bulk_upsert.embeddings[i.n], ((nullif((i.doc -> 'embedding')::jsonb, 'null'::jsonb))::text)::extensions.vector)
  from pg_catalog.json_array_elements(bulk_upsert.documents) with ordinality as i(doc, n);

  select b.ordinal, b.external_id, 'appears more than once in this batch (first at ' || b.first_at || ')' as problem
    into bad
    from (select x.ordinal, x.external_id,
                 min(x.ordinal) over (partition by x.owner_id, x.external_id) as first_at
            from pg_temp.supa_vectors_batch x) b
   where b.ordinal > b.first_at
   order by b.ordinal limit 1;
  if found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('document %s (external_id %s): %s', bad.ordinal,
        pg_catalog.quote_ident(bad.external_id), bad.problem),
      detail = pg_catalog.json_build_object('ordinal', bad.ordinal, 'external_id', bad.external_id)::text;
  end if;

  -- What is there now (locked, so a concurrent batch cannot interleave between check and write).
  update pg_temp.supa_vectors_batch b
     set previous_id = d.id, previous_hash = d.content_hash, previous_metadata = d.metadata,
         has_embedding = exists (select 1 from public.embeddings e where e.document_id = d.id and e.model = model_name)
    from (select d.id, d.external_id, d.owner_id, d.content_hash, d.metadata
            from public.documents d
            join pg_temp.supa_vectors_batch x
              on d.external_id = x.external_id and d.owner_id is not distinct from x.owner_id
             for update of d) d
   where d.external_id = b.external_id and d.owner_id is not distinct from b.owner_id;

  select b.ordinal, b.external_id,
         case when b.previous_id is null then 'is new and has no embedding'
              else 'has changed content and no embedding' end as problem
    into bad
    from pg_temp.supa_vectors_batch b
   where b.embedding is null
     and (b.previous_id is null or b.previous_hash <> b.content_hash or not b.has_embedding)
   order by b.ordinal limit 1;
  if found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('document %s (external_id %s): %s', bad.ordinal,
        pg_catalog.quote_ident(bad.external_id), bad.problem),
      detail = pg_catalog.json_build_object('ordinal', bad.ordinal, 'external_id', bad.external_id)::text;
  end if;

  insert into public.documents (external_id, owner_id, content, metadata)
  select b.external_id, b.owner_id, b.content, b.metadata
    from pg_temp.supa_vectors_batch b
   where b.previous_id is null
   order by b.ordinal;

  update public.documents d
     set content = b.content, metadata = b.metadata
    from pg_temp.supa_vectors_batch b
   where d.id = b.previous_id
     and (b.previous_hash <> b.content_hash or b.previous_metadata <> b.metadata);

  update pg_temp.supa_vectors_batch b
     set previous_id = coalesce(b.previous_id, d.id)
    from public.documents d
   where b.previous_id is null and d.external_id = b.external_id and d.owner_id is not distinct from b.owner_id;

  insert into public.embeddings as e (document_id, model, embedding)
  select b.previous_id, model_name, b.embedding
    from pg_temp.supa_vectors_batch b
   where b.embedding is not null
     and (b.previous_hash is null or b.previous_hash <> b.content_hash or not b.has_embedding)
  on conflict (document_id, model) do update set embedding = excluded.embedding, created_at = pg_catalog.now();

  insert into public.document_metadata as m
    (document_id, source_file, source_checksum, ingest_run_id, chunk_index, extra)
  select b.previous_id, b.system ->> 'source_file', b.system ->> 'source_checksum', b.system ->> 'ingest_run_id',
         (b.system ->> 'chunk_index')::integer, coalesce(b.system -> 'extra', '{}'::jsonb)
    from pg_temp.supa_vectors_batch b
   where b.system is not null
  on conflict (document_id) do update
    set source_file = excluded.source_file, source_checksum = excluded.source_checksum,
        ingest_run_id = excluded.ingest_run_id, chunk_index = excluded.chunk_index, extra = excluded.extra
    where (m.source_file, m.source_checksum, m.ingest_run_id, m.chunk_index, m.extra)
          is distinct from (excluded.source_file, excluded.source_checksum, excluded.ingest_run_id,
                            excluded.chunk_index, excluded.extra);

  return query
  select b.ordinal, b.external_id, b.previous_id,
         case when b.previous_hash is null then 'inserted'
              when b.previous_hash <> b.content_hash or b.previous_metadata <> b.metadata
                   or (b.embedding is not null and not b.has_embedding) then 'updated'
              else 'unchanged' end
    from pg_temp.supa_vectors_batch b
   order by b.ordinal;
  drop table pg_temp.supa_vectors_batch;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- delete_documents: delete the caller's documents by external id (embeddings and system metadata
-- follow by cascade). owner_id defaults to the caller (auth.uid(); null = the shared namespace).
create function public.delete_documents(external_ids text[], owner_id uuid default null)
returns table (id bigint, external_id text)
language plpgsql
volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
  owner constant uuid := coalesce(delete_documents.owner_id, auth.uid());
begin
  perform supa_vectors_internal.check_result_limit(coalesce(pg_catalog.cardinality(external_ids), 0) + 1, 'external_ids count + 1');
  return query
  delete from public.documents d
   where d.external_id = any (delete_documents.external_ids) and d.owner_id is not distinct from owner
  returning d.id, d.external_id;
end
$$;

-- get_documents: the visible documents with these external ids (the caller's own and shared ones).
create function public.get_documents(external_ids text[])
returns table (
  id bigint, external_id text, owner_id uuid, content text, content_hash text, metadata jsonb,
  created_at timestamptz, updated_at timestamptz
)
language plpgsql
stable
set search_path = ''
as $$
begin
  perform supa_vectors_internal.check_result_limit(coalesce(pg_catalog.cardinality(external_ids), 0) + 1, 'external_ids count + 1');
  return query
  select d.id, d.external_id, d.owner_id, d.content, d.content_hash, d.metadata, d.created_at, d.updated_at
    from public.documents d
   where d.external_id = any (get_documents.external_ids)
   order by d.id;
end
$$;

-- list_documents: keyset pagination by id (ids only grow, so a page boundary never moves under
-- concurrent inserts; offset pagination would skip or repeat rows). Pass the last id of a page as
-- after_id to get the next. updated_after selects rows changed since a previous sync.
create function public.list_documents(
  page_size integer default 100,
  after_id bigint default 0,
  filter jsonb default '{}'::jsonb,
  with_embeddings boolean default false,
  updated_after timestamptz default null,
  model text default null
)
returns table (
  id bigint, external_id text, owner_id uuid, content text, content_hash text, metadata jsonb,
  updated_at timestamptz, embedding extensions.vector
)
language plpgsql
stable
set search_path = ''
as $$
declare
  filter_sql constant text := supa_vectors_internal.compile_filter(list_documents.filter);
  model_name constant text := coalesce(list_documents.model, supa_vectors_internal.setting('embedding_model') #>> '{}');
begin
  perform supa_vectors_internal.check_result_limit(page_size, 'page_size');
  return query execute pg_catalog.format(
    'select d.id, d.external_id, d.owner_id, d.content, d.content_hash, d.metadata, d.updated_at,'
    ' case when $4 then (select e.embedding from public.embeddings e where e.document_id = d.id and e.model = $5) end'
    ' from public.documents d where d.id > $1 and ($3::timestamptz is null or d.updated_at > $3) and %s'
    ' order by d.id limit $2', filter_sql)
    using coalesce(after_id, 0), page_size, updated_after, coalesce(with_embeddings, false), model_name;
end
$$;

-- count_documents: how many visible documents match the filter.
create function public.count_documents(filter jsonb default '{}'::jsonb)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
declare
  total bigint;
begin
  execute pg_catalog.format('select count(*) from public.documents d where %s',
    supa_vectors_internal.compile_filter(count_documents.filter)) into total;
  return total;
end
$$;

-- store_settings: metadata_global as one JSON object (model, dimension, schema version, limits),
-- which the SDK checks before it writes a vector.
create function public.store_settings()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_object_agg(g.key, g.value), '{}'::jsonb) from public.metadata_global g
$$;

-- store_stats: counts of what the caller can see, plus the settings and the vector index state.
create function public.store_stats()
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

-- ---------------------------------------------------------------------------------------------
-- The bulk-load path. Inserting into an HNSW index costs ~1.4 ms a row (~700 rows/s), while building
-- the index over loaded rows is ~7x faster, so a large load into a (nearly) empty store drops the
-- index first and rebuilds it at the end. Dropping an index needs the table owner (the `postgres`
-- role over a direct connection, e.g. the migration CLI); other callers get a clear error and load
-- through the index instead. While the index is missing, match_documents still answers (exactly,
-- by a sequential scan), only slower.
create function public.begin_bulk_load(expected_rows bigint)
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

create function public.finish_bulk_load()
returns boolean
language sql
volatile
set search_path = ''
as $$
  select supa_vectors_internal.create_vector_index()
$$;

-- ---------------------------------------------------------------------------------------------
-- Grants: the RPCs are for signed-in users and the service role; anon and PUBLIC get nothing. The
-- bulk-load pair is for the service role only (it needs the table owner anyway).
do $$
declare
  fn regprocedure;
  service_only boolean;
begin
  for fn, service_only in
    select p.oid::regprocedure, p.proname in ('begin_bulk_load', 'finish_bulk_load')
      from pg_catalog.pg_proc p
     where (p.pronamespace = 'public'::regnamespace
            and p.proname in ('match_documents', 'hybrid_search', 'bulk_upsert', 'delete_documents',
                              'get_documents', 'list_documents', 'count_documents', 'store_settings',
                              'store_stats', 'begin_bulk_load', 'finish_bulk_load'))
        or (p.pronamespace = 'supa_vectors_internal'::regnamespace
            and p.proname in ('setting', 'check_result_limit', 'caller_sees_all_rows'))
  loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated', fn);
    execute pg_catalog.format('grant execute on function %s to service_role', fn);
    if not service_only then
      execute pg_catalog.format('grant execute on function %s to authenticated', fn);
    end if;
  end loop;
end
$$;
