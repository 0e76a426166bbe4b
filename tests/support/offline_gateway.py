"""A gateway without broker or database, and WebSocket connections over it that nobody reads.

For unit tests of what a connection queues: the projections are real, fed by hand; the hub,
key store and pool are absent (a test that needs them belongs over the harness). A connection's
`send` records what it is given and never takes a frame off the queue, as a client that never
reads.
"""

from __future__ import annotations

import itertools
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from exchange.gateway.accounts import Accounts
from exchange.gateway.context import Gateway
from exchange.gateway.deliveries import Deliveries
from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.provisioning import Provisioning
from exchange.gateway.ratelimit import RateLimits
from exchange.gateway.subscriptions import Subscriptions
from exchange.gateway.ws import Connection
from exchange.wire import Prices
from schemas.catalog import load_catalog
from schemas.marketdata import BookDelta, BookSnapshot, Trade, TradePrints

__all__ = [
    "Gauge",
    "offline_gateway",
    "connection",
    "hourly_symbols",
    "trade_in",
    "book_in",
    "request",
]


class Gauge(deque):  # type: ignore[type-arg]
    """A send queue that remembers the most frames it ever held."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.most = len(self)

    def append(self, item: Any) -> None:
        super().append(item)
        self.most = max(self.most, len(self))


def offline_gateway(limits: RateLimits | None = None) -> Gateway:
    """A gateway over the packaged catalog with empty projections."""
    catalog = load_catalog()
    prices = Prices(catalog.tick_micros)
    accounts = Accounts(prices)
    feed = MarketFeed(prices)
    return Gateway(
        catalog,
        None,  # type: ignore[arg-type]  # no hub: nothing here reaches the engine
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        accounts=accounts,
        feed=feed,
        provisioning=Provisioning(),
        deliveries=Deliveries(accounts),
        subscriptions=Subscriptions(feed),
        limits=limits,
    )


def connection(gateway: Gateway, ip: str = "192.0.2.1") -> tuple[Connection, list[dict]]:
    """A connection whose queue is a `Gauge` and nobody reads; and the ASGI messages it sent."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    conn = Connection(gateway, None, send, ip)
    conn.queue = Gauge()
    return conn, sent


def hourly_symbols(count: int) -> list[str]:
    """`count` distinct hourly instrument symbols (valid names, not necessarily listed)."""
    catalog = load_catalog()
    start = datetime(2026, 12, 1, tzinfo=UTC)
    places = [(g.model, r) for g in catalog.gpus for r in catalog.regions]
    return [
        f"{gpu}.{region}.1h.{start + timedelta(hours=i // len(places)):%Y-%m-%dT%H}"
        for i, (gpu, region) in zip(range(count), itertools.cycle(places), strict=False)
    ]


_offsets = iter(range(1, 10**9))


def trade_in(feed: MarketFeed, symbol: str, pushes: int = 1) -> None:
    """Apply `pushes` TradePrints of one symbol (each buffered for resume on `trades:symbol`)."""
    for _ in range(pushes):
        offset = next(_offsets)
        trade = Trade(trade_id=offset, price_ticks=2400, lots=1, aggressor_side="buy", ts_ns=offset)
        feed.apply(TradePrints(symbol=symbol, ts_ns=offset, trades=(trade,)), 0, offset)


def book_in(feed: MarketFeed, symbol: str, deltas: int) -> None:
    """A synced, watched book of `symbol` at seq 1, then `deltas` deltas (buffered for resume)."""
    snapshot = BookSnapshot(symbol=symbol, seq=1, bids=((2000, 1),), asks=((3000, 1),))
    feed.apply(snapshot, 0, next(_offsets))
    feed.watch(("book", symbol, 10))
    for seq in range(2, deltas + 2):
        delta = BookDelta(symbol=symbol, seq=seq, prev_seq=seq - 1, asks=((3000 + seq, 1),))
        feed.apply(delta, 0, next(_offsets))


def request(method: str, request_id: int = 1, **params: Any) -> bytes:
    """One request as a client sends it."""
    return orjson.dumps({"id": request_id, "method": method, "params": params})
