"""The gateway's wire format, shared by the server (`exchange/gateway/`) and the SDK (`exchange/client/`).

Numbers on the wire
- Prices are decimal strings at the tick's precision (tick 0.001 USD per GPU-hour: `"2.400"`);
  a price that is not a whole number of ticks is refused with `PRICE_OFF_TICK`.
- Quantities are decimal strings of whole lots (`"5"`; one lot = one GPU for the instrument's
  whole delivery window).
- Money is a decimal string of USD at micro-dollar precision (`"12.345678"`).
- Timestamps are `ts_ns`: strings of integer UNIX nanoseconds. Ids (order, trade, obligation)
  are JSON integers.
- Parsing is strict (`schemas.units.decimal_to_int`, `int_from_str`): a decimal is ASCII
  digits with at most one "." between digits, at most 40 characters, no sign; an integer string
  is ASCII digits without leading zeros. No exponent, "+", spaces, "_" or other scripts' digits. Every value,
  JSON integers included, is at most `INT_MAX` (2**63 - 2) in size. A quantity refused for any
  reason is `QTY_INVALID`; anything else `BAD_REQUEST` (a price off tick `PRICE_OFF_TICK`).

REST (`/api/v1`) signing: the headers `GX-KEY`, `GX-TS` (milliseconds), `GX-NONCE` (any string of
8-64 characters from [A-Za-z0-9_-], never reused by a key), `GX-SIGN-VERSION: 2` and
`GX-SIGNATURE`, the lowercase hex HMAC-SHA256, keyed by the key's secret, of the bytes
(`signing_payload`)

    "gx-v2" LF key LF ts_ms LF nonce LF METHOD LF path LF body

where LF is one byte 0x0A, key the `GX-KEY` value, ts_ms the `GX-TS` value as sent, METHOD the
upper-case HTTP method, path the request target with its query string
(`/api/v1/orders?status=open`), all UTF-8, and body the raw request body bytes (empty for
GET/DELETE), after the sixth LF and not followed by anything. No field but the body may hold a LF
(the key, ts and nonce cannot; a method or path with one is refused), so the string splits back
into its fields one way only: no characters can move from one field to the next. Accepted within
+-5 s of the server's clock. The WebSocket logs on with `session.logon` params `key`, `ts_ms`,
`nonce`, `signature` and `"sig_version": 2`, signed the same way over method `GET`, path `/ws`
and an empty body.

Version 1 (no `GX-SIGN-VERSION` header, or `"sig_version"` absent; `signing_payload_v1`) signs
`ts_ms + nonce + METHOD + path + body` with no delimiters and no key. The gateway accepts it
until `auth.SIGN_V1_ACCEPTED_UNTIL_MS` (2027-04-01T00:00:00Z) and refuses it after.

WebSocket `/ws`: one JSON object per text frame.
- Request  `{"id": 1, "method": "subscribe", "params": {...}}`
- Answer   `{"id": 1, "status": 200, "result": {...}}`, or
           `{"id": 1, "status": 4xx, "error": {"code": "...", "msg": "...", "retryable": false}}`
           (429 adds `"retry_after_ms"`).
- Every push has `"channel"` and `"conn_seq"` (+1 per push on this connection, from 1).
- `book`: `{"channel": "book", "type": "snapshot", "symbol", "depth", "seq", "bids", "asks",
  "checksum", "ts_ns"}` first, then `"type": "update"` with `seq` = `prev_seq` + 1. Levels are
  `[price, qty]`, bids best (highest) first, asks best (lowest) first; in an update a level's qty
  is absolute and `"0"` removes it, and a level pushed out of the subscribed depth is removed
  explicitly. `checksum` is the CRC-32 of the top 10 levels after the message, asks then bids,
  written `price:qty` as sent, joined by `,`, the two sides by `|`
  (`streams.marketdata.state.book_checksum`).
- `trades`, `ticker`, `candles`, `index`: pushes with `seq` and `prev_seq` (the previous push of
  the same channel and symbol); `seq` is the position of the source record in `gx.marketdata`, so
  it rises but is not contiguous.
- `executions`, `balances`, `positions`, `deliveries` (after logon): a `"type": "snapshot"` on
  subscribe, then pushes (`deliveries`: of their own `type`s) with `account_seq` (the engine sequence of the event) and
  `prev_account_seq` (that of the previous push of the channel for the account).
- `heartbeat` every second: `{"channel": "heartbeat", "conn_seq", "ts_ns", "seqs": {...}}` with the
  last seq of each subscription, keyed `book:SYM:DEPTH`, `trades:SYM`, `executions`, ...
- `resync_required`: `{"channel": C, "type": "resync_required", "symbol": S, "reason": "..."}`;
  the subscription has stopped; subscribe again for a fresh snapshot.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

import msgspec

from schemas.codes import Reject
from schemas.units import INT_MAX, OffStepError, UnitError, decimal_to_int, int_to_decimal
from schemas.units import micros_to_usd as money_to_str  # money on the wire: USD strings

__all__ = [
    "ErrorCode",
    "ERROR_STATUS",
    "RETRYABLE",
    "WireError",
    "reject_name",
    "signature",
    "signature_v1",
    "signing_payload",
    "signing_payload_v1",
    "SIGN_VERSION",
    "SIGN_V2_TAG",
    "HEADER_SIGN_VERSION",
    "HEADER_KEY",
    "HEADER_TS",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "WS_LOGON_METHOD",
    "WS_LOGON_PATH",
    "Prices",
    "COUNT_MAX",
    "ID_MAX",
    "INT64_MAX",
    "NS_PATTERN",
    "QTY_PATTERN",
    "int_pattern",
    "positive_decimal_pattern",
    "ID_PATTERN",
    "qty_to_str",
    "qty_from_str",
    "int_from_str",
    "WireInt",
    "money_to_str",
    "ns_to_str",
    "with_conn_seq",
]

HEADER_KEY = "GX-KEY"
HEADER_TS = "GX-TS"
HEADER_NONCE = "GX-NONCE"
HEADER_SIGNATURE = "GX-SIGNATURE"
HEADER_SIGN_VERSION = "GX-SIGN-VERSION"
SIGN_VERSION = 2  # what clients sign with (the header's value, the logon's `sig_version`)
SIGN_V2_TAG = "gx-v2"  # the first line of a version 2 signed string
WS_LOGON_METHOD = "GET"
WS_LOGON_PATH = "/ws"


INT64_MAX = 2**63 - 1  # ids, nanoseconds and counts are int64 in the engine
PRICE_DIGITS_MAX = 9  # before the point: prices below a billion USD per GPU-hour
ID_MAX = 2**53 - 1  # order, obligation ids in paths: exact as a JSON number
COUNT_MAX = 2**31 - 1  # GPUs, GPU-hours: far above any catalog, and exact as a JSON number
LOTS_DIGITS_MAX = 9  # the engine refuses more than the catalog's lots_max (LOTS_ABOVE_MAX)


def int_pattern(max_value: int, *, least: int = 0) -> str:
    """The pattern of a decimal integer least..max_value (least 0 or 1) without leading zeros
    (exactly those)."""
    if max_value < least or least not in (0, 1):
        raise ValueError(
            f"expected 0 <= least <= 1 and least <= max_value, found {least}, {max_value}"
        )
    top = str(max_value)
    branches = ["0"] if least == 0 else ["[1-9]"]
    if len(top) > 1:
        branches.append(f"[1-9][0-9]{{0,{len(top) - 2}}}")
    # Numbers as long as max_value: its first i digits, then a smaller one, then any digits.
    for i, digit in enumerate(top):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(top) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            branches.append(f"{top[:i]}[{low}-{int(digit) - 1}]{tail}")
    if max_value > 0:
        branches.append(top)
    return "^(" + "|".join(dict.fromkeys(branches)) + ")$"


def positive_decimal_pattern(decimals: int, int_digits: int) -> str:
    """The pattern of a decimal > 0 with at most `decimals` places and no leading zeros."""
    whole = f"[1-9][0-9]{{0,{int_digits - 1}}}" + (
        f"(\\.[0-9]{{1,{decimals}}})?" if decimals else ""
    )
    if not decimals:
        return f"^{whole}$"
    # Below 1: 0.0...0d with the first non-zero digit at each place.
    fractions = "|".join(
        "0" * zeros + f"[1-9][0-9]{{0,{decimals - zeros - 1}}}" for zeros in range(decimals)
    )
    return f"^({whole}|0\\.({fractions}))$"


NS_PATTERN = int_pattern(INT_MAX)  # timestamps as strings of integer nanoseconds
ID_PATTERN = int_pattern(ID_MAX, least=1)  # ids in paths
QTY_PATTERN = positive_decimal_pattern(0, LOTS_DIGITS_MAX)  # whole lots > 0
_NS_RE = re.compile(NS_PATTERN)
_PLAIN_DECIMAL_RE = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?")  # off tick, or on it: ask Decimal
_QTY_RE = re.compile(QTY_PATTERN)


class ErrorCode(StrEnum):
    """Stable error codes of the gateway; engine refusals use `schemas.codes.Reject` names."""

    BAD_REQUEST = "BAD_REQUEST"  # malformed JSON, wrong field types, missing fields
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    PRICE_OFF_TICK = "PRICE_OFF_TICK"
    QTY_INVALID = "QTY_INVALID"
    UNAUTHORIZED = "UNAUTHORIZED"  # no key, unknown or revoked key
    BAD_SIGNATURE = "BAD_SIGNATURE"
    TIMESTAMP_EXPIRED = "TIMESTAMP_EXPIRED"
    NONCE_REUSED = "NONCE_REUSED"
    NOT_LOGGED_ON = "NOT_LOGGED_ON"
    FORBIDDEN = "FORBIDDEN"  # the key lacks the scope the method needs
    UNKNOWN_ORDER = "UNKNOWN_ORDER"  # also another account's order: its existence is not told
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"  # the engine did not answer in time; ask order.status
    UNAVAILABLE = "UNAVAILABLE"
    REJECTED = "REJECTED"  # the engine refused; `engine_code` and `reason` say why
    BAD_SSH_KEY = "BAD_SSH_KEY"  # not an accepted OpenSSH public key (exchange/gateway/ssh_keys.py)
    SSH_KEYS_FULL = "SSH_KEYS_FULL"  # the account has SSH_KEYS_PER_ACCOUNT_MAX keys
    KEYS_FULL = "KEYS_FULL"  # the account has KEYS_PER_ACCOUNT_MAX active API keys
    BAD_ACCESS = "BAD_ACCESS"  # provision.confirm access unfit (schemas.provisioning.access_error)
    UNKNOWN_DELIVERY = "UNKNOWN_DELIVERY"  # not a delivery of which the caller is the holder
    INTERNAL = "INTERNAL"  # the gateway failed on this request (a bug, logged); ask before retrying
    # a subscribe past the public streams a connection or an IP may hold (gateway/subscriptions.py)
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"


ERROR_STATUS: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_METHOD: 400,
    ErrorCode.UNKNOWN_CHANNEL: 400,
    ErrorCode.UNKNOWN_SYMBOL: 404,
    ErrorCode.PRICE_OFF_TICK: 400,
    ErrorCode.QTY_INVALID: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.BAD_SIGNATURE: 401,
    ErrorCode.TIMESTAMP_EXPIRED: 401,
    ErrorCode.NONCE_REUSED: 401,
    ErrorCode.NOT_LOGGED_ON: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UNKNOWN_ORDER: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.REJECTED: 422,
    ErrorCode.BAD_SSH_KEY: 422,  # fits the document's line grammar, but does not load as a key
    ErrorCode.SSH_KEYS_FULL: 409,
    ErrorCode.KEYS_FULL: 409,
    ErrorCode.BAD_ACCESS: 400,
    ErrorCode.UNKNOWN_DELIVERY: 404,
    ErrorCode.INTERNAL: 500,
    ErrorCode.TOO_MANY_STREAMS: 409,
}

RETRYABLE = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE})

_REJECT_NAMES = {int(code): code.name for code in Reject}


def reject_name(code: int) -> str:
    """Name an engine refusal on the wire: its `schemas.codes.Reject` name, else the number.

    Reject codes travel through the gateway as the engine's numbers; this is the one place that
    names them, as an answer or a push is encoded. A code newer than this gateway keeps its number.
    """
    return _REJECT_NAMES.get(code) or str(code)


class WireError(ValueError):
    """A request the gateway refuses: a stable `code`, a message naming the field, and a status."""

    def __init__(self, code: str, msg: str, *, retry_after_ms: int = 0, **extra: object) -> None:
        super().__init__(msg)
        self.code = str(code)
        self.msg = msg
        self.status = ERROR_STATUS.get(self.code, 422)
        self.retryable = self.code in RETRYABLE
        self.retry_after_ms = retry_after_ms
        self.extra = extra

    @classmethod
    def rejected(cls, code: int, reason: str, **extra: object) -> WireError:
        """The engine's refusal `code` (a `schemas.codes.Reject` value) as an answer (422)."""
        error = cls(reject_name(code), reason, engine_code=code, reason=reason)
        error.extra.update(extra)
        return error

    @classmethod
    def internal(cls) -> WireError:
        """The answer to a request the gateway failed on (a bug, logged): INTERNAL (500)."""
        return cls(
            ErrorCode.INTERNAL,
            "the gateway failed on this request (it is logged); its effect is unknown: check "
            "the order or account state (order.status, GET /orders) before retrying",
        )

    def body(self) -> dict[str, object]:
        """The `error` object of an answer."""
        error: dict[str, object] = {"code": self.code, "msg": self.msg, "retryable": self.retryable}
        if self.retry_after_ms:
            error["retry_after_ms"] = self.retry_after_ms
        error.update(self.extra)
        return error


