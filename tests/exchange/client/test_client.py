"""SDK units without the gateway: request signing, idempotent retries, error mapping, and the
WebSocket session's sequence, resync and reconnect rules against a scripted in-process server.

The REST tests capture requests with `httpx.MockTransport`: they check how requests are built,
not the gateway (the integration tests run the SDK against the real server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from exchange import wire
from exchange.client import (
    AuthError,
    BadRequestError,
    Client,
    GatewayError,
    NetworkError,
    NotFoundError,
    Position,
    ProviderAgent,
    ProvisionRequest,
    ProvisionResult,
    RateLimitError,
    RejectedError,
    UnavailableError,
)
from exchange.client.errors import error_from_answer

KEY = "gxk_0123456789abcdef0123456789abcdef"
SECRET = "s3cr3t-for-tests"
SYMBOL = "H100-SXM.us-east.1h.2026-12-01T14"
BASE = "http://gateway.test"

ORDER = {
    "order_id": 7,
    "client_order_id": "c1",
    "symbol": SYMBOL,
    "side": "buy",
    "type": "limit",
    "tif": "gtc",
    "price": "2.400",
    "qty": "5",
    "cum_qty": "2",
    "leaves_qty": "3",
    "status": "partially_filled",
    "post_only": False,
    "stp": "cancel_taker",
    "expire_ns": "0",
    "ts_ns": "1796083200000000000",
}
FILL = {
    "trade_id": 11,
    "order_id": 7,
    "symbol": SYMBOL,
    "side": "buy",
    "price": "2.400",
    "qty": "2",
    "fee": "0.004800",
    "liquidity": "taker",
    "ts_ns": "1796083200000000000",
}

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **kwargs: Any) -> Client:
    return Client(
        BASE, KEY, SECRET, transport=httpx.MockTransport(handler), retry_backoff_s=0, **kwargs
    )


def _assert_signed(request: httpx.Request) -> None:
    """The signature (version 2) verifies over the exact path-with-query and body bytes sent."""
    headers = request.headers
    assert headers[wire.HEADER_KEY] == KEY and headers[wire.HEADER_SIGN_VERSION] == "2"
    nonce = headers[wire.HEADER_NONCE]
    assert 8 <= len(nonce) <= 64 and all(c.isalnum() or c in "_-" for c in nonce)
    path = request.url.raw_path.decode()
    expected = wire.signature(
        SECRET, KEY, headers[wire.HEADER_TS], nonce, request.method, path, request.content
    )
    assert headers[wire.HEADER_SIGNATURE] == expected


# ---------------------------------------------------------------------- REST signing


def test_signed_post_covers_the_exact_body_bytes_sent():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"order": ORDER, "fills": [FILL]})

    async def main() -> Any:
        async with _client(handler) as c:
            return await c.create_order(SYMBOL, "limit", "buy", 5, "2.400", {"tif": "ioc"})

    result = asyncio.run(main())
    (request,) = seen
    _assert_signed(request)
    assert request.method == "POST" and request.url.raw_path == b"/api/v1/orders"
    body = json.loads(request.content)
    assert body["price"] == "2.400" and body["qty"] == "5" and body["tif"] == "ioc"
    assert body["client_order_id"].startswith("sdk-")
    assert result.order.price == Decimal("2.400") and result.order.leaves_qty == Decimal(3)
    assert result.fills[0].fee == Decimal("0.004800")


def test_signed_get_covers_the_query_string_and_an_empty_body():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"orders": [ORDER]})

    async def main() -> Any:
        async with _client(handler) as c:
            await c.fetch_open_orders(SYMBOL)
            return await c.fetch_open_orders(SYMBOL)

    orders = asyncio.run(main())
    first, second = seen
    for request in seen:
        _assert_signed(request)
        assert request.content == b""
        assert request.url.raw_path.decode() == f"/api/v1/orders?status=open&symbol={SYMBOL}"
    assert first.headers[wire.HEADER_NONCE] != second.headers[wire.HEADER_NONCE]
    assert orders[0].order_id == 7


def test_public_calls_are_not_signed_and_private_calls_need_a_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "symbol": SYMBOL,
                "interval": "1m",
                "candles": [
                    {
                        "start_ns": "1796083200000000000",
                        "open": "2.400",
                        "high": "2.450",
                        "low": "2.390",
                        "close": "2.410",
                        "volume": "12",
                        "trades": 3,
                    }
                ],
            },
        )

    async def main() -> Any:
        async with Client(BASE, transport=httpx.MockTransport(handler)) as c:
            rows = await c.fetch_ohlcv(SYMBOL, "1m", limit=5)
            with pytest.raises(AuthError):
                await c.fetch_balance()
            return rows

    rows = asyncio.run(main())
    (request,) = seen
    assert wire.HEADER_SIGNATURE not in request.headers
    assert request.url.raw_path.decode() == f"/api/v1/candles/{SYMBOL}?interval=1m&limit=5"
    assert rows == [
        [1796083200000, Decimal("2.400"), Decimal("2.450"), Decimal("2.390"), Decimal("2.410"), 12]
    ]


# ---------------------------------------------------------------------- idempotent retries


def test_create_order_retry_after_503_reuses_the_client_order_id():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            error = {"code": "UNAVAILABLE", "msg": "engine busy", "retryable": True}
            return httpx.Response(503, json={"error": error})
        return httpx.Response(200, json={"order": ORDER, "fills": [], "duplicate": True})

    async def main() -> Any:
        async with _client(handler) as c:
            return await c.create_order(SYMBOL, "limit", "buy", 5, Decimal("2.400"))

    result = asyncio.run(main())
    assert len(seen) == 2
    first, second = (json.loads(r.content) for r in seen)
    assert first == second  # same body, same client_order_id
    assert first["client_order_id"]
    assert seen[0].headers[wire.HEADER_NONCE] != seen[1].headers[wire.HEADER_NONCE]
    for request in seen:
        _assert_signed(request)
    assert result.duplicate and result.order.order_id == 7


def test_create_order_retry_after_a_network_error_reuses_the_given_client_order_id():
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            raise httpx.ConnectError("connection reset", request=request)
        return httpx.Response(200, json={"order": ORDER, "fills": []})

    async def main() -> Any:
        async with _client(handler) as c:
            params = {"client_order_id": "mine-1", "post_only": True}
            return await c.create_order(SYMBOL, "limit", "buy", 5, "2.400", params)

    asyncio.run(main())
    assert [b["client_order_id"] for b in bodies] == ["mine-1", "mine-1"]
    assert bodies[0]["post_only"] is True


def test_create_order_retries_are_bounded():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(504, json={"error": {"code": "TIMEOUT", "msg": "slow"}})

    async def main() -> None:
        async with _client(handler, retries_max=2) as c:
            await c.create_order(SYMBOL, "limit", "buy", 1, "2.400")

    with pytest.raises(UnavailableError) as caught:
        asyncio.run(main())
    assert caught.value.code == "TIMEOUT" and caught.value.retryable
    assert len(seen) == 3
    assert len({json.loads(r.content)["client_order_id"] for r in seen}) == 1


def test_rejection_is_not_retried():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        error = {"code": "INSUFFICIENT_CASH", "msg": "needs 12.0", "engine_code": 2001}
        return httpx.Response(422, json={"error": {**error, "retryable": False}})

    async def main() -> None:
        async with _client(handler) as c:
            await c.create_order(SYMBOL, "limit", "buy", 1, "2.400")

    with pytest.raises(RejectedError) as caught:
        asyncio.run(main())
    assert len(seen) == 1
    assert caught.value.engine_code == 2001 and caught.value.code == "INSUFFICIENT_CASH"


# ---------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "PRICE_OFF_TICK", BadRequestError),
        (413, "PAYLOAD_TOO_LARGE", BadRequestError),
        (401, "BAD_SIGNATURE", AuthError),
        (403, "FORBIDDEN", AuthError),
        (404, "UNKNOWN_ORDER", NotFoundError),
        (422, "REJECTED", RejectedError),
        (429, "RATE_LIMITED", RateLimitError),
        (503, "UNAVAILABLE", UnavailableError),
    ],
)
def test_error_body_maps_to_its_exception_class(status, code, kind):
    error = wire.WireError(code, f"{code} happened", retry_after_ms=250 if status == 429 else 0)
    assert error.status == status

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": error.body()})

    async def main() -> None:
        async with _client(handler, retries_max=0) as c:
            await c.fetch_order(7)

    with pytest.raises(kind) as caught:
        asyncio.run(main())
    assert caught.value.code == code and caught.value.status == status
    assert caught.value.msg == f"{code} happened"
    assert caught.value.retryable == (code in wire.RETRYABLE)
    if status == 429:
        assert caught.value.retry_after_ms == 250


def test_websocket_error_answer_maps_the_same_way():
    error = error_from_answer(
        422, {"code": "PRICE_OUT_OF_BAND", "msg": "band", "retryable": False, "reason": "x"}
    )
    assert isinstance(error, RejectedError) and error.reason == "x"
    assert isinstance(error_from_answer(401, {"code": "NOT_LOGGED_ON", "msg": "m"}), AuthError)


def test_non_json_error_body_still_maps_by_status():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    async def main() -> None:
        async with _client(handler, retries_max=0) as c:
            await c.fetch_balance()

    with pytest.raises(UnavailableError) as caught:
        asyncio.run(main())
    assert caught.value.code == "HTTP_502" and "bad gateway" in caught.value.msg


# ---------------------------------------------------------------------- a scripted WebSocket


class _Conn:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.conn_seq = 0

    async def push(self, body: dict[str, Any], *, skip: int = 0) -> None:
        self.conn_seq += 1 + skip
        await self.ws.send(json.dumps({"conn_seq": self.conn_seq, **body}))


class FakeGateway:
    """Answer every request with status 200 and `results[method]`, then send `script`'s pushes.

    A logon is verified with `wire.signature`. Requests of a method in `drop_once` are dropped
    unanswered the first time, closing the connection (an answer lost with it).
    """

    def __init__(
        self,
        script: Callable[[FakeGateway, _Conn, dict[str, Any]], list[dict[str, Any]]] | None = None,
        results: dict[str, dict[str, Any]] | None = None,
        drop_once: frozenset[str] = frozenset(),
    ) -> None:
        self.script = script or (lambda gateway, conn, request: [])
        self.results = results or {}
        self.drop_once = set(drop_once)
        self.conns: list[_Conn] = []
        self.requests: list[tuple[int, dict[str, Any]]] = []  # (connection index, request)

    def methods(self, method: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, r["params"]) for i, r in self.requests if r["method"] == method]

    async def serve(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._serve(ws)

    async def _serve(self, ws: ServerConnection) -> None:
        conn = _Conn(ws)
        self.conns.append(conn)
        index = len(self.conns) - 1
        async for frame in ws:
            request = json.loads(frame)
            self.requests.append((index, request))
            method = request["method"]
            if method in self.drop_once:
                self.drop_once.discard(method)
                await ws.close()
                return
            answer: dict[str, Any] = {"id": request["id"], "status": 200}
            answer["result"] = self.results.get(method, {})
            if method == "session.logon":
                p = request["params"]
                expected = wire.signature(
                    SECRET, p["key"], p["ts_ms"], p["nonce"], "GET", "/ws", b""
                )
                if p["signature"] != expected or p.get("sig_version") != 2:
                    error = {"code": "BAD_SIGNATURE", "msg": "bad", "retryable": False}
                    answer = {"id": request["id"], "status": 401, "error": error}
                answer.setdefault("result", {"account": 1, "scopes": ["read", "trade"]})
            elif method == "subscribe":
                resumed = "resume_from_seq" in request["params"]
                answer["result"] = {**request["params"], "resumed": resumed}
            pushes = self.script(self, conn, request)
            await ws.send(json.dumps(answer))
            for push in pushes:
                await conn.push(push)


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _run(gateway: FakeGateway, body: Callable[[str], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serve(gateway.serve, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(body(f"ws://127.0.0.1:{port}/ws"), 20)

    asyncio.run(main())


def _book(kind: str, seq: int, bids: list[list[str]], asks: list[list[str]], **extra: Any):
    text = ",".join(f"{p}:{q}" for p, q in asks) + "|" + ",".join(f"{p}:{q}" for p, q in bids)
    msg: dict[str, Any] = {"channel": "book", "type": kind, "symbol": SYMBOL, "seq": seq}
    msg.update(bids=bids, asks=asks, checksum=zlib.crc32(text.encode()), ts_ns="1")
    if kind == "update":
        msg["prev_seq"] = seq - 1
    msg.update(extra)
    return msg


def _is_fresh_subscribe(request: dict[str, Any]) -> bool:
    return request["method"] == "subscribe" and "resume_from_seq" not in request["params"]


def test_conn_seq_gap_reconnects_and_resumes_the_book_from_its_last_seq():
    def script(gateway: FakeGateway, conn: _Conn, request: dict[str, Any]):
        if _is_fresh_subscribe(request):
            return [_book("snapshot", 10, [["2.400", "5"]], [["2.401", "3"]])]
        return []

    gateway = FakeGateway(script)

    async def body(url: str) -> None:
        async with Client(BASE, KEY, SECRET, ws_url=url, cancel_on_disconnect="account") as c:
            books = c.watch_order_book(SYMBOL).__aiter__()
            book = await books.__anext__()
            assert book.seq == 10
            conn = gateway.conns[0]
            await conn.push(_book("update", 11, [["2.400", "6"]], [["2.401", "3"]]))
            assert (await books.__anext__()).seq == 11
            # conn_seq jumps: a push was lost, so the client reconnects and resumes at seq 11.
            await conn.push(_book("update", 12, [["2.400", "7"]], [["2.401", "3"]]), skip=1)
            await _until(lambda: len(gateway.methods("subscribe")) == 2)
            index, params = gateway.methods("subscribe")[1]
            assert index == 1 and params["resume_from_seq"] == 11 and params["depth"] == 10
            await gateway.conns[1].push(_book("update", 12, [["2.400", "7"]], [["2.401", "3"]]))
            book = await books.__anext__()
            assert book.seq == 12 and book.best_bid() == ("2.400", "7")
        logons = gateway.methods("session.logon")
        assert [i for i, _ in logons] == [0, 1]
        assert logons[0][1]["nonce"] != logons[1][1]["nonce"]
        assert logons[0][1]["cancel_on_disconnect"] == "account"

    _run(gateway, body)


def test_checksum_mismatch_unsubscribes_and_subscribes_for_a_fresh_snapshot():
    def script(gateway: FakeGateway, conn: _Conn, request: dict[str, Any]):
        if request["method"] != "subscribe":
            return []
        if len(gateway.methods("subscribe")) == 1:
            return [_book("snapshot", 1, [["2.400", "5"]], [])]
        return [_book("snapshot", 5, [["2.300", "1"]], [])]

    gateway = FakeGateway(script)

    async def body(url: str) -> None:
        async with Client(BASE, ws_url=url) as c:
            watch = c.watch_order_book(SYMBOL)
            assert (await watch).seq == 1
            await gateway.conns[0].push(_book("update", 2, [["2.400", "4"]], [], checksum=123))
            book = await watch
            assert book.seq == 5 and book.bids() == [("2.300", "1")]
        assert [r["method"] for _, r in gateway.requests] == [
            "subscribe",
            "unsubscribe",
            "subscribe",
        ]
        assert "resume_from_seq" not in gateway.methods("subscribe")[1][1]
        assert len(gateway.conns) == 1

    _run(gateway, body)


def test_resync_required_subscribes_again_for_a_fresh_snapshot():
    def script(gateway: FakeGateway, conn: _Conn, request: dict[str, Any]):
        if request["method"] != "subscribe":
            return []
        seq = 1 if len(gateway.methods("subscribe")) == 1 else 40
        return [_book("snapshot", seq, [["2.400", "5"]], [])]

    gateway = FakeGateway(script)

    async def body(url: str) -> None:
        async with Client(BASE, ws_url=url) as c:
            watch = c.watch_order_book(SYMBOL)
            assert (await watch).seq == 1
            notice = {"channel": "book", "type": "resync_required", "symbol": SYMBOL}
            await gateway.conns[0].push({**notice, "reason": "slow consumer"})
            assert (await watch).seq == 40
        assert [r["method"] for _, r in gateway.requests] == ["subscribe", "subscribe"]

    _run(gateway, body)


def test_book_behind_its_heartbeat_seq_for_a_whole_interval_resyncs():
    def script(gateway: FakeGateway, conn: _Conn, request: dict[str, Any]):
        if request["method"] != "subscribe":
            return []
        seq = 10 if len(gateway.methods("subscribe")) == 1 else 30
        return [_book("snapshot", seq, [["2.400", "5"]], [])]

    gateway = FakeGateway(script)

    async def body(url: str) -> None:
        async with Client(BASE, ws_url=url) as c:
            watch = c.watch_order_book(SYMBOL)
            assert (await watch).seq == 10
            beat = {"channel": "heartbeat", "ts_ns": "1", "seqs": {f"book:{SYMBOL}:10": 10}}
            await gateway.conns[0].push(beat)  # in step: nothing happens
            await gateway.conns[0].push({**beat, "seqs": {f"book:{SYMBOL}:10": 12}})
            await asyncio.sleep(0.05)
            assert len(gateway.requests) == 1  # update 12 may still be on its way
            await gateway.conns[0].push({**beat, "seqs": {f"book:{SYMBOL}:10": 12}})
            assert (await watch).seq == 30  # a heartbeat later it has not come: resync
        assert [r["method"] for _, r in gateway.requests] == [
            "subscribe",
            "unsubscribe",
            "subscribe",
        ]

    _run(gateway, body)


def _trade(seq: int, prev_seq: int, ids: tuple[int, ...] = ()) -> dict[str, Any]:
    """A `trades` push with the trades `ids` (default: one trade whose id is the seq)."""
    rows = [
        {"trade_id": i, "price": "2.400", "qty": "1", "side": "buy", "ts_ns": "1"}
        for i in ids or (seq,)
    ]
    return {
        "channel": "trades",
        "type": "update",
        "symbol": SYMBOL,
        "seq": seq,
        "prev_seq": prev_seq,
        "trades": rows,
        "ts_ns": "1",
    }


def test_trades_gap_resubscribes_resuming_from_the_last_seq():
    gateway = FakeGateway()

    async def body(url: str) -> None:
        async with Client(BASE, ws_url=url) as c:
            trades = c.watch_trades(SYMBOL).__aiter__()
            first = asyncio.ensure_future(trades.__anext__())
            await _until(lambda: len(gateway.requests) == 1)
            conn = gateway.conns[0]
            await conn.push(_trade(100, 90))
            assert (await first).trade_id == 100
            await conn.push(_trade(130, 120))  # the push with seq 120 was lost
            await _until(lambda: len(gateway.methods("subscribe")) == 2)
            assert gateway.methods("subscribe")[1][1]["resume_from_seq"] == 100
            await conn.push(_trade(120, 100))  # replayed from the resume point
            await conn.push(_trade(130, 120))
            await conn.push(_trade(120, 100))  # a duplicate is dropped
            await conn.push(_trade(135, 130, ids=(135, 136)))  # a push carries a batch
            got = [await trades.__anext__() for _ in range(4)]
            assert [t.trade_id for t in got] == [120, 130, 135, 136]
            assert {(t.symbol, t.seq) for t in got[2:]} == {(SYMBOL, 135)}
        assert [r["method"] for _, r in gateway.requests] == [
            "subscribe",
            "unsubscribe",
            "subscribe",
        ]

    _run(gateway, body)


def test_batches_yield_everything_that_arrived_while_the_caller_was_busy():
    gateway = FakeGateway()

    async def body(url: str) -> None:
        async with Client(BASE, ws_url=url) as c:
            batches = c.watch_trades(SYMBOL).batches()
            first = asyncio.ensure_future(anext(batches))
            await _until(lambda: len(gateway.requests) == 1)
            conn = gateway.conns[0]
            await conn.push(_trade(100, 90))
            assert [t.trade_id for t in await first] == [100]
            await conn.push(_trade(110, 100, ids=(110, 111)))  # nobody awaits: they are kept
            await conn.push(_trade(120, 110))
            await _until(lambda: gateway.conns[0].conn_seq == 3)
            await asyncio.sleep(0.05)
            got = [t.trade_id for t in await anext(batches)]
            if got != [110, 111, 120]:  # the last push came after the first two were taken
                got += [t.trade_id for t in await anext(batches)]
            assert got == [110, 111, 120]
            await c.unwatch("trades", SYMBOL)
            with pytest.raises(StopAsyncIteration):
                await anext(batches)

    _run(gateway, body)


def test_missed_heartbeats_make_the_client_reconnect():
    gateway = FakeGateway(results={"ping": {"ts_ns": "1"}})

    async def body(url: str) -> None:
        async with Client(BASE, ws_url=url, heartbeat_timeout_s=0.3) as c:
            assert await c.ws_request("ping", {}) == {"ts_ns": "1"}
            await _until(lambda: len(gateway.conns) >= 2)

    _run(gateway, body)


def test_refused_logon_raises_auth_error_and_stops_reconnecting():
    gateway = FakeGateway()

    async def body(url: str) -> None:
        async with Client(BASE, KEY, "wrong-secret", ws_url=url) as c:
            with pytest.raises(AuthError) as caught:
                await c.ws_request("ping", {})
            assert caught.value.code == "BAD_SIGNATURE"
            await asyncio.sleep(0.3)
        assert len(gateway.conns) == 1

    _run(gateway, body)


def test_create_order_ws_retries_with_the_same_client_order_id_after_a_lost_answer():
    placed = {"order": ORDER, "fills": [FILL]}
    gateway = FakeGateway(results={"order.place": placed}, drop_once=frozenset({"order.place"}))

    async def body(url: str) -> None:
        async with Client(BASE, KEY, SECRET, ws_url=url, retry_backoff_s=0) as c:
            result = await c.create_order_ws(SYMBOL, "limit", "buy", 5, "2.400")
            assert result.order.order_id == 7 and result.fills[0].trade_id == 11
        places = gateway.methods("order.place")
        assert [i for i, _ in places] == [0, 1]
        assert places[0][1] == places[1][1]

    _run(gateway, body)


def test_private_feeds_yield_typed_items_and_resubscribe_fresh_on_a_gap():
    def script(gateway: FakeGateway, conn: _Conn, request: dict[str, Any]):
        if request["method"] != "subscribe":
            return []
        channel = request["params"]["channel"]
        if channel == "executions":
            return [
                {"channel": "executions", "type": "snapshot", "account_seq": 50, "orders": [ORDER]}
            ]
        if channel == "positions":
            rows = [{"symbol": SYMBOL, "qty": "3"}]
            return [
                {"channel": "positions", "type": "snapshot", "account_seq": 50, "positions": rows}
            ]
        count = len(gateway.methods("subscribe"))
        cash = {"available": "100.000000", "held": "12.000000", "escrow": "0", "collateral": "0"}
        return [{"channel": "balances", "type": "snapshot", "account_seq": 50 + count, **cash}]

    gateway = FakeGateway(script)

    async def body(url: str) -> None:
        async with Client(BASE, KEY, SECRET, ws_url=url) as c:
            orders = c.watch_orders().__aiter__()
            snapshot = await orders.__anext__()
            assert snapshot.exec_type == "snapshot" and snapshot.order.order_id == 7
            conn = gateway.conns[0]
            fill = {"exec_type": "trade", "order": {**ORDER, "cum_qty": "3", "leaves_qty": "2"}}
            fill.update(last_price="2.400", last_qty="1", trade_id=12, fee="0.0024")
            await conn.push(
                {"channel": "executions", "type": "update", "account_seq": 51,
                 "prev_account_seq": 50, "liquidity": "maker", "ts_ns": "5", **fill}
            )  # fmt: skip
            execution = await orders.__anext__()
            assert execution.exec_type == "trade" and execution.last_qty == Decimal(1)
            assert execution.order.leaves_qty == Decimal(2) and execution.account_seq == 51
            # The other side of a self-trade: the same account_seq, prev_account_seq = itself.
            taker = {**fill, "order": {**ORDER, "order_id": 8, "side": "sell"}}
            await conn.push(
                {"channel": "executions", "type": "update", "account_seq": 51,
                 "prev_account_seq": 51, "liquidity": "taker", "ts_ns": "5", **taker}
            )  # fmt: skip
            assert (await orders.__anext__()).order.order_id == 8

            positions = c.watch_positions()
            assert await positions == [Position(symbol=SYMBOL, qty=Decimal(3))]
            waiting = asyncio.ensure_future(positions.next())
            await asyncio.sleep(0.05)
            await conn.push(
                {"channel": "positions", "type": "update", "account_seq": 52,
                 "prev_account_seq": 50, "symbol": SYMBOL, "qty": "0", "delta": "-3", "ts_ns": "6"}
            )  # fmt: skip
            assert await waiting == []  # a flat position leaves the list

            balances = c.watch_balance().__aiter__()
            first = await balances.__anext__()
            assert first.available == Decimal("100.000000") and first.account_seq == 53
            await conn.push(
                {"channel": "balances", "type": "update", "account_seq": 60,
                 "prev_account_seq": 58, "available": "90", "held": "0", "escrow": "0",
                 "collateral": "0", "ts_ns": "7"}
            )  # fmt: skip
            resubscribed = await balances.__anext__()  # the gap's update is not delivered
            assert resubscribed.account_seq == 54 and resubscribed.available == Decimal("100")
        methods = [(r["method"], r["params"].get("channel")) for _, r in gateway.requests]
        assert methods[-3:] == [
            ("subscribe", "balances"),
            ("unsubscribe", "balances"),
            ("subscribe", "balances"),
        ]
        assert all("resume_from_seq" not in p for _, p in gateway.methods("subscribe"))
        assert all("symbols" not in p for _, p in gateway.methods("subscribe"))

    _run(gateway, body)


def _provision(stage: str) -> dict[str, Any]:
    return {
        "channel": "provisioning",
        "type": "request",
        "obligation_id": 9,
        "symbol": SYMBOL,
        "holder": 4,
        "gpus": 8,
        "start_ns": "1796083200000000000",
        "end_ns": "1796086800000000000",
        "deadline_ns": "1796084100000000000",
        "stage": stage,
    }


def test_provider_agent_answers_a_repeated_request_without_calling_the_handler_again():
    def script(gateway: FakeGateway, conn: _Conn, request: dict[str, Any]):
        if request["method"] == "subscribe":
            return [_provision("assigned"), _provision("start"), _provision("start")]
        if (
            request["method"] == "provision.confirm"
            and len(gateway.methods(request["method"])) == 1
        ):
            return [_provision("start")]  # sent once more, as after a gateway restart
        return []

    gateway = FakeGateway(script, results={"capacity.update": {"status": "accepted"}})
    calls: list[tuple[int, str]] = []

    async def handler(request: ProvisionRequest) -> ProvisionResult | None:
        calls.append((request.obligation_id, request.stage))
        if request.stage != "start":
            return None  # the heads-up needs no answer
        await asyncio.sleep(0.05)  # the repeated copy arrives while this one is handled
        return ProvisionResult.confirm("gpu-9.example", 22, "gx")

    async def body(url: str) -> None:
        async with Client(BASE, KEY, SECRET, ws_url=url) as c:
            agent = ProviderAgent(c)
            status = await agent.update_capacity("H100-SXM", "us-east", 1, 2, gpus=8)
            assert status == "accepted"
            runner = asyncio.create_task(agent.run(handler))
            await _until(lambda: len(gateway.methods("provision.confirm")) >= 2)
            await asyncio.sleep(0.1)  # time for a wrong third answer to show
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

    _run(gateway, body)
    assert calls == [(9, "assigned"), (9, "start")]
    confirms = gateway.methods("provision.confirm")
    assert len(confirms) == 2
    assert all(
        p
        == {
            "obligation_id": 9,
            "access": {"host": "gpu-9.example", "port": 22, "user": "gx", "instructions": ""},
        }
        for _, p in confirms
    )
    (_, capacity), *_ = gateway.methods("capacity.update")
    assert capacity == {
        "gpu": "H100-SXM",
        "region": "us-east",
        "start_ns": "1",
        "end_ns": "2",
        "gpus": 8,
    }


def test_provider_failure_reports_hours_delivered():
    gateway = FakeGateway(
        lambda g, conn, request: [_provision("start")] if request["method"] == "subscribe" else []
    )

    async def handler(request: ProvisionRequest) -> ProvisionResult:
        return ProvisionResult.fail(hours_delivered=0, reason="no capacity left")

    async def body(url: str) -> None:
        async with Client(BASE, KEY, SECRET, ws_url=url) as c:
            runner = asyncio.create_task(ProviderAgent(c).run(handler))
            await _until(lambda: len(gateway.methods("provision.fail")) == 1)
            runner.cancel()

    _run(gateway, body)
    (_, params), *_ = gateway.methods("provision.fail")
    assert params == {"obligation_id": 9, "hours_delivered": 0, "reason": "no capacity left"}


def test_network_error_is_a_retryable_gateway_error():
    error = NetworkError("lost")
    assert isinstance(error, GatewayError) and error.retryable and error.status == 0
