"""Bad input at the gateway: each gets a clear error with a stable code, and nothing changes."""

from __future__ import annotations

import time

import pytest

from tests.support.gateway_harness import TRADER, rest, running_exchange, signed_headers, socket

from .conftest import run

pytestmark = pytest.mark.timeout(180)


def _state(ex) -> tuple:
    """What an accepted command would change: the trader's orders, cash and the commands sent."""
    accounts = ex.gateway.accounts
    return (
        accounts.open_orders(TRADER),
        accounts.balances(TRADER),
        ex.gateway.hub.stats.commands_sent,
    )


def test_ws_bad_requests_get_stable_codes_and_the_connection_survives(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            order = {
                "symbol": ex.symbol,
                "side": "buy",
                "type": "limit",
                "price": "2.000",
                "qty": "1",
            }
            async with socket(ex) as ws:
                # before logon: order entry and private channels are refused
                answer = await ws.request("order.place", order)
                assert answer["error"]["code"] == "NOT_LOGGED_ON" and answer["status"] == 401
                answer = await ws.request("subscribe", {"channel": "executions"})
                assert answer["error"]["code"] == "NOT_LOGGED_ON"
                assert (await ws.logon(ex.keys["trader"]))["status"] == 200
                before = _state(ex)

                await ws.send_raw("{not json")
                cases = [
                    ("order.place", {**order, "price": "2.0005"}, "PRICE_OFF_TICK"),
                    ("order.place", {**order, "price": 2}, "BAD_REQUEST"),
                    ("order.place", {**order, "qty": "1.5"}, "QTY_INVALID"),
                    ("order.place", {**order, "qty": "0"}, "QTY_INVALID"),
                    ("order.place", {**order, "side": "up"}, "BAD_REQUEST"),
                    ("order.place", {**order, "colour": "red"}, "BAD_REQUEST"),
                    ("order.place", {**order, "symbol": "H100-SXM.mars.1h.2026-11-30T21"}, "UNKNOWN_SYMBOL"),
                    ("order.place", {**order, "symbol": "nonsense"}, "UNKNOWN_SYMBOL"),
                    ("order.place", {**order, "qty": "100000"}, "LOTS_ABOVE_MAX"),
                    ("order.place", {**order, "price": "5000.000"}, "PRICE_OUT_OF_BAND"),
                    ("order.fly", {}, "UNKNOWN_METHOD"),
                    ("subscribe", {"channel": "gossip", "symbols": ["x"]}, "UNKNOWN_CHANNEL"),
                    ("subscribe", {"channel": "book", "symbols": ["H100-SXM.us-east.1h.1999-01-01T00"]}, "UNKNOWN_SYMBOL"),
                    ("subscribe", {"channel": "book", "symbols": [ex.symbol], "depth": 7}, "BAD_REQUEST"),
                    ("order.cancel", {"order_id": 999_999}, "UNKNOWN_ORDER"),
                    ("order.amend", {"order_id": 999_999, "price": "1.000", "qty": "1"}, "UNKNOWN_ORDER"),
                    ("cancel_all_after", {"timeout_ms": 5}, "BAD_REQUEST"),
                    ("provision.confirm", {"obligation_id": 1, "access": {"host": "gpu.example.com", "port": 22, "user": "root"}}, "NOT_FOUND"),
                ]  # fmt: skip
                for method, params, code in cases:
                    answer = await ws.request(method, params)
                    assert answer["status"] != 200, (method, params, answer)
                    assert answer["error"]["code"] == code, (method, params, answer)
                    assert answer["error"]["msg"], answer
                    assert answer["error"]["retryable"] is False
                oversized = (
                    '{"id": 99, "method": "ping", "params": {"pad": "' + "x" * 20_000 + '"}}'
                )
                await ws.send_raw(oversized)
                await ws.send_raw('["an", "array"]')
                answer = await ws.request("ping")
                assert answer["status"] == 200  # the connection survived all of it
                errors = ws.anonymous
                codes = sorted(a["error"]["code"] for a in errors)
                assert codes == ["BAD_REQUEST", "BAD_REQUEST", "PAYLOAD_TOO_LARGE"], errors
                after = _state(ex)
                # only the two engine refusals reached the engine; nothing else changed
                assert after[:2] == before[:2]
                assert after[2] - before[2] == 2

    run(scenario(), timeout_s=170)


def test_another_accounts_order_is_unknown_and_untouched(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            order = {
                "symbol": ex.symbol,
                "side": "buy",
                "type": "limit",
                "price": "2.000",
                "qty": "1",
            }
            placed = await rest(ex, "POST", "/api/v1/orders", ex.keys["trader"], order)
            order_id = placed.json()["order"]["order_id"]
            async with socket(ex) as other:
                await other.logon(ex.keys["maker"])
                for method, params in (
                    ("order.cancel", {"order_id": order_id}),
                    ("order.amend", {"order_id": order_id, "price": "1.000", "qty": "1"}),
                    ("order.status", {"order_id": order_id}),
                ):
                    answer = await other.request(method, params)
                    assert answer["error"]["code"] == "UNKNOWN_ORDER", answer
            gone = await rest(ex, "DELETE", f"/api/v1/orders/{order_id}", ex.keys["maker"])
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "UNKNOWN_ORDER"
            mine = ex.gateway.accounts.order(TRADER, order_id)
            assert mine["status"] == "new" and mine["price"] == "2.000"

    run(scenario(), timeout_s=170)


def test_rest_signatures_refused_with_stable_codes(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            import httpx

            keys = ex.keys["trader"]
            path = "/api/v1/balances"

            async def get(headers: dict) -> httpx.Response:
                async with httpx.AsyncClient(base_url=ex.url) as client:
                    return await client.get(path, headers=headers)

            good = signed_headers(keys, "GET", path)
            assert (await get(good)).status_code == 200
            replay = await get(good)
            assert replay.status_code == 401 and replay.json()["error"]["code"] == "NONCE_REUSED"
            old = signed_headers(keys, "GET", path, ts_ms=int(time.time() * 1000) - 60_000)
            assert (await get(old)).json()["error"]["code"] == "TIMESTAMP_EXPIRED"
            forged = signed_headers(keys, "GET", path, signature="0" * 64)
            assert (await get(forged)).json()["error"]["code"] == "BAD_SIGNATURE"
            wrong_path = signed_headers(keys, "GET", "/api/v1/positions")
            assert (await get(wrong_path)).json()["error"]["code"] == "BAD_SIGNATURE"
            unknown = signed_headers(keys, "GET", path, key="gx" + "0" * 24)
            assert (await get(unknown)).json()["error"]["code"] == "UNAUTHORIZED"
            missing = await get({})
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "UNAUTHORIZED"

            # missing scope: a read-only key cannot trade, and nothing is placed
            read_key, secret = await ex.gateway.keys.create(TRADER, ("read",))
            from tests.support.gateway_harness import Keys

            reader = Keys(read_key.key_id, secret, TRADER)
            order = {
                "symbol": ex.symbol,
                "side": "buy",
                "type": "limit",
                "price": "2.000",
                "qty": "1",
            }
            refused = await rest(ex, "POST", "/api/v1/orders", reader, order)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
            assert ex.gateway.accounts.open_orders(TRADER) == []
            malformed = await rest(ex, "POST", "/api/v1/orders", keys, b"{nope")
            assert malformed.status_code == 400
            assert malformed.json()["error"]["code"] == "BAD_REQUEST"
            huge = await rest(ex, "POST", "/api/v1/orders", keys, b"{" + b" " * 100_000 + b"}")
            assert huge.status_code == 413
            assert huge.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
            assert ex.gateway.accounts.open_orders(TRADER) == []

    run(scenario(), timeout_s=170)
