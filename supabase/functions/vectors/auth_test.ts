// Units of the JWT check that need no database (the end-to-end cases are in tests/test_edge_functions.py).
import assert from "node:assert/strict";
import { createLocalJWKSet, exportJWK, generateKeyPair, SignJWT } from "jose";
import { type AuthConfig, bearerToken, verifyCaller } from "./auth.ts";
import { ApiError } from "./errors.ts";

const secret = "unit-test-secret-of-at-least-thirty-two-characters";
const config: AuthConfig = { secret, audiences: ["authenticated"] };
const now = () => Math.floor(Date.now() / 1000);

function hs256(claims: Record<string, unknown>, key = secret): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(key));
}

async function refused(token: string, cfg: AuthConfig = config): Promise<string> {
  const error = await verifyCaller(token, cfg).then(() => null, (e) => e);
  assert.ok(error instanceof ApiError, `accepted: ${token}`);
  assert.equal(error.status, 401);
  return error.message;
}

Deno.test("bearer tokens are read case-insensitively, and only as Bearer", () => {
  assert.equal(bearerToken("Bearer abc"), "abc");
  assert.equal(bearerToken("bearer  abc "), "abc");
  assert.equal(bearerToken("Basic abc"), "");
  assert.equal(bearerToken(undefined), "");
});

Deno.test("a valid user token gives the authenticated role and every claim", async () => {
  const token = await hs256({
    sub: "u1",
    role: "authenticated",
    aud: "authenticated",
    exp: now() + 60,
    app: 1,
  });
  const caller = await verifyCaller(token, config);
  assert.equal(caller.role, "authenticated");
  assert.equal(caller.claims.app, 1);
});

Deno.test("forged, expired, premature, exp-less, alg none, foreign audience and odd roles are refused", async () => {
  const exp = now() + 60;
  assert.match(await refused(await hs256({ role: "anon", exp }, "x".repeat(40))), /signature/);
  assert.match(await refused(await hs256({ role: "anon", exp: now() - 10 })), /expired/);
  assert.match(await refused(await hs256({ role: "anon", exp, nbf: now() + 600 })), /not valid yet/);
  await refused(await hs256({ role: "anon" }));
  const none = `${btoa('{"alg":"none"}')}.${btoa(JSON.stringify({ role: "service_role", exp }))}.`;
  assert.match(await refused(none.replaceAll("=", "")), /algorithm/);
  assert.match(await refused(await hs256({ role: "anon", exp, aud: "other" })), /audience/);
  assert.match(await refused(await hs256({ role: "postgres", exp })), /role/);
  assert.match(await refused(await hs256({ role: "authenticated", exp })), /sub/);
  assert.match(await refused(""), /missing/);
});

Deno.test("asymmetric tokens verify against the JWKS only, HMAC ones against the secret only", async () => {
  const { privateKey, publicKey } = await generateKeyPair("ES256");
  const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" };
  const withKeys: AuthConfig = { ...config, jwks: createLocalJWKSet({ keys: [jwk] }) };
  const es256 = await new SignJWT({ role: "anon", exp: now() + 60 })
    .setProtectedHeader({ alg: "ES256", kid: "k1" }).sign(privateKey);
  assert.equal((await verifyCaller(es256, withKeys)).role, "anon");
  assert.match(await refused(es256), /no signing keys/);
  assert.match(
    await refused(await hs256({ role: "anon", exp: now() + 60 }), { ...withKeys, secret: undefined }),
    /secret/,
  );
});
