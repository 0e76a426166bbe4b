"""Verify signed requests (REST headers and the WebSocket `session.logon`) and check scopes.

The signature is `wire.signature(secret, key, ts_ms, nonce, METHOD, path, body)` (version 2: a
delimited string naming the key, `wire.signing_payload`), accepted within SIGNATURE_WINDOW_MS of
the server's clock, with a nonce the key has never used. Checks run cheapest first, and the
nonce is recorded only after the signature holds, so requests that anyone could forge never use
up a key's nonces.

The transition from version 1. A request without a version (no `GX-SIGN-VERSION` header, no
logon `sig_version`) or with version 1 is checked against `wire.signature_v1` (the undelimited
`ts_ms + nonce + METHOD + path + body`) until SIGN_V1_ACCEPTED_UNTIL_MS, and refused
BAD_SIGNATURE from then on. Every client of this repository signs version 2.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from exchange import wire
from exchange.gateway.keys import (
    KEY_ID_HEX_CHARS,
    KEY_ID_PREFIX,
    NONCE_HORIZON_MS,
    SCOPES,
    ApiKey,
    KeyStore,
    MasterKeyMismatch,
    is_key_id,
)
from exchange.wire import ErrorCode, WireError

__all__ = [
    "SIGNATURE_WINDOW_MS",
    "NONCE_CHARS_MIN",
    "NONCE_CHARS_MAX",
    "SIGN_VERSIONS",
    "SIGN_V1_ACCEPTED_UNTIL_MS",
    "verify",
    "sign_version",
    "sign_version_header",
    "require_scope",
    "headers_of",
]

SIGNATURE_WINDOW_MS = 5_000  # accepted clock difference, either way
NONCE_CHARS_MIN = 8
NONCE_CHARS_MAX = 64
TS_DIGITS_MAX = 19  # fits a bigint
ECHO_CHARS_MAX = 80  # of a client's value quoted back in an error message
SIGNED_ECHO_CHARS_MAX = 400  # of the signed string (validated fields, the path) quoted back
SIGN_VERSIONS = (1, 2)
# The end of the version 1 transition: 2027-04-01T00:00:00Z in UNIX milliseconds. A version 1
# signature verifies before it and is refused from it on.
SIGN_V1_ACCEPTED_UNTIL_MS = 1_806_537_600_000
SIGN_V1_ACCEPTED_UNTIL = "2027-04-01T00:00:00Z"

# A nonce must stay recorded for as long as its request could be accepted.
assert NONCE_HORIZON_MS > 2 * SIGNATURE_WINDOW_MS

_NONCE_RE = re.compile(f"[A-Za-z0-9_-]{{{NONCE_CHARS_MIN},{NONCE_CHARS_MAX}}}")
_TS_RE = re.compile(f"[0-9]{{1,{TS_DIGITS_MAX}}}")
_SIGNATURE_HEX_CHARS = 64


def _echo(value: object, chars_max: int = ECHO_CHARS_MAX) -> str:
    text = repr(value)
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."


def sign_version(value: object) -> int:
    """Return the signature version a request names: absent (None or "") is 1; 1, 2, "1", "2".

    Raises WireError(BAD_REQUEST) for anything else.
    """
    if value is None or value == "":
        return 1
    if isinstance(value, int) and not isinstance(value, bool) and value in SIGN_VERSIONS:
        return value
    if isinstance(value, str) and value in ("1", "2"):
        return int(value)
    raise WireError(
        ErrorCode.BAD_REQUEST,
        f"signature version ({wire.HEADER_SIGN_VERSION}, logon sig_version): expected "
        f"{wire.SIGN_VERSION}, found {_echo(value)}",
    )


def sign_version_header(headers: Mapping[str, str]) -> str | None:
    """Return the `GX-SIGN-VERSION` header (matched case-insensitively), None when absent."""
    wanted = wire.HEADER_SIGN_VERSION.lower()
    for name, value in headers.items():
        if name.lower() == wanted:
            return value
    return None


def _timestamp(ts_ms: object, now_ms: int) -> int:
    """Return ts_ms as an integer within the window, else raise TIMESTAMP_EXPIRED."""
    if isinstance(ts_ms, int) and not isinstance(ts_ms, bool):
        value = ts_ms
    elif isinstance(ts_ms, str) and _TS_RE.fullmatch(ts_ms):
        value = int(ts_ms)
    else:
        raise WireError(
            ErrorCode.TIMESTAMP_EXPIRED,
            f"ts_ms ({wire.HEADER_TS}): expected integer UNIX milliseconds, found {_echo(ts_ms)}",
        )
    if abs(value - now_ms) > SIGNATURE_WINDOW_MS:
        raise WireError(
            ErrorCode.TIMESTAMP_EXPIRED,
            f"ts_ms ({wire.HEADER_TS}): expected within {SIGNATURE_WINDOW_MS} ms of the server's "
            f"clock {now_ms}, found {value} ({value - now_ms:+d} ms); sync the clock and sign "
            "each request just before sending it",
        )
    return value


async def verify(
    store: KeyStore,
    key_id: object,
    ts_ms: object,
    nonce: object,
    signature_hex: object,
    method: str,
    path: str,
    body: bytes,
    now_ms: int,
    *,
    sig_version: object,
) -> ApiKey:
    """Return the key that signed this request, or raise WireError with a stable code.

    Arguments are as received (header strings, or JSON values of `session.logon`); `path`
    includes the query string, `body` is the raw body, `now_ms` the server's UNIX milliseconds,
    `sig_version` the `GX-SIGN-VERSION` header or the logon's `sig_version` (None when absent).
    Codes: UNAUTHORIZED (missing, unknown or revoked key), TIMESTAMP_EXPIRED, BAD_REQUEST (nonce
    format, signature version, a line feed in the method or path), BAD_SIGNATURE (also version 1
    after SIGN_V1_ACCEPTED_UNTIL_MS), NONCE_REUSED, UNAVAILABLE (too many key lookups waiting,
    see keys.py).
    """
    if not key_id:
        raise WireError(
            ErrorCode.UNAUTHORIZED, f"key ({wire.HEADER_KEY}): expected an API key, found none"
        )
    if not is_key_id(key_id):
        raise WireError(
            ErrorCode.UNAUTHORIZED,
            f"key ({wire.HEADER_KEY}): expected {KEY_ID_PREFIX!r} and {KEY_ID_HEX_CHARS} "
            f"lowercase hex characters, found {_echo(key_id)}",
        )
    assert isinstance(key_id, str)
    version = sign_version(sig_version)
    if version == 1 and now_ms >= SIGN_V1_ACCEPTED_UNTIL_MS:
        raise WireError(
            ErrorCode.BAD_SIGNATURE,
            f"signature version ({wire.HEADER_SIGN_VERSION}): expected {wire.SIGN_VERSION}, "
            f"found version 1, accepted only until {SIGN_V1_ACCEPTED_UNTIL}; sign version 2 "
            "(exchange/wire.py) and send the header",
        )
    for name, value in (("method", method), ("path", path)):
        if "\n" in value:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"{name}: expected no line feed (it delimits the signed string), found "
                f"{_echo(value)}",
            )
    ts_value = _timestamp(ts_ms, now_ms)
    if not isinstance(nonce, str) or _NONCE_RE.fullmatch(nonce) is None:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"nonce ({wire.HEADER_NONCE}): expected {NONCE_CHARS_MIN}-{NONCE_CHARS_MAX} characters "
            f"from [A-Za-z0-9_-], found {_echo(nonce)}",
        )
    try:
        key = await store.get(key_id)
    except MasterKeyMismatch:
        raise WireError(
            ErrorCode.UNAUTHORIZED,
            f"key ({wire.HEADER_KEY}): expected a key this gateway can verify, found {key_id} "
            "issued under another master key; create a new key or tell the operator",
        ) from None
    if key is None:
        raise WireError(
            ErrorCode.UNAUTHORIZED,
            f"key ({wire.HEADER_KEY}): expected a key issued by this exchange, found unknown "
            f"key {key_id}",
        )
    if key.revoked:
        raise WireError(
            ErrorCode.UNAUTHORIZED,
            f"key ({wire.HEADER_KEY}): expected an active key, found {key_id} revoked; use "
            "another key or create one",
        )
    secret = store.secret_of(key_id)
    _check_signature(secret, version, key_id, ts_ms, nonce, signature_hex, method, path, body)
    if not await store.use_nonce(key_id, nonce, ts_value):
        raise WireError(
            ErrorCode.NONCE_REUSED,
            f"nonce ({wire.HEADER_NONCE}): expected one key {key_id} has not used, found "
            f"{nonce!r} used before; use a fresh nonce for every request",
        )
    return key


def _check_signature(
    secret: str,
    version: int,
    key_id: str,
    ts_ms: object,
    nonce: str,
    signature_hex: object,
    method: str,
    path: str,
    body: bytes,
) -> None:
    """Raise BAD_SIGNATURE unless `signature_hex` signs the request with `secret`."""
    # The timestamp is signed as the client sent it (a header string, or a JSON integer).
    assert isinstance(ts_ms, int | str)
    if version == 1:
        expected = wire.signature_v1(secret, ts_ms, nonce, method, path, body)
        head = wire.signing_payload_v1(ts_ms, nonce, method, path, b"")
    else:
        expected = wire.signature(secret, key_id, ts_ms, nonce, method, path, body)
        head = wire.signing_payload(key_id, ts_ms, nonce, method, path, b"")
    given = signature_hex if isinstance(signature_hex, str) else ""
    # Compare bytes: compare_digest refuses str with non-ASCII characters.
    if hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        return
    if len(given) != _SIGNATURE_HEX_CHARS or given.strip("0123456789abcdef"):
        found = f"{_echo(signature_hex)} ({len(given)} characters)"
        raise WireError(
            ErrorCode.BAD_SIGNATURE,
            f"signature ({wire.HEADER_SIGNATURE}): expected {_SIGNATURE_HEX_CHARS} lowercase hex "
            f"characters, found {found}",
        )
    signed = _echo(head.decode(), SIGNED_ECHO_CHARS_MAX)
    raise WireError(
        ErrorCode.BAD_SIGNATURE,
        f"signature ({wire.HEADER_SIGNATURE}): expected HMAC-SHA256 keyed by the key's secret "
        f"of {signed} followed by the {len(body)}-byte body (signature version {version}), "
        "found a signature of something else (check the secret, the version header, the path "
        "with its query string, and the raw body)",
    )


def require_scope(key: ApiKey, scope: str) -> None:
    """Raise WireError(FORBIDDEN) unless `key` has `scope`."""
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {', '.join(SCOPES)}, found {scope!r}")
    if scope not in key.scopes:
        raise WireError(
            ErrorCode.FORBIDDEN,
            f"key {key.key_id}: this needs scope {scope!r}, the key has "
            f"{', '.join(key.scopes) or 'none'}",
        )


def headers_of(headers: Mapping[str, str]) -> tuple[str, str, str, str]:
    """Return (key, ts, nonce, signature) from request headers, matched case-insensitively.

    Raises WireError(UNAUTHORIZED) naming the headers that are absent or empty.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    names = (wire.HEADER_KEY, wire.HEADER_TS, wire.HEADER_NONCE, wire.HEADER_SIGNATURE)
    values = tuple(lowered.get(name.lower(), "") for name in names)
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise WireError(
            ErrorCode.UNAUTHORIZED,
            f"expected the signing headers {', '.join(names)}, found {', '.join(missing)} "
            "missing (see exchange/wire.py for how to sign)",
        )
    key, ts, nonce, signature = values
    return key, ts, nonce, signature
