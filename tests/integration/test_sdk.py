"""The SDK (exchange/client/) against the real gateway over real sockets.

The unit tests (tests/exchange/client/test_client.py) check the SDK against scripted transports; these run
it against the whole exchange in-process (tests/support/gateway_harness.py): REST calls,
WebSocket feeds and order entry, a reconnect through a broken network, and a provider agent
answering a provisioning request end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.client import (
    Client,
    Execution,
    NotFoundError,
    OrderBook,
    ProviderAgent,
    ProvisionRequest,
    ProvisionResult,
    RejectedError,
    Watch,
)
from schemas import commands as c
from schemas.codes import Reject
from schemas.symbols import parse_symbol
from tests.support.gateway_harness import PROVIDER, TRADER, Exchange, running_exchange
from tests.support.waiting import until

from .conftest import run

pytestmark = pytest.mark.timeout(180)

HOUR_NS = 3_600_000_000_000


def new_ssh_key(comment: str = "") -> str:
    """A fresh ed25519 public key as an OpenSSH line."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode()} {comment}".rstrip()


def client(ex: Exchange, name: str, **options: Any) -> Client:
    """An SDK client of the harness's gateway, with the named account's key."""
    keys = ex.keys[name]
    return Client(ex.url, keys.key_id, keys.secret, **options)


class Collector:
    """Drain a watch in the background into `items`."""

    def __init__(self, watch: Watch[Any]) -> None:
        self.items: list[Any] = []
        self._task = asyncio.create_task(self._drain(watch))

    async def _drain(self, watch: Watch[Any]) -> None:
        async for item in watch:
            self.items.append(item)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def levels(rows: Any) -> list[tuple[str, str]]:
    return [(str(p), str(q)) for p, q in rows]


async def fetched_book(sdk: Client, symbol: str, check: Callable[[OrderBook], Any]) -> OrderBook:
    """Fetch the book over REST until `check(book)` holds (market data trails order answers)."""

    async def fetch() -> OrderBook | None:
        book = await sdk.fetch_order_book(symbol)
        return book if check(book) else None

    return await until(fetch, what=f"the book of {symbol}")


def book_matches(ex: Exchange, sdk: Client, symbol: str, depth: int = 10) -> bool:
    """Whether the client's local book has the gateway's seq and levels."""
    local = sdk.feeds.book(symbol)
    server = ex.gateway.feed.book(symbol, depth)
    return (
        local is not None
        and server is not None
        and local.synced
        and local.seq == server["seq"]
        and local.bids() == levels(server["bids"])
        and local.asks() == levels(server["asks"])
    )


# ---------------------------------------------------------------------- REST


