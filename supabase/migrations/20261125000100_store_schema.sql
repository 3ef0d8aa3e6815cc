-- supa-vectors: the store's tables, indexes, triggers, Row Level Security and grants.
--
-- Valid on hosted Supabase (Postgres 15 and 17) and on the embedded local stack (Postgres 18):
-- it relies only on what both have (roles anon/authenticated/service_role, schema auth with
-- auth.uid(), schema extensions, pgvector >= 0.8, built-in sha256()).

create extension if not exists vector with schema extensions;

-- Internal helpers live outside `public`, so PostgREST never exposes them as RPCs.
create schema if not exists supa_vectors_internal;
revoke all on schema supa_vectors_internal from public;
grant usage on schema supa_vectors_internal to authenticated, service_role;

-- The content hash must be identical in SQL and in the SDK (hashlib.sha256(text.encode()).hexdigest()).
-- convert_to() is only STABLE because encodings could in principle change; a Supabase database is
-- always UTF8, so the result is fixed and declaring the wrapper IMMUTABLE (needed for a generated
-- column) is sound.
create function supa_vectors_internal.content_hash(content text)
returns text
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(content, 'UTF8')), 'hex')
$$;

-- ---------------------------------------------------------------------------------------------
-- documents: one row per caller document. owner_id null = a shared document every signed-in user
-- can read and only service_role can write.
create table public.documents (
  id bigint generated always as identity primary key,
  external_id text not null check (length(external_id) between 1 and 512),
  owner_id uuid default auth.uid(),
  content text not null check (content <> ''),
  content_hash text generated always as (supa_vectors_internal.content_hash(content)) stored,
  metadata jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  -- Titles matter to full-text search (a section's heading is often the query); they rank above body
  -- text through weight A.
  fts tsvector generated always as (
    setweight(to_tsvector('english'::regconfig, coalesce(metadata ->> 'title', '')), 'A')
    || setweight(to_tsvector('english'::regconfig, content), 'B')
  ) stored,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- The caller's id is unique per owner; NULLS NOT DISTINCT makes it unique among shared rows too.
  constraint documents_owner_external_id_key unique nulls not distinct (owner_id, external_id)
);
comment on table public.documents is
  'supa-vectors documents. Touch through the RPCs (bulk_upsert, match_documents, ...), not directly.';

create index documents_metadata_idx on public.documents using gin (metadata jsonb_path_ops);
create index documents_fts_idx on public.documents using gin (fts);
-- The unique constraint's index starts with owner_id and serves RLS and per-owner lookups;
-- updated_at serves incremental mirror syncs.
create index documents_updated_at_idx on public.documents (updated_at, id);

-- RPCs only update rows whose content or metadata changed, so the trigger can stamp every update.
create function supa_vectors_internal.touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := pg_catalog.now();
  return new;
end
$$;

create trigger documents_touch_updated_at
  before update on public.documents
  for each row
  execute function supa_vectors_internal.touch_updated_at();

-- ---------------------------------------------------------------------------------------------
-- embeddings: one row per (document, model). Kept apart from documents so a store can hold a second
-- model's vectors during a model change, and so rewriting metadata never rewrites a 1.5 kB vector.
create table public.embeddings (
  document_id bigint not null references public.documents (id) on delete cascade,
  model text not null check (length(model) between 1 and 200),
  embedding extensions.vector(384) not null,
  created_at timestamptz not null default now(),
  primary key (document_id, model)
);

-- The HNSW index is defined in one place, supa_vectors_internal.create_vector_index(), because the
-- bulk-load path drops it before a large load and rebuilds it afterwards (a build is ~7x faster than
-- inserting the same rows one by one into the graph).
--   m = 16: pgvector's default; at 384 dimensions it measured recall@10 0.99 with ef_search 40 on
--     100k clustered rows, and a larger m costs memory (the graph grows linearly with m) and build time.
--   ef_construction = 64: the default; raising it to 128 doubled build time for < 0.5 point of recall,
--     while query-time ef_search (set per query by match_documents) buys recall where it is needed.
create function supa_vectors_internal.create_vector_index()
returns boolean
language plpgsql
set search_path = ''
set maintenance_work_mem = '256MB'
as $$
begin
  if pg_catalog.to_regclass('public.embeddings_embedding_hnsw_idx') is not null then
    return false;
  end if;
  create index embeddings_embedding_hnsw_idx on public.embeddings
    using hnsw (embedding extensions.vector_cosine_ops) with (m = 16, ef_construction = 64);
  return true;
end
$$;
select supa_vectors_internal.create_vector_index();

-- ---------------------------------------------------------------------------------------------
-- document_metadata: what the system knows about a document that is not the caller's metadata
-- (where it came from, which ingest run wrote it), so user filters never see or clash with it.
create table public.document_metadata (
  document_id bigint primary key references public.documents (id) on delete cascade,
  source_file text,
  source_checksum text,
  ingest_run_id text,
  chunk_index integer check (chunk_index >= 0),
  extra jsonb not null default '{}'::jsonb check (jsonb_typeof(extra) = 'object'),
  updated_at timestamptz not null default now()
);
create index document_metadata_ingest_run_id_idx on public.document_metadata (ingest_run_id);

create trigger document_metadata_touch_updated_at
  before update on public.document_metadata
  for each row
  execute function supa_vectors_internal.touch_updated_at();

-- ---------------------------------------------------------------------------------------------
-- metadata_global: store-wide settings the SDK checks before writing (model, dimension, limits).
create table public.metadata_global (
  key text primary key,
  value jsonb not null,
  updated_at timestamptz not null default now()
);
insert into public.metadata_global (key, value) values
  ('embedding_model', '"sentence-transformers/all-MiniLM-L6-v2"'),
  ('embedding_dimension', '384'),
  ('schema_version', '1'),
  -- Limits shared by the server and the SDK's client-side validation.
  ('max_batch_size', '1000'),
  ('max_content_bytes', '1000000'),
  ('max_result_rows', '1000');

-- ---------------------------------------------------------------------------------------------
-- Row Level Security. service_role has BYPASSRLS on Supabase, so it needs no policy.
alter table public.documents enable row level security;
alter table public.embeddings enable row level security;
alter table public.document_metadata enable row level security;
alter table public.metadata_global enable row level security;

create policy documents_select_own_or_shared on public.documents
  for select to authenticated
  using (owner_id = (select auth.uid()) or owner_id is null);
create policy documents_insert_own on public.documents
  for insert to authenticated
  with check (owner_id = (select auth.uid()));
create policy documents_update_own on public.documents
  for update to authenticated
  using (owner_id = (select auth.uid()))
  with check (owner_id = (select auth.uid()));
create policy documents_delete_own on public.documents
  for delete to authenticated
  using (owner_id = (select auth.uid()));

-- Child rows follow their document: readable when the document is readable, writable when it is
-- the caller's own. The subqueries on documents are themselves filtered by its policies.
create policy embeddings_select_visible on public.embeddings
  for select to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id));
