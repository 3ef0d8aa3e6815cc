/**
 * The request and response schemas: they validate every request AND generate /openapi.json, so the
 * document cannot drift from what the function accepts.
 *
 * Bounds (documented in README's "HTTP API" section and in the OpenAPI document itself):
 * body <= MAX_BODY_BYTES, documents per upsert <= MAX_DOCUMENTS, ids per call <= MAX_IDS,
 * k and page_size <= MAX_ROWS (the store's default max_result_rows; a store with a lower setting refuses
 * more with 400 too). Sizes the store settles (content bytes, vector dimension) are checked by the RPCs.
 */
import { z } from "@hono/zod-openapi";

export const MAX_BODY_BYTES = 6_000_000; // 500 documents with 384-d vectors as JSON take ~4.3 MB
export const MAX_DOCUMENTS = 500; // the SDK's rows per bulk_upsert call (the RPC takes 1,000)
export const MAX_IDS = 500; // the SDK's ids per get/delete call (the RPCs take 999)
export const MAX_ROWS = 1000;
export const MAX_ID_LENGTH = 512;
export const MAX_QUERY_CHARS = 10_000;
/** The store's vectors: all-MiniLM-L6-v2's 384 floats (the RPCs take extensions.vector(384)). */
export const DIMENSIONS = 384;
/** A filter in a query string: URLs beyond ~8 kB are refused by servers and proxies before any code runs. */
export const MAX_QUERY_FILTER_CHARS = 4000;

const wellFormed = (s: string) => s.isWellFormed() && !s.includes("\u0000");
const TEXT_RULE = "must not contain NUL characters or lone surrogates";

export const Id = z.string().min(1).max(MAX_ID_LENGTH).refine(wellFormed, TEXT_RULE)
  .openapi({ description: "The caller's document id (external_id)", example: "doc-1" });

export const Vector = z.array(z.number()).length(DIMENSIONS)
  .refine((v) => v.some((x) => x !== 0), "the vector is all zeros; cosine similarity is undefined for it")
  .openapi({
    description: "The store's model's vector (384 floats for all-MiniLM-L6-v2), finite, not all 0",
  });

export const Filter = z.record(z.string(), z.unknown()).openapi({
  description: "A metadata filter: field -> value or {$eq,$ne,$gt,$gte,$lt,$lte,$in,$nin,$exists,$contains," +
    "$like,$ilike}, combined with $and/$or (the SDK's grammar; the database validates it)",
  example: { lang: "en", year: { $gte: 2020 } },
});

export const Metadata = z.record(z.string(), z.unknown()).openapi({ example: { lang: "en" } });

export const ErrorBody = z.object({
  error: z.object({
    code: z.string().openapi({ example: "invalid_input" }),
    message: z.string(),
    field: z.string().optional().openapi({ description: "The request field at fault", example: "k" }),
  }),
}).openapi("Error");

export const SearchRequest = z.strictObject({
  query: z.string().min(1).max(MAX_QUERY_CHARS).refine((s) => s.trim() !== "", "query must not be blank")
    .refine(wellFormed, TEXT_RULE).optional()
    .openapi({
      description: "Query text: full-text side of hybrid, or embedded at the edge when configured",
    }),
  vector: Vector.optional(),
  mode: z.enum(["auto", "semantic", "hybrid", "full_text"]).default("auto").openapi({
    description: "auto: hybrid with query and vector, semantic with a vector alone, embedded-query " +
      "semantic with query alone (501 when the function has no embedder)",
  }),
  k: z.number().int().min(1).max(MAX_ROWS).default(10),
  filter: Filter.default({}),
  threshold: z.number().min(-1).max(1).optional()
    .openapi({ description: "Minimum cosine similarity (semantic search only)" }),
  ef_search: z.number().int().min(1).max(1000).optional()
    .openapi({
      description: "HNSW candidate list size (semantic search only; the store's default otherwise)",
    }),
  full_text_weight: z.number().min(0).optional().openapi({ description: "Hybrid only; default 1" }),
  semantic_weight: z.number().min(0).optional().openapi({ description: "Hybrid only; default 1" }),
  rrf_k: z.number().int().min(0).max(1_000_000).optional().openapi({
    description: "Hybrid only; default 50",
  }),
}).openapi("SearchRequest");

