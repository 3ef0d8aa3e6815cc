-- Undoes 20261125000300_store_rpcs.sql.
drop function if exists public.finish_bulk_load();
drop function if exists public.begin_bulk_load(bigint);
drop function if exists public.store_stats();
drop function if exists public.store_settings();
drop function if exists public.count_documents(jsonb);
drop function if exists public.list_documents(integer, bigint, jsonb, boolean, timestamptz, text);
drop function if exists public.get_documents(text[]);
drop function if exists public.delete_documents(text[], uuid);
drop function if exists public.bulk_upsert(json, extensions.vector[], text);
drop function if exists public.hybrid_search(text, extensions.vector, integer, jsonb, double precision, double precision, integer, text);
drop function if exists public.match_documents(extensions.vector, integer, double precision, jsonb, text, integer, integer);
drop function if exists supa_vectors_internal.caller_sees_all_rows();
drop function if exists supa_vectors_internal.check_result_limit(integer, text);
drop function if exists supa_vectors_internal.setting(text);
