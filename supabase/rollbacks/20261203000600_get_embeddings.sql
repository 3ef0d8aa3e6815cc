-- Rollback of 20261203000600_get_embeddings.sql: the stored-vectors read.
drop function if exists public.get_embeddings(text[]);
