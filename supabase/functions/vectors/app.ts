/**
 * The `vectors` function: one Hono app, routes under /vectors (Supabase serves a function at
 * /functions/v1/<name>/..., and hands it the path from /<name> on).
 *
 * Every route verifies the caller's JWT, then calls one RPC as that caller (db.ts). No SQL here but
 * `select ... from public.<rpc>(...)`.
 */
import { createRoute, OpenAPIHono, type z } from "@hono/zod-openapi";
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import type postgres from "postgres";
import { type AuthConfig, bearerToken, type Caller, verifyCaller } from "./auth.ts";
import { asCaller, type DbOptions, type Sql, type Tx, vectorArrayLiteral, vectorLiteral } from "./db.ts";
import { sha256Hex } from "./embed.ts";
import { ApiError } from "./errors.ts";
import {
  DeleteResponse,
  DocumentsResponse,
  EmbedRequest,
  EmbedResponse,
  ErrorBody,
  HealthResponse,
  IdsRequest,
  ListQuery,
  ListResponse,
  MAX_BODY_BYTES,
  SearchRequest,
  SearchResponse,
  StatsResponse,
  UpsertRequest,
  UpsertResponse,
} from "./schemas.ts";

export const BASE_PATH = "/vectors";
export const API_VERSION = "1.0.0";

/** Text -> the store's model's vector. None is configured by default: see docs/decisions/0017. */
export interface Embedder {
  /** The model this reproduces, as the store names it (its embedding_model): /embed reports it. */
  modelId: string;
  embed(text: string): Promise<number[]>;
}

export interface Deps {
  sql: Sql;
  auth: AuthConfig;
  db?: DbOptions;
  embedder?: Embedder;
}

type Variables = { caller: Caller };

function json<T extends z.ZodType>(schema: T, description: string) {
  return { description, content: { "application/json": { schema } } };
}

const errors = {
  400: json(ErrorBody, "Bad input; `field` names it"),
  401: json(ErrorBody, "Missing, forged, expired or not-yet-valid token"),
  403: json(ErrorBody, "The caller's role may not do this (anon may do nothing)"),
  413: json(ErrorBody, `Body over ${MAX_BODY_BYTES} bytes`),
  503: json(ErrorBody, "The database is unreachable or not migrated"),
  504: json(ErrorBody, "The query ran past statement_timeout"),
};

function jsonBody<T extends z.ZodType>(schema: T) {
  return { body: { required: true, content: { "application/json": { schema } } } };
}

const security = [{ bearer: [] }];

const routes = {
  health: createRoute({
    method: "get",
    path: "/health",
    summary: "The database is reachable; the store's schema version",
    security,
    responses: { 200: json(HealthResponse, "Healthy"), ...errors },
  }),
  stats: createRoute({
    method: "get",
    path: "/stats",
    summary: "Counts of what the caller can see, the store's settings",
    security,
    responses: { 200: json(StatsResponse, "Stats"), ...errors },
  }),
  search: createRoute({
    method: "post",
    path: "/search",
    summary:
      "Nearest documents by vector, by text (hybrid with a vector, or full text), filtered by metadata",
    security,
    request: jsonBody(SearchRequest),
    responses: {
      200: json(SearchResponse, "Results, best first"),
      ...errors,
      501: json(
        ErrorBody,
        "Query text alone, and no embedder at the edge: send `vector` too, or use mode full_text",
      ),
    },
  }),
  upsert: createRoute({
    method: "post",
    path: "/documents",
    summary: "Insert or update a batch of documents (all or nothing); per-document status",
    security,
    request: jsonBody(UpsertRequest),
    responses: { 200: json(UpsertResponse, "One status per document, in input order"), ...errors },
  }),
  get: createRoute({
    method: "post",
    path: "/documents/get",
    summary: "Documents by id (the caller's own, then shared ones under the same id)",
    security,
    request: jsonBody(IdsRequest),
    responses: { 200: json(DocumentsResponse, "The documents found, in the order asked"), ...errors },
  }),
  list: createRoute({
    method: "get",
    path: "/documents",
    summary: "One page of the documents the caller can see, oldest first, by keyset cursor",
    security,
    request: { query: ListQuery },
    responses: { 200: json(ListResponse, "A page"), ...errors },
  }),
  embed: createRoute({
    method: "post",
    path: "/embed",
    summary: "Texts embedded at the edge with the store's model (signed-in callers; 501 when not configured)",
    security,
    request: jsonBody(EmbedRequest),
    responses: {
      200: json(EmbedResponse, "The vectors"),
      ...errors,
      501: json(ErrorBody, "No embedder at the edge: embed with the Python SDK"),
    },
  }),
  delete: createRoute({
    method: "post",
    path: "/documents/delete",
    summary: "Delete the caller's own documents by id (service_role: the shared ones)",
    security,
    request: jsonBody(IdsRequest),
    responses: { 200: json(DeleteResponse, "What was deleted"), ...errors },
  }),
};

