"""The client side of a WebSocket, as the benchmarks' load generators speak it over raw asyncio
protocols (a library client per connection would cost more than the gateway they measure)."""

from __future__ import annotations

import base64
import os

__all__ = ["text_frame", "upgrade_request"]


def upgrade_request(host: str) -> bytes:
    """The HTTP request that opens `/ws` on `host` (RFC 6455 4.1)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def text_frame(payload: bytes) -> bytes:
    """A client's text frame carrying `payload`, masked with the zero key."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 65_536:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload
