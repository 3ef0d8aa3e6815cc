-- supa-vectors: run history is written by the run that did the work; one permissive policy per role and
-- action. See docs/decisions/0010-history-written-by-its-run.md.
--
-- Before this migration a signed-in user could insert rows into document_history (its policy checked
-- only owner_id = auth.uid()) and ingest_runs, and rollback_ingest_run, run by the service role, trusted
-- every history row of a run: a planted row rewrote or deleted documents the run never touched. Now:
--   * no role but service_role (and the table owner) writes ingest_runs or document_history;
--   * history rows come from one SECURITY DEFINER trigger function, supa_vectors_internal.record_run_history,
--     fired by the real row change on documents and embeddings: what it records as "previous" is the OLD
--     row, the document is the one that changed, and the change had passed the writer's Row Level Security;
--   * runs are per owner (unique (owner_id, run_id)): a user's run id never reaches another user's run, so
--     no answer depends on whether someone else's run of that name exists;
--   * run status changes go through supa_vectors_internal.update_ingest_run (SECURITY DEFINER, called by
--     the ingest-run RPCs), which only acts on the caller's own runs and records only what it checks itself;
--   * rollback_ingest_run re-checks every history row against the run and the document (owner, external id,
--     document_metadata.ingest_run_id) and leaves any row that does not match alone, force or not.

-- ---------------------------------------------------------------------------------------------
-- Who is writing. Inside a SECURITY DEFINER function current_user is the function's owner, but the
-- `role` setting still holds the role the session switched to (PostgREST: SET LOCAL ROLE from the
-- verified JWT; SET ROLE needs membership, so a caller cannot fake it); 'none' means the login role.
create function supa_vectors_internal.acting_role_bypasses_rls()
returns boolean
language sql
stable
set search_path = ''
as $$
  select coalesce((select r.rolbypassrls or r.rolsuper from pg_catalog.pg_roles r
                    where r.rolname = case when pg_catalog.current_setting('role') = 'none' then session_user::text
                                           else pg_catalog.current_setting('role') end), false)
$$;

-- ---------------------------------------------------------------------------------------------
-- Existing rows a signed-in user could have planted: history whose document now belongs to someone
-- else, or whose run belongs to another owner than the document. They are removed before the new
-- rules take over (a genuine row never looks like this: a user's run only writes that user's documents).
delete from public.document_history h
 using public.documents d, public.ingest_runs r
 where d.id = h.document_id and r.run_id = h.run_id
   and (d.owner_id is distinct from h.owner_id or d.external_id <> h.external_id
        or (r.owner_id is not null and r.owner_id is distinct from d.owner_id));

-- ---------------------------------------------------------------------------------------------
-- Runs are per owner. A surrogate key (owner_id is null for the service role's runs, and a primary key
-- cannot hold null) that document_history references.
alter table public.document_history drop constraint document_history_run_id_fkey;
alter table public.document_history drop constraint document_history_run_document_key;
alter table public.ingest_runs drop constraint ingest_runs_pkey;
alter table public.ingest_runs add column id bigint generated always as identity primary key;
alter table public.ingest_runs
  add constraint ingest_runs_owner_run_key unique nulls not distinct (owner_id, run_id);
alter table public.document_history
  add column ingest_run bigint references public.ingest_runs (id) on delete cascade;
update public.document_history h set ingest_run = r.id from public.ingest_runs r where r.run_id = h.run_id;
alter table public.document_history alter column ingest_run set not null;
-- One entry per run and document: the state before the run's first change (also covers the foreign key).
alter table public.document_history
  add constraint document_history_run_document_key unique (ingest_run, document_id);
comment on table public.document_history is
  'Previous state of documents changed by an ingest run, for rollback_ingest_run(). Written only by the '
  'trigger function supa_vectors_internal.record_run_history().';

