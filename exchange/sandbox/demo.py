"""The sandbox's demo keys, served to the page on loopback so its order ticket can sign.

Only `gx sandbox` adds this route; a production gateway never serves a secret. Both ends must
be loopback: the peer's address, and the Host the browser asked for. A page on another site can
point its own DNS name at 127.0.0.1 (DNS rebinding) and read same-origin from the sandbox: its
requests then come from loopback but name that site's host, so they are refused.
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
        host = _hostname(request.headers.get("host", ""))
        if host not in _LOOPBACK:
            raise WireError(
                ErrorCode.FORBIDDEN,
                f"the demo keys are served to a loopback Host only, found {host!r}",
            )
        return keys

    return demo_keys


def _hostname(host: str) -> str:
    """The name of a Host header without its port ("[::1]:8080" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
