/**
 * Text -> vector at the edge, with the SDK's own all-MiniLM-L6-v2 graph (supa_vectors/embedding: pooling
 * and L2 normalisation are inside the graph) run by onnxruntime-web (wasm) and the model's tokenizer.json.
 *
 * Opt-in: EMBEDDING_MODEL_URL names a directory (a Storage bucket, or file:// locally) that holds
 * `tokenizer.json` and the graph (EMBEDDING_MODEL_FILE, default `model.onnx`: fp32, the SDK's default;
 * `model.int8.onnx` is the smaller quantized one). The files are fetched at cold start, not bundled.
 * A private bucket works: on the project's own origin (SUPABASE_URL) the fetch carries the service key
 * the runtime provides, and never anywhere else. EMBEDDING_MODEL_SHA256 pins the graph's checksum (the
 * `sha256` that `supa-vectors model` installs with), so a truncated or replaced upload fails at load.
 * Figures and where it fits: docs/decisions/0017-http-api-as-one-edge-function.md.
 */
import type { Embedder } from "./app.ts";

/** sentence-transformers' max_seq_length for this model (supa_vectors/embedding/graph.py MAX_TOKENS). */
export const MAX_TOKENS = 256;
export const MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2";

interface Encoding {
  ids: number[];
}

/** Cut to MAX_TOKENS the way the Python tokenizer truncates: the first 255 tokens, then [SEP]. */
export function truncate(ids: readonly number[], max = MAX_TOKENS): number[] {
  return ids.length <= max ? [...ids] : [...ids.slice(0, max - 1), ids[ids.length - 1]];
}

/** Where the model lives, and what a fetch from there may carry. */
export interface ModelSource {
  /** A directory URL (ending in / or not). */
  url: string;
  /** The graph's file name in that directory. */
  file?: string;
  /** Hex SHA-256 the graph must have; unset: not checked. */
  sha256?: string;
  /** The project's own origin (SUPABASE_URL) and its service key, for a private Storage bucket. */
  project?: { url: string; serviceKey: string };
}

/** Headers for fetching from `target`: the service key only when it goes back to the project itself. */
export function modelFetchHeaders(target: URL, project?: ModelSource["project"]): Record<string, string> {
  if (!project?.serviceKey || target.origin !== new URL(project.url).origin) return {};
  return { Authorization: `Bearer ${project.serviceKey}`, apikey: project.serviceKey };
}

async function fetchBytes(
  base: URL,
  name: string,
  project?: ModelSource["project"],
): Promise<Uint8Array<ArrayBuffer>> {
  const target = new URL(name, base);
  const response = await fetch(target, { headers: modelFetchHeaders(target, project) });
  if (!response.ok) throw new Error(`cannot fetch ${name} from the model location: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** Hex SHA-256 of text (as UTF-8) or bytes: a document's default id, and the model's checksum. */
export async function sha256Hex(data: string | Uint8Array<ArrayBuffer>): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Load the tokenizer and the graph from `source`. */
export async function loadEmbedder(source: ModelSource): Promise<Embedder> {
  const base = new URL(source.url.endsWith("/") ? source.url : `${source.url}/`);
  const file = source.file ?? "model.onnx";
  // Imported here, so a deployment without an embedder never loads onnxruntime.
  const [ort, { Tokenizer }] = await Promise.all([
    import("onnxruntime-web"),
    import("@huggingface/tokenizers"),
  ]);
  ort.env.wasm.numThreads = 1; // Edge Functions run one isolate per request stream; no wasm threads
  const [tokenizerJson, graph] = await Promise.all([
    fetchBytes(base, "tokenizer.json", source.project),
    fetchBytes(base, file, source.project),
  ]);
  if (source.sha256) {
    const actual = await sha256Hex(graph);
    if (actual !== source.sha256.toLowerCase()) {
      throw new Error(`${file} has sha256 ${actual}, EMBEDDING_MODEL_SHA256 expects ${source.sha256}`);
    }
  }
  const tokenizer = new Tokenizer(JSON.parse(new TextDecoder().decode(tokenizerJson)), {});
  const session = await ort.InferenceSession.create(graph);
  const output = session.outputNames[0];
  return {
    modelId: MODEL_ID,
    async embed(text: string): Promise<number[]> {
      const ids = truncate((tokenizer.encode(text) as Encoding).ids);
      const shape = [1, ids.length];
      const feeds = {
        input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), shape),
        attention_mask: new ort.Tensor("int64", new BigInt64Array(ids.length).fill(1n), shape),
      };
      const result = await session.run(feeds);
      return Array.from(result[output].data as Float32Array);
    },
  };
}

/** An Embedder that loads on first use (or when `warm()` is called at start-up) and reports failures. */
export function lazyEmbedder(source: ModelSource): Embedder & { warm(): void } {
  let loading: Promise<Embedder> | undefined;
  const load = () => (loading ??= loadEmbedder(source));
  return {
    modelId: MODEL_ID,
    warm: () => void load().catch(() => {}),
    embed: async (text) => (await load()).embed(text),
  };
}

/** The model source the environment configures, or undefined: no text embedding at the edge. */
export function modelSourceFromEnv(env: (name: string) => string | undefined): ModelSource | undefined {
  const url = env("EMBEDDING_MODEL_URL");
  if (!url) return undefined;
  const projectUrl = env("SUPABASE_URL");
  const serviceKey = env("SUPABASE_SERVICE_ROLE_KEY");
  return {
    url,
    file: env("EMBEDDING_MODEL_FILE") || undefined,
    sha256: env("EMBEDDING_MODEL_SHA256") || undefined,
    project: projectUrl && serviceKey ? { url: projectUrl, serviceKey } : undefined,
  };
}
