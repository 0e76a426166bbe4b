"""The ccxt exchange class (exchange/client/ccxt_exchange.py) against the whole exchange.

A ccxt user's session over the in-process exchange (tests/support/gateway_harness.py), with
ccxt's own structure validators (ccxt/test/exchange/base, shipped in the ccxt wheel) run on every
structure returned, and the error mapping checked on real refusals.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from ccxt.test.exchange.base import test_balance as check_balance
from ccxt.test.exchange.base import test_ledger_entry as check_ledger_entry
from ccxt.test.exchange.base import test_market as check_market
from ccxt.test.exchange.base import test_ohlcv as check_ohlcv
from ccxt.test.exchange.base import test_order as check_order
from ccxt.test.exchange.base import test_order_book as check_order_book
from ccxt.test.exchange.base import test_ticker as check_ticker
from ccxt.test.exchange.base import test_trade as check_trade
from ccxt.test.exchange.base import test_trading_fee as check_trading_fee

from exchange.client import GpuExchange
from schemas.symbols import parse_symbol
from tests.support.gateway_harness import Exchange, running_exchange
from tests.support.waiting import until

from .conftest import run

pytestmark = pytest.mark.timeout(180)

SKIP: dict[str, Any] = {}  # ccxt's skipped_properties: none


def gpu_exchange(ex: Exchange, name: str, **config: Any) -> GpuExchange:
    """A ccxt client of the harness's gateway, with the named account's key."""
    keys = ex.keys[name]
    return GpuExchange(
        {"apiKey": keys.key_id, "secret": keys.secret, "urls": {"api": {"rest": ex.url}}, **config}
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def orders_ok(ex: GpuExchange, method: str, orders: list[Any], symbol: str | None) -> None:
    for order in orders:
        check_order(ex, SKIP, method, order, symbol, now_ms())


def trades_ok(ex: GpuExchange, method: str, trades: list[Any], symbol: str, public: bool) -> None:
    for trade in trades:
        check_trade(ex, SKIP, method, trade, symbol, now_ms(), public)


def test_ccxt_user_trades_amends_cancels_and_reads_every_unified_structure(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            seller, buyer = gpu_exchange(ex, "provider"), gpu_exchange(ex, "trader")
            try:
                await session(ex, seller, buyer)
            finally:
                await seller.close()
                await buyer.close()

    run(scenario(), timeout_s=170)


async def session(ex: Exchange, seller: GpuExchange, buyer: GpuExchange) -> None:
    symbol = ex.symbol
    hours = parse_symbol(symbol).hours

    # ------------------------------------------------------------------ markets
    markets = await buyer.load_markets()
    assert symbol in markets and buyer.symbols
    for market in markets.values():
        check_market(buyer, SKIP, "fetchMarkets", market)
    market = buyer.market(symbol)
    assert (market["type"], market["linear"], market["settle"]) == ("future", True, "USD")
    assert market["contractSize"] == hours and market["precision"]["price"] == 0.001
    assert (market["maker"], market["taker"]) == (0.0002, 0.0005)
    assert market["expiry"] == parse_symbol(symbol).start_ns // 1_000_000
    await seller.load_markets()

    # ------------------------------------------------------------------ orders that trade
    sell = await seller.create_order(
        symbol, "limit", "sell", 3, 2.5, {"clientOrderId": "cx-sell-1"}
    )
    orders_ok(seller, "createOrder", [sell], symbol)
    assert (sell["status"], sell["amount"], sell["remaining"], sell["filled"]) == ("open", 3, 3, 0)
    assert sell["clientOrderId"] == "cx-sell-1" and sell["timeInForce"] == "GTC"
    await ex.wait_for(lambda: ex.gateway.feed.ask_levels(symbol), what="the ask")

    buy = await buyer.create_order(symbol, "limit", "buy", 2, 2.6)
    orders_ok(buyer, "createOrder", [buy], symbol)
    assert (buy["status"], buy["filled"], buy["remaining"]) == ("closed", 2, 0)
    assert buy["average"] == 2.5  # the maker's price, not the limit: from the fills
    assert buy["cost"] == float(Decimal("2.5") * 2 * hours)
    assert [t["takerOrMaker"] for t in buy["trades"]] == ["taker"]
    assert buy["trades"][0]["fee"]["currency"] == "USD"

    edited = await seller.edit_order(sell["id"], symbol, "limit", "sell", 4, 2.55)
    orders_ok(seller, "editOrder", [edited], symbol)
    assert (edited["amount"], edited["filled"], edited["remaining"], edited["price"]) == (
        4,
        2,
        2,
        2.55,
    )
    cancelled = await seller.cancel_order(sell["id"], symbol)
    orders_ok(seller, "cancelOrder", [cancelled], symbol)
    assert cancelled["status"] == "canceled" and cancelled["filled"] == 2

    for price in (2.7, 2.8):
        await seller.create_order(symbol, "limit", "sell", 1, price)
    assert len(await seller.fetch_open_orders(symbol)) == 2
    [cancel_all] = await seller.cancel_all_orders(symbol)
    assert cancel_all["info"] == {"canceled": 2}
    assert await seller.fetch_open_orders() == []

    fetched = await seller.fetch_order(sell["id"], symbol)
    orders_ok(seller, "fetchOrder", [fetched], symbol)
    assert (fetched["status"], fetched["filled"], fetched["average"]) == ("canceled", 2, 2.5)
    by_client_id = await seller.fetch_order("", symbol, {"clientOrderId": "cx-sell-1"})
    assert by_client_id["id"] == sell["id"]

    closed = await seller.fetch_closed_orders(symbol)
    orders_ok(seller, "fetchClosedOrders", closed, symbol)
    assert [o["status"] for o in closed] == ["canceled"] * 3
    assert [o["id"] for o in await buyer.fetch_closed_orders()] == [buy["id"]]

    bid = await buyer.create_order(symbol, "limit", "buy", 5, 2.4, {"timeInForce": "GTC"})
    open_orders = await buyer.fetch_open_orders(symbol)
    orders_ok(buyer, "fetchOpenOrders", open_orders, symbol)
    assert [o["id"] for o in open_orders] == [bid["id"]]

    mine = await buyer.fetch_my_trades(symbol)
    trades_ok(buyer, "fetchMyTrades", mine, symbol, public=False)
    assert [(t["order"], t["side"], t["amount"], t["price"]) for t in mine] == [
        (buy["id"], "buy", 2, 2.5)
    ]
    theirs = await seller.fetch_my_trades()
    trades_ok(seller, "fetchMyTrades", theirs, symbol, public=False)
    assert [t["takerOrMaker"] for t in theirs] == ["maker"]

    # ------------------------------------------------------------------ account
    balance = await buyer.fetch_balance()
    check_balance(buyer, SKIP, "fetchBalance", balance)
    server = ex.gateway.accounts.balances(buyer_account(ex))
    assert balance["USD"]["free"] == float(server["available"])
    assert balance["USD"]["used"] > 0  # the resting bid's hold and the bought lots' escrow

    fees = await buyer.fetch_trading_fees()
    for fee_symbol, fee in fees.items():
        check_trading_fee(buyer, SKIP, "fetchTradingFees", fee_symbol, fee)
    assert (fees[symbol]["maker"], fees[symbol]["taker"]) == (0.0002, 0.0005)
    assert (await buyer.fetch_trading_fee(symbol))["symbol"] == symbol

    async def settled() -> list[Any]:
        entries = await buyer.fetch_ledger("USD")
        return entries if any(e["type"] == "trade" for e in entries) else []

    ledger = await until(settled, what="the ledger's trade postings")
    for entry in ledger:
        check_ledger_entry(buyer, SKIP, "fetchLedger", entry, "USD", now_ms())
    available = [e for e in ledger if e["account"] == "available"]
    assert available[0]["type"] == "transaction" and available[0]["before"] == 0

    # ------------------------------------------------------------------ market data
    async def traded_ticker() -> Any:
        ticker = await buyer.fetch_ticker(symbol)
        return ticker if ticker["last"] is not None and ticker["bid"] is not None else None

    ticker = await until(traded_ticker, what="the ticker's trade")
    check_ticker(buyer, SKIP, "fetchTicker", ticker, symbol)
    assert (ticker["last"], ticker["high"], ticker["low"], ticker["vwap"]) == (2.5,) * 4
    assert (ticker["bid"], ticker["bidVolume"]) == (2.4, 5)
    assert ticker["baseVolume"] == 2 * hours and ticker["quoteVolume"] == 5.0 * hours
    tickers = await buyer.fetch_tickers()
    for each in tickers.values():
        check_ticker(buyer, SKIP, "fetchTickers", each, None)
    assert tickers[symbol]["last"] == 2.5

    book = await until(lambda: _nonempty_book(buyer, symbol), what="the bid in the book")
    check_order_book(buyer, SKIP, "fetchOrderBook", book, symbol)
    assert book["bids"] == [[2.4, 5]] and book["nonce"] > 0

    public = await until(lambda: buyer.fetch_trades(symbol), what="the public trade")
    trades_ok(buyer, "fetchTrades", public, symbol, public=True)
    assert [(t["price"], t["amount"], t["side"]) for t in public] == [(2.5, 2, "buy")]

    bars = await until(lambda: buyer.fetch_ohlcv(symbol, "1m"), what="a candle")
    for bar in bars:
        check_ohlcv(buyer, SKIP, "fetchOHLCV", bar, symbol, now_ms())
    assert bars[-1][1:] == [2.5, 2.5, 2.5, 2.5, 2 * hours]

    # ------------------------------------------------------------------ refusals
    big = next(
        m
        for m in markets.values()
        if m["active"] and m["contractSize"] * m["limits"]["price"]["max"] * 1000 > 2_000_000
    )
    with pytest.raises(ccxt.InsufficientFunds):
        await buyer.create_order(big["symbol"], "limit", "buy", 1000, 99.0)
    with pytest.raises(ccxt.OrderNotFound):
        await buyer.fetch_order("999999999", symbol)
    with pytest.raises(ccxt.OrderNotFound):
        await buyer.cancel_order("999999999", symbol)
    with pytest.raises(ccxt.OrderImmediatelyFillable):
        await seller.create_order(symbol, "limit", "sell", 1, 2.4, {"postOnly": True})
    with pytest.raises(ccxt.BadSymbol):  # the gateway's UNKNOWN_SYMBOL, past ccxt's own check
        await buyer.request("ticker/{symbol}", "public", "GET", {"symbol": "NO.SUCH.1h.X"})
    keys = ex.keys["trader"]
    for config in ({"secret": "not-the-secret"}, {"apiKey": "no-such-key"}):
        stranger = gpu_exchange(ex, "trader", **{"apiKey": keys.key_id, **config})
        try:
            with pytest.raises(ccxt.AuthenticationError):
                await stranger.fetch_balance()
        finally:
            await stranger.close()


# ---------------------------------------------------------------------- ccxt pro: watch_*

WATCH_TIMEOUT_S = 10.0  # per awaited update
DAY_FIELDS = ("open", "high", "low", "vwap", "baseVolume", "quoteVolume")


def test_ccxt_pro_watches_return_each_update_as_a_unified_structure(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            seller, buyer = gpu_exchange(ex, "provider"), gpu_exchange(ex, "trader")
            try:
                await watching(ex, seller, buyer)
            finally:
                await seller.close()
                await buyer.close()

    run(scenario(), timeout_s=170)


async def next_update(call: Any) -> Any:
    return await asyncio.wait_for(call, WATCH_TIMEOUT_S)


async def watch_until(watch: Any, check: Any, what: str) -> Any:
    """Call `watch()` until `check(result)` holds, at most WATCH_TIMEOUT_S in all."""

    async def loop() -> Any:
        while not check(result := await watch()):
            pass
        return result

    try:
        return await asyncio.wait_for(loop(), WATCH_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"timed out watching for {what}") from None


def public_subscribed(ex: Exchange, *keys: tuple[str, str]) -> bool:
    return all(ex.gateway.subscriptions.public.get(key) for key in keys)


def executions_subscribed(ex: Exchange, name: str) -> bool:
    connections = ex.gateway.subscriptions.private.get(ex.keys[name].account, ())
    return any("executions" in conn.private for conn in connections)


async def watching(ex: Exchange, seller: GpuExchange, buyer: GpuExchange) -> None:
    symbol = ex.symbol
    hours = parse_symbol(symbol).hours
    await buyer.load_markets()
    await seller.load_markets()
    for flag in ("watchOrderBook", "watchTrades", "watchTicker", "watchOrders", "watchMyTrades"):
        assert buyer.has[flag] is True, flag

    # the first calls of the book and of the orders return what the subscription starts with
    ask = await seller.create_order(symbol, "limit", "sell", 5, 2.6)
    await ex.wait_for(lambda: ex.gateway.feed.ask_levels(symbol), what="the ask")
    await ex.wait_for(
        lambda: ex.gateway.accounts.open_orders(ex.keys["provider"].account), what="open order"
    )
    book = await next_update(buyer.watch_order_book(symbol))
    check_order_book(buyer, SKIP, "watchOrderBook", book, symbol)
    assert (book["asks"], book["bids"], book["symbol"]) == ([[2.6, 5]], [], symbol)
    assert book["nonce"] > 0
    opened = await next_update(seller.watch_orders(symbol))
    orders_ok(seller, "watchOrders", opened, symbol)
    assert [(o["id"], o["status"], o["remaining"]) for o in opened] == [(ask["id"], "open", 5)]

    # the other watches wait for the first update after subscribing: subscribe, then trade
    ticker_call = asyncio.ensure_future(buyer.watch_ticker(symbol))
    trades_call = asyncio.ensure_future(buyer.watch_trades(symbol))
    mine_call = asyncio.ensure_future(buyer.watch_my_trades(symbol))
    orders_call = asyncio.ensure_future(buyer.watch_orders())
    # the seller's executions are subscribed already: its fills watch joins them at once
    theirs_call = asyncio.ensure_future(seller.watch_my_trades())
    await ex.wait_for(
        lambda: (
            public_subscribed(ex, ("ticker", symbol), ("trades", symbol))
            and executions_subscribed(ex, "trader")
        ),
        what="the buyer's subscriptions",
    )
    buy = await buyer.create_order(symbol, "limit", "buy", 2, 2.6)
    assert buy["status"] == "closed"

    trades = await next_update(trades_call)
    trades_ok(buyer, "watchTrades", trades, symbol, public=True)
    assert [(t["price"], t["amount"], t["side"], t["takerOrMaker"]) for t in trades] == [
        (2.6, 2, "buy", "taker")
    ]
    mine = await next_update(mine_call)
    trades_ok(buyer, "watchMyTrades", mine, symbol, public=False)
    assert [(t["order"], t["side"], t["amount"], t["takerOrMaker"]) for t in mine] == [
        (buy["id"], "buy", 2, "taker")
    ]
    assert mine[0]["id"] == trades[0]["id"] and mine[0]["fee"]["currency"] == "USD"
    theirs = await next_update(theirs_call)
    trades_ok(seller, "watchMyTrades", theirs, symbol, public=False)
    assert [(t["order"], t["side"], t["takerOrMaker"]) for t in theirs] == [
        (ask["id"], "sell", "maker")
    ]

    orders = await next_update(orders_call)
    orders_ok(buyer, "watchOrders", orders, None)
    assert {o["id"] for o in orders} == {buy["id"]}
    if orders[-1]["status"] != "closed":  # the acceptance came alone: the fill is next
        orders = await watch_until(buyer.watch_orders, lambda o: o, "the buy's fill")
        orders_ok(buyer, "watchOrders", orders, None)
    assert [(o["status"], o["filled"], o["remaining"]) for o in orders] == [("closed", 2, 0)]
    partly = await watch_until(
        lambda: seller.watch_orders(symbol), lambda o: o[-1]["filled"] == 2, "the ask's fill"
    )
    orders_ok(seller, "watchOrders", partly, symbol)
    assert [(o["id"], o["status"], o["remaining"]) for o in partly] == [(ask["id"], "open", 3)]

    ticker = await next_update(ticker_call)
    check_ticker(buyer, SKIP, "watchTicker", ticker, symbol)
    if ticker["last"] is None:  # the book's move came before the trade's print
        ticker = await watch_until(lambda: buyer.watch_ticker(symbol), lambda t: t["last"], "last")
        check_ticker(buyer, SKIP, "watchTicker", ticker, symbol)
    assert (ticker["last"], ticker["high"], ticker["vwap"]) == (2.6, 2.6, 2.6)
    assert ticker["baseVolume"] == 2 * hours and ticker["quoteVolume"] == pytest.approx(5.2 * hours)
    fetched = await buyer.fetch_ticker(symbol)  # nothing traded since: the same 24 h figures
    assert {f: ticker[f] for f in DAY_FIELDS} == {f: fetched[f] for f in DAY_FIELDS}

    book = await watch_until(
        lambda: buyer.watch_order_book(symbol), lambda b: b["asks"] == [[2.6, 3]], "the fill"
    )
    check_order_book(buyer, SKIP, "watchOrderBook", book, symbol)

    # trades made while no call waits are kept for the next calls, none lost
    for _ in range(2):
        await buyer.create_order(symbol, "limit", "buy", 1, 2.6)
    later: list[Any] = []
    await watch_until(
        lambda: buyer.watch_trades(symbol),
        lambda batch: later.extend(batch) or len(later) >= 2,
        "the two trades",
    )
    trades_ok(buyer, "watchTrades", later, symbol, public=True)
    assert [(t["amount"], t["price"]) for t in later] == [(1, 2.6), (1, 2.6)]
    assert len({t["id"] for t in [*trades, *later]}) == 3

    # close() ends a waiting watch with ccxt's ExchangeClosedByUser
    waiting = asyncio.ensure_future(buyer.watch_trades(symbol))
    await asyncio.sleep(0.1)
    await buyer.close()
    with pytest.raises(ccxt.ExchangeClosedByUser):
        await next_update(waiting)


def buyer_account(ex: Exchange) -> int:
    return ex.keys["trader"].account


async def _nonempty_book(exchange: GpuExchange, symbol: str) -> Any:
    book = await exchange.fetch_order_book(symbol)
    return book if book["bids"] else None


def test_ccxt_validators_refuse_a_broken_structure():
    """The validators this suite relies on do fail: a wrong status, a spot market with expiry."""
    ex = GpuExchange()
    order = ex.safe_order(
        {"info": {}, "id": "1", "symbol": "X", "status": "open", "amount": 2, "filled": 1}
    )
    check_order(ex, SKIP, "fetchOrder", order, None, now_ms())
    with pytest.raises(AssertionError):
        check_order(ex, SKIP, "fetchOrder", {**order, "status": "bogus"}, None, now_ms())
    with pytest.raises(AssertionError):
        check_order(ex, SKIP, "fetchOrder", {**order, "filled": 3}, None, now_ms())
    bad_ticker = {**ex.safe_ticker({"symbol": "X", "last": 2.0, "close": 3.0}), "info": {}}
    with pytest.raises(AssertionError):
        check_ticker(ex, SKIP, "fetchTicker", bad_ticker, None)
