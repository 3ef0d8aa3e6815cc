/**
 * Text -> vector at the edge, with the SDK's own all-MiniLM-L6-v2 graph (supa_vectors/embedding: pooling
 * and L2 normalisation are inside the graph) run by onnxruntime-web (wasm) and the model's tokenizer.json.
 *
 * Opt-in: EMBEDDING_MODEL_URL names a directory (a Storage bucket's public URL, or file:// locally) that
 * holds `tokenizer.json` and the graph (EMBEDDING_MODEL_FILE, default `model.onnx`: fp32, the SDK's
 * default; `model.int8.onnx` is the smaller quantized one). The files are fetched at cold start, not
 * bundled. Figures and where it fits: docs/decisions/0017-http-api-as-one-edge-function.md.
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

async function fetchBytes(base: URL, name: string): Promise<Uint8Array> {
  const response = await fetch(new URL(name, base));
  if (!response.ok) throw new Error(`cannot fetch ${name} from the model location: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** Load the tokenizer and the graph from `url` (a directory URL, ending in /). */
export async function loadEmbedder(url: string, file = "model.onnx"): Promise<Embedder> {
  const base = new URL(url.endsWith("/") ? url : `${url}/`);
  // Imported here, so a deployment without an embedder never loads onnxruntime.
  const [ort, { Tokenizer }] = await Promise.all([
    import("onnxruntime-web"),
    import("@huggingface/tokenizers"),
  ]);
  ort.env.wasm.numThreads = 1; // Edge Functions run one isolate per request stream; no wasm threads
  const [tokenizerJson, graph] = await Promise.all([
    fetchBytes(base, "tokenizer.json"),
    fetchBytes(base, file),
  ]);
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
export function lazyEmbedder(url: string, file?: string): Embedder & { warm(): void } {
  let loading: Promise<Embedder> | undefined;
  const load = () => (loading ??= loadEmbedder(url, file));
  return {
    modelId: MODEL_ID,
    warm: () => void load().catch(() => {}),
    embed: async (text) => (await load()).embed(text),
  };
}
