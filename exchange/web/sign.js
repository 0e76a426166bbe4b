// Request signing, version 2 (exchange/wire.py): lowercase hex HMAC-SHA256, keyed by the API
// secret, of "gx-v2", key, ts_ms, nonce, METHOD and path, each followed by "\n", then the body;
// sent with the header GX-SIGN-VERSION: 2 (the logon's "sig_version": 2). WebCrypto only exists
// in a secure context; http://127.0.0.1 and http://localhost are one.

const encoder = new TextEncoder();
export const SIGN_VERSION = 2;
const keys = new Map(); // secret -> CryptoKey, imported once

async function hmacKey(secret) {
  let key = keys.get(secret);
  if (!key) {
    if (!globalThis.crypto?.subtle) {
      throw new Error("WebCrypto is unavailable: open the page over https or on 127.0.0.1");
    }
    key = await crypto.subtle.importKey(
      "raw",
      encoder.encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    keys.set(secret, key);
  }
  return key;
}

/** A fresh nonce: 24 hex characters (the server takes 8-64 of [A-Za-z0-9_-], never reused). */
export function newNonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The bytes a version 2 signature covers; no field but the body may hold a line feed. */
export function signingPayload(keyId, tsMs, nonce, method, path, body = "") {
  const fields = [keyId, String(tsMs), nonce, method.toUpperCase(), path];
  if (fields.some((field) => field.includes("\n"))) {
    throw new Error(`signing: a line feed in a signed field (${JSON.stringify(fields)})`);
  }
  return encoder.encode(["gx-v2", ...fields].join("\n") + "\n" + body);
}

/** The version 2 signature of one request. */
export async function sign(secret, keyId, tsMs, nonce, method, path, body = "") {
  const payload = signingPayload(keyId, tsMs, nonce, method, path, body);
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), payload);
  return [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The params of a WebSocket `session.logon` (signed over GET /ws with an empty body). */
export async function logonParams(creds, cancelOnDisconnect = "none") {
  const tsMs = Date.now();
  const nonce = newNonce();
  return {
    key: creds.key,
    ts_ms: tsMs,
    nonce,
    signature: await sign(creds.secret, creds.key, tsMs, nonce, "GET", "/ws"),
    sig_version: SIGN_VERSION,
    cancel_on_disconnect: cancelOnDisconnect,
  };
}

/** A signed REST request; resolve to the JSON answer, or throw an Error carrying `code`. */
export async function signedFetch(creds, method, path, body = null) {
  const raw = body === null ? "" : JSON.stringify(body);
  const tsMs = Date.now();
  const nonce = newNonce();
  const headers = {
    "GX-KEY": creds.key,
    "GX-TS": String(tsMs),
    "GX-NONCE": nonce,
    "GX-SIGN-VERSION": String(SIGN_VERSION),
    "GX-SIGNATURE": await sign(creds.secret, creds.key, tsMs, nonce, method, path, raw),
  };
  if (raw) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: raw || undefined });
  return answer(response, `${method} ${path}`);
}

/** A public REST GET. */
export async function publicFetch(path) {
  return answer(await fetch(path), `GET ${path}`);
}

async function answer(response, what) {
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(`${what}: ${data?.error?.msg ?? response.statusText}`);
    error.code = data?.error?.code ?? String(response.status);
    error.status = response.status;
    throw error;
  }
  return data;
}
