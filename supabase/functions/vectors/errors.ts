/**
 * Errors the API answers with: `{error: {code, message, field?}}`.
 *
 * SQLSTATE_TABLE mirrors `error_for_sqlstate` in supa_vectors/transport/base.py, so one database failure
 * is the same error whether it reaches a caller through the Python SDK or over HTTP (the `sdk` column
 * names the SDK's exception). Input the database refuses (classes 22, 23, 54000/54001) is the caller's
 * fault and gets a 400, never a 5xx.
 */
import type { ContentfulStatusCode } from "hono/utils/http-status";

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }

  body(): { error: { code: string; message: string; field?: string } } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.field === undefined ? {} : { field: this.field }),
      },
    };
  }
}

export interface SqlstateRule {
  /** SQLSTATEs, exact or as a class prefix ending in `*`. */
  sqlstates: readonly string[];
  code: string;
  status: ContentfulStatusCode;
  sdk: string;
}

/** First match wins, in this order (as in error_for_sqlstate). Anything else: 500 backend_error. */
export const SQLSTATE_TABLE: readonly SqlstateRule[] = [
  { sqlstates: ["57014"], code: "query_timeout", status: 504, sdk: "QueryTimeoutError" },
  { sqlstates: ["42501", "28000", "28P01"], code: "forbidden", status: 403, sdk: "AuthError" },
  { sqlstates: ["42883", "42P01", "3F000"], code: "not_found", status: 503, sdk: "NotFoundError" },
  {
    sqlstates: ["08*", "57P01", "57P02", "57P03", "53300"],
    code: "backend_unavailable",
    status: 503,
    sdk: "BackendUnavailableError",
  },
  // invalid_input becomes filter_error or document_error by its message, as in the SDK.
  {
    sqlstates: ["22*", "23*", "54000", "54001"],
    code: "invalid_input",
    status: 400,
    sdk: "InvalidInputError",
  },
];

function matches(rule: SqlstateRule, sqlstate: string): boolean {
  return rule.sqlstates.some((s) => s.endsWith("*") ? sqlstate.startsWith(s.slice(0, -1)) : s === sqlstate);
}

// Which request field a database refusal is about, by the RPC's message (the schemas catch most first).
const FIELD_BY_MESSAGE: readonly [RegExp, string][] = [
  [/^match_count|^page_size/, "k"],
  [/^ef_search/, "ef_search"],
  [/^match_threshold/, "threshold"],
  [/^query_text/, "query"],
  [/^query_embedding|dimensions|for type vector/, "vector"],
  [/^full_text_weight|^semantic_weight/, "semantic_weight"],
  [/^rrf_k/, "rrf_k"],
  [/^external_ids/, "ids"],
];

/** The ApiError for a database error with `sqlstate`, `message` and DETAIL (as error_for_sqlstate). */
export function errorForSqlstate(sqlstate: string | undefined, message: string, detail?: string): ApiError {
  const text = detail ? `${message} (${detail})` : message;
  const rule = sqlstate ? SQLSTATE_TABLE.find((r) => matches(r, sqlstate)) : undefined;
  if (!rule) return new ApiError(500, "backend_error", "the database failed to answer");
  if (rule.code !== "invalid_input") return new ApiError(rule.status, rule.code, text);
  if (message.startsWith("invalid filter:")) return new ApiError(400, "filter_error", message, "filter");
  if (message.startsWith("document ") && detail) {
    // bulk_upsert names the record in DETAIL as {"ordinal": n, "external_id": "..."} (1-based).
    try {
      const where = JSON.parse(detail);
      const index = Number(where.ordinal) - 1;
      if (Number.isInteger(index) && index >= 0) {
        return new ApiError(400, "document_error", message, `documents[${index}]`);
      }
    } catch { /* not the DETAIL bulk_upsert writes: no index to name */ }
    return new ApiError(400, "document_error", text, "documents");
  }
  const field = FIELD_BY_MESSAGE.find(([pattern]) => pattern.test(message))?.[1];
  return new ApiError(400, "invalid_input", text, field);
}

/** Any error thrown while talking to the database, as an ApiError (never leaking connection details). */
export function fromDatabase(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  const e = error as { code?: unknown; message?: unknown; detail?: unknown; name?: unknown };
  if (e?.name === "PostgresError" && typeof e.code === "string") {
    return errorForSqlstate(
      e.code,
      String(e.message ?? ""),
      typeof e.detail === "string" ? e.detail : undefined,
    );
  }
  // postgres.js reports network failures with node-style codes (ECONNREFUSED, CONNECT_TIMEOUT, ...).
  if (typeof e?.code === "string") {
    return new ApiError(503, "backend_unavailable", "the database is unreachable");
  }
  return new ApiError(500, "backend_error", "the database failed to answer");
}
