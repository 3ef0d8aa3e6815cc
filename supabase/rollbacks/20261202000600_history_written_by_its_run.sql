-- Undoes 20261202000600_history_written_by_its_run.sql: back to the tables, policies, grants and functions
-- of 20261125000400_ingest_runs.sql (signed-in users write their runs and history again; runs are global
-- by name). Fails on the primary key if two owners now hold runs of the same name: rename or delete one.
drop trigger if exists documents_record_run_history on public.documents;
drop trigger if exists embeddings_record_run_history on public.embeddings;
drop function if exists supa_vectors_internal.record_run_history();
drop function if exists supa_vectors_internal.update_ingest_run(text, text, jsonb, jsonb, jsonb);
drop function if exists supa_vectors_internal.system_metadata_of(bigint);
drop function if exists supa_vectors_internal.acting_role_bypasses_rls();

alter table public.ingest_runs drop constraint if exists ingest_runs_run_id_printable;
drop trigger if exists documents_touch_updated_at on public.documents;
create trigger documents_touch_updated_at
  before update on public.documents
  for each row
  execute function supa_vectors_internal.touch_updated_at();

drop policy if exists ingest_runs_select_own on public.ingest_runs;
drop policy if exists document_history_select_own on public.document_history;
create policy ingest_runs_own on public.ingest_runs
  for all to authenticated
  using (owner_id = (select auth.uid()))
  with check (owner_id = (select auth.uid()));
create policy document_history_own on public.document_history
  for all to authenticated
  using (owner_id = (select auth.uid()))
  with check (owner_id = (select auth.uid()));
grant select, insert, update, delete on public.ingest_runs, public.document_history to authenticated;

drop policy if exists embeddings_insert_own on public.embeddings;
drop policy if exists embeddings_update_own on public.embeddings;
drop policy if exists embeddings_delete_own on public.embeddings;
drop policy if exists document_metadata_insert_own on public.document_metadata;
drop policy if exists document_metadata_update_own on public.document_metadata;
drop policy if exists document_metadata_delete_own on public.document_metadata;
create policy embeddings_write_own on public.embeddings
  for all to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())))
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));
create policy document_metadata_write_own on public.document_metadata
  for all to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())))
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));

alter table public.document_history drop constraint document_history_run_document_key;
alter table public.document_history drop column ingest_run;
alter table public.ingest_runs drop constraint ingest_runs_owner_run_key;
alter table public.ingest_runs drop column id;
alter table public.ingest_runs add constraint ingest_runs_pkey primary key (run_id);
alter table public.document_history
  add constraint document_history_run_id_fkey foreign key (run_id) references public.ingest_runs (run_id) on delete cascade;
alter table public.document_history
  add constraint document_history_run_document_key unique nulls not distinct (run_id, owner_id, external_id);
comment on table public.document_history is
  'Previous state of documents changed by an ingest run, for rollback_ingest_run(). Written by bulk_upsert.';

-- The functions as 20261125000400_ingest_runs.sql defined them.
-- ---------------------------------------------------------------------------------------------
-- bulk_upsert: unchanged contract (see 20261125000300_store_rpcs.sql), plus the ingest-run steps marked
-- "ingest run" below.
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
  finished_run text;
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

  -- ingest run: a rolled-back run stays rolled back (its history is gone; new writes could not be undone).
  select r.run_id into finished_run
    from public.ingest_runs r
   where r.status = 'rolled_back'
     and r.run_id in (select b.run_id from pg_temp.supa_vectors_batch b where b.run_id is not null)
   limit 1;
  if found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('ingest run %s was rolled back; write with a new run id', finished_run);
  end if;

  -- ingest run: register run ids seen for the first time.
  insert into public.ingest_runs (run_id, owner_id)
  select distinct b.run_id, auth.uid()
    from pg_temp.supa_vectors_batch b
   where b.run_id is not null
  on conflict (run_id) do nothing;

  -- ingest run: the previous state of documents this call changes, read before they are overwritten.
  insert into public.document_history as h
    (run_id, document_id, owner_id, external_id, action, model, previous_content, previous_metadata,
     previous_embedding, previous_system, written_hash, written_metadata)
  select b.run_id, d.id, d.owner_id, d.external_id, 'updated', model_name, d.content, d.metadata,
         (select e.embedding from public.embeddings e where e.document_id = d.id and e.model = model_name),
         (select pg_catalog.jsonb_build_object('source_file', m.source_file, 'source_checksum', m.source_checksum,
                   'ingest_run_id', m.ingest_run_id, 'chunk_index', m.chunk_index, 'extra', m.extra)
            from public.document_metadata m where m.document_id = d.id),
         b.content_hash, b.metadata
    from pg_temp.supa_vectors_batch b
    join public.documents d on d.id = b.previous_id
   where b.run_id is not null
     and (b.previous_hash <> b.content_hash or b.previous_metadata <> b.metadata
          or (b.embedding is not null and not b.has_embedding))
  on conflict on constraint document_history_run_document_key do update
    set written_hash = excluded.written_hash, written_metadata = excluded.written_metadata;

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

  -- ingest run: documents this call inserted (their id exists only now).
  insert into public.document_history as h
    (run_id, document_id, owner_id, external_id, action, model, written_hash, written_metadata)
  select b.run_id, b.previous_id, b.owner_id, b.external_id, 'inserted', model_name, b.content_hash, b.metadata
    from pg_temp.supa_vectors_batch b
   where b.run_id is not null and b.previous_hash is null
  on conflict on constraint document_history_run_document_key do update
    set written_hash = excluded.written_hash, written_metadata = excluded.written_metadata;

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
-- begin_ingest_run: register (or resume) a run with what it reads and how; returns the run.
-- Resuming keeps started_at and the history; a rolled-back run cannot be resumed.
create or replace function public.begin_ingest_run(
  run_id text,
  sources jsonb default '{}'::jsonb,
  options jsonb default '{}'::jsonb
)
returns table (ingest_run_id text, status text, started_at timestamptz, resumed boolean)
language plpgsql
volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
  existing public.ingest_runs%rowtype;