-- A run id is shown to the operator (`supa-vectors migrate runs` lists every owner's runs): no control
-- characters, so a user's run name cannot carry terminal escapes. NOT VALID: existing rows stay readable.
alter table public.ingest_runs
  add constraint ingest_runs_run_id_printable check (run_id !~ '[[:cntrl:]]') not valid;

-- Timestamps are the server's. updated_at was stamped on update only, so a signed-in user could insert a
-- row dated 2099: an incremental mirror sync (list_documents(updated_after), watermark = newest
-- updated_at seen) of every identity that sees the row, the service role's included, then skipped all
-- later changes.
drop trigger documents_touch_updated_at on public.documents;
create trigger documents_touch_updated_at
  before insert or update on public.documents
  for each row
  execute function supa_vectors_internal.touch_updated_at();

-- ---------------------------------------------------------------------------------------------
-- Privileges and policies: signed-in users read their own runs and the history of their own documents,
-- and write neither.
drop policy ingest_runs_own on public.ingest_runs;
drop policy document_history_own on public.document_history;
create policy ingest_runs_select_own on public.ingest_runs
  for select to authenticated
  using (owner_id = (select auth.uid()));
create policy document_history_select_own on public.document_history
  for select to authenticated
  using (owner_id = (select auth.uid()));
revoke all on public.ingest_runs, public.document_history from authenticated;
grant select on public.ingest_runs, public.document_history to authenticated;

-- One permissive policy per role and action (Supabase's linter, multiple_permissive_policies): the
-- `for all` write policies also applied to SELECT, so every read ran both. Writes keep their rules,
-- split by action.
drop policy embeddings_write_own on public.embeddings;
drop policy document_metadata_write_own on public.document_metadata;
create policy embeddings_insert_own on public.embeddings
  for insert to authenticated
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));
create policy embeddings_update_own on public.embeddings
  for update to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())))
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));
create policy embeddings_delete_own on public.embeddings
  for delete to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));
create policy document_metadata_insert_own on public.document_metadata
  for insert to authenticated
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));
create policy document_metadata_update_own on public.document_metadata
  for update to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())))
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));
create policy document_metadata_delete_own on public.document_metadata
  for delete to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));

-- ---------------------------------------------------------------------------------------------
-- record_run_history: the only writer of document_history (and the one that registers a run on its
-- first change). SECURITY DEFINER because the writer (a signed-in user, through bulk_upsert) may not
-- write the table; safe because it cannot be called directly (Postgres refuses to call a trigger
-- function outside a trigger, and nobody holds EXECUTE) and every value it stores comes from the row
-- change that fired it or from the tables, never from the caller. The caller chooses only the run's name
-- (the setting supa_vectors.ingest_run, set by bulk_upsert), and the run is looked up in the writer's own
-- namespace (owner_id = auth.uid(); null only for a role that bypasses Row Level Security): a user can
-- only ever add its own changes to its own runs.
--   documents AFTER INSERT          -> 'inserted'
--   documents AFTER UPDATE          -> 'updated', previous = OLD plus the vector and document_metadata
--                                      as they are now (bulk_upsert changes those after the document)
--   embeddings AFTER INSERT/UPDATE  -> 'updated' when the run had not touched the document yet (a vector
--                                      added to unchanged content); previous vector = OLD (or none)
-- Only a run's first change of a document is kept as "previous"; later ones move written_hash/metadata.
create function supa_vectors_internal.record_run_history()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  run_name constant text := nullif(pg_catalog.current_setting('supa_vectors.ingest_run', true), '');
  writer constant uuid := auth.uid();
  run public.ingest_runs%rowtype;
  doc public.documents%rowtype;
  model_name text;
