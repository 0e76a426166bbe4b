"""Sign requests as `exchange/wire.py` specifies (version 2): REST headers and the WebSocket logon.

Every signature gets a fresh nonce and the current time, so a retried request is signed again
(a nonce is never reused by a key). The signed path includes the query string and the signed
body is exactly the bytes sent.
"""

from __future__ import annotations

import secrets
import time

from exchange import wire

__all__ = ["Credentials", "new_nonce", "signed_headers", "logon_params", "NONCE_BYTES"]

NONCE_BYTES = 12  # 24 hex characters: within the wire's 8-64 characters of [A-Za-z0-9_-]


class Credentials:
    """An API key and its secret."""

    __slots__ = ("key", "secret")

    def __init__(self, key: str, secret: str) -> None:
        if not key or not secret:
            raise ValueError("key and secret: expected both non-empty, found one empty")
        self.key = key
        self.secret = secret

    def __repr__(self) -> str:
        return f"Credentials(key={self.key!r}, secret=<hidden>)"


def new_nonce() -> str:
    """Return a fresh random nonce."""
    return secrets.token_hex(NONCE_BYTES)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed_headers(
    credentials: Credentials,
    method: str,
    path: str,
    body: bytes,
    *,
    ts_ms: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return the GX-* headers of a request, signed with version 2; `path` includes its query
    string."""
    ts = _now_ms() if ts_ms is None else ts_ms
    nonce = new_nonce() if nonce is None else nonce
    sig = wire.signature(credentials.secret, credentials.key, ts, nonce, method, path, body)
    return {
        wire.HEADER_KEY: credentials.key,
        wire.HEADER_TS: str(ts),
        wire.HEADER_NONCE: nonce,
        wire.HEADER_SIGN_VERSION: str(wire.SIGN_VERSION),
        wire.HEADER_SIGNATURE: sig,
    }


def logon_params(
    credentials: Credentials, cancel_on_disconnect: str, *, ts_ms: int | None = None
) -> dict[str, object]:
    """Return the params of `session.logon`, signed (version 2) over GET /ws with an empty
    body."""
    ts = _now_ms() if ts_ms is None else ts_ms
    nonce = new_nonce()
    sig = wire.signature(
        credentials.secret,
        credentials.key,
        ts,
        nonce,
        wire.WS_LOGON_METHOD,
        wire.WS_LOGON_PATH,
        b"",
    )
    return {
        "key": credentials.key,
        "ts_ms": ts,
        "nonce": nonce,
        "signature": sig,
        "sig_version": wire.SIGN_VERSION,
        "cancel_on_disconnect": cancel_on_disconnect,
    }
