"""The WebSocket feeds end to end: every channel, sequence numbers, checksums, resume, slow clients."""

from __future__ import annotations

import asyncio
import base64
import os
import socket as net
import time
from decimal import Decimal

import orjson
import pytest

from exchange.gateway.context import SEND_QUEUE_MAX
from exchange.gateway.ratelimit import RateLimits
from exchange.gateway.ws import close_code_queue_full
from schemas import commands as c
from streams.marketdata.state import book_checksum
from tests.support.gateway_harness import (
    PROVIDER,
    TRADER,
    WEBSOCKET_IMPLS,
    Socket,
    rest,
    running_exchange,
    socket,
)
from tests.support.offline_gateway import Gauge

from .conftest import run

pytestmark = pytest.mark.timeout(180)


def apply_book(book: dict, push: dict) -> None:
    """A client's book: a snapshot replaces it, an update sets absolute levels, "0" removes."""
    if push["type"] == "snapshot":
        book["bids"] = {p: q for p, q in push["bids"]}
        book["asks"] = {p: q for p, q in push["asks"]}
    else:
        assert push["prev_seq"] == book["seq"], (push, book["seq"])
        for side in ("bids", "asks"):
            for price, qty in push[side]:
                if qty == "0":
                    book[side].pop(price, None)
                else:
                    book[side][price] = qty
    book["seq"] = push["seq"]
    asks = sorted(book["asks"].items(), key=lambda pq: Decimal(pq[0]))
    bids = sorted(book["bids"].items(), key=lambda pq: -Decimal(pq[0]))
    assert book_checksum(asks, bids) == push["checksum"], push


