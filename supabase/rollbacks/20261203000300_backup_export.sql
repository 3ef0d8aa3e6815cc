-- Rollback of 20261203000300_backup_export.sql: the backup RPCs and their version function.
drop function if exists public.export_snapshot();
drop function if exists public.export_documents(bigint, integer, text[]);
drop function if exists supa_vectors_internal.backup_row_version(bigint, text, jsonb, timestamptz, timestamptz, timestamptz);
