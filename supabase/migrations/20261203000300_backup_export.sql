-- Backups (issue 15, part 4): what `supa-vectors backup` reads. A backup is logical and per caller: a
-- signed-in user's own documents (not the shared ones: those are the service role's to back up), or
-- every document for the service role, each with its metadata, its system metadata and the vector of
-- the store's model, so a restore writes them back without running the model (decision 0020).
--
-- Each RPC call is its own transaction (PostgREST has no other kind), so a backup that pages cannot
-- hold one snapshot open. Instead every row carries a version (a hash of what a write changes: the
-- document's updated_at, content hash and metadata, its system metadata's updated_at, its vector's
-- created_at; each is stamped by every write), and export_snapshot() computes, in one statement, the
-- count and the XOR of the versions of every row the caller would back up. The client XORs the versions
-- of the rows it archived: equal figures mean no archived row changed and none appeared or vanished
-- between the page that read it and that statement, so the archive is the state at that one instant.

-- The one definition of a row's version, shared by both RPCs below.
create function supa_vectors_internal.backup_row_version(
  document_id bigint, content_hash text, metadata jsonb, updated_at timestamptz,
  system_updated_at timestamptz, embedding_created_at timestamptz
)
returns bigint
language sql
stable
parallel safe
set search_path = ''
as $$
  select pg_catalog.hashtextextended(pg_catalog.concat_ws('|', document_id, content_hash, metadata::text,
           extract(epoch from updated_at), extract(epoch from system_updated_at),
           extract(epoch from embedding_created_at)), 0)
$$;

-- export_documents: one page of the caller's documents by keyset on id (ids only grow, so a page
-- boundary never moves under concurrent inserts), with system metadata, the store model's vector and
-- each row's version. external_ids restricts the page to those ids (a restore's verification).
create function public.export_documents(
  after_id bigint default 0,
  page_size integer default 500,
  external_ids text[] default null
)
returns table (
  id bigint, external_id text, owner_id uuid, content text, content_hash text, metadata jsonb,
  system jsonb, updated_at timestamptz, embedding extensions.vector, version bigint
)
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  model_name constant text := supa_vectors_internal.setting('embedding_model') #>> '{}';
  everyone constant boolean := supa_vectors_internal.caller_sees_all_rows();
  caller constant uuid := auth.uid();
begin
  perform supa_vectors_internal.check_result_limit(page_size, 'page_size');
  if export_documents.external_ids is not null then
    perform supa_vectors_internal.check_result_limit(
      pg_catalog.cardinality(export_documents.external_ids) + 1, 'external_ids count + 1');
  end if;
  return query
  select d.id, d.external_id, d.owner_id, d.content, d.content_hash, d.metadata,
         case when m.document_id is not null then pg_catalog.jsonb_build_object(
           'source_file', m.source_file, 'source_checksum', m.source_checksum, 'chunk_index', m.chunk_index,
           'extra', m.extra) end,
         d.updated_at, e.embedding,
         supa_vectors_internal.backup_row_version(d.id, d.content_hash, d.metadata, d.updated_at,
                                                  m.updated_at, e.created_at)
    from public.documents d
    left join public.document_metadata m on m.document_id = d.id
    left join public.embeddings e on e.document_id = d.id and e.model = model_name
   where d.id > coalesce(export_documents.after_id, 0)
     and (everyone or d.owner_id = caller)
     and (export_documents.external_ids is null or d.external_id = any (export_documents.external_ids))
   order by d.id
   limit export_documents.page_size;
end
$$;

-- export_snapshot: in one statement, what a backup by this caller must hold: the count and the XOR of
-- the versions of the caller's documents, and whose documents those are (every owner's, or one).
create function public.export_snapshot()
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  model_name constant text := supa_vectors_internal.setting('embedding_model') #>> '{}';
  everyone constant boolean := supa_vectors_internal.caller_sees_all_rows();
  caller constant uuid := auth.uid();
  total bigint;
  digest bigint;
begin
  select count(*), coalesce(pg_catalog.bit_xor(supa_vectors_internal.backup_row_version(
           d.id, d.content_hash, d.metadata, d.updated_at, m.updated_at, e.created_at)), 0)
    into total, digest
    from public.documents d
    left join public.document_metadata m on m.document_id = d.id
    left join public.embeddings e on e.document_id = d.id and e.model = model_name
   where everyone or d.owner_id = caller;
  return pg_catalog.jsonb_build_object(
    'documents', total, 'digest', digest::text, 'all_owners', everyone, 'owner', caller,
    'at', pg_catalog.statement_timestamp());
end
$$;

revoke all on function supa_vectors_internal.backup_row_version(bigint, text, jsonb, timestamptz, timestamptz, timestamptz)
  from public, anon;
grant execute on function supa_vectors_internal.backup_row_version(bigint, text, jsonb, timestamptz, timestamptz, timestamptz)
  to authenticated, service_role;
revoke all on function public.export_documents(bigint, integer, text[]) from public, anon, authenticated;
revoke all on function public.export_snapshot() from public, anon, authenticated;
grant execute on function public.export_documents(bigint, integer, text[]) to authenticated, service_role;
grant execute on function public.export_snapshot() to authenticated, service_role;
