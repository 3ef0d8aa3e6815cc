// A real supabase-js client calling the `vectors` function with functions.invoke, as an app would.
// Run by tests/test_edge_functions.py: deno run --config supabase/functions/vectors/deno.json ... <url> <anon> <user>
import { createClient } from "@supabase/supabase-js";

const [url, anonKey, userToken] = Deno.args;
const supabase = createClient(url, anonKey, {
  global: { headers: { Authorization: `Bearer ${userToken}` } },
  auth: { persistSession: false, autoRefreshToken: false },
});
const search = await supabase.functions.invoke("vectors/search", {
  body: { query: "cold brew", mode: "full_text", k: 3 },
});
const anon = await createClient(url, anonKey, {
  auth: { persistSession: false },
})
  .functions.invoke("vectors/documents", { method: "GET" });
console.log(JSON.stringify({
  search: search.data,
  searchError: search.error?.message ?? null,
  anonStatus: (anon.error as { context?: Response } | null)?.context?.status ??
    null,
}));
