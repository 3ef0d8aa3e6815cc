// Units of the edge embedder that need no model (parity and the fetch end to end: tests/test_edge_functions.py).
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { modelFetchHeaders, modelSourceFromEnv, truncate } from "./embed.ts";

const project = { url: "https://abc.supabase.co", serviceKey: "service-key" };

Deno.test("the service key goes to the project's own origin only", () => {
  assertEquals(
    modelFetchHeaders(
      new URL("https://abc.supabase.co/storage/v1/object/authenticated/m/model.onnx"),
      project,
    ),
    { Authorization: "Bearer service-key", apikey: "service-key" },
  );
  for (
    const elsewhere of [
      "https://abc.supabase.co.evil.example/model.onnx",
      "http://abc.supabase.co/model.onnx",
      "https://abc.supabase.co:8443/model.onnx",
      "https://models.example.com/model.onnx",
    ]
  ) {
    assertEquals(modelFetchHeaders(new URL(elsewhere), project), {}, elsewhere);
  }
  assertEquals(modelFetchHeaders(new URL("https://abc.supabase.co/model.onnx")), {});
});

Deno.test("no model URL: no edge embedding; the project is known only with its key", () => {
  assertEquals(modelSourceFromEnv(() => undefined), undefined);
  const env: Record<string, string> = {
    EMBEDDING_MODEL_URL: "https://abc.supabase.co/m/",
    SUPABASE_URL: project.url,
  };
  assertEquals(modelSourceFromEnv((n) => env[n])?.project, undefined);
  env.SUPABASE_SERVICE_ROLE_KEY = "service-key";
  assertEquals(modelSourceFromEnv((n) => env[n])?.project, project);
});

Deno.test("truncation keeps the first 255 tokens and [SEP]", () => {
  const ids = Array.from({ length: 300 }, (_, i) => i);
  const cut = truncate(ids);
  assertEquals(cut.length, 256);
  assertEquals(cut[255], 299);
  assertEquals(truncate([1, 2, 3]), [1, 2, 3]);
});
