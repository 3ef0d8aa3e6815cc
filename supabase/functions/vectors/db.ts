/**
 * The database, as the caller: every request runs its RPC inside one transaction that first does what
 * PostgREST does per request (`set local role` and `request.jwt.claims`, both transaction-local through
 * set_config(..., true)), so Row Level Security, `auth.uid()` and grants hold exactly as for the SDK.
 *
 * `prepare: false` keeps it safe behind Supavisor's transaction pooler (port 6543), which cannot keep
 * named prepared statements across transactions.
 */
import postgres from "postgres";
import type { Caller } from "./auth.ts";
import { fromDatabase } from "./errors.ts";

export type Sql = postgres.Sql;
export type Tx = postgres.TransactionSql;

export interface DbOptions {
  /** Pool size per function instance. */
  max?: number;
  /** statement_timeout for each request's transaction (PostgREST's roles carry 8s on Supabase). */
  statementTimeout?: string;
}

export function connect(url: string, options: DbOptions = {}): Sql {
  return postgres(url, {
    prepare: false,
    max: options.max ?? 4,
    idle_timeout: 20,
    connect_timeout: 10,
    onnotice: () => {},
    connection: { application_name: "supa-vectors-edge" },
  });
}

/** Run `work` as `caller` in one transaction; database errors come out as ApiError. */
export async function asCaller<T>(
  sql: Sql,
  caller: Caller,
  work: (tx: Tx) => Promise<T>,
  options: DbOptions = {},
): Promise<T> {
  try {
    return await sql.begin(async (tx) => {
      await tx`select pg_catalog.set_config('role', ${caller.role}, true),
                      pg_catalog.set_config('request.jwt.claims', ${JSON.stringify(caller.claims)}, true),
                      pg_catalog.set_config('statement_timeout', ${options.statementTimeout ?? "8s"}, true)`;
      return await work(tx);
    }) as T;
  } catch (error) {
    throw fromDatabase(error);
  }
}

/** A pgvector literal: `[0.1,0.2,...]`. */
export function vectorLiteral(vector: readonly number[]): string {
  return `[${vector.join(",")}]`;
}

/** A Postgres array literal of vectors (NULL where a document brings none), for `::extensions.vector[]`. */
export function vectorArrayLiteral(vectors: readonly (readonly number[] | null)[]): string {
  return `{${vectors.map((v) => v === null ? "NULL" : `"${vectorLiteral(v)}"`).join(",")}}`;
}
