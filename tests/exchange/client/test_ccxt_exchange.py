"""GpuExchange without a gateway: the error table covers every stable code, requests are signed
as the gateway verifies them, error answers raise the mapped ccxt class, and a watch stream
keeps what arrives between calls.

The whole flow against a live exchange is tests/integration/test_ccxt.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import ccxt
import orjson
import pytest
from ccxt.test.exchange.base import test_ledger_entry as check_ledger_entry
from ccxt.test.exchange.base import test_market as check_market
from ccxt.test.exchange.base import test_order as check_order
from ccxt.test.exchange.base import test_ticker as check_ticker
from ccxt.test.exchange.base import test_trade as check_trade

from exchange import wire
from exchange.client.ccxt_exchange import EXACT_ERRORS, GpuExchange, _Stream
from exchange.client.errors import GatewayError, NetworkError
from exchange.client.feeds import FeedClosed, SlowConsumer
from schemas.codes import Reject

SYM = "H100-SXM.us-east.1h.2026-12-01T14"


def exchange() -> GpuExchange:
    return GpuExchange(
        {"apiKey": "key-1", "secret": "secret-1", "urls": {"api": {"rest": "http://gw:9"}}}
    )


def test_every_reject_and_gateway_code_maps_to_a_ccxt_error():
    names = {code.name for code in Reject} | {str(code) for code in wire.ErrorCode}
    assert names <= set(EXACT_ERRORS), sorted(names - set(EXACT_ERRORS))
    assert all(issubclass(error, ccxt.BaseError) for error in EXACT_ERRORS.values())
    assert EXACT_ERRORS["INSUFFICIENT_CASH"] is ccxt.InsufficientFunds
    assert EXACT_ERRORS["UNKNOWN_ORDER"] is ccxt.OrderNotFound
    assert EXACT_ERRORS["BAD_SIGNATURE"] is ccxt.AuthenticationError
    assert EXACT_ERRORS["RATE_LIMITED"] is ccxt.RateLimitExceeded
    assert EXACT_ERRORS["UNKNOWN_SYMBOL"] is ccxt.BadSymbol


def test_private_requests_are_signed_over_the_exact_path_query_and_body():
    ex = exchange()
    request = ex.sign("orders/{id}", "private", "PATCH", {"id": "7", "price": "2.5", "qty": "3"})
    path = urlsplit(request["url"]).path
    assert request["url"].startswith("http://gw:9/api/v1/orders/7") and path == "/api/v1/orders/7"
    assert orjson.loads(request["body"]) == {"price": "2.5", "qty": "3"}
    h = request["headers"]
    expected = wire.signature(
        "secret-1",
        "key-1",
        int(h[wire.HEADER_TS]),
        h[wire.HEADER_NONCE],
        "PATCH",
        path,
        request["body"].encode(),
    )
    assert h[wire.HEADER_KEY] == "key-1" and h[wire.HEADER_SIGNATURE] == expected
    assert h[wire.HEADER_SIGN_VERSION] == "2"

    listed = ex.sign("orders", "private", "GET", {"status": "open", "symbol": SYM, "x": None})
    split = urlsplit(listed["url"])
    signed_path = f"{split.path}?{split.query}"
    assert signed_path == f"/api/v1/orders?status=open&symbol={SYM}" and listed["body"] is None
    h = listed["headers"]
    assert h[wire.HEADER_SIGNATURE] == wire.signature(
        "secret-1", "key-1", int(h[wire.HEADER_TS]), h[wire.HEADER_NONCE], "GET", signed_path, b""
    )


def test_public_requests_carry_no_key_and_path_parameters_are_quoted():
    request = exchange().sign("book/{symbol}", "public", "GET", {"symbol": "a/b?c", "depth": 5})
    assert request["url"] == "http://gw:9/api/v1/book/a%2Fb%3Fc?depth=5"
    assert wire.HEADER_KEY not in request["headers"]


def test_private_requests_need_credentials():
    with pytest.raises(ccxt.AuthenticationError):
        GpuExchange().sign("balances", "private", "GET", {})


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("INSUFFICIENT_CASH", ccxt.InsufficientFunds),
        ("POST_ONLY_WOULD_TAKE", ccxt.OrderImmediatelyFillable),
        ("UNKNOWN_ORDER", ccxt.OrderNotFound),
        ("NONCE_REUSED", ccxt.InvalidNonce),
        ("SOMETHING_NEW", ccxt.ExchangeError),
    ],
)
def test_error_answers_raise_the_mapped_ccxt_error(code, error):
    body = {"error": {"code": code, "msg": "refused", "retryable": False}}
    with pytest.raises(error) as raised:
        exchange().handle_errors(
            422, "", "http://gw:9/api/v1/orders", "POST", {}, orjson.dumps(body).decode(), body,
            {}, None,
        )  # fmt: skip
    assert type(raised.value) is error
    assert exchange().handle_errors(200, "", "", "GET", {}, "{}", {"orders": []}, {}, None) is None


DAY_SYM = "H100-SXM.us-east.1d.2026-12-02"
INSTRUMENT = {
    "symbol": DAY_SYM,
    "gpu": "H100-SXM",
    "region": "us-east",
    "product": "1d",
    "start_ns": "1796169600000000000",
    "hours": 24,
    "gate_close_ns": "1796168700000000000",
    "status": "trading",
    "lots_max": 1000,
    "price_band_min": "0.010",
    "price_band_max": "100.000",
}
CATALOG = {"tick": "0.001", "maker_fee_bps": 2, "taker_fee_bps": 5}


def day_market_exchange() -> GpuExchange:
    ex = exchange()
    ex.set_markets([ex.parse_market({**INSTRUMENT, "_catalog": CATALOG})])
    return ex


def test_a_day_contract_is_24_gpu_hours_in_cost_and_volume():
    ex = day_market_exchange()
    market = ex.market(DAY_SYM)
    check_market(ex, {}, "fetchMarkets", market)
    assert (market["contractSize"], market["expiry"]) == (24, 1796169600000)
    assert market["limits"]["amount"] == {"min": 1, "max": 1000}
    fill = {
        "trade_id": 5, "order_id": 9, "symbol": DAY_SYM, "side": "buy", "price": "2.345",
        "qty": "3", "fee": "0.084420", "liquidity": "taker", "ts_ns": "1796083200000000000",
    }  # fmt: skip
    trade = ex.parse_trade(fill)
    check_trade(ex, {}, "fetchMyTrades", trade, DAY_SYM, None, False)
    assert trade["cost"] == float(Decimal("2.345") * 3 * 24)  # exact decimal, then one float
    assert trade["fee"] == {"cost": 0.08442, "currency": "USD"}
    order = ex.parse_order(
        {
            "order_id": 9, "client_order_id": "c", "symbol": DAY_SYM, "side": "buy",
            "type": "limit", "tif": "gtc", "price": "2.400", "qty": "5", "cum_qty": "3",
            "leaves_qty": "2", "status": "partially_filled", "post_only": False,
            "ts_ns": "1796083200000000000", "_fills": [fill],
        }
    )  # fmt: skip
    check_order(ex, {}, "fetchOrder", order, DAY_SYM, None)
    assert (order["status"], order["average"], order["cost"]) == ("open", 2.345, trade["cost"])
    ticker = ex.parse_ticker(
        {
            "symbol": DAY_SYM, "bid": "2.300", "bid_qty": "4", "ask": "2.400", "ask_qty": "1",
            "last": "2.345", "last_qty": "3", "open": "2.345", "high": "2.345", "low": "2.345",
            "volume": "3", "quote_volume": "168.840000", "vwap": "2.345000", "trades": 1,
            "ts_ns": "1796083200000000000",
        }
    )  # fmt: skip
    check_ticker(ex, {}, "fetchTicker", ticker, DAY_SYM)
    assert (ticker["baseVolume"], ticker["quoteVolume"], ticker["bidVolume"]) == (72, 168.84, 4)
    row = ex.parse_ohlcv(
        {"start_ns": "1796083200000000000", "open": "2.345", "high": "2.345", "low": "2.345",
         "close": "2.345", "volume": "3", "trades": 1},
        market,
    )  # fmt: skip
    assert row == [1796083200000, 2.345, 2.345, 2.345, 2.345, 72]


def test_ledger_entries_carry_the_statements_bucket_balances():
    ex = day_market_exchange()
    statement = [
        {"id": "1.0", "seq": 1, "ts_ns": "1796083200000000001", "bucket": "available",
         "amount": "100.000000", "reason": "deposit", "ref_id": 1, "balance": "100.000000"},
        {"id": "3.0", "seq": 3, "ts_ns": "1796083200000000003", "bucket": "available",
         "amount": "-2.400000", "reason": "order_hold", "ref_id": 7, "balance": "97.600000"},
        {"id": "3.1", "seq": 3, "ts_ns": "1796083200000000003", "bucket": "held",
         "amount": "2.400000", "reason": "order_hold", "ref_id": 7, "balance": "2.400000"},
    ]  # fmt: skip
    asked: list[Any] = []

    async def fake_private(path: str, method: str = "GET", params: Any = None) -> Any:
        asked.append((path, params))
        return {"entries": [dict(e) for e in statement]}

    ex._private = fake_private  # type: ignore[method-assign]
    entries = asyncio.run(ex.fetch_ledger("USD", since=1796083200000))
    assert asked == [("statements", {"from": "1796083200000000000"})]
    for entry in entries:
        check_ledger_entry(ex, {}, "fetchLedger", entry, "USD", None)
    assert [
        (e["id"], e["account"], e["type"], e["direction"], e["before"], e["after"]) for e in entries
    ] == [
        ("1.0", "available", "transaction", "in", 0, 100),
        ("3.0", "available", "transfer", "out", 100, 97.6),
        ("3.1", "held", "transfer", "in", 0, 2.4),
    ]


def test_a_watch_stream_keeps_what_arrives_between_calls_and_shares_a_batch():
    async def scenario() -> None:
        queue: asyncio.Queue[list[int]] = asyncio.Queue()

        async def batches() -> AsyncGenerator[list[int], None]:
            while True:
                yield await queue.get()

        stream = _Stream(batches())
        first, second = asyncio.ensure_future(stream.next()), asyncio.ensure_future(stream.next())
        await asyncio.sleep(0)
        queue.put_nowait([1, 2])
        assert await first == await second == [1, 2]  # concurrent calls resolve together
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.next(), 0.01)
        queue.put_nowait([3])
        assert await stream.next() == [3]  # the caller that gave up did not take it
        waiting = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0)
        await stream.close()
        with pytest.raises(FeedClosed):
            await waiting

    asyncio.run(scenario())


def test_watch_errors_map_sdk_codes_to_ccxt_errors():
    ex = exchange()
    assert isinstance(ex._watch_error(GatewayError("UNKNOWN_SYMBOL", "x", 404)), ccxt.BadSymbol)
    assert isinstance(ex._watch_error(NetworkError("connection lost")), ccxt.NetworkError)
    assert isinstance(ex._watch_error(SlowConsumer("behind")), ccxt.ExchangeError)
    assert isinstance(ex._watch_error(FeedClosed("closed")), ccxt.ExchangeClosedByUser)
    assert ex.has["watchOrderBook"] and ex.has["watchMyTrades"] and not ex.has["watchBalance"]
