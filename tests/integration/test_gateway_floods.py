"""Floods: one key, one key over many connections and addresses, random-key logons, all at once.

A small, bounded version of `gx bench flood` (exchange/bench/flood.py): a couple of seconds at a
few hundred requests a second, against limits scaled down to match. It checks what must hold
whatever the machine's speed, never a timing: the limits refuse with RATE_LIMITED and a
retry_after, failed logons close their sockets with 1008, a refused request changes nothing,
a well-behaved client gets every answer, and every send queue stays within its cap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets

from exchange.gateway import ws as gateway_ws
from exchange.gateway.ratelimit import RateLimits
from tests.support.gateway_harness import (
    MAKER,
    PROVIDER,
    TRADER,
    Exchange,
    Socket,
    running_exchange,
)
from tests.support.offline_gateway import Gauge

from .conftest import run

pytestmark = pytest.mark.timeout(180)

# Scaled down from the defaults so that a flood of a few hundred requests a second meets them.
LIMITS = RateLimits(
    ws_messages_per_conn_per_s=40, ws_messages_per_conn_burst=40,
    orders_per_account_per_s=20, orders_per_account_burst=20,
    ws_connections_per_ip=10,
    ws_logons_per_ip_per_s=5, ws_logons_per_ip_burst=10,
)  # fmt: skip
FLOOD_S = 2.0
KEY_RATE = 300  # requests/s from one connection of one key
SPREAD_RATE = 240  # requests/s from SPREAD_CONNECTIONS connections of one key, together
SPREAD_CONNECTIONS = 8  # 30/s each: under the connection's limit, over the key's
SPREAD_IPS = ("127.0.0.10", "127.0.0.11")
LOGON_SOCKETS = 10  # from one address, random keys
GOOD_ORDERS = 20


def _ioc(symbol: str, cid: str) -> dict[str, Any]:
    """An IOC buy on a book without asks: accepted, then cancelled; nothing rests or fills."""
    return {"symbol": symbol, "side": "buy", "type": "limit", "price": "1.000", "qty": "1",
            "tif": "ioc", "client_order_id": cid}  # fmt: skip


@contextlib.asynccontextmanager
async def _socket_from(ex: Exchange, ip: str) -> AsyncIterator[Socket]:
    """A raw client connected from source address `ip` (any 127/8 address reaches loopback)."""
    async with websockets.connect(ex.ws_url, max_size=None, local_addr=(ip, 0)) as ws:
        client = Socket(ws)
        try:
            yield client
        finally:
            await client.close()


async def _flood(sockets: list[Socket], rate: int, symbol: str, tag: str) -> dict[str, str]:
    """Send `rate` requests/s over `sockets` for FLOOD_S (order.place and ping in turn).

    Return each placement's client order id -> the code it was answered with ("OK", the
    error code, or "CLOSED": the gateway closed the socket before answering it). Requests are
    sent whatever the answers; the answers are awaited at the end.
    """
    sent: list[tuple[Socket, int, str]] = []
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < FLOOD_S:
        for _ in range(int(rate * elapsed) - n):
            client = sockets[n % len(sockets)]
            n += 1
            if client.closed.is_set():
                continue
            client._next_id += 1
            if n % 2 == 0:
                cid = f"{tag}-{n}"
                body = {"id": client._next_id, "method": "order.place", "params": _ioc(symbol, cid)}
                sent.append((client, client._next_id, cid))
            else:
                body = {"id": client._next_id, "method": "ping", "params": {}}
            with contextlib.suppress(websockets.ConnectionClosed):
                await client.send_raw(orjson.dumps(body).decode())
        await asyncio.sleep(0.005)
    codes: dict[str, str] = {}
    deadline = time.monotonic() + 30
    for client, request_id, cid in sent:
        while request_id not in client.answers and not client.closed.is_set():
            assert time.monotonic() < deadline, f"{tag}: no answer to {cid}"
            await asyncio.sleep(0.01)
        answer = client.answers.get(request_id)
        if answer is None:
            codes[cid] = "CLOSED"
            continue
        codes[cid] = "OK" if answer["status"] == 200 else answer["error"]["code"]
        if codes[cid] == "RATE_LIMITED":
            assert answer["error"]["retry_after_ms"] > 0 and answer["error"]["retryable"], answer
    return codes


async def _logon_flood(ex: Exchange, ip: str) -> tuple[collections.Counter[str], list[int]]:
    """LOGON_SOCKETS sockets each sending random-key logons until closed; codes and close codes."""
    codes: collections.Counter[str] = collections.Counter()
    closes: list[int] = []

    async def one() -> None:
        async with _socket_from(ex, ip) as client:
            for _ in range(3 * LIMITS.ws_logon_failures_per_conn_max):
                params = {"key": "gx" + secrets.token_hex(12), "ts_ms": int(time.time() * 1000),
                          "nonce": secrets.token_hex(12), "signature": "0" * 64}  # fmt: skip
                with contextlib.suppress(websockets.ConnectionClosed):
                    await client.send_raw(
                        orjson.dumps({"id": 1, "method": "session.logon", "params": params})
                    )
                await asyncio.sleep(0.01)
            await asyncio.wait_for(client.closed.wait(), 10)
            closes.append(client.ws.close_code)
            # answers by id collapse: every logon here has id 1, so count the last one kept,
            # plus the answers without an id (a refused connection)
            for answer in [*client.answers.values(), *client.anonymous]:
                codes[answer["error"]["code"]] += 1
                if answer["status"] == 429:
                    assert answer["error"]["retry_after_ms"] > 0, answer

    await asyncio.gather(*(one() for _ in range(LOGON_SOCKETS)))
    return codes, closes


def test_floods_are_refused_with_stable_codes_and_a_quiet_client_keeps_every_answer(
    broker, dsn, monkeypatch
):
    queues: list[Gauge] = []
    real_init = gateway_ws.Connection.__init__

    def watched_init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.queue = Gauge(self.queue)
        queues.append(self.queue)

    monkeypatch.setattr(gateway_ws.Connection, "__init__", watched_init)

    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=LIMITS) as ex:
            gw, accounts, symbol = ex.gateway, ex.gateway.accounts, ex.symbol
            before = {a: accounts.balances(a)["available"] for a in (MAKER, PROVIDER)}
            async with contextlib.AsyncExitStack() as stack:
                good = await stack.enter_async_context(_socket_from(ex, "127.0.0.1"))
                assert (await good.logon(ex.keys["trader"]))["status"] == 200
                key_flood = await stack.enter_async_context(_socket_from(ex, "127.0.0.2"))
                assert (await key_flood.logon(ex.keys["maker"]))["status"] == 200
                spread = []
                for i in range(SPREAD_CONNECTIONS):
                    client = await stack.enter_async_context(
                        _socket_from(ex, SPREAD_IPS[i % len(SPREAD_IPS)])
                    )
                    assert (await client.logon(ex.keys["provider"]))["status"] == 200
                    spread.append(client)

                async def good_client() -> list[dict[str, Any]]:
                    answers = []
                    for i in range(GOOD_ORDERS):
                        answers.append(await good.request("order.place", _ioc(symbol, f"g-{i}")))
                        await asyncio.sleep(FLOOD_S / GOOD_ORDERS)
                    return answers

                key_codes, spread_codes, (logon_codes, closes), good_answers = await asyncio.gather(
                    _flood([key_flood], KEY_RATE, symbol, "k"),
                    _flood(spread, SPREAD_RATE, symbol, "s"),
                    _logon_flood(ex, "127.0.0.3"),
                    good_client(),
                )

                # the well-behaved client: every answer, every order accepted
                assert [a["status"] for a in good_answers] == [200] * GOOD_ORDERS, good_answers
                # one key, one connection: the connection's and the key's limits refuse, and
                # past its refusals the connection is closed (1008)
                assert set(key_codes.values()) <= {"OK", "RATE_LIMITED", "CLOSED"}
                assert "RATE_LIMITED" in key_codes.values() and "OK" in key_codes.values()
                await asyncio.wait_for(key_flood.closed.wait(), 10)
                assert key_flood.ws.close_code == gateway_ws.CLOSE_POLICY_VIOLATION
                # one key over many connections, each under its own limit: the account's limits
                # refuse, and once its refusals are spent its connections are closed
                assert set(spread_codes.values()) <= {"OK", "RATE_LIMITED", "CLOSED"}
                assert "RATE_LIMITED" in spread_codes.values()
                # random-key logons: refused, then closed with 1008 (or refused at connect)
                assert set(logon_codes) <= {"UNAUTHORIZED", "RATE_LIMITED"}, logon_codes
                assert closes == [gateway_ws.CLOSE_POLICY_VIOLATION] * LOGON_SOCKETS, closes

                # a refused placement left nothing: no order, no reserved client order id
                for account, codes in ((MAKER, key_codes), (PROVIDER, spread_codes)):
                    for cid, code in codes.items():
                        if code == "CLOSED":
                            continue  # unread: in the socket the gateway closed
                        order = accounts.order_by_client_id(account, cid)
                        assert (order is not None) == (code == "OK"), (cid, code, order)
                    await ex.wait_for(lambda a=account: not accounts.open_orders(a))
                    assert accounts.balances(account)["available"] == before[account]
                refused = next(cid for cid, code in key_codes.items() if code == "RATE_LIMITED")
                await asyncio.sleep(1.0)  # the key's bucket refills
                again = await stack.enter_async_context(_socket_from(ex, "127.0.0.2"))
                assert (await again.logon(ex.keys["maker"]))["status"] == 200
                retried = await again.request("order.place", _ioc(symbol, refused))
                assert retried["status"] == 200 and retried["result"]["order"]["status"] != "new"
                # the good client's account saw only its own orders
                assert not accounts.open_orders(TRADER)

            # bounded: no queue past its cap, and the closed connections left nothing behind
            assert queues and max(q.most for q in queues) <= gw.send_queue_max
            await ex.wait_for(lambda: not any(gw.connections.count(ip) for ip in _IPS))
            assert len(gw.limiters["ws_message"]) == 0
            assert len(gw.limiters["ws_logon_conn"]) == 0
            assert not any(gw.sessions.count(k.key_id) for k in ex.keys.values())

    run(scenario(), timeout_s=170)


_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", *SPREAD_IPS)


THROTTLE_LIMITS = RateLimits(ws_messages_per_conn_per_s=10, ws_messages_per_conn_burst=10)
THROTTLE_BURST_REQUESTS = 200  # sent at once, far past the connection's burst
THROTTLE_WATCH_S = 1.0


def test_a_connection_over_its_message_limit_is_read_at_its_limit_and_others_go_first(broker, dsn):
    # Found by gx bench flood: the gateway handled a flooding connection's whole socket read
    # (hundreds of frames, each refused RATE_LIMITED) before any other client's request, and
    # answered every excess frame at once: the flood cost the gateway what the client sent, not
    # what its limit allows. Now a connection refused by its own limit is read again only after
    # its retry_after, and every frame gives the other connections their turn.
    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=THROTTLE_LIMITS) as ex:
            async with (
                _socket_from(ex, "127.0.0.20") as flood,
                _socket_from(ex, "127.0.0.21") as quiet,
            ):
                started = time.monotonic()
                for i in range(THROTTLE_BURST_REQUESTS):
                    await flood.ws.send(orjson.dumps({"id": i + 1, "method": "ping"}).decode())
                pong = await quiet.request("ping", {})
                assert pong["status"] == 200
                answered_first = len(flood.answers)
                await asyncio.sleep(THROTTLE_WATCH_S)
                elapsed_s = time.monotonic() - started
                answered = len(flood.answers)
                codes = collections.Counter(a["status"] for a in flood.answers.values())
            lim = THROTTLE_LIMITS
            # every frame read is answered, refusals with their retry_after ...
            assert set(codes) <= {200, 429} and codes[200] >= lim.ws_messages_per_conn_burst
            assert all(
                a["error"]["retry_after_ms"] > 0
                for a in flood.answers.values()
                if a["status"] == 429
            )
            # ... but no more are read than the limit lets through, plus one refusal per wait
            allowed = (
                lim.ws_messages_per_conn_burst + 2 * lim.ws_messages_per_conn_per_s * elapsed_s
            )
            assert answered <= allowed + 1 < THROTTLE_BURST_REQUESTS, (answered, allowed)
            # the quiet client was not queued behind the flood's frames
            assert answered_first < THROTTLE_BURST_REQUESTS, answered_first

    run(scenario(), timeout_s=120)


ACCOUNT_LIMITS = RateLimits(
    ws_messages_per_conn_per_s=50, ws_messages_per_conn_burst=50,
    ws_messages_per_account_per_s=20, ws_messages_per_account_burst=40,
    ws_refusals_per_account_per_s=1, ws_refusals_per_account_burst=10,
)  # fmt: skip
ACCOUNT_SOCKETS = 4


def test_an_accounts_sockets_share_one_message_limit_and_a_socket_past_its_refusals_is_closed(
    broker, dsn
):
    # gx bench flood: one key over 200 connections, each under its own limit, asked 10,000
    # times a second; only its orders were limited. Now every request of the account's
    # sockets takes from one bucket, and a socket answered RATE_LIMITED past
    # `ws_refusals_per_account_burst` times (the account's sockets together) is closed with 1008.
    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=ACCOUNT_LIMITS) as ex:
            async with contextlib.AsyncExitStack() as stack:
                sockets = [
                    await stack.enter_async_context(_socket_from(ex, "127.0.0.30"))
                    for _ in range(ACCOUNT_SOCKETS)
                ]
                for client in sockets:  # logons are not counted against the account's bucket
                    assert (await client.logon(ex.keys["maker"]))["status"] == 200
                started = time.monotonic()
                answers = [
                    await client.request("ping", {}) for client in sockets for _ in range(15)
                ]
                elapsed_s = time.monotonic() - started
                codes = collections.Counter(a["status"] for a in answers)
                # 60 pings, each socket under its own 50: the account's burst, and what its
                # rate refilled meanwhile, went through
                lim = ACCOUNT_LIMITS
                allowed = lim.ws_messages_per_account_burst + lim.ws_messages_per_account_per_s * elapsed_s  # fmt: skip
                assert codes[429] and codes[200] <= allowed + 1 < 60, (codes, allowed)
                refused = next(a for a in answers if a["status"] == 429)
                assert "WebSocket messages per account" in refused["error"]["msg"], refused
                # a socket that keeps asking past its refusals is closed
                flood = sockets[0]
                for i in range(ACCOUNT_LIMITS.ws_refusals_per_account_burst + 20):
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await flood.send_raw(orjson.dumps({"id": 1000 + i, "method": "ping"}))
                await asyncio.wait_for(flood.closed.wait(), 30)
                assert flood.ws.close_code == gateway_ws.CLOSE_POLICY_VIOLATION

    run(scenario(), timeout_s=120)
