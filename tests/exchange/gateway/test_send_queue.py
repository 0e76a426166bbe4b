"""One limit on every frame a connection queues: answers, pushes, snapshots, replays, heartbeats.

Connections over an offline gateway (tests/support/offline_gateway.py) whose client never reads:
whatever it asks, the queue never holds more than `send_queue_max` frames, a replay that does not
fit comes as snapshots, pushes stop with `resync_required` before the queue is full, and a client
whose queue is full is closed with `close_code_queue_full`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import orjson

from exchange.gateway import ws
from exchange.gateway.context import SEND_QUEUE_MAX, SEND_QUEUE_RESERVE
from exchange.gateway.fanout import fan_out
from exchange.gateway.ratelimit import RateLimits
from exchange.gateway.ws import Connection
from tests.support.offline_gateway import (
    Gauge,
    book_in,
    connection,
    hourly_symbols,
    offline_gateway,
    request,
    trade_in,
)

SYM_0, SYM_1 = hourly_symbols(2)


class _NeverReads:
    """The ASGI side of a client that sends its requests and never reads a frame."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = deque(requests)
        self.closes: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.requests:
            await asyncio.sleep(0)  # the loop runs between messages, as with a socket
            return {"type": "websocket.receive", "bytes": self.requests.popleft()}
        await self.gone.wait()
        return {"type": "websocket.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            self.closes.append(message)
            self.gone.set()
            return
        await asyncio.Event().wait()  # the first frame never goes: the writer waits for good


def _frames(conn: Connection) -> list[dict[str, Any]]:
    """What waits in the queue, decoded (a push is kept without its `{`)."""
    return [
        orjson.loads(b"{" + item if isinstance(item, bytes) else item[0]) for item in conn.queue
    ]


UNLIMITED = RateLimits(
    ws_messages_per_conn_per_s=10**6, ws_messages_per_conn_burst=10**6,
    ws_messages_per_ip_per_s=10**6, ws_messages_per_ip_burst=10**6,
)  # fmt: skip


def test_refusals_of_requests_not_json_count_and_a_client_over_the_cap_is_closed():
    async def scenario() -> None:
        gateway = offline_gateway(UNLIMITED)  # every request is answered BAD_REQUEST
        client = _NeverReads([b"not json"] * (SEND_QUEUE_MAX + 1_000))
        conn = Connection(gateway, client.receive, client.send, "192.0.2.1")
        conn.queue = queue = Gauge()
        await asyncio.wait_for(conn.serve(), timeout=10)
        assert queue.most <= SEND_QUEUE_MAX  # (it was 3,000 minus the frames the writer took)
        assert conn.closed and not conn.queue
        [close] = client.closes
        assert close["code"] == ws.close_code_queue_full == 1013
        assert close["reason"] == f"send queue full: {SEND_QUEUE_MAX} frames waited"

    asyncio.run(scenario())


def test_a_client_flooding_past_its_refusals_is_closed_before_its_queue_fills():
    limits = RateLimits(ws_policy_close_delay_ms=0)

    async def scenario() -> None:
        gateway = offline_gateway(limits)
        client = _NeverReads([b"not json"] * (SEND_QUEUE_MAX + 1_000))
        conn = Connection(gateway, client.receive, client.send, "192.0.2.1")
        conn.queue = queue = Gauge()
        started = time.monotonic()
        await asyncio.wait_for(conn.serve(), timeout=30)
        elapsed_s = time.monotonic() - started
        # the burst's BAD_REQUEST answers, then a RATE_LIMITED one and (after its retry_after)
        # an answered one in turn, until the IP's refusals ran out; never the queue's cap
        refusals = limits.ws_refusals_per_account_burst + limits.ws_refusals_per_account_per_s * elapsed_s  # fmt: skip
        assert queue.most <= limits.ws_messages_per_conn_burst + 2 * refusals + 2 < SEND_QUEUE_MAX
        [close] = client.closes
        assert (close["code"], close["reason"]) == (1008, "rate limits exceeded repeatedly")

    asyncio.run(scenario())


def test_a_resume_that_does_not_fit_the_send_queue_comes_as_snapshots():
    async def scenario() -> None:
        gateway = offline_gateway()
        symbols = hourly_symbols(100)
        for symbol in symbols:
            book_in(gateway.feed, symbol, deltas=25)  # 2,500 missed updates in all
        flood, _ = connection(gateway)
        await flood._handle(
            request("subscribe", channel="book", symbols=symbols, depth=10, resume_from_seq=1)
        )
        assert flood.queue.most <= SEND_QUEUE_MAX  # (2,501 frames, one subscribe)
        answer, *pushes = _frames(flood)
        assert answer["status"] == 200 and answer["result"]["resumed"] is False
        assert [(p["type"], p["symbol"], p["seq"]) for p in pushes] == [
            ("snapshot", symbol, 26) for symbol in symbols
        ]
        # what fits is replayed: ten books' 250 updates
        fits, _ = connection(gateway)
        await fits._handle(
            request("subscribe", channel="book", symbols=symbols[:10], depth=10, resume_from_seq=1)
        )
        answer, *pushes = _frames(fits)
        assert answer["result"]["resumed"] is True
        assert len(pushes) == 250 and {p["type"] for p in pushes} == {"update"}

    asyncio.run(scenario())


def test_a_resume_of_trades_that_does_not_fit_replays_nothing_and_says_so():
    async def scenario() -> None:
        gateway = offline_gateway()
        symbols = hourly_symbols(100)
        for symbol in symbols:
            trade_in(gateway.feed, symbol, pushes=25)
        conn, _ = connection(gateway)
        await conn._handle(
            request("subscribe", channel="trades", symbols=symbols, resume_from_seq=0)
        )
        assert conn.queue.most <= SEND_QUEUE_MAX
        [answer] = _frames(conn)  # trades have no snapshot: the client asks GET /trades
        assert answer["result"] == {"channel": "trades", "symbols": symbols, "resumed": False}

    asyncio.run(scenario())


def test_pushes_stop_short_of_the_cap_and_the_reserve_holds_the_notice_and_answers():
    async def scenario() -> None:
        gateway = offline_gateway()
        trade_in(gateway.feed, SYM_0)
        conn, _ = connection(gateway)
        await conn._handle(request("subscribe", channel="trades", symbols=[SYM_0]))
        key = ("trades", SYM_0)
        subscribers = gateway.subscriptions.public[key]
        for i in range(SEND_QUEUE_MAX + 100):
            fan_out(
                key, orjson.dumps({"channel": "trades", "type": "update", "seq": i}), subscribers
            )
        frames = _frames(conn)
        pushes_max = SEND_QUEUE_MAX - SEND_QUEUE_RESERVE
        assert len(frames) == pushes_max + 1 and frames[-1]["type"] == "resync_required"
        assert key not in gateway.subscriptions.public and not conn.public
        await conn._handle(request("ping", request_id=7))
        assert _frames(conn)[-1]["id"] == 7 and not conn.closed
        # a subscribe whose snapshot does not fit is refused; it may retry once it has read
        book_in(gateway.feed, SYM_1, deltas=0)
        book = request("subscribe", request_id=8, channel="book", symbols=[SYM_1], depth=10)
        await conn._handle(book)
        refusal = _frames(conn)[-1]
        assert (refusal["id"], refusal["status"], refusal["error"]["code"]) == (
            8, 429, "RATE_LIMITED",
        )  # fmt: skip
        assert refusal["error"]["retry_after_ms"] == ws.send_queue_retry_after_ms
        assert ("book", SYM_1, 10) not in conn.public
        assert conn.queue.most <= SEND_QUEUE_MAX

    asyncio.run(scenario())
