/**
 * Entry point of the `vectors` Edge Function (`supabase functions deploy vectors`). Locally without
 * Docker: `deno run --allow-net --allow-env index.ts` with SUPABASE_DB_URL (and PORT) set.
 *
 * Environment: SUPABASE_DB_URL (required; the transaction pooler URL is fine), JWT_SECRET (the legacy
 * HS256 secret) and/or JWT_JWKS_URL / JWT_JWKS (signing keys; default SUPABASE_URL's JWKS endpoint),
 * JWT_AUDIENCE (default "authenticated"), DB_POOL_SIZE (default 4), STATEMENT_TIMEOUT (default 8s),
 * EMBEDDING_MODEL_URL / EMBEDDING_MODEL_FILE / EMBEDDING_MODEL_SHA256 (text embedding at the edge: see
 * embed.ts; off by default), SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (a private bucket on the project).
 */
import { authConfigFromEnv } from "./auth.ts";
import { connect } from "./db.ts";
import { createApp } from "./app.ts";
import { lazyEmbedder, modelSourceFromEnv } from "./embed.ts";

const env = (name: string) => Deno.env.get(name);
const url = env("SUPABASE_DB_URL");
if (!url) throw new Error("SUPABASE_DB_URL is not set");
const db = { max: Number(env("DB_POOL_SIZE") ?? 4), statementTimeout: env("STATEMENT_TIMEOUT") ?? "8s" };
const modelSource = modelSourceFromEnv(env);
const embedder = modelSource ? lazyEmbedder(modelSource) : undefined;
embedder?.warm(); // fetch and load the model at cold start, while the first request is still on its way
const app = createApp({ sql: connect(url, db), auth: authConfigFromEnv(env), db, embedder });

if ("EdgeRuntime" in globalThis) {
  Deno.serve(app.fetch); // Supabase's edge runtime: it owns the listener
} else {
  Deno.serve({
    port: Number(env("PORT") ?? 8000),
    hostname: env("HOST") ?? "127.0.0.1",
    onListen: ({ hostname, port }) =>
      console.log(`supa-vectors edge API on http://${hostname}:${port}/vectors`),
  }, app.fetch);
}
