/**
 * HS256 JWTs for Centrifugo connection and subscription tokens, signed with
 * WebCrypto (`globalThis.crypto.subtle`, present in browsers and Node 20+).
 *
 * Minting tokens belongs on a backend: the HMAC secret must never reach a
 * browser. The helpers only build and sign claims; the server checks them
 * (protocol spec §5).
 */
import type { JsonValue } from "./data.js";

/** Claims both token kinds share. */
export interface TokenOptions {
  /** Lifetime in seconds from now; sets `exp`. */
  ttlSeconds?: number;
  /** Absolute expiry, unix seconds; wins over `ttlSeconds`. */
  exp?: number;
  /**
   * Expiry of the connection/subscription itself, unix seconds, when it
   * should differ from `exp`; 0 means it never expires.
   */
  expireAt?: number;
  /** Connection info (connection token) or channel info (subscription token). */
  info?: JsonValue;
  /** Base64 binary info, used instead of `info`. */
  b64info?: string;
  audience?: string | string[];
  issuer?: string;
  /** Extra claims, merged last (they override the ones above). */
  claims?: Record<string, JsonValue>;
}

/** Per-channel options of a server-side subscription in a connection token. */
export interface TokenSubscription {
  info?: JsonValue;
  b64info?: string;
  data?: JsonValue;
  b64data?: string;
  override?: {
    presence?: { value: boolean };
    join_leave?: { value: boolean };
    force_push_join_leave?: { value: boolean };
    force_positioning?: { value: boolean };
    force_recovery?: { value: boolean };
  };
}

export interface ConnectionTokenOptions extends TokenOptions {
  /** Server-side subscriptions with namespace defaults (ignored by the server when `subs` is set). */
  channels?: string[];
  /** Server-side subscriptions with per-channel options. */
  subs?: Record<string, TokenSubscription>;
  /** Hidden connection meta, visible to proxies only. */
  meta?: JsonValue;
}

export interface SubscriptionTokenOptions extends TokenOptions {
  /** Bind the token to one client id. */
  client?: string;
  /** Returned to the client in the subscribe result. */
  data?: JsonValue;
  b64data?: string;
  override?: TokenSubscription["override"];
}

/** An HS256 connection JWT for `user` ("" for an anonymous connection). */
export function connectionToken(
  secret: string | Uint8Array,
  user: string,
  options: ConnectionTokenOptions = {},
): Promise<string> {
  const claims = baseClaims(user, options);
  setIfDefined(claims, "channels", options.channels);
  setIfDefined(claims, "subs", options.subs as JsonValue | undefined);
  setIfDefined(claims, "meta", options.meta);
  return signHs256(secret, { ...claims, ...options.claims });
}

/** An HS256 subscription JWT letting `user` subscribe to `channel`. */
export function subscriptionToken(
  secret: string | Uint8Array,
  user: string,
  channel: string,
  options: SubscriptionTokenOptions = {},
): Promise<string> {
  const claims = baseClaims(user, options);
  claims.channel = channel;
  setIfDefined(claims, "client", options.client);
  setIfDefined(claims, "data", options.data);
  setIfDefined(claims, "b64data", options.b64data);
  setIfDefined(claims, "override", options.override as JsonValue | undefined);
  return signHs256(secret, { ...claims, ...options.claims });
}

type Claims = Record<string, JsonValue>;

function baseClaims(user: string, o: TokenOptions): Claims {
  const now = Math.floor(Date.now() / 1000);
  const claims: Claims = { sub: user, iat: now };
  if (o.exp !== undefined) claims.exp = o.exp;
  else if (o.ttlSeconds !== undefined) claims.exp = now + o.ttlSeconds;
  setIfDefined(claims, "expire_at", o.expireAt);
  setIfDefined(claims, "info", o.info);
  setIfDefined(claims, "b64info", o.b64info);
  setIfDefined(claims, "aud", o.audience);
  setIfDefined(claims, "iss", o.issuer);
  return claims;
}

function setIfDefined(claims: Claims, key: string, value: JsonValue | undefined): void {
  if (value !== undefined) claims[key] = value;
}

const encoder = new TextEncoder();

/** Signs `claims` as a compact HS256 JWS. */
export async function signHs256(secret: string | Uint8Array, claims: Record<string, JsonValue>): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (subtle === undefined) {
    throw new Error("WebCrypto (globalThis.crypto.subtle) is not available in this runtime");
  }
  // A copy also gives WebCrypto a plain ArrayBuffer-backed view (no SharedArrayBuffer).
  const keyBytes = typeof secret === "string" ? encoder.encode(secret) : new Uint8Array(secret);
  if (keyBytes.length === 0) throw new TypeError("the HMAC secret must not be empty");
  const header = base64url(encoder.encode(JSON.stringify({ alg: "HS256", typ: "JWT" })));
  const payload = base64url(encoder.encode(JSON.stringify(claims)));
  const signingInput = `${header}.${payload}`;
  const key = await subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signature = await subtle.sign("HMAC", key, encoder.encode(signingInput));
  return `${signingInput}.${base64url(new Uint8Array(signature))}`;
}

/** RFC 4648 §5 base64url without padding; btoa exists in browsers and Node 16+. */
function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
