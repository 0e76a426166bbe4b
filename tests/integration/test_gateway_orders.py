"""Order entry over the gateway: WebSocket and REST, the engine's answers, idempotent retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets

from exchange.gateway import app as gateway_app
from exchange.gateway.hub import Hub
from exchange.gateway.ratelimit import RateLimits
from schemas import commands as c
from schemas.symbols import parse_symbol
from streams.topics import topics
from tests.conftest import HOUR_NS
from tests.support.gateway_harness import PROVIDER, TRADER, Socket, rest, running_exchange, socket

from .conftest import run

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
                assert ex.gateway.accounts.open_orders(PROVIDER)[0]["leaves_qty"] == "3"

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
            # market data follows the engine's answer a moment later
            feed = ex.gateway.feed
            await ex.wait_for(lambda: feed.book(ex.symbol, 10)["bids"], what="the bid in the book")
            book = await rest(ex, "GET", f"/api/v1/book/{ex.symbol}?depth=10")
            assert book.json()["bids"] == [["2.000", "2"]]
            cancelled = await rest(ex, "DELETE", f"/api/v1/orders/{order['order_id']}", keys)
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["order"]["status"] == "canceled"
            balances = await rest(ex, "GET", "/api/v1/balances", keys)
            assert balances.json()["held"] == "0.000000"

    run(scenario(), timeout_s=170)


def test_rest_account_history_keys_and_market_queries(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            trader, provider = ex.keys["trader"], ex.keys["provider"]
            sell = {
                "symbol": ex.symbol,
                "side": "sell",
                "type": "limit",
                "price": "2.450",
                "qty": "3",
            }
            buy = {"symbol": ex.symbol, "side": "buy", "type": "limit", "price": "2.450", "qty": "2",
                   "tif": "ioc"}  # fmt: skip
            assert (await rest(ex, "POST", "/api/v1/orders", provider, sell)).status_code == 200
            bought = await rest(ex, "POST", "/api/v1/orders", trader, buy)
            assert bought.json()["order"]["status"] == "filled", bought.text
            amend = await rest(
                ex, "PATCH", f"/api/v1/orders/{(await rest(ex, 'GET', '/api/v1/orders', provider)).json()['orders'][0]['order_id']}",
                provider, {"price": "2.500", "qty": "1"},
            )  # fmt: skip
            assert amend.status_code == 200 and amend.json()["order"]["price"] == "2.500"

            fills = (await rest(ex, "GET", "/api/v1/fills", trader)).json()["fills"]
            assert [(f["price"], f["qty"], f["liquidity"]) for f in fills] == [
                ("2.450", "2", "taker")
            ]
            positions = (await rest(ex, "GET", "/api/v1/positions", trader)).json()["positions"]
            assert positions == [{"symbol": ex.symbol, "qty": "2"}]
            closed = (await rest(ex, "GET", "/api/v1/orders?status=closed", trader)).json()[
                "orders"
            ]
            assert closed[0]["status"] == "filled"
            by_cid = await rest(
                ex, "GET", f"/api/v1/orders/client/{closed[0]['client_order_id']}", trader
            )
            assert by_cid.json()["order_id"] == closed[0]["order_id"]

            # the ledger is settled asynchronously into PostgreSQL
            async def ledger() -> list:
                return (await rest(ex, "GET", "/api/v1/ledger?limit=50", trader)).json()["entries"]

            for _ in range(100):
                entries = await ledger()
                if any(e["reason"] == "trade" for e in entries):
                    break
                await asyncio.sleep(0.1)
            assert {e["bucket"] for e in entries} >= {"available", "held"}
            feed = ex.gateway.feed
            await ex.wait_for(
                lambda: (
                    feed.index(ex.symbol.split(".")[0])
                    and feed.candles(ex.symbol, "1m", 1)
                    and feed.trades(ex.symbol, 1)
                ),
                what="the trade's market data",
            )
            trades = (await rest(ex, "GET", f"/api/v1/trades/{ex.symbol}")).json()["trades"]
            assert trades[0]["price"] == "2.450" and trades[0]["qty"] == "2"
            candles = (await rest(ex, "GET", f"/api/v1/candles/{ex.symbol}?interval=1m")).json()
            assert candles["candles"][-1]["volume"] == "2"
            gpu, region, product = ex.symbol.split(".")[:3]
            index = (await rest(ex, "GET", f"/api/v1/index/{gpu}")).json()
            assert index["price"] == "2.450"
            curve = (await rest(ex, "GET", f"/api/v1/curve/{gpu}/{region}/{product}")).json()
            assert any(p["symbol"] == ex.symbol for p in curve["points"])
            assert (await rest(ex, "GET", "/api/v1/index/NOPE")).status_code == 404

            # keys: create a read-only key, use it, list, revoke; it stops working
            made = (await rest(ex, "POST", "/api/v1/keys", trader, {"scopes": ["read"]})).json()
            from tests.support.gateway_harness import Keys

            reader = Keys(made["key"], made["secret"], trader.account)
            assert (await rest(ex, "GET", "/api/v1/balances", reader)).status_code == 200
            too_much = await rest(ex, "POST", "/api/v1/keys", reader, {"scopes": ["trade"]})
            assert too_much.status_code == 403
            listed = (await rest(ex, "GET", "/api/v1/keys", trader)).json()["keys"]
            assert made["key"] in {k["key"] for k in listed}
            assert all("secret" not in k for k in listed)
            revoked = await rest(ex, "DELETE", f"/api/v1/keys/{made['key']}", trader)
            assert revoked.json()["revoked"] is True
            await asyncio.sleep(1.2)  # the key cache's lifetime
            assert (await rest(ex, "GET", "/api/v1/balances", reader)).status_code == 401

    run(scenario(), timeout_s=170)


def test_two_gateways_share_sequence_numbers_and_client_order_ids(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            from exchange.gateway.app import GatewayServer

            second = GatewayServer(
                ex.stack.settings, dsn, catalog=ex.stack.catalog, mock_broker=True, port=0
            )
            await second.start()
            try:
                order = {"symbol": ex.symbol, "side": "buy", "type": "limit", "price": "2.100",
                         "qty": "1", "client_order_id": "same-everywhere"}  # fmt: skip
                first = await rest(ex, "POST", "/api/v1/orders", ex.keys["trader"], order)
                assert first.status_code == 200
                retried = await rest(
                    ex, "POST", "/api/v1/orders", ex.keys["trader"], order, base_url=second.url
                )
                assert second.url != ex.url
                assert retried.json()["duplicate"] is True
                assert retried.json()["order"]["order_id"] == first.json()["order"]["order_id"]
                assert len(ex.gateway.accounts.open_orders(TRADER)) == 1
                # both read the same log: the same book under the same sequence number
                gateways = (ex.gateway, second.gateway)
                await ex.wait_for(
                    lambda: gateways[0].feed.book(ex.symbol, 10) == gateways[1].feed.book(ex.symbol, 10)
                    and gateways[0].feed.book(ex.symbol, 10)["bids"],
                    what="the second gateway's book",
                )  # fmt: skip
                assert gateways[1].accounts.last_seq(TRADER, "executions") == gateways[
                    0
                ].accounts.last_seq(TRADER, "executions")
            finally:
                await second.close()

    run(scenario(), timeout_s=170)


def test_a_gateway_behind_the_log_refuses_private_requests_until_it_caught_up(
    broker, dsn, monkeypatch
):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            events = topics(ex.stack.settings)["events"].name
            end_offsets = Hub._end_offsets

            async def further(consumer: Any, partitions: Any) -> dict[Any, int]:
                # As if gx.events had ended one offset further at start: the gateway cannot
                # catch up before the engine writes one more record.
                ends = await end_offsets(consumer, partitions)
                return {tp: end + (tp.topic == events and tp.partition == 0) for tp, end in ends.items()}  # fmt: skip

            monkeypatch.setattr(Hub, "_end_offsets", staticmethod(further))
            monkeypatch.setattr(gateway_app, "ready_wait_s", 0.5)  # then it listens anyway
            second = gateway_app.GatewayServer(
                ex.stack.settings, dsn, catalog=ex.stack.catalog, mock_broker=True, port=0
            )
            await second.start()
            try:
                url, trader = second.url, ex.keys["trader"]
                not_ready = await rest(ex, "GET", "/ready", base_url=url)
                assert not_ready.status_code == 503, not_ready.text
                assert not_ready.json()["ready"] is False
                assert not_ready.json()["behind"] == {events: 1}
                refused = await rest(ex, "GET", "/api/v1/balances", trader, base_url=url)
                assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
                error = refused.json()["error"]
                assert error["code"] == "UNAVAILABLE" and error["retryable"] is True
                placed = await rest(
                    ex, "POST", "/api/v1/orders", trader,
                    {"symbol": ex.symbol, "side": "buy", "price": "1.000", "qty": "1"},
                    base_url=url,
                )  # fmt: skip
                assert placed.status_code == 503, placed.text
                public = await rest(ex, "GET", "/api/v1/instruments", base_url=url)
                assert public.status_code == 200  # market data is served meanwhile
                ws_url = url.replace("http://", "ws://") + "/ws"
                async with websockets.connect(ws_url) as raw:
                    ws = Socket(raw)
                    try:
                        logon = await ws.logon(trader)
                        assert logon["status"] == 503, logon
                        assert logon["error"]["code"] == "UNAVAILABLE"
                        # the engine writes the record the gateway waits for
                        await ex.send(c.Deposit(account=TRADER, amount_micros=1))
                        await ex.wait_for(
                            lambda: second.gateway is not None and second.gateway.hub.ready.is_set(),
                            what="the second gateway to catch up",
                        )  # fmt: skip
                        ready = await rest(ex, "GET", "/ready", base_url=url)
                        assert ready.status_code == 200 and ready.json() == {"ready": True}
                        logon = await ws.logon(trader)  # the same socket: no failure counted
                        assert logon["status"] == 200, logon
                    finally:
                        await ws.close()
                balances = await rest(ex, "GET", "/api/v1/balances", trader, base_url=url)
                assert balances.status_code == 200, balances.text
                assert balances.json() == (await rest(ex, "GET", "/api/v1/balances", trader)).json()
            finally:
                await second.close()

    run(scenario(), timeout_s=170)


def test_capacity_updates_count_against_the_per_account_order_limit(broker, dsn):
    # Found in a security review: capacity.update and POST /capacity skipped the order limit, so
    # one key could stream engine commands (each up to 1680 rows' work) as fast as it could.
    limits = RateLimits(orders_per_account_per_s=1, orders_per_account_burst=2)

    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=limits) as ex:
            key = parse_symbol(ex.symbol)
            capacity = {"gpu": key.gpu, "region": key.region, "start_ns": str(key.start_ns),
                        "end_ns": str(key.start_ns + HOUR_NS), "gpus": 5}  # fmt: skip
            async with socket(ex) as ws:
                assert (await ws.logon(ex.keys["provider"]))["status"] == 200
                answers = [await ws.request("capacity.update", capacity) for _ in range(4)]
                # a provider's reports too, refused before they are read
                report = {"obligation_id": 1, "hours_delivered": 0, "reason": "flood"}
                reports = [await ws.request("provision.fail", report) for _ in range(2)]
            statuses = [a["status"] for a in answers]
            assert statuses[:2] == [200, 200] and 429 in statuses, answers
            limited = next(a for a in answers if a["status"] == 429)
            assert limited["error"]["code"] == "RATE_LIMITED"
            assert [a["error"]["code"] for a in reports] == ["RATE_LIMITED"] * 2, reports
            # REST, with another key (its own bucket): the same limit.
            keys = ex.keys["maker"]
            rest_answers = [
                await rest(ex, "POST", "/api/v1/capacity", keys, capacity) for _ in range(4)
            ]
            codes = [r.status_code for r in rest_answers]
            assert codes[:2] == [200, 200] and 429 in codes, [r.text for r in rest_answers]
            refused = next(r for r in rest_answers if r.status_code == 429)
            assert refused.json()["error"]["code"] == "RATE_LIMITED"

    run(scenario(), timeout_s=170)
