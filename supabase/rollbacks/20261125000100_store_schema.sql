-- Undoes 20261125000100_store_schema.sql. Deletes every stored document.
-- The vector extension stays: other tables of the project may use it, and the migration
-- re-creates it only "if not exists".
drop table if exists public.document_metadata;
drop table if exists public.embeddings;
drop table if exists public.documents;
drop table if exists public.metadata_global;
drop function if exists supa_vectors_internal.create_vector_index();
drop function if exists supa_vectors_internal.touch_updated_at();
drop function if exists supa_vectors_internal.content_hash(text);
drop schema if exists supa_vectors_internal;