def test_rest_places_fills_lists_cancels_and_reports_refusals(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            symbol = ex.symbol
            async with client(ex, "provider") as seller, client(ex, "trader") as buyer:
                markets = await buyer.fetch_markets()
                market = next(m for m in markets if m.symbol == symbol)
                assert market.tick == Decimal("0.001") and market.status == "trading"
                assert market.start_ns == parse_symbol(symbol).start_ns

                sell = await seller.create_order(
                    symbol, "limit", "sell", 3, "2.500", {"client_order_id": "p-sell-1"}
                )
                assert sell.order.status == "new" and sell.order.leaves_qty == 3
                assert sell.order.price == Decimal("2.500") and not sell.duplicate
                sell_id = sell.order.order_id
                assert [o.order_id for o in await seller.fetch_open_orders(symbol)] == [sell_id]
                assert (await seller.fetch_order(sell_id)).client_order_id == "p-sell-1"
                assert (await seller.fetch_order_by_client_id("p-sell-1")).order_id == sell_id
                # market data trails the order's answer: poll the book until it shows
                book = await fetched_book(buyer, symbol, lambda b: b.asks)
                assert book.asks == [(Decimal("2.500"), Decimal(3))] and book.bids == []
                assert book.seq == ex.gateway.feed.book(symbol, 10)["seq"]

                buy = await buyer.create_order(
                    symbol, "limit", "buy", 2, "2.500", {"client_order_id": "t-buy-1"}
                )
                assert buy.order.status == "filled" and buy.order.cum_qty == 2
                assert [(f.price, f.qty, f.liquidity) for f in buy.fills] == [
                    (Decimal("2.500"), Decimal(2), "taker")
                ]
                # a retry after a lost answer: the same order, never a second one
                again = await buyer.create_order(
                    symbol, "limit", "buy", 2, "2.500", {"client_order_id": "t-buy-1"}
                )
                assert again.duplicate and again.order.order_id == buy.order.order_id
                assert len(ex.gateway.accounts.fills(TRADER)) == 1

                mine = await buyer.fetch_my_trades(symbol)
                assert [(f.order_id, f.side, f.qty) for f in mine] == [
                    (buy.order.order_id, "buy", Decimal(2))
                ]
                theirs = await seller.fetch_my_trades()
                assert [(f.order_id, f.liquidity) for f in theirs] == [(sell_id, "maker")]
                assert [(p.symbol, p.qty) for p in await buyer.fetch_positions()] == [
                    (symbol, Decimal(2))
                ]
                assert [(p.symbol, p.qty) for p in await seller.fetch_positions()] == [
                    (symbol, Decimal(-2))
                ]
                balance = await buyer.fetch_balance()
                server = ex.gateway.accounts.balances(TRADER)
                assert balance.available == Decimal(server["available"]) < Decimal(1_000_000)
                assert balance.account == TRADER

                trades = await until(lambda: buyer.fetch_trades(symbol), what="the trade")
                assert [(t.price, t.qty, t.side) for t in trades] == [
                    (Decimal("2.500"), Decimal(2), "buy")
                ]
                bars = await until(lambda: buyer.fetch_ohlcv(symbol, "1m"), what="a candle")
                assert bars[-1][1:] == [Decimal("2.500")] * 4 + [Decimal(2)]
                assert isinstance(bars[-1][0], int) and bars[-1][0] > 0
                ticker = await buyer.fetch_ticker(symbol)
                assert (ticker.last, ticker.high, ticker.vwap, ticker.trades) == (
                    Decimal("2.500"), Decimal("2.500"), Decimal("2.5"), 1
                )  # fmt: skip
                assert symbol in {t.symbol for t in await buyer.fetch_tickers()}
                fees = await buyer.fetch_trading_fees()
                assert fees.maker < fees.taker and fees.currency == "USD"

                # the ledger trails the trade; page it one entry at a time, then the statement
                async def ledger_has_the_trade() -> Any:
                    page = await buyer.fetch_ledger(limit=1000)
                    return page if any(e.reason == "trade" for e in page.entries) else None

                whole = await until(ledger_has_the_trade, what="the trade in the ledger")
                paged, cursor = [], None
                while True:
                    page = await buyer.fetch_ledger(limit=2, cursor=cursor)
                    paged += page.entries
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
                assert paged == list(whole.entries)
                statement = await buyer.fetch_statement()
                assert [e.id for e in statement] == [e.id for e in reversed(whole.entries)]
                last = {e.bucket: e.balance for e in statement}
                assert last["available"] == balance.available

                # the engine refuses: a post-only buy that would take the resting ask
                with pytest.raises(RejectedError) as refused:
                    await buyer.create_order(
                        symbol,
                        "limit",
                        "buy",
                        1,
                        "2.500",
                        {"post_only": True, "client_order_id": "t-post-1"},
                    )
                assert refused.value.code == Reject.POST_ONLY_WOULD_TAKE.name
                assert refused.value.engine_code == Reject.POST_ONLY_WOULD_TAKE
                assert refused.value.status == 422 and refused.value.reason
                rejected = await buyer.fetch_order_by_client_id("t-post-1")
                assert rejected.status == "rejected" and rejected.order_id == 0
                assert rejected.reject_code == Reject.POST_ONLY_WOULD_TAKE.name
                with pytest.raises(NotFoundError):
                    await buyer.fetch_order(10**9)

                amended = await seller.edit_order(sell_id, "2.550", 4)
                assert (amended.price, amended.leaves_qty, amended.qty) == (
                    Decimal("2.550"),
                    Decimal(4),
                    Decimal(6),
                )
                cancelled = await seller.cancel_order(sell_id)
                assert cancelled.status == "canceled" and cancelled.cum_qty == 2
                for price in ("2.600", "2.700"):
                    await seller.create_order(symbol, "limit", "sell", 1, price)
                assert len(await seller.fetch_open_orders()) == 2
                assert await seller.cancel_all_orders(symbol) == 2
                assert await seller.fetch_open_orders() == []
                assert await seller.cancel_all_orders() == 0
                closed = await seller.fetch_closed_orders(symbol)
                assert [o.status for o in closed] == ["canceled"] * 3
                empty = await fetched_book(buyer, symbol, lambda b: not b.asks)
                assert empty.bids == [] and empty.seq > book.seq

                # a routed buy: IOC children, cheapest GPU-hours first
                key = parse_symbol(symbol)
                await seller.create_order(symbol, "limit", "sell", 3, "2.300")
                await ex.wait_for(lambda: ex.gateway.feed.ask_levels(symbol), what="the ask")
                routed = await buyer.route_order(
                    key.gpu,
                    2 * key.hours,
                    key.start_ns,
                    key.start_ns + key.hours * HOUR_NS,
                    "2.400",
                    regions=[key.region],
                    client_order_id="route-1",
                )
                assert (routed.gpu_hours_filled, routed.gpu_hours_left) == (2 * key.hours, 0)
                child = routed.children[0].order
                assert child is not None and child.tif == "ioc" and child.cum_qty == 2
                assert child.client_order_id == "route-1-0"

    run(scenario(), timeout_s=170)


# ---------------------------------------------------------------------- WebSocket


def test_ws_feeds_follow_the_gateway_and_order_entry_works(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            symbol = ex.symbol
            async with client(ex, "provider") as seller, client(ex, "trader") as buyer:
                books = Collector(buyer.watch_order_book(symbol, 10))
                trades = Collector(buyer.watch_trades(symbol))
                executions = Collector(buyer.watch_orders())
                balances = Collector(buyer.watch_balance())
                positions = Collector(buyer.watch_positions())
                tickers = Collector(buyer.watch_ticker(symbol))
                candles = Collector(buyer.watch_ohlcv(symbol, "1m"))
                gpu = parse_symbol(symbol).gpu
                index = Collector(buyer.watch("index", gpu))
                await ex.wait_for(lambda: books.items, what="the book snapshot")
                local = buyer.feeds.book(symbol)
                assert local is not None and local.snapshots == 1

                placed = []
                for i, price in enumerate(("2.500", "2.600", "2.700", "2.550")):
                    params = {"client_order_id": f"ws-sell-{i}"}
                    result = await seller.create_order_ws(symbol, "limit", "sell", 2, price, params)
                    assert result.order.status == "new"
                    placed.append(result.order)
                for price in ("2.100", "2.200"):
                    await buyer.create_order_ws(symbol, "limit", "buy", 1, price)
                await ex.wait_for(
                    lambda: book_matches(ex, buyer, symbol) and len(local.bids()) == 2,
                    what="the book",
                )
                assert local.best_ask() == ("2.500", "2") and local.best_bid() == ("2.200", "1")
                assert len(local.asks()) == 4

                gone = await seller.cancel_order_ws(client_order_id="ws-sell-3")
                assert gone.status == "canceled" and gone.order_id == placed[3].order_id
                gone = await seller.cancel_order_ws(placed[2].order_id)
                assert gone.status == "canceled"
                bought = await buyer.create_order_ws(
                    symbol, "limit", "buy", 3, "2.600", {"client_order_id": "ws-buy-1"}
                )
                assert bought.order.status == "filled" and len(bought.fills) == 2
                status = await buyer.order_status("ws-buy-1")
                assert status.order_id == bought.order.order_id and status.status == "filled"
                by_id = await seller.order_status(order_id=placed[1].order_id)
                assert by_id.status == "partially_filled" and by_id.leaves_qty == 1
                await ex.wait_for(
                    lambda: book_matches(ex, buyer, symbol) and local.asks() == [("2.600", "1")],
                    what="the book",
                )
                await ex.wait_for(lambda: len(trades.items) == 2, what="two trades")
                assert [(t.price, t.qty, t.side) for t in trades.items] == [
                    (Decimal("2.500"), Decimal(2), "buy"),
                    (Decimal("2.600"), Decimal(1), "buy"),
                ]

                def trade_reports() -> list[Execution]:
                    return [
                        x
                        for x in executions.items
                        if x.order.client_order_id == "ws-buy-1" and x.exec_type == "trade"
                    ]

                await ex.wait_for(lambda: len(trade_reports()) == 2, what="the executions")
                kinds = [
                    x.exec_type for x in executions.items if x.order.client_order_id == "ws-buy-1"
                ]
                assert kinds == ["new", "trade", "trade"]
                last = trade_reports()[-1]
                assert last.order.status == "filled" and last.last_price == Decimal("2.600")
                assert last.liquidity == "taker" and last.trade_id is not None
                available = ex.gateway.accounts.balances(TRADER)["available"]
                await ex.wait_for(
                    lambda: balances.items[-1].available == Decimal(available), what="balances"
                )
                assert balances.items[0].available == Decimal(1_000_000)
                await ex.wait_for(lambda: positions.items and positions.items[-1], what="positions")
                assert [(p.symbol, p.qty) for p in positions.items[-1]] == [(symbol, Decimal(3))]
                assert positions.items[0] == []  # the snapshot: no position yet
                await ex.wait_for(
                    lambda: tickers.items and tickers.items[-1].last == Decimal("2.600"),
                    what="the ticker",
                )
                ticker = tickers.items[-1]
                assert (ticker.bid, ticker.ask, ticker.ask_qty) == (
                    Decimal("2.200"),
                    Decimal("2.600"),
                    Decimal(1),
                )
                assert (ticker.open, ticker.high, ticker.volume, ticker.trades) == (
                    Decimal("2.500"),
                    Decimal("2.600"),
                    Decimal(3),
                    2,
                )  # the push's rolling 24 h figures
                await ex.wait_for(
                    lambda: candles.items and candles.items[-1].volume == 3, what="the candle"
                )
                bar = candles.items[-1]
                assert (bar.open, bar.high, bar.low, bar.close) == (
                    Decimal("2.500"),
                    Decimal("2.600"),
                    Decimal("2.500"),
                    Decimal("2.600"),
                )
                await ex.wait_for(lambda: index.items, what="the index")
                assert index.items[-1]["symbol"] == gpu and index.items[-1]["price"]

                # an amend sets the price and the remaining lots (the engine's AmendOrder)
                amended = await seller.amend_order_ws("2.650", 2, order_id=placed[1].order_id)
                assert (amended.price, amended.cum_qty, amended.leaves_qty, amended.qty) == (
                    Decimal("2.650"),
                    Decimal(1),
                    Decimal(2),
                    Decimal(3),
                )
                await ex.wait_for(
                    lambda: book_matches(ex, buyer, symbol) and local.asks() == [("2.650", "2")],
                    what="the amended book",
                )
                post_only: dict[str, Any] = {"post_only": True, "client_order_id": "ws-post-1"}
                with pytest.raises(RejectedError) as refused:
                    await buyer.create_order_ws(symbol, "limit", "buy", 1, "2.650", post_only)
                assert refused.value.code == Reject.POST_ONLY_WOULD_TAKE.name
                await ex.wait_for(
                    lambda: executions.items[-1].exec_type == "rejected", what="the rejection"
                )
                rejection = executions.items[-1]
                assert rejection.order.client_order_id == "ws-post-1"
                assert rejection.reject_code == Reject.POST_ONLY_WOULD_TAKE.name
                assert rejection.order.status == "rejected" and rejection.order.order_id == 0

                # the local book verifies every checksum: a corrupted level is caught on the
                # next update, and the client resyncs to the gateway's book by itself
                assert local.snapshots == 1 and local.checksum == local.compute_checksum()
                local._bids.set("2.200", "7", symbol)  # corrupt the copy, as a lost update would
                await seller.create_order_ws(symbol, "limit", "sell", 1, "2.900")
                await ex.wait_for(
                    lambda: local.snapshots == 2 and book_matches(ex, buyer, symbol),
                    what="the resync",
                )
                assert local.best_bid() == ("2.200", "1")

                # the dead man's switch cancels the trader's resting orders unless re-armed
                armed = await buyer.cancel_all_after(500)
                assert armed["armed"] is True and int(armed["deadline_ms"]) > 0
                await ex.wait_for(
                    lambda: not ex.gateway.accounts.open_orders(TRADER), what="dead man"
                )
                assert (await buyer.cancel_all_after(0))["armed"] is False
                cancels = [x for x in executions.items if x.exec_type == "canceled"]
                assert len(cancels) == 2 and cancels[0].reason
                await ex.wait_for(
                    lambda: book_matches(ex, buyer, symbol) and not local.bids(), what="the book"
                )
                assert local.snapshots == 2
                assert await seller.cancel_all_orders_ws(symbol) == 2
                await ex.wait_for(
                    lambda: book_matches(ex, buyer, symbol) and not local.asks(), what="the book"
                )
                assert local.snapshots == 2
                for collector in (books, trades, executions, balances, positions, tickers):
                    await collector.stop()
                for collector in (candles, index):
                    await collector.stop()

    run(scenario(), timeout_s=170)


# ---------------------------------------------------------------------- reconnect


class Proxy:
    """A TCP proxy to the gateway that can cut every connection and refuse new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.refusing = False
        self.refused = 0  # connections refused while `refusing`
        self.cut_count = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every connection at the TCP level: no WebSocket close frame either way."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self.cut_count += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


@contextlib.asynccontextmanager
async def proxy_to(ex: Exchange) -> AsyncIterator[Proxy]:
    host, port = ex.url.removeprefix("http://").split(":")
    proxy = Proxy(host, int(port))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def test_client_reconnects_after_a_network_cut_and_resumes_its_feeds(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex, proxy_to(ex) as proxy:
            symbol = ex.symbol
            ws_url = f"ws://127.0.0.1:{proxy.port}/ws"
            async with (
                client(ex, "provider") as seller,
                client(ex, "maker") as keeper,
                client(ex, "trader", ws_url=ws_url) as watcher,
            ):
                # another watcher of the same depth keeps the gateway buffering its updates
                await keeper.watch_order_book(symbol, 10)
                books = Collector(watcher.watch_order_book(symbol, 10))
                trades = Collector(watcher.watch_trades(symbol))
                executions = Collector(watcher.watch_orders())
                await ex.wait_for(lambda: books.items, what="the book snapshot")
                local = watcher.feeds.book(symbol)
                assert local is not None
                await seller.create_order(symbol, "limit", "sell", 5, "2.500")
                await watcher.create_order(symbol, "limit", "buy", 1, "2.500")
                resting = await watcher.create_order(
                    symbol, "limit", "buy", 1, "2.050", {"client_order_id": "resting"}
                )
                await ex.wait_for(
                    lambda: book_matches(ex, watcher, symbol) and len(local.bids()) == 1,
                    what="the book",
                )
                await ex.wait_for(lambda: len(trades.items) == 1, what="the first trade")
                assert watcher.session.generation == 1

                # the network drops and stays down while the book moves and trades print
                proxy.refusing = True
                proxy.cut()
                await ex.wait_for(lambda: not watcher.session.connected, what="the cut")
                for price in ("2.400", "2.450"):
                    await seller.create_order(symbol, "limit", "sell", 1, price)
                await keeper.create_order(symbol, "limit", "buy", 2, "2.500")
                await seller.create_order(symbol, "limit", "buy", 1, "2.000")
                await ex.wait_for(lambda: len(ex.gateway.feed.trades(symbol, 10)) == 3)
                await ex.wait_for(lambda: proxy.refused >= 1, what="a refused reconnect")
                assert not book_matches(ex, watcher, symbol)
                proxy.refusing = False

                await ex.wait_for(
                    lambda: (
                        watcher.session.generation == 2
                        and book_matches(ex, watcher, symbol)
                        and len(local.bids()) == 2
                    ),
                    timeout_s=20,
                    what="the reconnect",
                )
                assert local.snapshots == 1  # resumed from its seq: no fresh snapshot needed
                assert local.best_ask() == ("2.500", "4")
                await ex.wait_for(lambda: len(trades.items) == 3, what="the missed trades")
                ids = [t.trade_id for t in trades.items]
                assert ids == sorted(set(ids))
                prices = [t.price for t in trades.items]
                assert prices == [Decimal("2.500"), Decimal("2.400"), Decimal("2.450")]
                # private feeds start over from a snapshot: the resting order is in it
                await ex.wait_for(
                    lambda: [x for x in executions.items if x.exec_type == "snapshot"],
                    what="the executions snapshot",
                )
                snapshot = [x for x in executions.items if x.exec_type == "snapshot"]
                assert [x.order.order_id for x in snapshot] == [resting.order.order_id]
                await watcher.cancel_order(resting.order.order_id)
                await ex.wait_for(
                    lambda: executions.items[-1].exec_type == "canceled", what="the cancel"
                )
                await seller.create_order(symbol, "limit", "sell", 1, "2.900")
                await ex.wait_for(
                    lambda: book_matches(ex, watcher, symbol) and len(local.asks()) == 2,
                    what="the book",
                )
                assert local.snapshots == 1 and proxy.cut_count == 1

                for collector in (books, trades, executions):
                    await collector.stop()

    run(scenario(), timeout_s=170)


# ---------------------------------------------------------------------- providers


def test_provider_agent_streams_capacity_and_answers_provisioning(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn, provisioning=True) as ex:
            key = parse_symbol(ex.symbol)
            seen: list[ProvisionRequest] = []

            async def handler(request: ProvisionRequest) -> ProvisionResult | None:
                seen.append(request)
                if request.stage != "start":
                    return None
                return ProvisionResult.confirm("10.0.0.7", 22, "gpu")

            async with client(ex, "provider") as provider, client(ex, "trader") as buyer:
                holder_key = await buyer.add_ssh_key(new_ssh_key("holder@laptop"))
                agent = ProviderAgent(provider)
                status = await agent.update_capacity(
                    key.gpu, key.region, key.start_ns, key.start_ns + HOUR_NS, gpus=5
                )
                assert status == "accepted"
                with pytest.raises(RejectedError) as refused:
                    await agent.update_capacity(key.gpu, key.region, key.start_ns, 1, gpus=5)
                assert refused.value.code == Reject.CAPACITY_RANGE_INVALID.name
                running = asyncio.create_task(agent.run(handler))
                await provider.create_order(ex.symbol, "limit", "sell", 2, "2.000")
                await buyer.create_order(ex.symbol, "limit", "buy", 2, "2.000")

                await ex.send(c.ClockTick(ts_ns=key.start_ns - 10 * 60 * 1_000_000_000))
                await ex.wait_for(lambda: seen, timeout_s=30, what="the assignment")
                assert seen[0].stage == "assigned" and seen[0].gpus == 2
                assert seen[0].holder == TRADER and seen[0].symbol == ex.symbol
                # The holder's SSH key came with the request, for the provider to install.
                assert [(k.fingerprint, k.public_key) for k in seen[0].ssh_keys] == [
                    (holder_key.fingerprint, holder_key.public_key)
                ]
                await ex.send(c.ClockTick(ts_ns=key.start_ns))
                deliveries = ex.gateway.deliveries.deliveries
                await ex.wait_for(
                    lambda: deliveries(PROVIDER, "confirmed", "provider"),
                    timeout_s=30,
                    what="the delivery confirmed",
                )
                assert [r.stage for r in seen] == ["assigned", "start"]
                await ex.send(c.ClockTick(ts_ns=key.start_ns + HOUR_NS))
                await ex.wait_for(
                    lambda: deliveries(PROVIDER, "settled", "provider"),
                    timeout_s=30,
                    what="the delivery settled",
                )
                assert deliveries(TRADER, role="holder")[0]["outcome"] == "delivered"
                assert [r.obligation_id for r in seen] == [seen[0].obligation_id] * 2
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running

    run(scenario(), timeout_s=170)