create policy embeddings_write_own on public.embeddings
  for all to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())))
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));

create policy document_metadata_select_visible on public.document_metadata
  for select to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id));
create policy document_metadata_write_own on public.document_metadata
  for all to authenticated
  using (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())))
  with check (exists (select 1 from public.documents d where d.id = document_id and d.owner_id = (select auth.uid())));

create policy metadata_global_select on public.metadata_global
  for select to authenticated
  using (true);

-- ---------------------------------------------------------------------------------------------
-- Grants. Supabase's default privileges hand every new table in public to anon, authenticated and
-- service_role with ALL privileges, TRUNCATE (which ignores RLS) included; start from nothing.
revoke all on public.documents, public.embeddings, public.document_metadata, public.metadata_global
  from anon, authenticated, service_role, public;
grant select, insert, update, delete on public.documents, public.embeddings, public.document_metadata
  to authenticated, service_role;
grant select on public.metadata_global to authenticated;
grant select, insert, update, delete on public.metadata_global to service_role;

revoke all on function supa_vectors_internal.content_hash(text) from public, anon;
revoke all on function supa_vectors_internal.touch_updated_at() from public, anon;
revoke all on function supa_vectors_internal.create_vector_index() from public, anon;
grant execute on function supa_vectors_internal.content_hash(text) to authenticated, service_role;
-- Building an index needs the table owner; service_role gets execute so it receives a clear
-- "must be owner" error instead of "permission denied for function".
grant execute on function supa_vectors_internal.create_vector_index() to service_role;
