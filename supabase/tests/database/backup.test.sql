-- Issue 15, part 4: the backup RPCs under Row Level Security. A user's export holds that user's own
-- documents only (not the shared ones, never another user's), the service role's holds every owner's,
-- anon can call neither, and export_snapshot's count and digest describe exactly what export_documents
-- returns. Run with pg_prove (tests/test_pgtap.py).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = public, extensions;
select plan(12);

create function pg_temp.act_as(role text, sub text default null) returns void language sql as $$
  select set_config('role', role, true),
         set_config('request.jwt.claims', json_build_object('role', role, 'sub', sub)::text, true);
$$;
create function pg_temp.doc(external_id text, content text) returns json language sql as $$
  select json_build_object('external_id', external_id, 'content', content,
                           'embedding', (select json_agg(0.05) from generate_series(1, 384)))
$$;

select pg_temp.act_as('service_role');
select * from public.bulk_upsert(json_build_array(pg_temp.doc('shared', 'for everyone')));
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
select * from public.bulk_upsert(json_build_array(pg_temp.doc('a1', 'one of a'), pg_temp.doc('a2', 'two of a')));
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select * from public.bulk_upsert(json_build_array(pg_temp.doc('b1', 'one of b')));

-- A user: their own documents, with vectors and versions; not the shared one, not B's.
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
select results_eq(
  $$select external_id from public.export_documents(0, 100) order by external_id$$,
  $$values ('a1'), ('a2')$$, 'A exports A''s documents only');
select is((select count(*) from public.export_documents(0, 100) where embedding is null), 0::bigint,
  'each with its vector');
select is((public.export_snapshot() ->> 'documents')::bigint, 2::bigint, 'A''s snapshot counts A''s two');
select is((public.export_snapshot() ->> 'digest')::bigint,
  (select bit_xor(version) from public.export_documents(0, 100)), 'the digest is the XOR of the versions');
select is((public.export_snapshot() ->> 'all_owners')::boolean, false, 'A sees one owner');
select is_empty($$select * from public.export_documents(0, 100, array['b1', 'shared'])$$,
  'naming B''s or the shared id does not reach them');

select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000b');
select results_eq($$select external_id from public.export_documents(0, 100)$$, $$values ('b1')$$,
  'B exports B''s document only');

-- A write changes the row's version, so the snapshot no longer matches an earlier pass.
select pg_temp.act_as('authenticated', '00000000-0000-4000-8000-00000000000a');
create temporary table before_edit as select public.export_snapshot() ->> 'digest' as digest;
select * from public.bulk_upsert(json_build_array(
  json_build_object('external_id', 'a1', 'content', 'one of a', 'metadata', json_build_object('v', 2))));
select isnt(public.export_snapshot() ->> 'digest', (select digest from before_edit),
  'a metadata change changes the digest');

-- The service role: every owner.
select pg_temp.act_as('service_role');
select results_eq(
  $$select external_id, owner_id::text from public.export_documents(0, 100) order by external_id$$,
  $$values ('a1', '00000000-0000-4000-8000-00000000000a'), ('a2', '00000000-0000-4000-8000-00000000000a'),
           ('b1', '00000000-0000-4000-8000-00000000000b'), ('shared', null)$$,
  'the service role exports every owner''s documents');
select is((public.export_snapshot() ->> 'all_owners')::boolean, true, 'the service role sees every owner');

-- anon: nothing.
select pg_temp.act_as('anon');
select throws_ok($$select * from public.export_documents(0, 100)$$, '42501', null, 'anon cannot export');
select throws_ok($$select public.export_snapshot()$$, '42501', null, 'anon cannot take a snapshot');

select * from finish();
rollback;
