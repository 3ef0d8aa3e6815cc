-- Issue 10, part 1: rows that a later privileged step trusts (document_history, ingest_runs) can only be
-- written by the step that did the work, a rollback acts only on what its own run wrote, and no answer
-- tells whether another user's run or document exists. One test per attack; each failed before
-- 20261202000600_history_written_by_its_run.sql. Run with pg_prove (tests/test_pgtap.py).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = public, extensions;
select plan(30);

create function pg_temp.act_as(role text, sub text default null) returns void language sql as $$
  select set_config('role', role, true),
         set_config('request.jwt.claims', json_build_object('role', role, 'sub', sub)::text, true);
$$;
create function pg_temp.doc(external_id text, content text, owner text default null, run text default null)
returns json language sql as $$
  select json_build_object('external_id', external_id, 'content', content, 'owner_id', owner,
                           'embedding', (select json_agg(0.05) from generate_series(1, 384)),
                           'system', json_build_object('source_file', external_id || '.json', 'ingest_run_id', run))
$$;
-- A history row written by the table owner, the way a planted row "that once existed" would look, in
-- whichever shape the table has (the old one, or with the per-owner run key).
create function pg_temp.plant(run text, external_id text, action text, previous_content text) returns void
language plpgsql as $$
declare
  d public.documents;
begin
  select * into d from public.documents x where x.external_id = plant.external_id;
  if exists (select 1 from information_schema.columns c
              where c.table_name = 'document_history' and c.column_name = 'ingest_run') then
    insert into public.document_history (ingest_run, run_id, document_id, owner_id, external_id, action, model,
      previous_content, previous_metadata, written_hash, written_metadata)
    select r.id, run, d.id, d.owner_id, d.external_id, action, 'sentence-transformers/all-MiniLM-L6-v2',
           previous_content, '{"evil": true}', d.content_hash, d.metadata
      from public.ingest_runs r where r.run_id = run and r.owner_id is null;
  else
    insert into public.document_history (run_id, document_id, owner_id, external_id, action, model,
      previous_content, previous_metadata, written_hash, written_metadata)
    values (run, d.id, d.owner_id, d.external_id, action, 'sentence-transformers/all-MiniLM-L6-v2',
            previous_content, '{"evil": true}', d.content_hash, d.metadata);
  end if;
end
$$;
create function pg_temp.counts(run text) returns text language sql as $$
  select inserted || ' inserted, ' || updated || ' updated' from public.list_ingest_runs(1000) r
   where r.run_id = run and r.owner_id is null
$$;

-- The store: a shared handbook (written by service run svc-old), a shared guide (service run svc-run),
-- A's own document and run.
select pg_temp.act_as('service_role');
select * from public.bulk_upsert(json_build_array(pg_temp.doc('handbook', 'The handbook', null, 'svc-old')));
select * from public.bulk_upsert(json_build_array(pg_temp.doc('guide', 'The guide', null, 'svc-run')));
select * from public.begin_ingest_run('svc-run2');
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
select * from public.begin_ingest_run('a-run', '{"paths": ["a"]}');
select * from public.bulk_upsert(json_build_array(
  pg_temp.doc('a-doc', 'text of a', '00000000-0000-4000-8000-00000000000a', 'a-run')));

-- Document ids B cannot see, for the side-channel probes below.
reset role;
create temporary table probe_ids as
  select 'an unknown' as k, 2147483647::bigint as v
  union all select 'another user''s', id from public.documents where external_id = 'a-doc';
grant select on probe_ids to authenticated;

-- Attack 1: B plants a history row in the service run, pointing at the shared handbook ---------------
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select is((select ingest_run_id from public.document_metadata m join public.documents d on d.id = m.document_id
            where d.external_id = 'guide'), 'svc-run', 'B can read the service run''s id (the attack''s start)');
select throws_ok($$
  insert into public.document_history (run_id, document_id, owner_id, external_id, action, model,
    previous_content, previous_metadata, written_hash, written_metadata)
  select 'svc-run', d.id, '00000000-0000-4000-8000-00000000000b', 'p1', 'updated',
         'sentence-transformers/all-MiniLM-L6-v2', 'Handbook replaced by user B', '{"evil": true}',
         d.content_hash, d.metadata
    from public.get_documents(array['handbook']) d $$,
  '42501', null, 'B cannot insert a row into document_history');
-- Attack 1b: the planted row would inflate the service run's counts.
select pg_temp.act_as('service_role');
select is(pg_temp.counts('svc-run'), '1 inserted, 0 updated', 'the service run still counts only what it wrote');
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select throws_ok($$ update public.document_history set previous_content = 'x' $$,
  '42501', null, 'B cannot update document_history, not even its own rows');
select throws_ok($$ delete from public.document_history $$,
  '42501', null, 'B cannot delete from document_history');

-- Attack 1c: B writes ingest_runs directly ---------------------------------------------------------
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select throws_ok($$ insert into public.ingest_runs (run_id, owner_id) values ('b-direct', '00000000-0000-4000-8000-00000000000b') $$,
  '42501', null, 'B cannot insert into ingest_runs');
select throws_ok($$ update public.ingest_runs set status = 'rolled_back' $$,
  '42501', null, 'B cannot update ingest_runs, not even its own runs');

