-- Row Level Security, through the tables and through the RPCs: user A cannot read, change or delete
-- user B's rows; shared rows are read-only for signed-in users; anon gets nothing; service_role
-- sees everything. Run with pg_prove (the test-suite does: tests/test_pgtap.py).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = public, extensions;
select plan(27);

-- Identities, set the way PostgREST sets them for a request.
create function pg_temp.act_as(role text, sub text default null) returns void language sql as $$
  select set_config('role', role, true),
         set_config('request.jwt.claims',
                    json_build_object('role', role, 'sub', sub)::text, true);
$$;
create function pg_temp.doc(external_id text, content text, owner text default null) returns json language sql as $$
  select json_build_object('external_id', external_id, 'content', content, 'owner_id', owner,
                           'embedding', (select json_agg(0.05) from generate_series(1, 384)),
                           'system', json_build_object('source_file', external_id || '.json'))
$$;

select pg_temp.act_as('service_role');
select lives_ok($$ select * from public.bulk_upsert(json_build_array(
  pg_temp.doc('shared', 'shared text'),
  pg_temp.doc('a-doc', 'text of a', '00000000-0000-4000-8000-00000000000a'),
  pg_temp.doc('b-doc', 'text of b', '00000000-0000-4000-8000-00000000000b'))) $$,
  'service_role writes documents for anyone');

-- anon ------------------------------------------------------------------------------------------
select pg_temp.act_as('anon');
select throws_ok($$ select * from public.documents $$, '42501', null, 'anon cannot read documents');
select throws_ok($$ select * from public.embeddings $$, '42501', null, 'anon cannot read embeddings');
select throws_ok($$ select * from public.metadata_global $$, '42501', null, 'anon cannot read settings');
select throws_ok($$ select * from public.match_documents(array_fill(0.05, array[384])::extensions.vector) $$,
  '42501', null, 'anon cannot search');
select throws_ok($$ select * from public.bulk_upsert(json_build_array(pg_temp.doc('x', 'y'))) $$,
  '42501', null, 'anon cannot write');

-- user A ----------------------------------------------------------------------------------------
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
select results_eq($$ select external_id from public.documents order by external_id $$,
  array['a-doc', 'shared'], 'A reads its own and shared documents, not B''s');
select is((select count(*) from public.embeddings), 2::bigint, 'A reads only visible embeddings');
select is((select count(*) from public.document_metadata), 2::bigint, 'A reads only visible system metadata');
select results_eq($$ select external_id from public.match_documents(array_fill(0.05, array[384])::extensions.vector) order by 1 $$,
  array['a-doc', 'shared'], 'match_documents returns A''s and shared documents');
select is_empty($$ select * from public.get_documents(array['b-doc']) $$, 'get_documents hides B''s document');
select is((select public.count_documents('{}')), 2::bigint, 'count_documents counts what A can see');
select is_empty($$ select * from public.list_documents(100, 0) where external_id = 'b-doc' $$,
  'list_documents hides B''s document');

select is_empty($$ update public.documents set content = 'hacked' where external_id = 'b-doc' returning 1 $$,
  'A cannot update B''s document');
select is_empty($$ update public.documents set content = 'hacked' where external_id = 'shared' returning 1 $$,
  'A cannot update a shared document');
select is_empty($$ delete from public.documents where external_id in ('b-doc', 'shared') returning 1 $$,
  'A cannot delete B''s or shared documents through the table');
select is_empty($$ select * from public.delete_documents(array['b-doc'], '00000000-0000-4000-8000-00000000000b') $$,
  'A cannot delete B''s document through the RPC');
select is_empty($$ select * from public.delete_documents(array['shared']) $$,
  'delete_documents addresses A''s own namespace, never the shared one');
select throws_ok($$ insert into public.documents (external_id, owner_id, content)
                   values ('forged', '00000000-0000-4000-8000-00000000000b', 'x') $$,
  '42501', null, 'A cannot insert a document owned by B');
select throws_ok($$ select * from public.bulk_upsert(json_build_array(
                     pg_temp.doc('b-doc', 'overwrite', '00000000-0000-4000-8000-00000000000b'))) $$,
  '42501', null, 'A cannot write as B through bulk_upsert');
select throws_ok($$ insert into public.embeddings (document_id, model, embedding)
                   select id, 'other-model', array_fill(0.1, array[384])::extensions.vector
                     from public.documents where external_id = 'shared' $$,
  '42501', null, 'A cannot attach vectors to a shared document');
select throws_ok($$ update public.metadata_global set value = '1' where key = 'embedding_dimension' $$,
  '42501', null, 'A cannot change store settings');
select lives_ok($$ select * from public.bulk_upsert(json_build_array(pg_temp.doc('a-doc', 'new text of a'))) $$,
  'A updates its own document');

-- service_role ------------------------------------------------------------------------------------
select pg_temp.act_as('service_role');
select results_eq($$ select external_id || ':' || content from public.documents order by 1 $$,
  array['a-doc:new text of a', 'b-doc:text of b', 'shared:shared text'],
  'service_role sees everything; B''s and shared rows are unchanged');
select is((select count(*) from public.embeddings), 3::bigint, 'service_role sees every embedding');
select is((select (public.store_stats() ->> 'documents')::int), 3, 'store_stats counts everything');
select results_eq($$ select external_id from public.delete_documents(array['b-doc'], '00000000-0000-4000-8000-00000000000b') $$,
  array['b-doc'], 'service_role deletes in any namespace');

select * from finish();
rollback;
