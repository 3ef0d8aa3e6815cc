-- supa-vectors: bounds on a whole metadata filter, checked before it is compiled.
--
-- compile_filter() limited each part of a filter ($in lists, field names, 10 levels of $and/$or/$not)
-- but not the whole: {"$or": [{"k": {"$in": [0..999]}} x 1000]} (4.9 MB) compiled to 1M clauses and
-- 37 MB of SQL whose parsing and planning ignore the statement timeout (count_documents was cancelled
-- after 14.5 s with an 8 s timeout). Now every filter is measured first, by checks that do not
-- recurse over it, and refused with invalid_parameter_value (22023) when it exceeds:
--   max_filter_bytes       bytes of its jsonb text form (filter::text)            262144
--   max_filter_json_depth  levels of JSON nesting (the filter itself is level 0)  64
--   max_filter_values      JSON values in it: objects, arrays and scalars         5000
-- The limits live in metadata_global, so the SDK's client-side check reads the same numbers
-- (store_settings); docs/decisions/0011-filter-bounds.md has the measurements behind them.
--
-- A filter nested deeper than Postgres' own JSON parser goes (about 14,500 levels at the default
-- max_stack_depth of 2 MB) never reaches these functions: the parser refuses it with 54001 while
-- reading the argument. The SDK refuses it client-side with the same 22023-style message.

insert into public.metadata_global (key, value) values
  ('max_filter_bytes', '262144'),
  ('max_filter_json_depth', '64'),
  ('max_filter_values', '5000');

create function supa_vectors_internal.check_filter_bounds(filter jsonb)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  max_bytes constant integer := coalesce((supa_vectors_internal.setting('max_filter_bytes'))::integer, 262144);
  max_depth constant integer := coalesce((supa_vectors_internal.setting('max_filter_json_depth'))::integer, 64);
  max_values constant integer := coalesce((supa_vectors_internal.setting('max_filter_values'))::integer, 5000);
  filter_bytes integer;
  filter_values integer;
begin
  -- Linear and iterative: jsonb's text output walks the value without recursion.
  filter_bytes := pg_catalog.octet_length(filter::text);
  if filter_bytes > max_bytes then
    perform supa_vectors_internal.filter_error(pg_catalog.format(
      'the filter has %s bytes of JSON; the limit is %s', filter_bytes, max_bytes));
  end if;
  -- The path walk descends at most max_depth + 1 levels and stops at the first value it finds there.
  if pg_catalog.jsonb_path_exists(filter, pg_catalog.format('strict $.**{%s}', max_depth + 1)::jsonpath) then
    perform supa_vectors_internal.filter_error(pg_catalog.format(
      'the filter nests deeper than %s levels of JSON; the limit is %s', max_depth, max_depth));
  end if;
  -- Every value at every level, the filter included; .type() keeps the walk from copying subtrees.
  filter_values := pg_catalog.jsonb_array_length(pg_catalog.jsonb_path_query_array(filter, 'strict $.**.type()'));
  if filter_values > max_values then
    perform supa_vectors_internal.filter_error(pg_catalog.format(
      'the filter has %s JSON values; the limit is %s', filter_values, max_values));
  end if;
end
$$;

-- compile_filter as in 20261125000200_metadata_filters.sql, plus the bounds check on the whole filter
-- (depth 0) before anything else; stable now, as it reads the limits from metadata_global.
create or replace function supa_vectors_internal.compile_filter(filter jsonb, depth integer default 0)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  clauses text[] := '{}';
  key text;
  value jsonb;
  op text;
  operand jsonb;
  parts text[];
begin
  if filter is null or filter = 'null'::jsonb then
    return 'true';
  end if;
  if depth = 0 then
    perform supa_vectors_internal.check_filter_bounds(filter);
  end if;
  if pg_catalog.jsonb_typeof(filter) <> 'object' then
    perform supa_vectors_internal.filter_error('a filter is a JSON object, got ' || pg_catalog.jsonb_typeof(filter));
  end if;
  if depth > 10 then
    perform supa_vectors_internal.filter_error('nested deeper than 10 levels');
  end if;
  for key, value in select e.key, e.value from pg_catalog.jsonb_each(filter) e loop
    if key in ('$and', '$or') then
      if pg_catalog.jsonb_typeof(value) <> 'array' or pg_catalog.jsonb_array_length(value) = 0 then
        perform supa_vectors_internal.filter_error(key || ' needs a non-empty array of filters');
      end if;
      select pg_catalog.array_agg(supa_vectors_internal.compile_filter(e, depth + 1) order by n)
        into parts
        from pg_catalog.jsonb_array_elements(value) with ordinality as a(e, n);
      clauses := clauses || ('(' || pg_catalog.array_to_string(parts, case key when '$and' then ' and ' else ' or ' end) || ')');
    elsif key = '$not' then
      clauses := clauses || ('not ' || supa_vectors_internal.compile_filter(value, depth + 1));
    elsif pg_catalog.left(key, 1) = '$' then
      perform supa_vectors_internal.filter_error(pg_catalog.format(
        'unknown logical operator "%s"; use $and, $or or $not, or a metadata field name', key));
    elsif key = '' or pg_catalog.length(key) > 256 then
      perform supa_vectors_internal.filter_error('a field name must have 1 to 256 characters');
    elsif pg_catalog.jsonb_typeof(value) = 'object'
          and exists (select 1 from pg_catalog.jsonb_object_keys(value) k where pg_catalog.left(k, 1) = '$') then
      if exists (select 1 from pg_catalog.jsonb_object_keys(value) k where pg_catalog.left(k, 1) <> '$') then
        perform supa_vectors_internal.filter_error(pg_catalog.format(
          'the condition on "%s" mixes operators and plain keys', key));
      end if;
      for op, operand in select e.key, e.value from pg_catalog.jsonb_each(value) e loop
        clauses := clauses || supa_vectors_internal.compile_field_filter(key, op, operand);
      end loop;
    else
      clauses := clauses || supa_vectors_internal.compile_field_filter(key, '$eq', value);
    end if;
  end loop;
  if pg_catalog.cardinality(clauses) = 0 then
    return 'true';
  end if;
  if pg_catalog.cardinality(clauses) = 1 then
    return clauses[1];
  end if;
  return '(' || pg_catalog.array_to_string(clauses, ' and ') || ')';
end
$$;

revoke all on function supa_vectors_internal.check_filter_bounds(jsonb) from public, anon;
grant execute on function supa_vectors_internal.check_filter_bounds(jsonb) to authenticated, service_role;
