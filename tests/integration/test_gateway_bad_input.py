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


# Numbers Decimal() or int() would take, or that do not fit int64: each is refused at the gateway.
LOOSE_NUMBERS = ["1e28", "9" * 100, "1E+999999", "1e20", "１２", "1_000", "+5", " 5 ", "٣", "²"]


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("a bug in a handler")


def test_ws_bad_numbers_and_a_failing_handler_get_stable_codes_and_the_socket_survives(broker, dsn):
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
                # cancel-on-disconnect: a socket that died on bad input would cancel this order
                logon = await ws.logon(ex.keys["trader"], cancel_on_disconnect="connection")
                assert logon["status"] == 200
                resting = await ws.request("order.place", order)
                assert resting["status"] == 200, resting
                order_id = resting["result"]["order"]["order_id"]
                before = _state(ex)
                window = {"start_ns": "1796076000000000000", "end_ns": "1796079600000000000"}
                route = {"gpu": "H100-SXM", "gpu_hours": 1, "max_price": "2.000", **window}
                capacity = {"gpu": "H100-SXM", "region": "us-east", "gpus": 1, **window}
                cases = [("order.place", {**order, "qty": n}, "QTY_INVALID") for n in LOOSE_NUMBERS]
                cases += [
                    ("order.place", {**order, "price": n}, "BAD_REQUEST") for n in LOOSE_NUMBERS
                ]
                cases += [
                    ("order.place", {**order, "price": "２.０００"}, "BAD_REQUEST"),
                    ("order.place", {**order, "expire_ns": "²"}, "BAD_REQUEST"),
                    ("order.place", {**order, "expire_ns": "１２"}, "BAD_REQUEST"),
                    ("order.place", {**order, "expire_ns": "99999999999999999999"}, "BAD_REQUEST"),
                    ("order.place", {**order, "client_order_id": "my-order\n"}, "BAD_REQUEST"),
                    ("order.amend", {"order_id": order_id, "price": "1e28", "qty": "1"}, "BAD_REQUEST"),
                    ("order.amend", {"order_id": order_id, "price": "2.000", "qty": "1e28"}, "QTY_INVALID"),
                    ("order.cancel", {"order_id": 2**64 - 1}, "BAD_REQUEST"),
                    ("order.route", {**route, "start_ns": "²"}, "BAD_REQUEST"),
                    ("order.route", {**route, "max_price": "1E+999999"}, "BAD_REQUEST"),
                    ("order.route", {**route, "gpu_hours": 2**63}, "BAD_REQUEST"),
                    ("capacity.update", {**capacity, "end_ns": "1e20"}, "BAD_REQUEST"),
                    ("capacity.update", {**capacity, "gpus": 2**63}, "BAD_REQUEST"),
                    ("cancel_all_after", {"timeout_ms": 2**64 - 1}, "BAD_REQUEST"),
                    ("subscribe", {"channel": "trades", "symbols": [ex.symbol], "resume_from_seq": 2**64 - 1}, "BAD_REQUEST"),
                    ("provision.fail", {"obligation_id": 1, "hours_delivered": 2**64 - 1}, "BAD_REQUEST"),
                ]  # fmt: skip
                for method, params, code in cases:
                    answer = await ws.request(method, params)
                    assert answer["status"] == 400, (method, params, answer)
                    assert answer["error"]["code"] == code, (method, params, answer)
                    assert answer["error"]["retryable"] is False

                # a bug in a handler: answered INTERNAL, logged, and the socket stays
                ex.gateway.desk.status = _raise
                answer = await ws.request("order.status", {"order_id": order_id})
                del ex.gateway.desk.status
                assert answer["status"] == 500 and answer["error"]["code"] == "INTERNAL", answer
                assert answer["error"]["retryable"] is False and answer["error"]["msg"]
                assert (await ws.request("ping"))["status"] == 200
                assert not ws.closed.is_set()
                assert _state(ex) == before  # nothing sent, the order still rests
                assert ex.gateway.accounts.order(TRADER, order_id)["status"] == "new"

    run(scenario(), timeout_s=170)


