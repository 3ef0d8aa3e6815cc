// The SQLSTATE table's shape; tests/test_edge_functions.py checks it against the SDK's error_for_sqlstate.
import assert from "node:assert/strict";
import { errorForSqlstate, fromDatabase } from "./errors.ts";

Deno.test("input the database refuses is a 400 naming its field", () => {
  const filter = errorForSqlstate("22023", "invalid filter: unknown operator $x");
  assert.deepEqual([filter.status, filter.code, filter.field], [400, "filter_error", "filter"]);
  const doc = errorForSqlstate("22023", "document 3: bad", '{"ordinal": 3, "external_id": "c"}');
  assert.deepEqual([doc.status, doc.code, doc.field], [400, "document_error", "documents[2]"]);
  assert.equal(errorForSqlstate("54000", "match_count is 5000; the store returns at most 1000").field, "k");
});

Deno.test("the backend's own failures are 5xx without their text", () => {
  const unknown = errorForSqlstate("XX000", "internal detail with a secret");
  assert.deepEqual([unknown.status, unknown.code], [500, "backend_error"]);
  assert.ok(!unknown.message.includes("secret"));
  assert.equal(errorForSqlstate("57014", "canceling statement").status, 504);
  assert.equal(
    fromDatabase(Object.assign(new Error("connect ECONNREFUSED 10.0.0.1"), { code: "ECONNREFUSED" })).status,
    503,
  );
});
