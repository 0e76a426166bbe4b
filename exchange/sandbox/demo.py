"""The sandbox's demo keys, served to the page on loopback so its order ticket can sign.

Only `gx sandbox` adds this route; a production gateway never serves a secret.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.handlers import HTTPRouteHandler

from exchange.wire import ErrorCode, WireError

__all__ = ["demo_keys_route", "DEMO_PATH"]

DEMO_PATH = "/sandbox/demo.json"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def demo_keys_route(keys: dict[str, dict[str, Any]]) -> HTTPRouteHandler:
    """A GET route answering the demo keys (`{"trader": {"key", "secret", "account"}, ...}`)."""

    @get(DEMO_PATH, include_in_schema=False)
    async def demo_keys(request: Request[Any, Any, Any]) -> dict[str, Any]:
        client = request.client
        if client is None or client.host not in _LOOPBACK:
            raise WireError(ErrorCode.FORBIDDEN, "the demo keys are served on loopback only")
        return keys

    return demo_keys