def test_rest_bad_numbers_deep_json_and_a_failing_handler_answer_wire_errors_never_a_bare_500(
    broker, dsn
):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            keys = ex.keys["trader"]
            order = {
                "symbol": ex.symbol,
                "side": "buy",
                "type": "limit",
                "price": "2.000",
                "qty": "1",
            }
            before = _state(ex)

            async def refused(method: str, path: str, body: object = None) -> str:
                answer = await rest(ex, method, path, keys, body)
                assert answer.status_code == 400, (method, path, body, answer.text)
                error = answer.json()["error"]
                assert error["msg"] and error["retryable"] is False, error
                return str(error["code"])

            for n in LOOSE_NUMBERS:
                assert await refused("POST", "/api/v1/orders", {**order, "qty": n}) == "QTY_INVALID"
                assert (
                    await refused("POST", "/api/v1/orders", {**order, "price": n}) == "BAD_REQUEST"
                )
                withdrawal = {"amount": n, "destination": "IBAN DE00 0000"}
                assert await refused("POST", "/api/v1/withdrawals", withdrawal) == "BAD_REQUEST"
            bad = [
                ("POST", "/api/v1/orders", {**order, "expire_ns": "²"}),
                ("POST", "/api/v1/orders", {**order, "client_order_id": "my-order\n"}),
                ("POST", "/api/v1/capacity", b'{"gpu": "H100-SXM", "region": "us-east", "start_ns": "0", "end_ns": "0", "gpus": %d}' % 2**70),
                ("GET", "/api/v1/ledger?from=%C2%B2", None),
                ("GET", "/api/v1/ledger?to=%D9%A3", None),
                ("GET", "/api/v1/ledger?cursor=%C2%B2.1", None),
                ("GET", "/api/v1/statements?from=%EF%BC%91%EF%BC%92", None),
                ("GET", "/api/v1/orders/%EF%BC%91%EF%BC%92", None),
                ("GET", "/api/v1/orders/1_0", None),
                ("DELETE", "/api/v1/orders/+5", None),
                ("GET", "/api/v1/orders/" + "9" * 30, None),
                ("POST", "/api/v1/deliveries/%C2%B2/dispute", None),
            ]  # fmt: skip
            for method, path, body in bad:
                assert await refused(method, path, body) == "BAD_REQUEST"
            deep = b'{"scopes": ' + b"[" * 2000 + b"]" * 2000 + b"}"
            assert await refused("POST", "/api/v1/keys", deep) == "BAD_REQUEST"

            # a bug in a handler: the wire's error object with INTERNAL, never Litestar's body
            ex.gateway.accounts.balances = _raise
            failed = await rest(ex, "GET", "/api/v1/balances", keys)
            del ex.gateway.accounts.balances
            assert failed.status_code == 500, failed.text
            error = failed.json()["error"]
            assert error["code"] == "INTERNAL" and error["retryable"] is False and error["msg"]
            assert _state(ex) == before

    run(scenario(), timeout_s=170)


def test_a_placement_never_sent_frees_its_client_order_id_for_the_retry(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            from aiokafka.errors import KafkaTimeoutError

            keys = ex.keys["trader"]
            order = {
                "symbol": ex.symbol,
                "side": "buy",
                "type": "limit",
                "price": "2.000",
                "qty": "1",
                "client_order_id": "retry-after-outage",
            }
            producer = ex.gateway.hub._producer

            async def refuse(*args: object, **kwargs: object) -> None:
                raise KafkaTimeoutError()  # as when the broker's metadata cannot be had

            producer.send = refuse
            try:
                first = await rest(ex, "POST", "/api/v1/orders", keys, order)
            finally:
                del producer.send
            assert first.status_code == 503, first.text
            assert first.json()["error"]["code"] == "UNAVAILABLE"
            assert first.json()["error"]["retryable"] is True
            assert first.json()["error"]["sent"] is False
            retry = await rest(ex, "POST", "/api/v1/orders", keys, order)
            assert retry.status_code == 200, retry.text  # not TIMEOUT for the next seven days
            assert "duplicate" not in retry.json()
            assert retry.json()["order"]["client_order_id"] == "retry-after-outage"
            again = await rest(ex, "POST", "/api/v1/orders", keys, order)
            assert again.status_code == 200 and again.json()["duplicate"] is True
            assert len(ex.gateway.accounts.open_orders(TRADER)) == 1

    run(scenario(), timeout_s=170)
