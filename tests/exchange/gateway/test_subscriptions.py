"""Public streams are limited per connection and per IP, and found by channel and symbol.

Over an offline gateway (tests/support/offline_gateway.py): a subscribe past
`STREAMS_PER_CONNECTION_MAX` or `STREAMS_PER_IP_MAX` is refused whole with `TOO_MANY_STREAMS`,
streams given up free their room, `symbols` is bounded on unsubscribe as on subscribe, and a
connection's `StreamSet` finds a channel's streams of a symbol without looking at the others.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from exchange.gateway.subscriptions import STREAMS_PER_CONNECTION_MAX, STREAMS_PER_IP_MAX, StreamSet
from exchange.gateway.ws import Connection, symbols_per_subscribe_max
from exchange.wire import ERROR_STATUS, ErrorCode
from tests.support.offline_gateway import (
    book_in,
    connection,
    hourly_symbols,
    offline_gateway,
    request,
    trade_in,
)


async def _ask(conn: Connection, method: str, **params: Any) -> dict[str, Any]:
    """Handle one request; return its answer (the last answer queued)."""
    await conn._handle(request(method, **params))
    answers = [item[0] for item in conn.queue if isinstance(item, tuple)]
    return orjson.loads(answers[-1])


async def _subscribe_all(conn: Connection, symbols: list[str]) -> None:
    """Subscribe `trades` of every symbol, a subscribe's worth at a time."""
    for start in range(0, len(symbols), symbols_per_subscribe_max):
        batch = symbols[start : start + symbols_per_subscribe_max]
        answer = await _ask(conn, "subscribe", channel="trades", symbols=batch)
        assert answer["status"] == 200, answer
        conn.queue.clear()  # as if read: this test is about streams, not the send queue


def test_the_stream_past_the_connection_limit_is_refused_and_nothing_of_its_request_is_held():
    async def scenario() -> None:
        gateway = offline_gateway()
        symbols = hourly_symbols(STREAMS_PER_CONNECTION_MAX + 100)
        for symbol in symbols:
            trade_in(gateway.feed, symbol)
        conn, _ = connection(gateway)
        await _subscribe_all(conn, symbols[:STREAMS_PER_CONNECTION_MAX])
        assert len(conn.public) == STREAMS_PER_CONNECTION_MAX
        # one more stream, with 99 already held: refused whole, and said so by a stable code
        extra = symbols[STREAMS_PER_CONNECTION_MAX - 99 : STREAMS_PER_CONNECTION_MAX + 1]
        answer = await _ask(conn, "subscribe", channel="trades", symbols=extra)
        assert answer["status"] == ERROR_STATUS[ErrorCode.TOO_MANY_STREAMS] == 409
        assert answer["error"]["code"] == "TOO_MANY_STREAMS"
        assert answer["error"]["retryable"] is False
        assert f"at most {STREAMS_PER_CONNECTION_MAX}" in answer["error"]["msg"]
        assert len(conn.public) == STREAMS_PER_CONNECTION_MAX
        assert ("trades", symbols[STREAMS_PER_CONNECTION_MAX]) not in gateway.subscriptions.public
        # streams held already are no new streams: subscribing them again is fine
        answer = await _ask(conn, "subscribe", channel="trades", symbols=extra[:-1])
        assert answer["status"] == 200
        # giving one up makes room for one
        answer = await _ask(conn, "unsubscribe", channel="trades", symbols=symbols[:1])
        assert answer["status"] == 200 and len(conn.public) == STREAMS_PER_CONNECTION_MAX - 1
        answer = await _ask(conn, "subscribe", channel="trades", symbols=extra[-1:])
        assert answer["status"] == 200 and len(conn.public) == STREAMS_PER_CONNECTION_MAX

    asyncio.run(scenario())


