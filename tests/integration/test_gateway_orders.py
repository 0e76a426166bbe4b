"""Order entry over the gateway: WebSocket and REST, the engine's answers, idempotent retries."""

from __future__ import annotations

import pytest

from .conftest import run
from .gateway_harness import PROVIDER, TRADER, rest, running_exchange, socket

pytestmark = pytest.mark.timeout(180)


def test_ws_order_trades_and_reports_executions_and_book(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            async with socket(ex) as maker, socket(ex) as trader:
                assert (await maker.logon(ex.keys["provider"]))["status"] == 200
                answer = await trader.logon(ex.keys["trader"])
                assert answer["result"]["account"] == TRADER
                sub = await trader.request(
                    "subscribe", {"channel": "book", "symbols": [ex.symbol], "depth": 10}
                )
                assert sub["status"] == 200, sub
                assert (await trader.request("subscribe", {"channel": "executions"}))[
                    "status"
                ] == 200
                snapshot = await trader.wait_push(lambda p: p["channel"] == "book")
                assert snapshot["type"] == "snapshot" and snapshot["bids"] == []

                sell = await maker.request(
                    "order.place",
                    {"symbol": ex.symbol, "side": "sell", "type": "limit", "price": "2.500",
                     "qty": "4", "client_order_id": "m1"},
                )  # fmt: skip
                assert sell["status"] == 200, sell
                assert sell["result"]["order"]["status"] == "new"
                assert sell["result"]["order"]["leaves_qty"] == "4"
                update = await trader.wait_push(
                    lambda p: p["channel"] == "book" and p["type"] == "update" and p["asks"]
                )
                assert update["asks"] == [["2.500", "4"]]
                assert update["prev_seq"] + 1 == update["seq"]

                buy = await trader.request(
                    "order.place",
                    {"symbol": ex.symbol, "side": "buy", "type": "limit", "price": "2.500",
                     "qty": "1", "client_order_id": "t1"},
                )  # fmt: skip
                assert buy["status"] == 200, buy
                order = buy["result"]["order"]
                assert order["status"] == "filled" and order["cum_qty"] == "1"
                assert buy["result"]["fills"][0]["price"] == "2.500"
                trade = await trader.wait_push(
                    lambda p: p["channel"] == "executions" and p.get("exec_type") == "trade"
                )
                assert trade["order"]["status"] == "filled"

                # a retry with the same client order id answers the first order, never a second
                again = await trader.request(
                    "order.place",
                    {"symbol": ex.symbol, "side": "buy", "type": "limit", "price": "2.500",
                     "qty": "1", "client_order_id": "t1"},
                )  # fmt: skip
                assert again["status"] == 200 and again["result"]["duplicate"] is True
                assert again["result"]["order"]["order_id"] == order["order_id"]
                status = await trader.request("order.status", {"client_order_id": "t1"})
                assert status["result"]["order"]["order_id"] == order["order_id"]
                assert ex.gateway.hub.accounts.open_orders(PROVIDER)[0]["leaves_qty"] == "3"

    run(scenario(), timeout_s=170)


def test_rest_places_lists_and_cancels(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            keys = ex.keys["trader"]
            instruments = await rest(ex, "GET", "/api/v1/instruments")
            assert instruments.status_code == 200
            assert ex.symbol in {i["symbol"] for i in instruments.json()["instruments"]}
            body = {
                "symbol": ex.symbol,
                "side": "buy",
                "type": "limit",
                "price": "2.000",
                "qty": "2",
            }
            placed = await rest(ex, "POST", "/api/v1/orders", keys, body)
            assert placed.status_code == 200, placed.text
            order = placed.json()["order"]
            assert order["status"] == "new"
            listed = await rest(ex, "GET", "/api/v1/orders?status=open", keys)
            assert [o["order_id"] for o in listed.json()["orders"]] == [order["order_id"]]
            book = await rest(ex, "GET", f"/api/v1/book/{ex.symbol}?depth=10")
            assert book.json()["bids"] == [["2.000", "2"]]
            cancelled = await rest(ex, "DELETE", f"/api/v1/orders/{order['order_id']}", keys)
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["order"]["status"] == "canceled"
            balances = await rest(ex, "GET", "/api/v1/balances", keys)
            assert balances.json()["held"] == "0.000000"

    run(scenario(), timeout_s=170)
