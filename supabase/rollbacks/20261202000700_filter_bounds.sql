-- Undoes 20261202000700_filter_bounds.sql: compile_filter as 20261125000200_metadata_filters.sql
-- defined it (no bounds on the whole filter), and the bounds' settings and check function gone.

create or replace function supa_vectors_internal.compile_filter(filter jsonb, depth integer default 0)
returns text
language plpgsql
immutable
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

drop function if exists supa_vectors_internal.check_filter_bounds(jsonb);
delete from public.metadata_global where key in ('max_filter_bytes', 'max_filter_json_depth', 'max_filter_values');
