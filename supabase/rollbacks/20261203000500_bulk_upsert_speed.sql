-- Undoes 20261203000500_bulk_upsert_speed.sql: bulk_upsert as 20261202000600_history_written_by_its_run.sql
-- defined it (a scratch table per call, the json parsed per operator, content_hash through its wrapper).
-- Sessions that called the faster version keep their empty pg_temp.supa_vectors_rows until they end;
-- nothing reads it.

create or replace function public.bulk_upsert(
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
  batch_run text;
  runs_in_batch integer;
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
    run_id text,
    embedding extensions.vector,
    previous_id bigint,
    previous_hash text,
    previous_metadata jsonb,
    has_embedding boolean not null default false
  ) on commit drop;

  insert into pg_temp.supa_vectors_batch
    (ordinal, external_id, owner_id, content, content_hash, metadata, system, run_id, embedding)
  select i.n, i.doc ->> 'external_id', coalesce((i.doc ->> 'owner_id')::uuid, auth.uid()),
    i.doc ->> 'content', supa_vectors_internal.content_hash(i.doc ->> 'content'),
    coalesce(nullif((i.doc -> 'metadata')::jsonb, 'null'::jsonb), '{}'::jsonb),
    nullif((i.doc -> 'system')::jsonb, 'null'::jsonb),
    nullif(i.doc -> 'system' ->> 'ingest_run_id', ''),
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

  -- ingest run: a batch belongs to one run or to none. The history trigger learns the run from a
  -- transaction setting, so records of two runs (or tagged and untagged ones) in one call could not be
  -- told apart.
  select pg_catalog.min(b.run_id), count(distinct coalesce(b.run_id, ''))::integer
    into batch_run, runs_in_batch
    from pg_temp.supa_vectors_batch b;
  if runs_in_batch > 1 then
    raise exception using errcode = '22023',
      message = 'a batch belongs to one ingest run: every record names the same system.ingest_run_id, or none does';
  end if;
  if pg_catalog.length(batch_run) > 200 or batch_run ~ '[[:cntrl:]]' then
    raise exception using errcode = '22023',
      message = 'system.ingest_run_id must have 1 to 200 characters, none a control character';
  end if;

  -- ingest run: a rolled-back run stays rolled back (its history is gone; new writes could not be undone).
  -- Runs are per owner: the caller's run of that name, never another user's.
  if batch_run is not null and exists (
       select 1 from public.ingest_runs r
        where r.run_id = batch_run and r.owner_id is not distinct from auth.uid() and r.status = 'rolled_back') then
    raise exception using errcode = '22023',
      message = pg_catalog.format('ingest run %s was rolled back; write with a new run id', batch_run);
  end if;

  -- ingest run: from here to the end of this call, the trigger supa_vectors_internal.record_run_history
  -- records each document this call changes, from the row change itself (see 20261202000600). An empty
  -- value switches it off, whatever the caller had set.
  perform pg_catalog.set_config('supa_vectors.ingest_run', coalesce(batch_run, ''), true);
  perform pg_catalog.set_config('supa_vectors.ingest_model', model_name, true);

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

  -- With an ingest run id, only documents this call changed get (new) system metadata: an unchanged
  -- document keeps the provenance of the run that wrote it, so a repeated run writes nothing.
  insert into public.document_metadata as m
    (document_id, source_file, source_checksum, ingest_run_id, chunk_index, extra)
  select b.previous_id, b.system ->> 'source_file', b.system ->> 'source_checksum', b.system ->> 'ingest_run_id',
         (b.system ->> 'chunk_index')::integer, coalesce(b.system -> 'extra', '{}'::jsonb)
    from pg_temp.supa_vectors_batch b
   where b.system is not null
     and (b.run_id is null or b.previous_hash is null or b.previous_hash <> b.content_hash
          or b.previous_metadata <> b.metadata or (b.embedding is not null and not b.has_embedding))
  on conflict (document_id) do update
    set source_file = excluded.source_file, source_checksum = excluded.source_checksum,
        ingest_run_id = excluded.ingest_run_id, chunk_index = excluded.chunk_index, extra = excluded.extra
    where (m.source_file, m.source_checksum, m.ingest_run_id, m.chunk_index, m.extra)
          is distinct from (excluded.source_file, excluded.source_checksum, excluded.ingest_run_id,
                            excluded.chunk_index, excluded.extra);

  perform pg_catalog.set_config('supa_vectors.ingest_run', '', true);
  perform pg_catalog.set_config('supa_vectors.ingest_model', '', true);

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
