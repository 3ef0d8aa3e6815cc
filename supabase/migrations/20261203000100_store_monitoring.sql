-- Monitoring for the operator (issue 15): how this store's RPCs perform, from pg_stat_statements, and
-- how large its tables and indexes are. Both for service_role only (`supa-vectors stats`, dashboards).
--
-- pg_stat_statements is enabled on hosted Supabase (schema extensions) and on the local stack
-- (shared_preload_libraries, created by its bootstrap). It shows other roles' statement texts only to
-- members of pg_read_all_stats, and PostgREST runs each RPC as the caller's role (authenticated,
-- service_role), so reading it as service_role would miss every user's searches. Hence the one
-- definer function below, in the schema PostgREST does not expose: it returns figures per RPC name,
-- never a statement's text, and only service_role may execute it (decision 0018).

-- The RPCs whose calls are reported are this store's: the functions of schema public (read from the
-- catalog, so a new RPC is counted without touching this function), as they appear in a statement:
-- `public.match_documents(` from the SDK, `"public"."match_documents"(` from PostgREST.
create function supa_vectors_internal.rpc_statement_stats()
returns table (
  rpc text,
  calls bigint,
  total_ms double precision,
  mean_ms double precision,
  stddev_ms double precision,
  max_ms double precision,
  rows_returned bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return query
  with ours(name) as (
    select distinct p.proname::text
      from pg_catalog.pg_proc p
     where p.pronamespace = 'public'::regnamespace
       and p.prorettype <> 'pg_catalog.trigger'::regtype
  ), matched as (
    select o.name, s.calls, s.total_exec_time, s.mean_exec_time, s.stddev_exec_time, s.max_exec_time, s.rows
      from ours o
      join extensions.pg_stat_statements s
        on s.dbid = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
       and s.query ~ ('"?public"?\."?' || o.name || '"?\s*\(')
       and s.query !~* '^\s*(create|alter|drop|grant|revoke|comment)\M'
  )
  select m.name,
         sum(m.calls)::bigint,
         sum(m.total_exec_time),
         sum(m.total_exec_time) / nullif(sum(m.calls), 0),
         -- The pooled standard deviation of every statement shape that called this RPC.
         pg_catalog.sqrt(greatest(
           sum(m.calls * (m.stddev_exec_time ^ 2 + m.mean_exec_time ^ 2)) / nullif(sum(m.calls), 0)
             - (sum(m.total_exec_time) / nullif(sum(m.calls), 0)) ^ 2,
           0)),
         max(m.max_exec_time),
         sum(m.rows)::bigint
    from matched m
   group by m.name
   order by 3 desc;
exception
  when undefined_table or undefined_object or object_not_in_prerequisite_state then
    raise exception 'pg_stat_statements is not available in this database'
      using errcode = '55000',
            hint = 'hosted Supabase has it in schema extensions; elsewhere add it to '
                   'shared_preload_libraries and create extension pg_stat_statements with schema extensions';
end
$$;

revoke all on function supa_vectors_internal.rpc_statement_stats() from public, anon, authenticated;
grant execute on function supa_vectors_internal.rpc_statement_stats() to service_role;

-- store_rpc_stats: per RPC since the statistics were last reset: calls, total and mean time, an
-- estimate of the 95th percentile (pg_stat_statements keeps mean and standard deviation, not
-- percentiles: mean + 1.645 sd, the normal approximation, capped at the maximum seen), rows returned.
create function public.store_rpc_stats()
returns table (
  rpc text,
  calls bigint,
  total_ms double precision,
  mean_ms double precision,
  p95_estimate_ms double precision,
  max_ms double precision,
  rows_returned bigint
)
language sql
stable
set search_path = ''
as $$
  select s.rpc, s.calls, s.total_ms, s.mean_ms,
         least(s.mean_ms + 1.645 * s.stddev_ms, s.max_ms), s.max_ms, s.rows_returned
    from supa_vectors_internal.rpc_statement_stats() s
$$;

-- store_table_sizes: this store's tables and their indexes, on disk (bytes) and in rows (the
-- planner's estimate: exact counts are store_stats' job and cost a scan).
create function public.store_table_sizes()
returns table (
  relation text,
  kind text,
  table_name text,
  bytes bigint,
  estimated_rows bigint
)
language sql
stable
set search_path = ''
as $$
  select c.relname::text,
         case c.relkind when 'i' then 'index' else 'table' end,
         coalesce(t.relname, c.relname)::text,
         case c.relkind when 'i' then pg_catalog.pg_relation_size(c.oid)
                        else pg_catalog.pg_total_relation_size(c.oid) end,
         greatest(c.reltuples, 0)::bigint
    from pg_catalog.pg_class c
    left join pg_catalog.pg_index i on i.indexrelid = c.oid
    left join pg_catalog.pg_class t on t.oid = i.indrelid
   where c.relnamespace = 'public'::regnamespace
     and c.relkind in ('r', 'p', 'i')
     and coalesce(t.relname, c.relname) in
         ('documents', 'embeddings', 'document_metadata', 'metadata_global', 'ingest_runs', 'document_history')
   order by 3, 2 desc, 4 desc
$$;

revoke all on function public.store_rpc_stats() from public, anon, authenticated;
revoke all on function public.store_table_sizes() from public, anon, authenticated;
grant execute on function public.store_rpc_stats() to service_role;
grant execute on function public.store_table_sizes() to service_role;