-- Attack 1d: B tags its own write with the service run's id ----------------------------------------
select lives_ok($$ select * from public.bulk_upsert(json_build_array(
  pg_temp.doc('p1', 'B''s note', '00000000-0000-4000-8000-00000000000b', 'svc-run'))) $$,
  'B may name a run svc-run: it is B''s own run of that name');
select pg_temp.act_as('service_role');
select is(pg_temp.counts('svc-run'), '1 inserted, 0 updated', 'B''s write did not enter the service run''s history');

-- Side channel: begin_ingest_run on another user's run id answers as for an unknown id --------------
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select lives_ok($$ select * from public.begin_ingest_run('a-run', '{"paths": ["evil"]}') $$,
  'begin_ingest_run on A''s run id succeeds for B (a run of B''s own)');
select lives_ok($$ select * from public.begin_ingest_run('never-seen') $$,
  'begin_ingest_run on an unknown run id succeeds for B');
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
select is((select sources from public.ingest_runs where run_id = 'a-run'), '{"paths": ["a"]}'::jsonb,
  'A''s run is untouched by B''s run of the same name');
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select throws_ok($$ select * from public.rollback_ingest_run('svc-run2') $$, '22023',
  'no ingest run svc-run2 (or it is not yours)', 'B cannot roll back the service run');

-- Side channel: a foreign key answer reveals which document ids exist -------------------------------
select throws_ok($$ insert into public.document_history (run_id, document_id, owner_id, external_id, action, model,
    written_hash, written_metadata)
  values ('never-seen', 2147483647, '00000000-0000-4000-8000-00000000000b', 'x', 'inserted', 'm', 'h', '{}') $$,
  '42501', null, 'an unknown document id: permission denied');
select throws_ok(format($$ insert into public.document_history (run_id, document_id, owner_id, external_id, action,
    model, written_hash, written_metadata)
  values ('never-seen', %s, '00000000-0000-4000-8000-00000000000b', 'x', 'inserted', 'm', 'h', '{}') $$,
  (select id from public.documents where external_id = 'handbook')),
  '42501', null, 'an existing document id: the same answer');

-- Attack 2: a planted 'updated' row (had one ever existed) cannot redirect the rollback -------------
reset role;
select pg_temp.plant('svc-run', 'handbook', 'updated', 'Handbook replaced by user B');
select pg_temp.act_as('service_role');
select results_eq($$ select external_id || ':' || outcome from public.rollback_ingest_run('svc-run') order by 1 $$,
  array['guide:deleted', 'handbook:conflict'], 'the rollback deletes what the run wrote and refuses the planted row');
select results_eq($$ select d.content || ' ' || d.metadata::text || ' ' || (select count(*) from public.embeddings e where e.document_id = d.id)
                      from public.documents d where d.external_id = 'handbook' $$,
  array['The handbook {} 1'], 'the shared handbook keeps its text, metadata and vector');

-- Attack 3: a planted 'inserted' row on A's document, rolled back with force ------------------------
reset role;
select pg_temp.plant('svc-run2', 'a-doc', 'inserted', null);
select pg_temp.act_as('service_role');
select results_eq($$ select external_id || ':' || outcome from public.rollback_ingest_run('svc-run2', true) $$,
  array['a-doc:conflict'], 'a forced rollback still refuses a document its run never wrote');
select is((select count(*) from public.documents where external_id = 'a-doc'), 1::bigint, 'A''s document survives');

-- Review findings (docs/decisions/0010) ---------------------------------------------------------------
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select throws_ok(format($$ insert into public.embeddings (document_id, model, embedding)
                   values (%s, 'm', array_fill(0.1, array[384])::extensions.vector) $$, v), '42501', null,
  'embeddings: the same answer for ' || k || ' document id')
  from probe_ids;
select throws_ok(format($$ insert into public.document_metadata (document_id, ingest_run_id) values (%s, 'x') $$, v),
  '42501', null, 'document_metadata: the same answer for ' || k || ' document id')
  from probe_ids;
select lives_ok($$ insert into public.documents (external_id, owner_id, content, updated_at)
                   values ('future', '00000000-0000-4000-8000-00000000000b', 'x', '2099-01-01') $$,
  'B inserts a document of its own directly');
select ok((select updated_at <= now() from public.documents where external_id = 'future'),
  'the server stamps updated_at on insert: a forged date cannot stall every later mirror sync');
select throws_ok($$ select * from public.begin_ingest_run(e'run\x1b[2J') $$, '22023', null,
  'a run id with a control character (a terminal escape for the operator''s `runs`) is refused');
select throws_ok($$ select * from public.bulk_upsert(json_build_array(
                     pg_temp.doc('p3', 'x', '00000000-0000-4000-8000-00000000000b', e'run\x1b[2J'))) $$, '22023', null,
  'bulk_upsert refuses such a run id too');
select throws_ok($$ select supa_vectors_internal.record_run_history() $$, '42501', null,
  'the history trigger function cannot be called directly (nobody holds EXECUTE)');
select is_empty($$ select * from supa_vectors_internal.update_ingest_run('svc-run2', 'completed') $$,
  'update_ingest_run finds no service run for a user');
select pg_temp.act_as('service_role');
select is((select status from public.ingest_runs where run_id = 'svc-run2'), 'running'::text,
  'so the service run keeps its state');

select * from finish();
rollback;
