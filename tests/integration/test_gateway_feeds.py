"""The WebSocket feeds end to end: every channel, sequence numbers, checksums, resume, slow clients."""

from __future__ import annotations

import asyncio
import socket as net
import time
from decimal import Decimal

import orjson
import pytest
import websockets

from exchange.wire import book_checksum
from schemas import commands as c

from .conftest import run
from .gateway_harness import PROVIDER, TRADER, Socket, running_exchange, socket

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


def test_every_channel_pushes_with_sequence_numbers_and_checksums(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
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
            assert (
                ex.gateway.hub.accounts.balances(TRADER)["available"] == balances[-1]["available"]
            )
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


def test_a_slow_client_gets_resync_required_never_a_silent_gap(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            ex.gateway.send_queue_max = 20
            raw = net.socket()
            raw.setsockopt(net.SOL_SOCKET, net.SO_RCVBUF, 2048)
            host, port = ex.url.removeprefix("http://").split(":")
            raw.connect((host, int(port)))
            # max_queue=1: the client library stops reading the socket once one message waits
            async with websockets.connect(ex.ws_url, sock=raw, max_queue=1, max_size=None) as ws:
                await ws.send(orjson.dumps({"id": 1, "method": "subscribe", "params": {
                    "channel": "book", "symbols": [ex.symbol], "depth": 100}}).decode())  # fmt: skip
                await asyncio.sleep(0.2)
                # a burst of book changes straight into the log, while the client reads nothing;
                # one order at a time, so that most land in event records of their own (market
                # data publishes one book update per record, however many commands it holds)
                for round_ in range(20):
                    for i in range(500):
                        await ex.send(c.PlaceOrder(account=PROVIDER, symbol=ex.symbol,
                                                   side="sell", lots=1,
                                                   price_ticks=3000 + round_ * 600 + i))  # fmt: skip
                    await ex.send(c.CancelAll(account=PROVIDER))
                await ex.wait_for(lambda: ex.gateway.hub.accounts.last_seq(PROVIDER, "executions") and
                                  not ex.gateway.hub.accounts.open_orders(PROVIDER), timeout_s=60)  # fmt: skip
                messages: list[dict] = []
                # read everything queued: up to the notice, then until a pause (heartbeats go on)
                give_up = time.monotonic() + 60
                while time.monotonic() < give_up:
                    resynced = any(m.get("type") == "resync_required" for m in messages)
                    try:
                        raw_message = await asyncio.wait_for(ws.recv(), 0.5 if resynced else 10)
                    except TimeoutError:
                        break
                    messages.append(orjson.loads(raw_message))
            pushes = [m for m in messages if "channel" in m]
            check_chains(pushes)
            resync = [p for p in pushes if p.get("type") == "resync_required"]
            assert len(resync) == 1 and resync[0]["symbol"] == ex.symbol, resync
            # every book push before the notice is contiguous; none follows it
            books = [p for p in pushes if p["channel"] == "book"]
            assert books[-1]["type"] == "resync_required"
            updates = books[1:-1]
            assert all(b["prev_seq"] + 1 == b["seq"] for b in updates)
            assert all(u["seq"] == prev["seq"] + 1 for prev, u in zip(books, updates, strict=False))

    run(scenario(), timeout_s=170)
