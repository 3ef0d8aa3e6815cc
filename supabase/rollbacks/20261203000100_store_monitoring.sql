-- Rollback of 20261203000100_store_monitoring.sql: the monitoring RPCs and their definer function.
drop function if exists public.store_table_sizes();
drop function if exists public.store_rpc_stats();
drop function if exists supa_vectors_internal.rpc_statement_stats();