def test_the_connections_of_one_ip_share_one_stream_limit():
    async def scenario() -> None:
        gateway = offline_gateway()
        per_connection = STREAMS_PER_CONNECTION_MAX
        symbols = hourly_symbols(per_connection)
        for symbol in symbols:
            trade_in(gateway.feed, symbol)
        full = STREAMS_PER_IP_MAX // per_connection
        conns = [connection(gateway, ip="192.0.2.1")[0] for _ in range(full + 1)]
        for conn in conns[:full]:
            await _subscribe_all(conn, symbols)
        subscriptions = gateway.subscriptions
        assert subscriptions.ip_streams("192.0.2.1") == STREAMS_PER_IP_MAX
        answer = await _ask(conns[full], "subscribe", channel="trades", symbols=symbols[:1])
        assert answer["error"]["code"] == "TOO_MANY_STREAMS"
        assert "streams per IP" in answer["error"]["msg"] and not conns[full].public
        # another address is not held back
        elsewhere, _ = connection(gateway, ip="198.51.100.7")
        assert (await _ask(elsewhere, "subscribe", channel="trades", symbols=symbols[:1]))[
            "status"
        ] == 200
        # a connection that goes frees its streams for the others
        conns[0]._detach()
        assert subscriptions.ip_streams("192.0.2.1") == STREAMS_PER_IP_MAX - per_connection
        answer = await _ask(conns[full], "subscribe", channel="trades", symbols=symbols[:1])
        assert answer["status"] == 200
        for conn in [*conns, elsewhere]:
            conn._detach()
        assert subscriptions.ip_streams("192.0.2.1") == 0 and not subscriptions.public

    asyncio.run(scenario())


def test_unsubscribe_names_at_most_as_many_symbols_as_a_subscribe():
    async def scenario() -> None:
        gateway = offline_gateway()
        conn, _ = connection(gateway)
        too_many = hourly_symbols(symbols_per_subscribe_max + 1)
        answer = await _ask(conn, "unsubscribe", channel="trades", symbols=too_many)
        assert (answer["status"], answer["error"]["code"]) == (400, "BAD_REQUEST")
        assert f"1-{symbols_per_subscribe_max} symbols" in answer["error"]["msg"]
        answer = await _ask(conn, "unsubscribe", channel="trades", symbols=[])
        assert answer["error"]["code"] == "BAD_REQUEST"

    asyncio.run(scenario())


def test_unsubscribe_ends_every_depth_of_the_named_symbols_and_nothing_else():
    async def scenario() -> None:
        gateway = offline_gateway()
        one, two = hourly_symbols(2)
        for symbol in (one, two):
            book_in(gateway.feed, symbol, deltas=0)
        conn, _ = connection(gateway)
        for depth in (1, 10, 25):
            answer = await _ask(conn, "subscribe", channel="book", symbols=[one, two], depth=depth)
            assert answer["status"] == 200, answer
        await _ask(conn, "subscribe", channel="trades", symbols=[one])
        await _ask(conn, "unsubscribe", channel="book", symbols=[one])
        assert sorted(conn.public) == sorted(
            [("book", two, 1), ("book", two, 10), ("book", two, 25), ("trades", one)]
        )
        assert set(gateway.subscriptions.public) == set(conn.public)

    asyncio.run(scenario())


def test_a_stream_set_finds_a_channels_streams_by_symbol():
    streams = StreamSet()
    keys = [("book", "A", 1), ("book", "A", 10), ("book", "B", 10), ("candles", "A", "1m")]
    for key in [*keys, ("book", "A", 1)]:
        streams.add(key)
    assert len(streams) == 4 and sorted(streams, key=str) == sorted(keys, key=str)
    assert ("book", "A", 10) in streams and ("book", "A", 25) not in streams
    assert ("trades", "A") not in streams and "book" not in streams
    assert sorted(streams.of("book", ["A", "C"]), key=str) == [("book", "A", 1), ("book", "A", 10)]
    assert streams.of("trades", ["A"]) == []
    streams.discard(("book", "A", 1))
    streams.discard(("book", "A", 1))  # not held any more: nothing changes
    streams.discard(("book", "A", 10))
    assert len(streams) == 2 and streams.of("book", ["A"]) == []
    assert sorted(streams, key=str) == [("book", "B", 10), ("candles", "A", "1m")]
