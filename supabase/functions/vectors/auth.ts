/**
 * Who is calling: the caller's JWT verified here, in the function, before anything reaches the database.
 *
 * - HS256/384/512 tokens are checked against the project's legacy JWT secret; every other algorithm
 *   against Supabase's signing keys (JWKS). The algorithm family is chosen by the key, never trusted from
 *   the token alone: `alg: none` and an HS256 token "signed" with a public key are refused.
 * - `exp` is required and must lie in the future; `nbf`, when present, in the past (jose checks both).
 * - `aud`, when present, must be one of the accepted audiences (PostgREST's rule for its `jwt-aud`).
 * - The role must be anon, authenticated (with a `sub`) or service_role: the database connection may
 *   switch to any role, so the token must not choose one beyond these.
 */
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  type JWTPayload,
  jwtVerify,
} from "jose";
import { ApiError } from "./errors.ts";

export const ROLES = ["anon", "authenticated", "service_role"] as const;
export type Role = (typeof ROLES)[number];

export interface Caller {
  role: Role;
  /** The whole verified payload: PostgREST hands all of it to `request.jwt.claims`. */
  claims: JWTPayload & Record<string, unknown>;
}

type KeySet = ReturnType<typeof createLocalJWKSet> | ReturnType<typeof createRemoteJWKSet>;

export interface AuthConfig {
  /** The legacy JWT secret (HS256); absent = HMAC tokens are refused. */
  secret?: string;
  /** Supabase's signing keys; absent = asymmetric tokens are refused. */
  jwks?: KeySet;
  /** Accepted `aud` values (checked only when a token has one). */
  audiences: readonly string[];
}

const HMAC = ["HS256", "HS384", "HS512"];
const ASYMMETRIC = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"];

/** Auth settings from the environment (names in README's "HTTP API" section). */
export function authConfigFromEnv(env: (name: string) => string | undefined): AuthConfig {
  const secret = env("JWT_SECRET") || env("SUPABASE_JWT_SECRET") || undefined;
  const inline = env("JWT_JWKS");
  const url = env("JWT_JWKS_URL") ||
    (env("SUPABASE_URL") ? `${env("SUPABASE_URL")}/auth/v1/.well-known/jwks.json` : undefined);
  const jwks = inline
    ? createLocalJWKSet(JSON.parse(inline))
    : url
    ? createRemoteJWKSet(new URL(url))
    : undefined;
  const audiences = (env("JWT_AUDIENCE") ?? "authenticated").split(",").map((a) => a.trim()).filter(Boolean);
  return { secret, jwks, audiences };
}

function unauthorized(message: string): ApiError {
  return new ApiError(401, "invalid_token", message);
}

/** The token of an `Authorization: Bearer ...` header value ("" when there is none). */
export function bearerToken(authorization: string | undefined | null): string {
  const value = (authorization ?? "").trim();
  return value.slice(0, 7).toLowerCase() === "bearer " ? value.slice(7).trim() : "";
}

export async function verifyCaller(token: string, config: AuthConfig): Promise<Caller> {
  if (!token) {
    throw unauthorized("missing Authorization: Bearer <JWT> (the anon key, or a user's access token)");
  }
  let alg: string | undefined;
  try {
    alg = decodeProtectedHeader(token).alg;
  } catch {
    throw unauthorized("the token is not a JWT");
  }
  let payload: JWTPayload;
  try {
    if (alg !== undefined && HMAC.includes(alg)) {
      if (!config.secret) throw unauthorized("HS256 tokens are not accepted here (no JWT secret configured)");
      const key = new TextEncoder().encode(config.secret);
      payload = (await jwtVerify(token, key, { algorithms: HMAC, requiredClaims: ["exp"] })).payload;
    } else if (alg !== undefined && ASYMMETRIC.includes(alg)) {
      if (!config.jwks) {
        throw unauthorized(`${alg} tokens are not accepted here (no signing keys configured)`);
      }
      payload =
        (await jwtVerify(token, config.jwks, { algorithms: ASYMMETRIC, requiredClaims: ["exp"] })).payload;
    } else {
      throw unauthorized(`the token's algorithm ${JSON.stringify(alg ?? null)} is not accepted`);
    }
  } catch (error) {
    if (error instanceof ApiError) throw error;
    const code = (error as { code?: string }).code;
    const reason: Record<string, string> = {
      ERR_JWT_EXPIRED: "the token has expired",
      ERR_JWT_CLAIM_VALIDATION_FAILED: "the token is not valid yet, or lacks exp",
      ERR_JWS_SIGNATURE_VERIFICATION_FAILED: "the token's signature does not verify",
      ERR_JWKS_NO_MATCHING_KEY: "the token was not signed by any of the project's keys",
    };
    throw unauthorized(reason[code ?? ""] ?? "the token does not verify");
  }
  const aud = payload.aud;
  if (aud !== undefined) {
    const given = Array.isArray(aud) ? aud : [aud];
    if (!given.some((a) => config.audiences.includes(a))) {
      throw unauthorized(`the token's audience ${JSON.stringify(aud)} is not accepted`);
    }
  }
  const role = payload.role;
  if (typeof role !== "string" || !(ROLES as readonly string[]).includes(role)) {
    throw unauthorized(`the token's role ${JSON.stringify(role ?? null)} is not one of ${ROLES.join(", ")}`);
  }
  if (role === "authenticated" && (typeof payload.sub !== "string" || !payload.sub)) {
    throw unauthorized("an authenticated token must name its user in sub");
  }
  return { role: role as Role, claims: payload as Caller["claims"] };
}
