"""One error hierarchy for everything the gateway refuses, over REST and over the WebSocket.

`GatewayError` carries the wire's `code`, `msg`, HTTP `status`, `retryable` and `retry_after_ms`;
the subclass says which kind of refusal it is, so callers catch what they can handle:

    GatewayError
    |-- BadRequestError     400, 413   the request itself is malformed; fix it
    |-- AuthError           401, 403   key, signature, clock, nonce or scope
    |-- NotFoundError       404        unknown order, symbol, obligation
    |-- RejectedError       422        the engine refused (cash, band, limits); see engine_code
    |-- RateLimitError      429        wait retry_after_ms
    |-- UnavailableError    5xx        the gateway or engine is busy or down; retryable
    '-- NetworkError        -          no answer: connection lost or timed out; retryable
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "GatewayError",
    "BadRequestError",
    "AuthError",
    "NotFoundError",
    "RejectedError",
    "RateLimitError",
    "UnavailableError",
    "NetworkError",
    "error_from_answer",
    "NETWORK_CODE",
    "CLIENT_TIMEOUT_CODE",
]

NETWORK_CODE = "NETWORK"  # the connection failed or dropped before an answer arrived
CLIENT_TIMEOUT_CODE = "CLIENT_TIMEOUT"  # no answer within the client's timeout
_KNOWN_FIELDS = frozenset({"code", "msg", "retryable", "retry_after_ms"})


class GatewayError(Exception):
    """A refusal or failure of a gateway call; `extra` holds the error object's other fields."""

    def __init__(
        self,
        code: str,
        msg: str,
        status: int,
        retryable: bool = False,
        retry_after_ms: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.extra: dict[str, Any] = dict(extra or {})


class BadRequestError(GatewayError):
    """The request is malformed (a field's type, format or value); fix it before retrying."""


class AuthError(GatewayError):
    """The key, signature, timestamp, nonce or scope was refused (401 and 403)."""


class NotFoundError(GatewayError):
    """The order, symbol or obligation does not exist (or is another account's)."""


class RejectedError(GatewayError):
    """The engine refused the command; `engine_code` and `reason` say why."""

    @property
    def engine_code(self) -> int | None:
        """Return the numeric `schemas.codes.Reject` value, if the gateway sent one."""
        value = self.extra.get("engine_code")
        return value if isinstance(value, int) else None

    @property
    def reason(self) -> str:
        """Return the engine's reason text (the message when none was sent)."""
        return str(self.extra.get("reason") or self.msg)


class RateLimitError(GatewayError):
    """Too many requests for this key; wait `retry_after_ms` before the next one."""


class UnavailableError(GatewayError):
    """The gateway or engine could not answer (503, 504 TIMEOUT); safe to retry idempotent calls."""


class NetworkError(GatewayError):
    """No answer arrived: the connection failed, dropped, or the client timed out."""

    def __init__(self, msg: str, code: str = NETWORK_CODE) -> None:
        super().__init__(code, msg, status=0, retryable=True)


def _class_for(status: int) -> type[GatewayError]:
    if status in (400, 413):
        return BadRequestError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 422:
        return RejectedError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return UnavailableError
    return GatewayError


def error_from_answer(
    status: int, error: object, *, retry_after_ms: int = 0, fallback_msg: str = ""
) -> GatewayError:
    """Build the exception for an error answer: its HTTP status and its `error` object.

    `error` is the `error` object of a REST body or WebSocket answer; when it is missing or not
    an object (a proxy's HTML page, say) the code is `HTTP_<status>` and `fallback_msg` the text.
    """
    fields: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
    code = str(fields.get("code") or f"HTTP_{status}")
    msg = str(fields.get("msg") or fallback_msg or f"the gateway answered status {status}")
    retryable_field = fields.get("retryable")
    retryable = bool(retryable_field) if retryable_field is not None else status in (429, 503, 504)
    after = fields.get("retry_after_ms")
    if isinstance(after, int | float) and not isinstance(after, bool) and after > 0:
        retry_after_ms = int(after)
    extra = {k: v for k, v in fields.items() if k not in _KNOWN_FIELDS}
    return _class_for(status)(code, msg, status, retryable, retry_after_ms, extra)
