"""Sessions: cancel-on-disconnect, the dead-man timer, rate limits, providers, routing, OpenAPI."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from exchange.gateway.ratelimit import RateLimits
from exchange.gateway.subscriptions import STREAMS_PER_CONNECTION_MAX
from exchange.gateway.ws import symbols_per_subscribe_max
from schemas import commands as c
from schemas.symbols import parse_symbol
from tests.support.gateway_harness import PROVIDER, TRADER, rest, running_exchange, socket

from .conftest import run

pytestmark = pytest.mark.timeout(180)
HOUR_NS = 3_600_000_000_000


def _order(symbol: str, price: str, cid: str = "", side: str = "buy", qty: str = "1") -> dict:
    order = {"symbol": symbol, "side": side, "type": "limit", "price": price, "qty": qty}
    if cid:
        order["client_order_id"] = cid
    return order


def test_cancel_on_disconnect_by_connection_and_by_account(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            accounts = ex.gateway.accounts
            # an order placed over REST is the account's, not the connection's
            kept = await rest(
                ex, "POST", "/api/v1/orders", ex.keys["trader"], _order(ex.symbol, "1.000")
            )
            kept_id = kept.json()["order"]["order_id"]
            async with socket(ex) as ws:
                await ws.logon(ex.keys["trader"], cancel_on_disconnect="connection")
                placed = await ws.request("order.place", _order(ex.symbol, "1.100", "c1"))
                assert placed["status"] == 200
            await ex.wait_for(
                lambda: len(accounts.open_orders(TRADER)) == 1, what="scope connection"
            )
            assert accounts.open_orders(TRADER)[0]["order_id"] == kept_id

            async with socket(ex) as ws:
                await ws.logon(ex.keys["trader"], cancel_on_disconnect="account")
                await ws.request("order.place", _order(ex.symbol, "1.200", "c2"))
                assert len(accounts.open_orders(TRADER)) == 2
            await ex.wait_for(lambda: not accounts.open_orders(TRADER), what="scope account")

            async with socket(ex) as ws:  # the default: nothing is cancelled
                await ws.logon(ex.keys["trader"])
                await ws.request("order.place", _order(ex.symbol, "1.300", "c3"))
            await asyncio.sleep(0.5)
            assert len(accounts.open_orders(TRADER)) == 1

    run(scenario(), timeout_s=170)


def test_dead_man_timer_cancels_unless_rearmed(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            accounts = ex.gateway.accounts
            async with socket(ex) as ws:
                await ws.logon(ex.keys["trader"])
                await ws.request("order.place", _order(ex.symbol, "1.000", "d1"))
                armed = await ws.request("cancel_all_after", {"timeout_ms": 600})
                assert armed["result"]["armed"] is True
                for _ in range(4):  # re-armed in time: nothing happens
                    await asyncio.sleep(0.3)
                    await ws.request("cancel_all_after", {"timeout_ms": 600})
                assert len(accounts.open_orders(TRADER)) == 1
                disarmed = await ws.request("cancel_all_after", {"timeout_ms": 0})
                assert disarmed["result"]["armed"] is False
                await asyncio.sleep(0.8)
                assert len(accounts.open_orders(TRADER)) == 1
                await ws.request("cancel_all_after", {"timeout_ms": 300})
                await ex.wait_for(
                    lambda: not accounts.open_orders(TRADER), what="the dead-man timer"
                )
                assert (await ws.request("ping"))["status"] == 200  # the connection stays

    run(scenario(), timeout_s=170)


def test_rate_limits_answer_429_with_retry_after(broker, dsn):
    limits = RateLimits(
        ws_messages_per_conn_per_s=5, ws_messages_per_conn_burst=5,
        rest_per_ip_per_s=5, rest_per_ip_burst=5,
        orders_per_key_per_s=2, orders_per_key_burst=2,
    )  # fmt: skip

    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=limits) as ex:
            async with socket(ex) as ws:
                answers = [await ws.request("ping") for _ in range(8)]
                limited = [a for a in answers if a["status"] == 429]
                assert limited and all(a["error"]["code"] == "RATE_LIMITED" for a in limited)
                assert all(
                    a["error"]["retryable"] and a["error"]["retry_after_ms"] > 0 for a in limited
                )
                await asyncio.sleep(limited[0]["error"]["retry_after_ms"] / 1000)
                assert (await ws.request("ping"))["status"] == 200
            async with httpx.AsyncClient(base_url=ex.url) as client:
                statuses = [(await client.get("/api/v1/instruments")).status_code for _ in range(8)]
            assert 429 in statuses and statuses[0] == 200
            await asyncio.sleep(1.2)
            async with socket(ex) as ws:
                await ws.logon(ex.keys["trader"])
                answers = [
                    await ws.request("order.place", _order(ex.symbol, "1.000", f"r{i}"))
                    for i in range(3)
                ]
                assert [a["status"] for a in answers] == [200, 200, 429]
                assert len(ex.gateway.accounts.open_orders(TRADER)) == 2

    run(scenario(), timeout_s=170)


def test_the_stream_past_a_connections_limit_is_refused_with_too_many_streams(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            listed = sorted(i["symbol"] for i in ex.gateway.accounts.instruments())
            channels = [
                {"channel": "trades"}, {"channel": "ticker"},
                *({"channel": "candles", "interval": i} for i in ("1m", "1h", "1d")),
            ]  # fmt: skip
            symbols = listed[: STREAMS_PER_CONNECTION_MAX // len(channels) + 1]
            assert len(symbols) * len(channels) > STREAMS_PER_CONNECTION_MAX, len(listed)
            held, last = symbols[:-1], symbols[-1]
            async with socket(ex) as ws:  # no logon: public streams are open to anyone
                for params in channels:
                    for start in range(0, len(held), symbols_per_subscribe_max):
                        batch = held[start : start + symbols_per_subscribe_max]
                        answer = await ws.request("subscribe", {**params, "symbols": batch})
                        assert answer["status"] == 200, answer
                [connection] = ex.gateway.subscriptions.public[("trades", held[0])]
                assert len(connection.public) == STREAMS_PER_CONNECTION_MAX
                answer = await ws.request("subscribe", {"channel": "trades", "symbols": [last]})
                assert (answer["status"], answer["error"]["code"]) == (409, "TOO_MANY_STREAMS")
                assert ("trades", last) not in ex.gateway.subscriptions.public
                # unsubscribe is bounded like subscribe, and what it gives up makes room
                too_many = listed[: symbols_per_subscribe_max + 1]
                answer = await ws.request("unsubscribe", {"channel": "trades", "symbols": too_many})
                assert (answer["status"], answer["error"]["code"]) == (400, "BAD_REQUEST")
                unsubscribe = {"channel": "trades", "symbols": held[:1]}
                assert (await ws.request("unsubscribe", unsubscribe))["status"] == 200
                answer = await ws.request("subscribe", {"channel": "trades", "symbols": [last]})
                assert answer["status"] == 200, answer
            await ex.wait_for(lambda: not ex.gateway.subscriptions.public, what="detach")
            assert ex.gateway.subscriptions.ip_streams("127.0.0.1") == 0

    run(scenario(), timeout_s=170)


def test_provider_streams_capacity_and_answers_provisioning(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn, provisioning=True) as ex:
            key = parse_symbol(ex.symbol)
            async with socket(ex) as provider, socket(ex) as buyer:
                await provider.logon(ex.keys["provider"])
                await buyer.logon(ex.keys["trader"])
                capacity = {"gpu": key.gpu, "region": key.region, "start_ns": str(key.start_ns),
                            "end_ns": str(key.start_ns + HOUR_NS), "gpus": 5}  # fmt: skip
                answer = await provider.request("capacity.update", capacity)
                assert answer["status"] == 200, answer
                refused = await provider.request("capacity.update", {**capacity, "end_ns": "1"})
                assert refused["error"]["code"] == "CAPACITY_RANGE_INVALID"
                no_scope = await buyer.request("capacity.update", capacity)
                assert no_scope["status"] == 200  # the trader key has every scope in this harness
                assert (await provider.request("subscribe", {"channel": "provisioning"}))[
                    "status"
                ] == 200
                await provider.request(
                    "order.place", _order(ex.symbol, "2.000", side="sell", qty="2")
                )
                await buyer.request("order.place", _order(ex.symbol, "2.000", qty="2"))
                # gate closure: the engine assigns the delivery, provisioning asks the provider
                await ex.send(c.ClockTick(ts_ns=key.start_ns - 10 * 60 * 1_000_000_000))
                request = await provider.wait_push(
                    lambda p: p["channel"] == "provisioning", timeout_s=30
                )
                assert request["holder"] == TRADER and request["gpus"] == 2
                assert request["stage"] == "assigned"
                await ex.send(c.ClockTick(ts_ns=key.start_ns))
                await provider.wait_push(
                    lambda p: p["channel"] == "provisioning" and p["stage"] == "start", timeout_s=30
                )
                access = {"host": "10.0.0.7", "port": 22, "user": "gpu"}
                confirm = {"obligation_id": request["obligation_id"], "access": access}
                assert (await provider.request("provision.confirm", confirm))["status"] == 200
                deliveries = ex.gateway.deliveries.deliveries
                # the confirmation goes provisioning -> gx.commands -> engine: confirmed, then settle
                await ex.wait_for(
                    lambda: deliveries(PROVIDER, "confirmed", "provider"),
                    timeout_s=30, what="the delivery confirmed",
                )  # fmt: skip
                await ex.send(c.ClockTick(ts_ns=key.start_ns + HOUR_NS))
                await ex.wait_for(
                    lambda: deliveries(PROVIDER, "settled", "provider"),
                    timeout_s=30, what="the delivery settled",
                )  # fmt: skip
                settled = deliveries(TRADER, role="holder")[0]
                assert settled["outcome"] == "delivered"
                listed = await rest(ex, "GET", "/api/v1/deliveries?role=holder", ex.keys["trader"])
                assert listed.json()["deliveries"][0]["obligation_id"] == request["obligation_id"]

    run(scenario(), timeout_s=170)


def test_route_buys_the_cheapest_gpu_hours_across_regions(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            key = parse_symbol(ex.symbol)
            gw = ex.gateway
            west = next(
                i["symbol"] for i in gw.accounts.instruments()
                if i["symbol"].startswith(f"{key.gpu}.us-west.1h.") and parse_symbol(i["symbol"]).start_ns == key.start_ns
            )  # fmt: skip
            await ex.send(
                c.CapacityUpdate(account=PROVIDER, gpu=key.gpu, region="us-west", start_ns=key.start_ns,
                                 end_ns=key.start_ns + HOUR_NS, gpus=100)
            )  # fmt: skip
            await ex.wait_for(lambda: len(gw.accounts.capacity(PROVIDER)) >= 2)
            async with socket(ex) as seller, socket(ex) as buyer:
                await seller.logon(ex.keys["provider"])
                await buyer.logon(ex.keys["trader"])
                for symbol, price, qty in (
                    (ex.symbol, "2.300", "3"),
                    (west, "2.100", "2"),
                    (ex.symbol, "2.900", "5"),
                ):
                    placed = await seller.request(
                        "order.place", _order(symbol, price, side="sell", qty=qty)
                    )
                    assert placed["status"] == 200, placed
                await ex.wait_for(
                    lambda: gw.feed.ask_levels(west) and len(gw.feed.ask_levels(ex.symbol)) == 2
                )
                route = {"gpu": key.gpu, "gpu_hours": 4, "start_ns": str(key.start_ns),
                         "end_ns": str(key.start_ns + HOUR_NS), "max_price": "2.500",
                         "regions": ["us-east", "us-west"], "products": ["1h"]}  # fmt: skip
                answer = await buyer.request("order.route", route)
                assert answer["status"] == 200, answer
                result = answer["result"]
                bought = [
                    (ch["order"]["symbol"], ch["order"]["cum_qty"]) for ch in result["children"]
                ]
                assert bought == [
                    (west, "2"),
                    (ex.symbol, "2"),
                ]  # cheapest first, never above 2.500
                assert result["gpu_hours_filled"] == 4 and result["gpu_hours_left"] == 0
                assert all(ch["order"]["tif"] == "ioc" for ch in result["children"])

    run(scenario(), timeout_s=170)


def test_openapi_document_lists_every_rest_route(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            async with httpx.AsyncClient(base_url=ex.url) as client:
                document = (await client.get("/api/v1/schema/openapi.json")).json()
            served = {
                (path, method.upper())
                for path, item in document["paths"].items()
                for method in item
                if method in ("get", "post", "patch", "delete")
            }
            from litestar import Litestar

            routes = {
                (re.sub(r":\w+}", "}", route.path), method)
                for route in ex.gateway_app.routes
                if route.path.startswith("/api/v1") and not route.path.startswith("/api/v1/schema")
                for method in getattr(route, "methods", ())
                if method in ("GET", "POST", "PATCH", "DELETE")
            }
            assert routes and served == routes, served ^ routes
            assert isinstance(ex.gateway_app, Litestar)
            for path in (
                "/api/v1/orders",
                "/api/v1/book/{symbol}",
                "/api/v1/route",
                "/api/v1/keys",
            ):
                assert any(p == path for p, _ in served), path
            place = document["paths"]["/api/v1/orders"]["post"]
            assert "requestBody" in place

    run(scenario(), timeout_s=170)


def test_provider_reports_a_failure_and_the_holder_is_refunded(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn, provisioning=True) as ex:
            key = parse_symbol(ex.symbol)
            accounts = ex.gateway.accounts
            async with socket(ex) as provider, socket(ex) as buyer:
                await provider.logon(ex.keys["provider"])
                await buyer.logon(ex.keys["trader"])
                await provider.request("subscribe", {"channel": "provisioning"})
                await provider.request(
                    "order.place", _order(ex.symbol, "2.000", side="sell", qty="1")
                )
                await buyer.request("order.place", _order(ex.symbol, "2.000", qty="1"))
                paid = accounts.balances(TRADER)["available"]
                await ex.send(c.ClockTick(ts_ns=key.start_ns - 10 * 60 * 1_000_000_000))
                request = await provider.wait_push(
                    lambda p: p["channel"] == "provisioning", timeout_s=30
                )
                failed = await provider.request(
                    "provision.fail",
                    {
                        "obligation_id": request["obligation_id"],
                        "hours_delivered": 0,
                        "reason": "rack down",
                    },
                )
                assert failed["status"] == 200, failed
                deliveries = ex.gateway.deliveries.deliveries
                await ex.wait_for(
                    lambda: deliveries(TRADER, "settled", "holder"),
                    timeout_s=30, what="the failed delivery settled",
                )  # fmt: skip
                settled = deliveries(TRADER, role="holder")[0]
                assert settled["outcome"] == "failed"
                # refund of the notional and the fee, plus the penalty from the provider
                refunded = accounts.balances(TRADER)["available"]
                from decimal import Decimal

                assert Decimal(refunded) - Decimal(paid) >= Decimal("2.000") + Decimal("0.500")
                again = await provider.request(
                    "provision.fail", {"obligation_id": request["obligation_id"]}
                )
                assert again["error"]["code"] == "NOT_FOUND"  # answered once, nothing changes

    run(scenario(), timeout_s=170)