def signing_payload(
    key_id: str, ts_ms: int | str, nonce: str, method: str, path: str, body: bytes
) -> bytes:
    """The bytes a version 2 signature covers: "gx-v2", key, ts_ms, nonce, METHOD and path, each
    followed by LF, then the body.

    Raises ValueError when a field before the body holds a LF (it would make the string
    ambiguous).
    """
    fields = (
        ("key", key_id),
        ("ts_ms", str(ts_ms)),
        ("nonce", nonce),
        ("method", method.upper()),
        ("path", path),
    )
    for name, value in fields:
        if "\n" in value:
            raise ValueError(
                f"{name}: expected no line feed in a signed field, found {value!r:.80}"
            )
    head = "\n".join((SIGN_V2_TAG, *(value for _, value in fields))) + "\n"
    return head.encode() + body


def signing_payload_v1(ts_ms: int | str, nonce: str, method: str, path: str, body: bytes) -> bytes:
    """The bytes a version 1 signature covers: ts_ms + nonce + METHOD + path + body, undelimited.

    Accepted by the gateway only until auth.SIGN_V1_ACCEPTED_UNTIL_MS; sign with `signature`.
    """
    return f"{ts_ms}{nonce}{method.upper()}{path}".encode() + body


def signature(
    secret: str, key_id: str, ts_ms: int | str, nonce: str, method: str, path: str, body: bytes
) -> str:
    """Sign a request (version 2): lowercase hex HMAC-SHA256, keyed by the API secret, of
    `signing_payload`. Send it with `GX-SIGN-VERSION: 2` (`"sig_version": 2` on logon)."""
    payload = signing_payload(key_id, ts_ms, nonce, method, path, body)
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signature_v1(
    secret: str, ts_ms: int | str, nonce: str, method: str, path: str, body: bytes = b""
) -> str:
    """Sign a request the version 1 way (`signing_payload_v1`), during the transition only."""
    payload = signing_payload_v1(ts_ms, nonce, method, path, body)
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