export const SearchResult = z.object({
  id: z.string(),
  content: z.string(),
  metadata: Metadata,
  similarity: z.number().nullable().openapi({
    description: "Cosine similarity (null: full-text match only)",
  }),
  score: z.number().optional().openapi({ description: "Reciprocal-rank-fusion score (hybrid, full_text)" }),
  full_text_rank: z.number().int().nullable().optional(),
  semantic_rank: z.number().int().nullable().optional(),
}).openapi("SearchResult");

export const SearchResponse = z.object({
  mode: z.enum(["semantic", "hybrid", "full_text"]),
  results: z.array(SearchResult),
}).openapi("SearchResponse");

export const DocumentInput = z.strictObject({
  id: Id.optional().openapi({ description: "Defaults to the sha256 hex of content" }),
  content: z.string().min(1).refine((s) => s.trim() !== "", "content is empty").refine(wellFormed, TEXT_RULE),
  metadata: Metadata.default({}),
  embedding: Vector.optional().openapi({
    description:
      "Required for new or changed content (no embedder at the edge); unchanged content keeps its vector",
  }),
}).openapi("DocumentInput");

export const UpsertRequest = z.strictObject({
  documents: z.array(DocumentInput).min(1).max(MAX_DOCUMENTS),
}).openapi("UpsertRequest");

export const UpsertResponse = z.object({
  results: z.array(z.object({
    id: z.string(),
    status: z.string().openapi({ description: "As the SDK's UpsertResult: inserted, updated or unchanged" }),
  })),
}).openapi("UpsertResponse");

export const IdsRequest = z.strictObject({ ids: z.array(Id).min(1).max(MAX_IDS) }).openapi("IdsRequest");

export const StoredDocument = z.object({
  id: z.string(),
  content: z.string(),
  metadata: Metadata,
  content_hash: z.string(),
  owner_id: z.string().nullable().openapi({ description: "null: a shared document" }),
  updated_at: z.string().nullable(),
}).openapi("StoredDocument");

export const DocumentsResponse = z.object({ documents: z.array(StoredDocument) }).openapi(
  "DocumentsResponse",
);

export const ListQuery = z.object({
  page_size: z.coerce.number().int().min(1).max(MAX_ROWS).default(100),
  cursor: z.string().regex(/^\d{1,18}$/, "cursor must be a next_cursor this API returned").optional(),
  filter: z.string().max(MAX_QUERY_FILTER_CHARS).optional()
    .openapi({ description: `A filter object as JSON text (at most ${MAX_QUERY_FILTER_CHARS} characters)` }),
});

export const ListResponse = z.object({
  documents: z.array(StoredDocument),
  next_cursor: z.string().nullable().openapi({
    description: "Pass as cursor for the next page; null at the end",
  }),
}).openapi("ListResponse");

export const DeleteResponse = z.object({
  deleted: z.array(z.string()).openapi({ description: "The ids that were deleted (the caller's own)" }),
}).openapi("DeleteResponse");

export const StatsResponse = z.object({
  documents: z.number().int(),
  shared_documents: z.number().int(),
  embeddings: z.number().int(),
  models: z.record(z.string(), z.number().int()),
  vector_index: z.boolean(),
  last_updated_at: z.string().nullable(),
  settings: z.record(z.string(), z.unknown()),
  bulk_load: z.record(z.string(), z.unknown()).nullable(),
}).openapi("StatsResponse");

export const HealthResponse = z.object({
  status: z.literal("ok"),
  database: z.literal("reachable"),
  schema_version: z.string().nullable().openapi({ description: "metadata_global.schema_version" }),
  role: z.string().openapi({ description: "The role the caller's token acts as" }),
  embedding: z.boolean().openapi({ description: "Whether query text can be embedded here" }),
}).openapi("HealthResponse");

export const MAX_EMBED_TEXTS = 32;

export const EmbedRequest = z.strictObject({
  texts: z.array(
    z.string().min(1).max(MAX_QUERY_CHARS).refine((t) => t.trim() !== "", "text must not be blank")
      .refine(wellFormed, TEXT_RULE),
  ).min(1).max(MAX_EMBED_TEXTS),
}).openapi("EmbedRequest");

export const EmbedResponse = z.object({
  model: z.string().openapi({ example: "sentence-transformers/all-MiniLM-L6-v2" }),
  vectors: z.array(z.array(z.number())).openapi({
    description: "One vector per text, in order (as the SDK's)",
  }),
}).openapi("EmbedResponse");
