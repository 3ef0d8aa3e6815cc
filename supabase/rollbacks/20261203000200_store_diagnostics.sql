-- Rollback of 20261203000200_store_diagnostics.sql: doctor's catalog read and its definer function.
drop function if exists public.store_diagnostics();
drop function if exists supa_vectors_internal.applied_migrations();