/** `documents[3].content` from a zod issue path. */
function fieldOf(path: readonly PropertyKey[]): string | undefined {
  let out = "";
  for (const part of path) out += typeof part === "number" ? `[${part}]` : `${out ? "." : ""}${String(part)}`;
  return out || undefined;
}

function parseFilter(text: string | undefined): Record<string, unknown> {
  if (text === undefined || text === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError(400, "filter_error", "filter must be a JSON object", "filter");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ApiError(400, "filter_error", "filter must be a JSON object", "filter");
  }
  return value as Record<string, unknown>;
}

function iso(value: unknown): string | null {
  return value instanceof Date ? value.toISOString() : value == null ? null : String(value);
}

function notConfigured(): ApiError {
  return new ApiError(
    501,
    "embedding_not_configured",
    "this deployment does not embed text at the edge (EMBEDDING_MODEL_URL is unset): send `vector` " +
      "(sentence-transformers/all-MiniLM-L6-v2, e.g. from the Python SDK) alone or with `query` for hybrid " +
      'search, or search the text alone with "mode": "full_text"',
    "vector",
  );
}

/** bulk_upsert refused a document for want of a vector (DETAIL names it: field documents[i]). */
function needsEmbedding(error: unknown): error is ApiError {
  return error instanceof ApiError && /no embedding/.test(error.message) &&
    !!error.field?.startsWith("documents[");
}

/** A bulk_upsert refusal, naming the field the caller can fix. */
function upsertError(error: unknown): unknown {
  if (needsEmbedding(error)) {
    return new ApiError(
      400,
      "document_error",
      `${error.message}: send its embedding`,
      `${error.field}.embedding`,
    );
  }
  if (error instanceof ApiError && error.field === "vector") {
    return new ApiError(400, error.code, error.message, "documents"); // the vector[] cast fails as a whole
  }
  return error;
}

/** A match_documents or hybrid_search row as a SearchResult (the SDK's SearchResult / HybridSearchResult). */
// deno-lint-ignore no-explicit-any
function searchResult(row: any, mode: "semantic" | "hybrid" | "full_text") {
  const result = { id: row.external_id as string, content: row.content as string, metadata: row.metadata };
  if (mode === "semantic") return { ...result, similarity: row.similarity as number };
  const semantic = mode === "hybrid";
  return {
    ...result,
    score: row.score as number,
    similarity: semantic ? row.similarity as number | null : null,
    full_text_rank: row.full_text_rank as number | null,
    semantic_rank: semantic ? row.semantic_rank as number | null : null,
  };
}

// deno-lint-ignore no-explicit-any
function storedDocument(row: any) {
  return {
    id: row.external_id as string,
    content: row.content as string,
    metadata: row.metadata as Record<string, unknown>,
    content_hash: row.content_hash as string,
    owner_id: row.owner_id == null ? null : String(row.owner_id),
    updated_at: iso(row.updated_at),
  };
}

