-- supa-vectors: metadata filters, compiled on the server into SQL over `d.metadata`.
--
-- A filter is JSON, never SQL: every key and operand reaches the generated expression only through
-- quote_literal(), and the structure is validated first, so a malformed filter is an
-- invalid_parameter_value (22023) error that says what is wrong and where.
--
-- Grammar (the SDK's client-side validator accepts exactly the same):
--   filter     := { clause, ... }                      (clauses are AND-ed; {} matches everything)
--   clause     := "field": value                       (shorthand for {"$eq": value})
--              |  "field": { op: operand, ... }         (operators on one field are AND-ed)
--              |  "$and": [filter, ...] | "$or": [filter, ...] | "$not": filter
--   op         := $eq $ne $gt $gte $lt $lte $in $nin $contains $exists
-- Fields are top-level metadata keys. Comparisons ($gt...) only match values of the operand's JSON
-- type (numbers with numbers, strings with strings); a missing key matches $ne and $nin.
-- Expressions prefer `metadata @> {...}` so the GIN (jsonb_path_ops) index serves them.

create function supa_vectors_internal.filter_error(message text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  raise exception using errcode = '22023', message = 'invalid filter: ' || message,
    hint = 'See the filter grammar in supabase/migrations/20261125000200_metadata_filters.sql.';
end
$$;

create function supa_vectors_internal.compile_field_filter(field text, op text, operand jsonb)
returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  field_sql constant text := pg_catalog.quote_literal(field);
  value_sql text := pg_catalog.quote_literal(operand::text) || '::jsonb';
  operand_type constant text := pg_catalog.jsonb_typeof(operand);
  alternatives text[];
begin
  case op
  when '$eq' then
    if operand_type in ('object', 'array') then
      -- Containment alone would accept a superset; the equality makes it exact.
      return pg_catalog.format('(d.metadata @> %s and d.metadata -> %s = %s)',
        pg_catalog.quote_literal(pg_catalog.jsonb_build_object(field, operand)::text) || '::jsonb',
        field_sql, value_sql);
    end if;
    return pg_catalog.format('d.metadata @> %s',
      pg_catalog.quote_literal(pg_catalog.jsonb_build_object(field, operand)::text) || '::jsonb');
  when '$ne' then
    return pg_catalog.format('(d.metadata -> %s) is distinct from %s', field_sql, value_sql);
  when '$gt', '$gte', '$lt', '$lte' then
    if operand_type not in ('number', 'string') then
      perform supa_vectors_internal.filter_error(pg_catalog.format(
        '%s on "%s" needs a number or a string, got %s', op, field, operand_type));
    end if;
    return pg_catalog.format(
      'coalesce(pg_catalog.jsonb_typeof(d.metadata -> %s) = %L and (d.metadata -> %s) %s %s, false)',
      field_sql, operand_type, field_sql,
      case op when '$gt' then '>' when '$gte' then '>=' when '$lt' then '<' else '<=' end,
      value_sql);
  when '$in', '$nin' then
    if operand_type <> 'array' or pg_catalog.jsonb_array_length(operand) = 0 then
      perform supa_vectors_internal.filter_error(pg_catalog.format(
        '%s on "%s" needs a non-empty array', op, field));
    end if;
    if pg_catalog.jsonb_array_length(operand) > 1000 then
      perform supa_vectors_internal.filter_error(pg_catalog.format(
        '%s on "%s" has %s values; the limit is 1000', op, field, pg_catalog.jsonb_array_length(operand)));
    end if;
    if exists (select 1 from pg_catalog.jsonb_array_elements(operand) e
               where pg_catalog.jsonb_typeof(e) in ('object', 'array')) then
      perform supa_vectors_internal.filter_error(pg_catalog.format(
        '%s on "%s" takes scalar values only', op, field));
    end if;
    select pg_catalog.array_agg(pg_catalog.format('d.metadata @> %s',
             pg_catalog.quote_literal(pg_catalog.jsonb_build_object(field, e)::text) || '::jsonb'))
      into alternatives
      from pg_catalog.jsonb_array_elements(operand) e;
    return pg_catalog.format(case op when '$in' then '(%s)' else 'not (%s)' end,
      pg_catalog.array_to_string(alternatives, ' or '));
  when '$contains' then
    -- The field is an array holding the operand (or every element of an array operand).
    return pg_catalog.format('d.metadata @> %s', pg_catalog.quote_literal(pg_catalog.jsonb_build_object(
      field, case when operand_type = 'array' then operand else pg_catalog.jsonb_build_array(operand) end
    )::text) || '::jsonb');
  when '$exists' then
    if operand_type <> 'boolean' then
      perform supa_vectors_internal.filter_error(pg_catalog.format(
        '$exists on "%s" needs true or false, got %s', field, operand_type));
    end if;
    return pg_catalog.format(case when operand = 'true'::jsonb then '(d.metadata ? %s)'
                                  else 'not (d.metadata ? %s)' end, field_sql);
  else
    perform supa_vectors_internal.filter_error(pg_catalog.format(
      'unknown operator "%s" on "%s"; use one of $eq $ne $gt $gte $lt $lte $in $nin $contains $exists',
      op, field));
  end case;
  return null;  -- not reached: every branch returns or raises
end
$$;

create function supa_vectors_internal.compile_filter(filter jsonb, depth integer default 0)
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

revoke all on function supa_vectors_internal.filter_error(text) from public, anon;
revoke all on function supa_vectors_internal.compile_field_filter(text, text, jsonb) from public, anon;
revoke all on function supa_vectors_internal.compile_filter(jsonb, integer) from public, anon;
grant execute on function supa_vectors_internal.filter_error(text) to authenticated, service_role;
grant execute on function supa_vectors_internal.compile_field_filter(text, text, jsonb) to authenticated, service_role;
grant execute on function supa_vectors_internal.compile_filter(jsonb, integer) to authenticated, service_role;
