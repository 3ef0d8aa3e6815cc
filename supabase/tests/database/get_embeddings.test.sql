-- get_embeddings (issue 17): the stored vectors of the documents a caller can see, and nothing else.
-- User A gets its own and shared documents' vectors, never B's; anon cannot call it; the same
-- result-limit check as get_documents bounds it. Run by tests/test_pgtap.py.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = public, extensions;
select plan(8);

create function pg_temp.act_as(role text, sub text default null) returns void language sql as $$
  select set_config('role', role, true),
         set_config('request.jwt.claims',
                    json_build_object('role', role, 'sub', sub)::text, true);
$$;
create function pg_temp.doc(external_id text, content text, fill float8, owner text default null)
returns json language sql as $$
  select json_build_object('external_id', external_id, 'content', content, 'owner_id', owner,
                           'embedding', (select json_agg(fill) from generate_series(1, 384)))
$$;

select pg_temp.act_as('service_role');
select lives_ok($$ select * from public.bulk_upsert(json_build_array(
  pg_temp.doc('shared', 'shared text', 0.01),
  pg_temp.doc('a-doc', 'text of a', 0.02, '00000000-0000-4000-8000-00000000000a'),
  pg_temp.doc('b-doc', 'text of b', 0.03, '00000000-0000-4000-8000-00000000000b'))) $$,
  'service_role writes documents for anyone');

select pg_temp.act_as('anon');
select throws_ok($$ select * from public.get_embeddings(array['a-doc', 'b-doc', 'shared']) $$,
  '42501', null, 'anon cannot read stored vectors');

select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
select results_eq(
  $$ select external_id, embedding = array_fill(0.02, array[384])::extensions.vector
       from public.get_embeddings(array['a-doc']) $$,
  $$ values ('a-doc', true) $$, 'A reads the vector stored for its document');
select results_eq(
  $$ select external_id from public.get_embeddings(array['a-doc', 'b-doc', 'shared']) order by 1 $$,
  array['a-doc', 'shared'], 'A reads its own and shared vectors, not B''s');
select is_empty($$ select * from public.get_embeddings(array['b-doc']) $$,
  'get_embeddings hides B''s document and vector');
select throws_ok(
  $$ select * from public.get_embeddings(array(select 'x' || i from generate_series(1, 100000) i)) $$,
  '54000', null, 'get_embeddings is bounded by the result limit');

select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select results_eq(
  $$ select external_id, embedding = array_fill(0.03, array[384])::extensions.vector
       from public.get_embeddings(array['a-doc', 'b-doc']) $$,
  $$ values ('b-doc', true) $$, 'B reads its own vector and none of A''s');

select pg_temp.act_as('service_role');
select is((select count(*) from public.get_embeddings(array['a-doc', 'b-doc', 'shared'])), 3::bigint,
  'service_role reads every vector');

select * from finish();
rollback;