begin
  if run_name is null then
    return null;
  end if;
  if writer is null and not supa_vectors_internal.acting_role_bypasses_rls() then
    raise exception using errcode = '42501', message = 'an ingest run needs a signed-in user or the service role';
  end if;
  if tg_table_name = 'documents' then
    if tg_op = 'UPDATE' and old.content is not distinct from new.content and old.metadata is not distinct from new.metadata then
      return null;
    end if;
    doc := new;
    model_name := coalesce(nullif(pg_catalog.current_setting('supa_vectors.ingest_model', true), ''),
                           supa_vectors_internal.setting('embedding_model') #>> '{}');
  else
    select * into doc from public.documents d where d.id = new.document_id;
    model_name := new.model;
  end if;

  select * into run from public.ingest_runs r where r.run_id = run_name and r.owner_id is not distinct from writer;
  if not found then
    insert into public.ingest_runs as r (run_id, owner_id) values (run_name, writer)
    on conflict on constraint ingest_runs_owner_run_key do nothing;
    select * into run from public.ingest_runs r where r.run_id = run_name and r.owner_id is not distinct from writer;
  end if;
  if run.status = 'rolled_back' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('ingest run %s was rolled back; write with a new run id', run_name);
  end if;
  -- A user's run holds only that user's documents (a service-role session acting for user A, with A's
  -- claims, writes A's run and may not put B's documents in it).
  if run.owner_id is not null and doc.owner_id is distinct from run.owner_id then
    raise exception using errcode = '42501',
      message = pg_catalog.format('ingest run %s holds only documents of its owner', run_name);
  end if;

  if tg_table_name = 'documents' and tg_op = 'INSERT' then
    insert into public.document_history as h
      (ingest_run, run_id, document_id, owner_id, external_id, action, model, written_hash, written_metadata)
    values (run.id, run.run_id, doc.id, doc.owner_id, doc.external_id, 'inserted', model_name,
            doc.content_hash, doc.metadata)
    on conflict on constraint document_history_run_document_key do nothing;
  elsif tg_table_name = 'documents' then
    insert into public.document_history as h
      (ingest_run, run_id, document_id, owner_id, external_id, action, model, previous_content,
       previous_metadata, previous_embedding, previous_system, written_hash, written_metadata)
    values (run.id, run.run_id, doc.id, doc.owner_id, doc.external_id, 'updated', model_name, old.content,
            old.metadata,
            (select e.embedding from public.embeddings e where e.document_id = doc.id and e.model = model_name),
            supa_vectors_internal.system_metadata_of(doc.id),
            doc.content_hash, doc.metadata)
    on conflict on constraint document_history_run_document_key do update
      set written_hash = excluded.written_hash, written_metadata = excluded.written_metadata;
  else
    insert into public.document_history as h
      (ingest_run, run_id, document_id, owner_id, external_id, action, model, previous_content,
       previous_metadata, previous_embedding, previous_system, written_hash, written_metadata)
    values (run.id, run.run_id, doc.id, doc.owner_id, doc.external_id, 'updated', model_name, doc.content,
            doc.metadata, case when tg_op = 'UPDATE' then old.embedding end,
            supa_vectors_internal.system_metadata_of(doc.id),
            doc.content_hash, doc.metadata)
    on conflict on constraint document_history_run_document_key do nothing;
  end if;
  return null;
end
$$;

-- A document's document_metadata row as history keeps it (without its keys), null when there is none.
create function supa_vectors_internal.system_metadata_of(document bigint)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object('source_file', m.source_file, 'source_checksum', m.source_checksum,
           'ingest_run_id', m.ingest_run_id, 'chunk_index', m.chunk_index, 'extra', m.extra)
    from public.document_metadata m where m.document_id = document
$$;

create trigger documents_record_run_history
  after insert or update on public.documents
  for each row
  execute function supa_vectors_internal.record_run_history();
create trigger embeddings_record_run_history
  after insert or update on public.embeddings
  for each row
  execute function supa_vectors_internal.record_run_history();

-- ---------------------------------------------------------------------------------------------
-- update_ingest_run: the one way the RPCs change a run (a signed-in user may not write ingest_runs).
-- SECURITY DEFINER, in the unexposed schema, acting only on the caller's own run (owner_id = auth.uid();
-- the service role's runs have owner null, reachable only by a role that bypasses RLS), and storing only
-- what it decides itself:
--   'running'                          create the run, or resume it (not once rolled back);
--   'completed' | 'failed' | 'interrupted'  finish it (not once rolled back);
--   'rolled_back'                      drop the history entries whose document is back in its previous
--                                      state (deleted, or restored), and mark the run rolled back when
--                                      none is left.
-- Returns the run, or nothing when the caller has no such run (or it cannot make that change).
create function supa_vectors_internal.update_ingest_run(
  run_name text,
  new_status text,
  sources jsonb default null,
  options jsonb default null,
  summary jsonb default null
)
returns setof public.ingest_runs
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  owner constant uuid := auth.uid();
  run public.ingest_runs%rowtype;
begin
  if owner is null and not supa_vectors_internal.acting_role_bypasses_rls() then
    raise exception using errcode = '42501', message = 'ingest runs need a signed-in user or the service role';
  end if;
  if new_status = 'running' then
    insert into public.ingest_runs as r (run_id, owner_id, sources, options)
    values (run_name, owner, coalesce(update_ingest_run.sources, '{}'::jsonb),
            coalesce(update_ingest_run.options, '{}'::jsonb))
    on conflict on constraint ingest_runs_owner_run_key do update
      set status = 'running', sources = excluded.sources, options = excluded.options, finished_at = null
      where r.status <> 'rolled_back'
    returning * into run;
  elsif new_status in ('completed', 'failed', 'interrupted') then
    update public.ingest_runs r
       set status = new_status, summary = coalesce(update_ingest_run.summary, '{}'::jsonb),
           finished_at = pg_catalog.now()
     where r.run_id = run_name and r.owner_id is not distinct from owner and r.status <> 'rolled_back'
    returning * into run;
  elsif new_status = 'rolled_back' then
    select * into run from public.ingest_runs r
     where r.run_id = run_name and r.owner_id is not distinct from owner for update;
    if found then
      delete from public.document_history h
       using public.documents d
       where h.ingest_run = run.id and h.action = 'updated' and d.id = h.document_id
         and d.content = h.previous_content and d.metadata = h.previous_metadata
         and case when h.previous_embedding is null
                  then not exists (select 1 from public.embeddings e where e.document_id = d.id and e.model = h.model)
                  else exists (select 1 from public.embeddings e where e.document_id = d.id and e.model = h.model
                                  and e.embedding operator(extensions.=) h.previous_embedding) end;
      if not exists (select 1 from public.document_history h where h.ingest_run = run.id) then
        update public.ingest_runs r set status = 'rolled_back', rolled_back_at = pg_catalog.now()
         where r.id = run.id and r.status <> 'rolled_back'
        returning * into run;
      end if;
    end if;
  else
    raise exception using errcode = '22023', message = pg_catalog.format('unknown run status %s', new_status);
  end if;
  if run.id is not null then
    return next run;
  end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- bulk_upsert: unchanged contract, except that a batch belongs to at most one ingest run; its history is
-- now recorded by the trigger above, from the row changes this function makes (steps marked "ingest run").
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

-- ---------------------------------------------------------------------------------------------
-- begin_ingest_run: register (or resume) the caller's run with what it reads and how; returns the run.
-- Runs are per owner, so a name another user also uses is simply a different run: the answer never
-- tells whether it exists. Resuming keeps started_at and the history; a rolled-back run cannot be resumed.
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
  existed boolean;
  run public.ingest_runs%rowtype;
begin
  if begin_ingest_run.run_id is null or pg_catalog.length(begin_ingest_run.run_id) not between 1 and 200
     or begin_ingest_run.run_id ~ '[[:cntrl:]]' then
    raise exception using errcode = '22023', message = 'run_id must have 1 to 200 characters, none a control character';
  end if;
  existed := exists (select 1 from public.ingest_runs r
                      where r.run_id = begin_ingest_run.run_id and r.owner_id is not distinct from auth.uid());
  select * into run from supa_vectors_internal.update_ingest_run(
    begin_ingest_run.run_id, 'running', begin_ingest_run.sources, begin_ingest_run.options);
  if run.id is null then
    raise exception using errcode = '22023',
      message = pg_catalog.format('ingest run %s was rolled back; start a new run', begin_ingest_run.run_id);
  end if;
  return query select run.run_id, run.status, run.started_at, existed;
end
$$;

-- finish_ingest_run: record how the caller's run ended and its summary; returns what the run changed,
-- counted from document_history (exact even when batches were re-sent after a crash).
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
declare
  run public.ingest_runs%rowtype;
begin
  if finish_ingest_run.final_status is null
     or finish_ingest_run.final_status not in ('completed', 'failed', 'interrupted') then
    raise exception using errcode = '22023',
      message = 'final_status must be one of completed, failed, interrupted';
  end if;
  select * into run from supa_vectors_internal.update_ingest_run(
    finish_ingest_run.run_id, finish_ingest_run.final_status, summary => finish_ingest_run.summary);
  if run.id is null then
    raise exception using errcode = '22023',
      message = pg_catalog.format('no ingest run %s that can finish (unknown, or rolled back)',
                                  finish_ingest_run.run_id);
  end if;
  return query
  select run.run_id, run.status,
         (select count(*) from public.document_history h where h.ingest_run = run.id and h.action = 'inserted'),
         (select count(*) from public.document_history h where h.ingest_run = run.id and h.action = 'updated'),
         run.started_at, run.finished_at;
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
         (select count(*) from public.document_history h where h.ingest_run = r.id and h.action = 'inserted'),
         (select count(*) from public.document_history h where h.ingest_run = r.id and h.action = 'updated'),
         r.sources, r.summary, r.started_at, r.finished_at, r.rolled_back_at
    from public.ingest_runs r
   order by r.started_at desc, r.run_id, r.id
   limit page_size;
end
$$;

-- rollback_ingest_run: undo one of the caller's runs (the service role: one of its own runs). Documents
-- it inserted are deleted; documents it updated get their previous content, metadata, vector and system
-- metadata back. A history entry is acted on only when the document still is the one the run wrote:
-- same owner and external id as recorded, owned by the run's owner (unless the run is the service
-- role's), and document_metadata.ingest_run_id naming this run (a later run that changed it must be
-- rolled back first). An entry failing that is a 'conflict' even with force. Without force, a document
-- changed since the run (content or metadata differ from what the run wrote) is a 'conflict' too.
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
begin
  select * into run from public.ingest_runs r
   where r.run_id = rollback_ingest_run.run_id and r.owner_id is not distinct from auth.uid();
  if not found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('no ingest run %s (or it is not yours)', rollback_ingest_run.run_id);
  end if;
  if run.status = 'rolled_back' then
    return;
  end if;
  -- The rollback's own writes are not part of any run.
  perform pg_catalog.set_config('supa_vectors.ingest_run', '', true);

  create temporary table pg_temp.supa_vectors_rollback on commit drop as
  select h.id as history_id, h.document_id, h.owner_id, h.external_id, h.action, h.model,
         h.previous_content, h.previous_metadata, h.previous_embedding, h.previous_system,
         not (d.owner_id is not distinct from h.owner_id and d.external_id = h.external_id
              and (run.owner_id is null or d.owner_id = run.owner_id)
              and m.ingest_run_id is not distinct from run.run_id)
         or (not coalesce(rollback_ingest_run.force, false)
             and (d.content_hash <> h.written_hash or d.metadata <> h.written_metadata)) as conflict
    from public.document_history h
    join (select d.id, d.owner_id, d.external_id, d.content_hash, d.metadata from public.documents d
           where d.id in (select x.document_id from public.document_history x where x.ingest_run = run.id)
             for update of d) d on d.id = h.document_id
    left join public.document_metadata m on m.document_id = h.document_id
   where h.ingest_run = run.id;

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

  -- Deleted documents took their history with them (cascade); restored ones are removed, and the run
  -- marked rolled back when nothing is left, by the one function allowed to write runs and history.
  perform supa_vectors_internal.update_ingest_run(run.run_id, 'rolled_back');

  return query
  select t.external_id, t.owner_id, t.action,
         case when t.conflict then 'conflict' when t.action = 'inserted' then 'deleted' else 'restored' end
    from pg_temp.supa_vectors_rollback t
   order by t.history_id desc;
  drop table pg_temp.supa_vectors_rollback;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Grants. The trigger function: nobody (a trigger fires without EXECUTE). update_ingest_run: the
-- ingest-run RPCs run as their caller and call it; it lives outside `public`, so PostgREST never
-- exposes it. The RPCs keep their grants (create or replace keeps them).
revoke all on function supa_vectors_internal.record_run_history() from public, anon, authenticated, service_role;
revoke all on function supa_vectors_internal.update_ingest_run(text, text, jsonb, jsonb, jsonb)
  from public, anon, authenticated, service_role;
grant execute on function supa_vectors_internal.update_ingest_run(text, text, jsonb, jsonb, jsonb)
  to authenticated, service_role;
revoke all on function supa_vectors_internal.acting_role_bypasses_rls() from public, anon;
revoke all on function supa_vectors_internal.system_metadata_of(bigint) from public, anon;
grant execute on function supa_vectors_internal.acting_role_bypasses_rls() to authenticated, service_role;
grant execute on function supa_vectors_internal.system_metadata_of(bigint) to authenticated, service_role;
