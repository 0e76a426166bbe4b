"""REST transport: build, sign and send `/api/v1` requests; map error answers; retry safely.

Signing covers exactly what goes on the wire: the body is encoded once and those bytes are both
signed and sent, and the signed path is taken from the built request (path plus query string).
Each attempt is signed afresh (new timestamp and nonce). Only idempotent calls are retried: reads,
and order placement, which carries a `client_order_id` the gateway deduplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import msgspec

from exchange.client.errors import (
    CLIENT_TIMEOUT_CODE,
    AuthError,
    GatewayError,
    NetworkError,
    error_from_answer,
)
from exchange.client.models import ModelError
from exchange.client.signing import Credentials, signed_headers

__all__ = [
    "RestTransport",
    "API_PREFIX",
    "RETRIES_MAX",
    "RETRY_BACKOFF_S",
    "RETRY_DELAY_S_MAX",
    "segment",
]

log = logging.getLogger("gx.client")

API_PREFIX = "/api/v1"
RETRIES_MAX = 2  # retries after the first attempt of an idempotent call
RETRY_BACKOFF_S = 0.2  # first retry delay; doubles per retry
RETRY_DELAY_S_MAX = 5.0  # no retry waits longer, whatever the gateway asks
ERROR_TEXT_CHARS_MAX = 200  # of a non-JSON error body quoted in the exception

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def segment(value: str | int) -> str:
    """Quote one path segment (a symbol, an id) so it cannot change the path."""
    return quote(str(value), safe="")


def _retry_after_ms(response: httpx.Response) -> int:
    header = response.headers.get("Retry-After")
    try:
        return int(float(header) * 1000) if header else 0
    except ValueError:
        return 0  # an HTTP date: the error body's retry_after_ms is the wire's way


def _error(response: httpx.Response) -> GatewayError:
    try:
        body = _decoder.decode(response.content)
    except msgspec.DecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    text = response.text[:ERROR_TEXT_CHARS_MAX] if error is None else ""
    return error_from_answer(
        response.status_code, error, retry_after_ms=_retry_after_ms(response), fallback_msg=text
    )


class RestTransport:
    """Send REST requests to one gateway, signing private ones with the configured key."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None,
        *,
        timeout_s: float,
        retries_max: int = RETRIES_MAX,
        retry_backoff_s: float = RETRY_BACKOFF_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retries_max < 0:
            raise ValueError(f"retries_max: expected >= 0, found {retries_max}")
        self.credentials = credentials
        self.retries_max = retries_max
        self.retry_backoff_s = retry_backoff_s
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: Mapping[str, object] | None = None,
        private: bool = False,
        retry: bool = False,
    ) -> Any:
        """Send `METHOD /api/v1{path}` and return the decoded JSON answer.

        Drop None values from `query`; sign when `private`; retry network errors and 5xx answers
        up to `retries_max` times when `retry` (only for idempotent calls). Raise a
        `GatewayError` subclass for an error answer or `NetworkError` when none arrived.
        """
        if private and self.credentials is None:
            raise AuthError(
                "UNAUTHORIZED",
                f"{method} {path} needs an API key: Client(key=..., secret=...)",
                401,
            )
        url = API_PREFIX + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urlencode(params)
        content = b"" if body is None else _encoder.encode(body)
        attempts = 1 + (self.retries_max if retry else 0)
        for attempt in range(attempts):
            try:
                return await self._attempt(method, url, content, private)
            except GatewayError as error:
                if not error.retryable or error.status == 429 or attempt + 1 >= attempts:
                    raise
                delay = self._delay(attempt, error)
                log.info("retry %s %s in %.2f s after %s", method, path, delay, error.code)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _delay(self, attempt: int, error: GatewayError) -> float:
        backoff = self.retry_backoff_s * 2.0**attempt
        return min(RETRY_DELAY_S_MAX, max(backoff, error.retry_after_ms / 1000))

    def build(self, method: str, url: str, content: bytes, private: bool) -> httpx.Request:
        """Build one request, signed over the exact path-with-query and body it will send."""
        headers = {"Content-Type": "application/json"} if content else {}
        request = self._http.build_request(method, url, content=content, headers=headers)
        if private:
            assert self.credentials is not None
            signed_path = request.url.raw_path.decode("ascii")
            request.headers.update(
                signed_headers(self.credentials, method, signed_path, request.content)
            )
        return request

    async def _attempt(self, method: str, url: str, content: bytes, private: bool) -> Any:
        request = self.build(method, url, content, private)
        try:
            response = await self._http.send(request)
        except httpx.TimeoutException as error:
            raise NetworkError(
                f"{method} {url}: no answer in time ({error!r})", CLIENT_TIMEOUT_CODE
            ) from None
        except httpx.TransportError as error:
            raise NetworkError(f"{method} {url}: {error!r}") from None
        if response.status_code >= 400:
            refusal = _error(response)
            if response.status_code >= 500:
                refusal.retryable = True  # a 5xx may or may not say so; idempotent retries are safe
            raise refusal
        if not response.content:
            return {}
        try:
            return _decoder.decode(response.content)
        except msgspec.DecodeError as error:
            raise ModelError(f"{method} {url}: the answer is not JSON: {error}") from None