def check_chains(pushes: list[dict]) -> None:
    """conn_seq is +1 over every push of the connection."""
    seqs = [p["conn_seq"] for p in pushes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


async def place(ws: Socket, symbol: str, side: str, price: str, qty: str, **extra) -> dict:
    params = {"symbol": symbol, "side": side, "type": "limit", "price": price, "qty": qty, **extra}
    answer = await ws.request("order.place", params)
    assert answer["status"] == 200, answer
    return answer["result"]


@pytest.mark.parametrize("websocket_impl", WEBSOCKET_IMPLS)
def test_every_channel_pushes_with_sequence_numbers_and_checksums(broker, dsn, websocket_impl):
    async def scenario() -> None:
        async with running_exchange(broker, dsn, websocket_impl=websocket_impl) as ex:
            gpu = ex.symbol.split(".")[0]
            curve = ".".join(ex.symbol.split(".")[:3])
            async with socket(ex) as seller, socket(ex) as watcher:
                await seller.logon(ex.keys["provider"])
                await watcher.logon(ex.keys["trader"])
                subscriptions = [
                    {"channel": "book", "symbols": [ex.symbol], "depth": 10},
                    {"channel": "trades", "symbols": [ex.symbol]},
                    {"channel": "ticker", "symbols": [ex.symbol]},
                    {"channel": "candles", "symbols": [ex.symbol], "interval": "1m"},
                    {"channel": "index", "symbols": [gpu]},
                    {"channel": "curve", "symbols": [curve]},
                    {"channel": "executions"},
                    {"channel": "balances"},
                    {"channel": "positions"},
                ]
                for params in subscriptions:
                    answer = await watcher.request("subscribe", params)
                    assert answer["status"] == 200, (params, answer)
                for price, qty in (("2.500", "3"), ("2.600", "2"), ("2.700", "1")):
                    await place(seller, ex.symbol, "sell", price, qty)
                bought = await place(watcher, ex.symbol, "buy", "2.600", "4")
                assert bought["order"]["status"] == "filled"
                await watcher.wait_push(
                    lambda p: p["channel"] == "positions" and p["type"] == "update"
                )
                await watcher.wait_push(lambda p: p["channel"] == "index")
                await watcher.wait_push(lambda p: p["channel"] == "heartbeat")
                pushes = list(watcher.pushes)

                serving = {c for subs in ex.gateway.subscriptions.public.values() for c in subs}
                batched = {c.frames.batched for c in serving}
            assert batched == {websocket_impl == "websockets-sansio"}  # the path under test
            check_chains(pushes)
            book = {"seq": 0}
            for push in [p for p in pushes if p["channel"] == "book"]:
                apply_book(book, push)
            assert book["asks"] == {"2.600": "1", "2.700": "1"} and book["bids"] == {}

            trade_pushes = [p for p in pushes if p["channel"] == "trades"]
            trades = [t for p in trade_pushes for t in p["trades"]]
            assert [(t["price"], t["qty"]) for t in trades] == [("2.500", "3"), ("2.600", "1")]
            assert trade_pushes[0]["seq"] > 0
            for before, push in zip(trade_pushes, trade_pushes[1:], strict=False):
                assert push["prev_seq"] == before["seq"]
            assert trades[0]["side"] == "buy"
            ticker = [p for p in pushes if p["channel"] == "ticker"][-1]
            assert (ticker["ask"], ticker["last"], ticker["bid"]) == ("2.600", "2.600", None)
            # nothing traded since the last push: REST gives the same rolling 24 h figures
            answer = (await rest(ex, "GET", f"/api/v1/ticker/{ex.symbol}")).json()
            day_fields = ("open", "high", "low", "volume", "quote_volume", "vwap", "trades")
            assert {f: ticker[f] for f in day_fields} == {f: answer[f] for f in day_fields}
            assert (ticker["open"], ticker["high"], ticker["volume"], ticker["trades"]) == (
                "2.500", "2.600", "4", 2,
            )  # fmt: skip
            candle = [p for p in pushes if p["channel"] == "candles"][-1]
            assert (candle["open"], candle["high"], candle["close"], candle["volume"]) == (
                "2.500", "2.600", "2.600", "4",
            )  # fmt: skip
            index = [p for p in pushes if p["channel"] == "index"][-1]
            assert index["symbol"] == gpu and Decimal(index["price"]) == Decimal("2.525")
            assert [p for p in pushes if p["channel"] == "curve"]

            executions = [p for p in pushes if p["channel"] == "executions"]
            assert executions[0]["type"] == "snapshot"
            updates = executions[1:]
            assert [u["exec_type"] for u in updates] == ["new", "trade", "trade"]
            for prev, update in zip(updates, updates[1:], strict=False):
                assert update["prev_account_seq"] == prev["account_seq"]
            assert updates[-1]["order"]["status"] == "filled"
            balances = [p for p in pushes if p["channel"] == "balances"]
            assert (
                balances[0]["type"] == "snapshot" and balances[0]["available"] == "1000000.000000"
            )
            assert ex.gateway.accounts.balances(TRADER)["available"] == balances[-1]["available"]
            position = [p for p in pushes if p["channel"] == "positions"][-1]
            assert (position["symbol"], position["qty"]) == (ex.symbol, "4")
            heartbeat = [p for p in pushes if p["channel"] == "heartbeat"][-1]
            assert heartbeat["seqs"][f"book:{ex.symbol}:10"] == book["seq"]

    run(scenario(), timeout_s=170)


def test_resume_from_seq_replays_what_was_missed(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            sub = {"channel": "book", "symbols": [ex.symbol], "depth": 10}
            async with socket(ex) as seller:
                await seller.logon(ex.keys["provider"])
                async with socket(ex) as first:
                    await first.request("subscribe", sub)
                    await place(seller, ex.symbol, "sell", "2.500", "1")
                    seen = await first.wait_push(
                        lambda p: p["channel"] == "book" and p["type"] == "update"
                    )
                # while disconnected, the book moves twice
                await place(seller, ex.symbol, "sell", "2.400", "1")
                await place(seller, ex.symbol, "sell", "2.300", "1")
                async with socket(ex) as again:
                    answer = await again.request(
                        "subscribe", {**sub, "resume_from_seq": seen["seq"]}
                    )
                    assert answer["result"]["resumed"] is True
                    replayed = await again.wait_push(
                        lambda p: (
                            p["channel"] == "book" and p["asks"] and p["asks"][0][0] == "2.300"
                        )
                    )
                    books = again.channel("book")
                    assert all(p["type"] == "update" for p in books)
                    assert (
                        books[0]["prev_seq"] == seen["seq"] and replayed["seq"] == seen["seq"] + 2
                    )
                    # too old a seq falls back to a snapshot
                    answer = await again.request("subscribe", {**sub, "resume_from_seq": 10**9})
                    assert answer["result"]["resumed"] is False
                    snapshot = await again.wait_push(
                        lambda p: p["channel"] == "book" and p["type"] == "snapshot"
                    )
                    assert [lvl[0] for lvl in snapshot["asks"]] == ["2.300", "2.400", "2.500"]

    run(scenario(), timeout_s=170)


def test_private_channels_resume_what_a_dropped_socket_missed(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            async with socket(ex) as seller:
                await seller.logon(ex.keys["provider"])
                async with socket(ex) as first:
                    await first.logon(ex.keys["provider"])
                    await first.request("subscribe", {"channel": "executions"})
                    await place(seller, ex.symbol, "sell", "2.500", "1")
                    seen = await first.wait_push(
                        lambda p: p["channel"] == "executions" and p["type"] == "update"
                    )
                # while disconnected, two more orders are accepted
                await place(seller, ex.symbol, "sell", "2.400", "1")
                await place(seller, ex.symbol, "sell", "2.300", "1")
                async with socket(ex) as again:
                    await again.logon(ex.keys["provider"])
                    sub = {"channel": "executions", "resume_from_seq": seen["account_seq"]}
                    answer = await again.request("subscribe", sub)
                    assert answer["result"]["resumed"] is True
                    await again.wait_push(
                        lambda p: p["channel"] == "executions" and p["order"]["price"] == "2.300"
                    )
                    missed = again.channel("executions")
                    assert [p["order"]["price"] for p in missed] == ["2.400", "2.300"]
                    assert missed[0]["prev_account_seq"] == seen["account_seq"]
                    assert missed[1]["prev_account_seq"] == missed[0]["account_seq"]
                    # ahead of the gateway: a snapshot instead
                    sub["resume_from_seq"] = 10**12
                    answer = await again.request("subscribe", sub)
                    assert answer["result"]["resumed"] is False
                    snapshot = await again.wait_push(
                        lambda p: p["channel"] == "executions" and p["type"] == "snapshot"
                    )
                    assert len(snapshot["orders"]) == 3

    run(scenario(), timeout_s=120)


class _StalledClient:
    """A WebSocket client that reads nothing until told to: its socket fills, then the server's.

    Hand-made (RFC 6455) so that no library reads ahead into buffers of its own.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> _StalledClient:
        host, port = url.removeprefix("http://").split(":")
        raw = net.socket()
        raw.setsockopt(net.SOL_SOCKET, net.SO_RCVBUF, 2048)
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
        # a small limit: the stream stops reading the socket once 8 KiB wait unread
        reader, writer = await asyncio.open_connection(sock=raw, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, message: dict) -> None:
        self.send_text(orjson.dumps(message))

    def send_text(self, payload: bytes) -> None:
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes((0x81, 0x80 | len(payload))) + mask + masked)

    async def _frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(size)

    async def recv(self, timeout_s: float) -> dict:
        """The next text message (control frames, such as pings, are passed over)."""
        async with asyncio.timeout(timeout_s):
            while True:
                opcode, payload = await self._frame()
                if opcode == 0x1:
                    return orjson.loads(payload)

    async def read_to_close(self, timeout_s: float) -> tuple[int, int]:
        """Read every frame up to the server's close; return (text frames read, close code)."""
        texts = 0
        async with asyncio.timeout(timeout_s):
            while True:
                opcode, payload = await self._frame()
                if opcode == 0x8:
                    return texts, int.from_bytes(payload[:2], "big")
                texts += opcode == 0x1

    def close(self) -> None:
        self.writer.close()


def test_a_slow_client_gets_resync_required_never_a_silent_gap(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            # pushes stop at 20 frames; the reserve above them holds the notice and heartbeats
            ex.gateway.send_queue_pushes_max, ex.gateway.send_queue_max = 20, 1_000
            client = await _StalledClient.connect(ex.url)
            client.send({"id": 1, "method": "subscribe", "params": {
                "channel": "trades", "symbols": [ex.symbol]}})  # fmt: skip
            await asyncio.sleep(0.2)
            # A slow network path: the server's send buffer for this client stays small (the
            # kernel would otherwise grow it to megabytes on loopback and absorb any flood).
            [connection] = ex.gateway.subscriptions.public[("trades", ex.symbol)]
            transport = connection.frames._protocol.transport  # the real server socket
            transport.get_extra_info("socket").setsockopt(net.SOL_SOCKET, net.SO_SNDBUF, 8192)
            # a flood of trades straight into the log while the client reads nothing. A push
            # carries one engine step's trades, so the steps are made one by one: each group
            # of commands waits until the gateway has the one before. 120 pushes of 60 trades
            # (about 7 KB each): the sockets fill, then the queue. The provider sells one lot
            # to the trader, who sells it back: positions stay where they were.
            feed = ex.gateway.feed
            groups, per_group = 120, 60
            for group in range(1, groups + 1):
                commands: list[c.Command] = []
                for seller, buyer in [(PROVIDER, TRADER), (TRADER, PROVIDER)] * (per_group // 2):
                    commands += [
                        c.PlaceOrder(account=seller, symbol=ex.symbol, side="sell", lots=1,
                                     price_ticks=3000),
                        c.PlaceOrder(account=buyer, symbol=ex.symbol, side="buy", lots=1,
                                     price_ticks=3000, tif="ioc"),
                    ]  # fmt: skip
                await ex.send(*commands)

                def traded(count: int = group * per_group) -> bool:  # trade ids count from 1
                    newest = feed.trades(ex.symbol, 1)
                    return bool(newest) and newest[0]["trade_id"] >= count

                await ex.wait_for(traded, timeout_s=30, what=f"trade group {group}")
            trades = groups * per_group
            messages: list[dict] = []
            # read everything queued: up to the notice, then until a pause (heartbeats go on)
            give_up = time.monotonic() + 60
            while time.monotonic() < give_up:
                resynced = any(m.get("type") == "resync_required" for m in messages)
                try:
                    messages.append(await client.recv(0.5 if resynced else 10))
                except (TimeoutError, asyncio.IncompleteReadError):  # quiet, or closed
                    break
            client.close()
            pushes = [m for m in messages if "channel" in m]
            check_chains(pushes)
            resync = [p for p in pushes if p.get("type") == "resync_required"]
            assert len(resync) == 1 and resync[0]["symbol"] == ex.symbol, resync
            assert resync[0]["channel"] == "trades"
            # every trades push before the notice is contiguous; none follows it
            flood = [p for p in pushes if p["channel"] == "trades"]
            assert flood[-1]["type"] == "resync_required"
            updates = flood[:-1]
            assert all(
                u["prev_seq"] == prev["seq"] for prev, u in zip(updates, updates[1:], strict=False)
            )
            received = [t["trade_id"] for u in updates for t in u["trades"]]
            assert received == list(range(received[0], received[0] + len(received)))
            assert 0 < len(received) < trades  # the client fell behind before the end

    run(scenario(), timeout_s=170)


def test_a_provider_watching_provisioning_keeps_its_heartbeats(broker, dsn):
    """Heartbeats go on for a socket on the provisioning channel, whose requests are unnumbered
    (the heartbeat used to ask for its seq, fail, and stop, so provider agents reconnected)."""

    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex, socket(ex) as provider:
            await provider.logon(ex.keys["provider"])
            for channel in ("provisioning", "deliveries"):
                answer = await provider.request("subscribe", {"channel": channel})
                assert answer["status"] == 200, answer
            for count in range(1, 4):  # three heartbeats, a second apart
                await provider.wait_push(
                    lambda p, count=count: (
                        p["channel"] == "heartbeat" and len(provider.channel("heartbeat")) >= count
                    ),
                    timeout_s=5,
                )
            last = provider.channel("heartbeat")[-1]
            assert "deliveries" in last["seqs"] and "provisioning" not in last["seqs"]

    run(scenario(), 120)


def test_a_client_that_never_reads_is_closed_and_its_queue_stays_bounded(broker, dsn):
    # Message limits out of the way: a flood of refusals is closed (1008) before it could fill
    # the queue (tests/exchange/gateway/test_send_queue.py); answers that are not refusals do.
    limits = RateLimits(
        ws_messages_per_conn_per_s=10**6, ws_messages_per_conn_burst=10**6,
        ws_messages_per_ip_per_s=10**6, ws_messages_per_ip_burst=10**6,
    )  # fmt: skip

    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=limits) as ex:
            client = await _StalledClient.connect(ex.url)
            # no logon: a subscription only so that the test finds the gateway's connection
            client.send({"id": 1, "method": "subscribe", "params": {
                "channel": "trades", "symbols": [ex.symbol]}})  # fmt: skip
            key = ("trades", ex.symbol)
            await ex.wait_for(lambda: key in ex.gateway.subscriptions.public)
            [connection] = ex.gateway.subscriptions.public[key]
            transport = connection.frames._protocol.transport  # the real server socket
            transport.get_extra_info("socket").setsockopt(net.SOL_SOCKET, net.SO_SNDBUF, 8192)
            connection.queue = queue = Gauge(connection.queue)
            # Requests that are not JSON: each is answered, none is read.
            # The socket buffers hold some hundreds of answers, the queue the rest.
            for _ in range(3 * SEND_QUEUE_MAX):
                client.send_text(b"not json")
            await ex.wait_for(lambda: connection.closed, timeout_s=60, what="the close")
            assert queue.most <= SEND_QUEUE_MAX and not connection.queue
            # the client reads at last: what the sockets held, then the close
            texts, code = await client.read_to_close(timeout_s=30)
            assert code == close_code_queue_full == 1013
            assert 0 < texts < 3 * SEND_QUEUE_MAX
            client.close()
            await ex.wait_for(lambda: key not in ex.gateway.subscriptions.public, what="detach")
            assert ex.gateway.connections.count("127.0.0.1") == 0

    run(scenario(), timeout_s=170)
