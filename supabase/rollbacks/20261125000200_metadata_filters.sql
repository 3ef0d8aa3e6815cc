-- Undoes 20261125000200_metadata_filters.sql.
drop function if exists supa_vectors_internal.compile_filter(jsonb, integer);
drop function if exists supa_vectors_internal.compile_field_filter(text, text, jsonb);
drop function if exists supa_vectors_internal.filter_error(text);