class Prices:
    """Convert prices between integer ticks and decimal strings for one tick size."""

    def __init__(self, tick_micros: int) -> None:
        if tick_micros <= 0:
            raise ValueError(f"tick_micros: expected > 0, found {tick_micros}")
        self.tick = Decimal(tick_micros) / Decimal(1_000_000)
        self.decimals = max(0, -self.tick.normalize().as_tuple().exponent)  # type: ignore[operator]
        # Exactly the prices on tick when the tick is a power of ten (0.001); a superset else.
        self.pattern = positive_decimal_pattern(self.decimals, PRICE_DIGITS_MAX)
        self._re = re.compile(self.pattern)

    def to_str(self, ticks: int) -> str:
        """Format integer ticks as a price string at the tick's precision."""
        return int_to_decimal(ticks, self.tick)

    def from_str(self, text: object, field: str = "price") -> int:
        """Parse a price string into ticks; refuse non-strings, non-numbers and off-tick values."""
        if not isinstance(text, str):
            raise WireError(
                ErrorCode.BAD_REQUEST, f"{field}: expected a decimal string, found {text!r:.40}"
            )
        # Only plain decimals reach Decimal: "1e999999999" would build a huge integer.
        plain = _PLAIN_DECIMAL_RE.fullmatch(text) is not None
        try:
            ticks = decimal_to_int(text, self.tick, field) if plain else 0
        except OffStepError as error:
            raise WireError(ErrorCode.PRICE_OFF_TICK, str(error)) from None
        except UnitError as error:
            raise WireError(ErrorCode.BAD_REQUEST, str(error)) from None
        if not plain or self._re.fullmatch(text) is None:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"{field}: expected a decimal > 0 with at most {self.decimals} decimals and "
                f"{PRICE_DIGITS_MAX} digits before the point, found {text[:40]!r}",
            )
        return ticks


