// Request signing (exchange/wire.py): lowercase hex HMAC-SHA256, keyed by the API secret, of
// ts_ms + nonce + METHOD + path + body. WebCrypto only exists in a secure context; http://127.0.0.1
// and http://localhost are one.

const encoder = new TextEncoder();
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

/** The signature of one request. */
export async function sign(secret, tsMs, nonce, method, path, body = "") {
  const payload = encoder.encode(`${tsMs}${nonce}${method.toUpperCase()}${path}${body}`);
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
    signature: await sign(creds.secret, tsMs, nonce, "GET", "/ws"),
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
    "GX-SIGNATURE": await sign(creds.secret, tsMs, nonce, method, path, raw),
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