begin
  if begin_ingest_run.run_id is null or pg_catalog.length(begin_ingest_run.run_id) not between 1 and 200 then
    raise exception using errcode = '22023', message = 'run_id must have 1 to 200 characters';
  end if;
  select * into existing from public.ingest_runs r where r.run_id = begin_ingest_run.run_id for update;
  if found and existing.status = 'rolled_back' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('ingest run %s was rolled back; start a new run', begin_ingest_run.run_id);
  end if;
  insert into public.ingest_runs as r (run_id, owner_id, sources, options)
  values (begin_ingest_run.run_id, auth.uid(), coalesce(begin_ingest_run.sources, '{}'::jsonb),
          coalesce(begin_ingest_run.options, '{}'::jsonb))
  on conflict (run_id) do update
    set status = 'running', sources = excluded.sources, options = excluded.options, finished_at = null;
  return query
  select r.run_id, r.status, r.started_at, existing.run_id is not null
    from public.ingest_runs r where r.run_id = begin_ingest_run.run_id;
end
$$;

-- finish_ingest_run: record how a run ended and its summary; returns what the run changed, counted
-- from document_history (exact even when batches were re-sent after a crash).
create or replace function public.finish_ingest_run(
  run_id text,
  final_status text,
  summary jsonb default '{}'::jsonb
)
returns table (ingest_run_id text, status text, inserted bigint, updated bigint, started_at timestamptz,
               finished_at timestamptz)
language plpgsql
volatile
set search_path = ''
as $$
#variable_conflict use_column
begin
  if finish_ingest_run.final_status is null
     or finish_ingest_run.final_status not in ('completed', 'failed', 'interrupted') then
    raise exception using errcode = '22023',
      message = 'final_status must be one of completed, failed, interrupted';
  end if;
  update public.ingest_runs r
     set status = finish_ingest_run.final_status, summary = coalesce(finish_ingest_run.summary, '{}'::jsonb),
         finished_at = pg_catalog.now()
   where r.run_id = finish_ingest_run.run_id and r.status <> 'rolled_back';
  if not found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('no ingest run %s that can finish (unknown, or rolled back)',
                                  finish_ingest_run.run_id);
  end if;
  return query
  select r.run_id, r.status,
         (select count(*) from public.document_history h where h.run_id = r.run_id and h.action = 'inserted'),
         (select count(*) from public.document_history h where h.run_id = r.run_id and h.action = 'updated'),
         r.started_at, r.finished_at
    from public.ingest_runs r where r.run_id = finish_ingest_run.run_id;
end
$$;

-- list_ingest_runs: the visible runs, newest first, with what each changed.
create or replace function public.list_ingest_runs(page_size integer default 100)
returns table (run_id text, owner_id uuid, status text, inserted bigint, updated bigint, sources jsonb,
               summary jsonb, started_at timestamptz, finished_at timestamptz, rolled_back_at timestamptz)
language plpgsql
stable
set search_path = ''
as $$
begin
  perform supa_vectors_internal.check_result_limit(page_size, 'page_size');
  return query
  select r.run_id, r.owner_id, r.status,
         (select count(*) from public.document_history h where h.run_id = r.run_id and h.action = 'inserted'),
         (select count(*) from public.document_history h where h.run_id = r.run_id and h.action = 'updated'),
         r.sources, r.summary, r.started_at, r.finished_at, r.rolled_back_at
    from public.ingest_runs r
   order by r.started_at desc, r.run_id
   limit page_size;
end
$$;