def qty_to_str(lots: int) -> str:
    """Format whole lots as a quantity string."""
    return str(lots)


def qty_from_str(text: object, field: str = "qty") -> int:
    """Parse a quantity string of whole lots (> 0); refuse anything else with QTY_INVALID."""
    if not isinstance(text, str):
        raise WireError(
            ErrorCode.BAD_REQUEST, f"{field}: expected a decimal string, found {text!r:.40}"
        )
    if _QTY_RE.fullmatch(text) is None:
        raise WireError(
            ErrorCode.QTY_INVALID,
            f"{field}: expected whole lots > 0 ({LOTS_DIGITS_MAX} digits at most, no leading "
            f"zeros), found {text[:40]!r}",
        )
    return int(text)


def int_from_str(text: object, field: str) -> int:
    """Parse an integer string (a `ts_ns`, an id in a path): NS_PATTERN, so 0..INT_MAX in ASCII
    digits without leading zeros (the document's grammar); refuse anything else."""
    if not isinstance(text, str) or _NS_RE.fullmatch(text) is None:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"{field}: expected integer digits 0-{INT_MAX} without leading zeros, "
            f"found {str(text)[:40]!r}",
        )
    return int(text)


# A JSON integer of a request: Python's ints have no bound, the engine's rows are int64.
WireInt = Annotated[int, msgspec.Meta(ge=-INT_MAX, le=INT_MAX)]


def ns_to_str(ns: int) -> str:
    """Format integer nanoseconds as the wire's `ts_ns` string."""
    return str(ns)


def with_conn_seq(body: bytes, conn_seq: int) -> bytes:
    """Put `conn_seq` first into a push body encoded once for every subscriber (`{"channel"...}`)."""
    return b'{"conn_seq":' + str(conn_seq).encode() + b"," + body[1:]