/** The API: routes under BASE_PATH, plus GET BASE_PATH/openapi.json. */
export function createApp(deps: Deps): Hono {
  const api = new OpenAPIHono<{ Variables: Variables }>({
    defaultHook: (result) => {
      if (!result.success) {
        const issue = result.error.issues[0];
        const field = fieldOf(issue?.path ?? []);
        const message = issue ? `${field ?? "request"}: ${issue.message}` : "invalid request";
        throw new ApiError(400, "invalid_input", message, field);
      }
    },
  });
  api.openAPIRegistry.registerComponent("securitySchemes", "bearer", {
    type: "http",
    scheme: "bearer",
    bearerFormat: "JWT",
    description: "The project's anon key, a signed-in user's access token, or the service_role key",
  });

  // A json/jsonb parameter: postgres.js serializes it once (a JSON string would be encoded twice).
  const asJson = (value: unknown) => deps.sql.json(value as postgres.JSONValue);
  const embed = async (texts: readonly string[]): Promise<number[][]> => {
    if (!deps.embedder) throw notConfigured();
    const out: number[][] = [];
    try {
      for (const text of texts) out.push(await deps.embedder.embed(text));
    } catch (error) {
      console.error("embedding failed:", error instanceof Error ? error.message : typeof error);
      throw new ApiError(
        503,
        "embedding_unavailable",
        "the edge embedder failed to load or run; send vectors",
      );
    }
    return out;
  };
  const run = <T>(caller: Caller, work: (tx: Tx) => Promise<T>) => asCaller(deps.sql, caller, work, deps.db);

  api.use("*", async (c, next) => {
    if (c.req.path.endsWith(`${BASE_PATH}/openapi.json`)) return await next();
    c.set("caller", await verifyCaller(bearerToken(c.req.header("authorization")), deps.auth));
    await next();
  });
  api.use(
    "*",
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: () => {
        throw new ApiError(413, "payload_too_large", `the request body is over ${MAX_BODY_BYTES} bytes`);
      },
    }),
  );

  api.openapi(routes.health, async (c) => {
    const caller = c.get("caller");
    const version = await run(caller, (tx) => tx`select public.store_settings() ->> 'schema_version' as v`)
      .then((rows) => (rows[0]?.v as string | null) ?? null)
      .catch((error) => {
        // anon may not read the settings; the database answered all the same.
        if (error instanceof ApiError && error.code === "forbidden") return null;
        throw error;
      });
    return c.json({
      status: "ok" as const,
      database: "reachable" as const,
      schema_version: version,
      role: caller.role,
      embedding: deps.embedder !== undefined,
    }, 200);
  });

  api.openapi(routes.stats, async (c) => {
    const rows = await run(c.get("caller"), (tx) => tx`select public.store_stats() as stats`);
    const stats = rows[0].stats;
    return c.json({
      ...stats,
      last_updated_at: iso(stats.last_updated_at),
      bulk_load: stats.bulk_load ?? null,
    }, 200);
  });

  api.openapi(routes.search, async (c) => {
    const body = c.req.valid("json");
    let mode = body.mode;
    if (mode === "auto") mode = body.query !== undefined && body.vector !== undefined ? "hybrid" : "semantic";
    if (mode !== "semantic" && body.query === undefined) {
      throw new ApiError(400, "invalid_input", `mode ${mode} needs query text`, "query");
    }
    if (mode === "full_text" && body.vector !== undefined) {
      throw new ApiError(400, "invalid_input", "mode full_text takes no vector (use hybrid)", "vector");
    }
    // An option the chosen mode does not use is refused, not silently ignored.
    const unused = mode === "semantic"
      ? (["full_text_weight", "semantic_weight", "rrf_k"] as const)
      : mode === "hybrid"
      ? (["threshold", "ef_search"] as const)
      : (["threshold", "ef_search", "full_text_weight", "semantic_weight"] as const);
    const given = unused.find((name) => body[name] !== undefined);
    if (given) throw new ApiError(400, "invalid_input", `${given} does not apply to ${mode} search`, given);
    const tuning = {
      full_text_weight: body.full_text_weight ?? 1,
      semantic_weight: body.semantic_weight ?? 1,
      rrf_k: body.rrf_k ?? 50,
    };
    if (tuning.full_text_weight + tuning.semantic_weight === 0) {
      const message = "full_text_weight and semantic_weight must not both be 0";
      throw new ApiError(400, "invalid_input", message, "semantic_weight");
    }
    let vector = body.vector;
    if (vector === undefined && mode !== "full_text") {
      if (body.query === undefined) {
        throw new ApiError(400, "invalid_input", "send a vector, query text, or both", "vector");
      }
      [vector] = await embed([body.query]);
    }
    const caller = c.get("caller");
    const filter = asJson(body.filter);
    if (mode === "semantic") {
      const embedding = vectorLiteral(vector!);
      const rows = await run(
        caller,
        (tx) =>
          tx`select external_id, content, metadata, similarity from public.match_documents(
             query_embedding => ${embedding}::extensions.vector, match_count => ${body.k}::integer,
             match_threshold => ${body.threshold ?? null}::double precision, filter => ${filter}::jsonb,
             ef_search => ${body.ef_search ?? null}::integer)`,
      );
      return c.json({ mode, results: rows.map((r) => searchResult(r, mode)) }, 200);
    }
    const fullText = mode === "full_text";
    const rows = await run(caller, async (tx) => {
      let queryVector = vector;
      if (fullText) {
        // hybrid_search with no semantic weight; it still wants a vector: any unit vector of the store's size.
        const [{ dimension }] =
          await tx`select (public.store_settings() ->> 'embedding_dimension')::integer as dimension`;
        queryVector = Array.from({ length: dimension }, (_, i) => (i === 0 ? 1 : 0));
      }
      const embedding = vectorLiteral(queryVector!);
      const [textWeight, semanticWeight] = fullText
        ? [1, 0]
        : [tuning.full_text_weight, tuning.semantic_weight];
      const text = body.query!;
      return await tx`select external_id, content, metadata, score, similarity, full_text_rank, semantic_rank
        from public.hybrid_search(
          query_text => ${text}, query_embedding => ${embedding}::extensions.vector,
          match_count => ${body.k}::integer, filter => ${filter}::jsonb,
          full_text_weight => ${textWeight}::double precision,
          semantic_weight => ${semanticWeight}::double precision,
          rrf_k => ${tuning.rrf_k}::integer)`;
    });
    // Full text alone: the rows the words matched (the unit vector's neighbours score 0 and are dropped).
    const kept = fullText ? rows.filter((r) => r.full_text_rank !== null) : rows;
    return c.json({ mode, results: kept.map((r) => searchResult(r, mode)) }, 200);
  });

  api.openapi(routes.upsert, async (c) => {
    const { documents } = c.req.valid("json");
    const ids: string[] = [];
    const seen = new Map<string, number>();
    for (const [index, doc] of documents.entries()) {
      const id = doc.id ?? await sha256Hex(doc.content);
      const earlier = seen.get(id);
      if (earlier !== undefined) {
        const what = doc.id === undefined ? "content (its id is derived from it)" : "id";
        const message =
          `document ${index}: the same ${what} appears earlier in this call, at index ${earlier}`;
        throw new ApiError(
          400,
          "document_error",
          message,
          `documents[${index}].${doc.id ? "id" : "content"}`,
        );
      }
      seen.set(id, index);
      ids.push(id);
    }
    const payload = asJson(
      documents.map((d, i) => ({ external_id: ids[i], content: d.content, metadata: d.metadata })),
    );
    const write = (embeddings: (number[] | null)[]) => {
      const vectors = embeddings.some((v) => v) ? vectorArrayLiteral(embeddings) : null;
      return run(c.get("caller"), (tx) =>
        tx`select ordinal, status from public.bulk_upsert(
             documents => ${payload}::json, embeddings => ${vectors}::extensions.vector[])`);
    };
    const given = documents.map((d) => d.embedding ?? null);
    let rows;
    try {
      rows = await write(given);
    } catch (error) {
      if (!deps.embedder || !needsEmbedding(error)) throw upsertError(error);
      // New or changed content without a vector: embed every document that brought none and write again
      // (the refused call rolled back). A batch of unchanged content never reaches the model.
      const lacking = documents.flatMap((d, i) => d.embedding ? [] : [i]);
      const made = await embed(lacking.map((i) => documents[i].content));
      lacking.forEach((i, n) => given[i] = made[n]);
      rows = await write(given).catch((retry) => Promise.reject(upsertError(retry)));
    }
    const byOrdinal = new Map(rows.map((r) => [Number(r.ordinal), r.status as string]));
    return c.json({ results: ids.map((id, i) => ({ id, status: byOrdinal.get(i + 1) ?? "unknown" })) }, 200);
  });

  api.openapi(routes.get, async (c) => {
    const { ids } = c.req.valid("json");
    const rows = await run(
      c.get("caller"),
      (tx) =>
        tx`select external_id, owner_id, content, content_hash, metadata, updated_at
         from public.get_documents(external_ids => ${ids}::text[])`,
    );
    const position = new Map<string, number>();
    ids.forEach((id, i) => position.has(id) || position.set(id, i));
    const docs = rows.map(storedDocument).sort((a, b) =>
      (position.get(a.id) ?? ids.length) - (position.get(b.id) ?? ids.length) ||
      Number(a.owner_id === null) - Number(b.owner_id === null)
    );
    return c.json({ documents: docs }, 200);
  });

  api.openapi(routes.list, async (c) => {
    const query = c.req.valid("query");
    const filter = parseFilter(query.filter);
    const after = query.cursor ?? "0";
    const rows = await run(
      c.get("caller"),
      (tx) =>
        tx`select id, external_id, owner_id, content, content_hash, metadata, updated_at
         from public.list_documents(
           page_size => ${query.page_size}::integer, after_id => ${after}::bigint,
           filter => ${asJson(filter)}::jsonb)`,
    );
    const next = rows.length === query.page_size ? String(rows[rows.length - 1].id) : null;
    return c.json({ documents: rows.map(storedDocument), next_cursor: next }, 200);
  });

  api.openapi(routes.delete, async (c) => {
    const { ids } = c.req.valid("json");
    const rows = await run(
      c.get("caller"),
      (tx) => tx`select external_id from public.delete_documents(external_ids => ${ids}::text[])`,
    );
    return c.json({ deleted: rows.map((r) => r.external_id as string) }, 200);
  });

  api.openapi(routes.embed, async (c) => {
    const { texts } = c.req.valid("json");
    // The model is the costliest thing here: only callers who may use the store may run it.
    if (c.get("caller").role === "anon") throw new ApiError(403, "forbidden", "anon may not embed text");
    const vectors = await embed(texts);
    return c.json({ model: deps.embedder!.modelId, vectors }, 200);
  });

  api.doc31("/openapi.json", openApiConfig);

  // A documented path with another method: 405 naming the allowed ones (not a 404 that hides the path).
  const methods = new Map<string, string[]>([["/openapi.json", ["GET"]]]);
  for (const route of Object.values(routes)) {
    methods.set(route.path, [...(methods.get(route.path) ?? []), route.method.toUpperCase()]);
  }
  for (const [path, allowed] of methods) {
    api.all(path, (c) => {
      const error = new ApiError(
        405,
        "method_not_allowed",
        `${c.req.method} ${path}: use ${allowed.join(" or ")}`,
      );
      return c.json(error.body(), 405, { Allow: allowed.join(", ") });
    });
  }

  const root = new Hono();
  root.route(BASE_PATH, api);
  // The gateway's path too, so supabase-js pointed straight at a `deno run` of this function works.
  root.route(`/functions/v1${BASE_PATH}`, api);
  root.notFound((c) =>
    c.json(new ApiError(404, "not_found", `no route ${c.req.method} ${c.req.path}`).body(), 404)
  );
  root.onError((error, c) => {
    if (error instanceof ApiError) return c.json(error.body(), error.status);
    if (error instanceof HTTPException && error.status < 500) {
      return c.json(new ApiError(400, "invalid_input", error.message || "bad request").body(), 400);
    }
    console.error("unexpected error:", error instanceof Error ? error.name : typeof error);
    return c.json(new ApiError(500, "internal_error", "the function failed").body(), 500);
  });
  return root;
}

export const openApiConfig = {
  openapi: "3.1.0",
  info: {
    title: "supa-vectors HTTP API",
    version: API_VERSION,
    description: "Semantic search and documents of a supa-vectors store, as the caller (Row Level Security " +
      "applies). Errors are {error: {code, message, field?}}; the SQLSTATE mapping is in docs/decisions/0017.",
  },
  servers: [{ url: "http://127.0.0.1:54321/functions/v1/vectors", description: "supabase start (local)" }],
};

/** The OpenAPI document, as GET /vectors/openapi.json serves it. */
export async function openApiDocument(): Promise<unknown> {
  // deno-lint-ignore no-explicit-any
  const app = createApp({ sql: undefined as any, auth: { audiences: [] } });
  const response = await app.request(`${BASE_PATH}/openapi.json`);
  return await response.json();
}