-- rollback_ingest_run: undo one run. Documents it inserted are deleted; documents it updated get their
-- previous content, metadata, vector and system metadata back. A document changed since the run (its
-- content or metadata differ from what the run wrote) is a 'conflict' and left alone unless force.
-- Undone entries leave the history, so calling again after resolving conflicts finishes the job; the
-- run is marked rolled_back once nothing is left. One row per history entry:
-- outcome 'deleted' | 'restored' | 'conflict'.
create or replace function public.rollback_ingest_run(run_id text, force boolean default false)
returns table (external_id text, owner_id uuid, action text, outcome text)
language plpgsql
volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
  run public.ingest_runs%rowtype;
  remaining bigint;
begin
  select * into run from public.ingest_runs r where r.run_id = rollback_ingest_run.run_id for update;
  if not found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('no ingest run %s (or it is not yours)', rollback_ingest_run.run_id);
  end if;
  if run.status = 'rolled_back' then
    return;
  end if;

  create temporary table pg_temp.supa_vectors_rollback on commit drop as
  select h.id as history_id, h.document_id, h.owner_id, h.external_id, h.action, h.model,
         h.previous_content, h.previous_metadata, h.previous_embedding, h.previous_system,
         not coalesce(rollback_ingest_run.force, false)
           and (d.content_hash <> h.written_hash or d.metadata <> h.written_metadata) as conflict
    from public.document_history h
    join (select d.id, d.content_hash, d.metadata from public.documents d
           where d.id in (select x.document_id from public.document_history x
                           where x.run_id = rollback_ingest_run.run_id)
             for update of d) d on d.id = h.document_id
   where h.run_id = rollback_ingest_run.run_id;

  delete from public.documents d
   using pg_temp.supa_vectors_rollback t
   where d.id = t.document_id and t.action = 'inserted' and not t.conflict;

  update public.documents d
     set content = t.previous_content, metadata = t.previous_metadata
    from pg_temp.supa_vectors_rollback t
   where d.id = t.document_id and t.action = 'updated' and not t.conflict
     and (d.content is distinct from t.previous_content or d.metadata is distinct from t.previous_metadata);

  delete from public.embeddings e
   using pg_temp.supa_vectors_rollback t
   where e.document_id = t.document_id and e.model = t.model
     and t.action = 'updated' and not t.conflict and t.previous_embedding is null;
  insert into public.embeddings as e (document_id, model, embedding)
  select t.document_id, t.model, t.previous_embedding
    from pg_temp.supa_vectors_rollback t
   where t.action = 'updated' and not t.conflict and t.previous_embedding is not null
  on conflict (document_id, model) do update set embedding = excluded.embedding, created_at = pg_catalog.now();

  delete from public.document_metadata m
   using pg_temp.supa_vectors_rollback t
   where m.document_id = t.document_id and t.action = 'updated' and not t.conflict and t.previous_system is null;
  insert into public.document_metadata as m
    (document_id, source_file, source_checksum, ingest_run_id, chunk_index, extra)
  select t.document_id, t.previous_system ->> 'source_file', t.previous_system ->> 'source_checksum',
         t.previous_system ->> 'ingest_run_id', (t.previous_system ->> 'chunk_index')::integer,
         coalesce(t.previous_system -> 'extra', '{}'::jsonb)
    from pg_temp.supa_vectors_rollback t
   where t.action = 'updated' and not t.conflict and t.previous_system is not null
  on conflict (document_id) do update
    set source_file = excluded.source_file, source_checksum = excluded.source_checksum,
        ingest_run_id = excluded.ingest_run_id, chunk_index = excluded.chunk_index, extra = excluded.extra;

  -- Deleted documents took their history with them (cascade); restored ones are done.
  delete from public.document_history h
   using pg_temp.supa_vectors_rollback t
   where h.id = t.history_id and not t.conflict;

  select count(*) into remaining from public.document_history h where h.run_id = rollback_ingest_run.run_id;
  if remaining = 0 then
    update public.ingest_runs r
       set status = 'rolled_back', rolled_back_at = pg_catalog.now()
     where r.run_id = rollback_ingest_run.run_id;
  end if;

  return query
  select t.external_id, t.owner_id, t.action,
         case when t.conflict then 'conflict' when t.action = 'inserted' then 'deleted' else 'restored' end
    from pg_temp.supa_vectors_rollback t
   order by t.history_id desc;
  drop table pg_temp.supa_vectors_rollback;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Grants, as for the other RPCs: signed-in users and the service role; anon and PUBLIC get nothing.
-- (create or replace keeps bulk_upsert's grants; restating them keeps this file self-evident.)
do $$
declare
  fn regprocedure;
begin
  for fn in
    select p.oid::regprocedure
      from pg_catalog.pg_proc p
     where p.pronamespace = 'public'::regnamespace
       and p.proname in ('bulk_upsert', 'begin_ingest_run', 'finish_ingest_run', 'list_ingest_runs',
                         'rollback_ingest_run')
  loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated', fn);
    execute pg_catalog.format('grant execute on function %s to authenticated, service_role', fn);
  end loop;
end
$$;
