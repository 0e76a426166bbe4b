"""Fuzz the live gateway: WebSocket frames and REST requests from a logged-on account.

Frames: random bytes and text, random JSON, input nested past the JSON parser's limit, and
near-valid requests (every method with its params edited, the envelope edited too) and
requests of valid alternatives that get past parsing to the engine. REST:
random, near-valid and valid-but-refused bodies on every endpoint that takes one, edited ids
and symbols in paths. `session.logon`: signed params edited, each on a fresh socket (a socket is
closed after five refused logons, so the main socket fuzzes every other method).
The property: every frame gets exactly one answer and every request an answer of the wire's
shape, with a stable code (`ErrorCode` or an engine `Reject` name) and never INTERNAL; after
the fuzz the socket still answers `ping`, no projection failed, and no account's balances,
positions or orders changed: the fuzzing account has no money, so whatever gets past the gateway
is refused by the engine, and the other accounts' orders are out of its reach.

Hypothesis runs in a worker thread (its tests are synchronous) and hands each request to the
event loop the exchange runs on. Budgets and the coverage summary: tests/support/fuzz.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.gateway.ratelimit import RateLimits
from exchange.wire import SIGN_VERSION, ErrorCode, signature
from schemas.codes import Reject
from schemas.symbols import parse_symbol
from tests.support.fuzz import (
    GATEWAY_BUDGET,
    LOGON_BUDGET,
    covered,
    deep_json,
    json_values,
    mutated_fields,
    mutated_text,
)
from tests.support.gateway_harness import (
    MAKER,
    PROVIDER,
    TRADER,
    Keys,
    Socket,
    rest,
    running_exchange,
    signed_headers,
    socket,
)

from .conftest import run

pytestmark = [
    pytest.mark.timeout(240),
    # The exchange's own threads and tasks (aiokafka's jitter) draw from `random` while
    # Hypothesis generates in its thread; Hypothesis takes that for a strategy using `random`.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

FUZZ = 13  # an account with a key of every scope and no money
CODES = {str(code) for code in ErrorCode} | {code.name for code in Reject}
MSG_CHARS_MAX = 500
ANSWER_WAIT_S = 15.0
# Nothing is rate limited: the fuzz sends as fast as the gateway answers.
UNLIMITED = RateLimits(
    rest_per_account_per_s=1_000_000, rest_per_account_burst=1_000_000,
    rest_per_ip_per_s=1_000_000, rest_per_ip_burst=1_000_000,
    ws_messages_per_conn_per_s=1_000_000, ws_messages_per_conn_burst=1_000_000,
    orders_per_account_per_s=1_000_000, orders_per_account_burst=1_000_000,
    ws_logons_per_ip_per_s=1_000_000, ws_logons_per_ip_burst=1_000_000,
    ws_logons_per_conn_per_s=1_000_000, ws_logons_per_conn_burst=1_000_000,
)  # fmt: skip


def _state(ex: Any) -> dict[int, Any]:
    """What a request that got through would change: each account's money, positions, orders.

    The fuzzing account's refused placements are listed among its closed orders ("rejected"):
    a refusal is its answer, not a change.
    """
    accounts = ex.gateway.accounts
    return {
        account: (
            accounts.balances(account),
            accounts.positions(account),
            accounts.open_orders(account),
            [o for o in accounts.closed_orders(account) if o["status"] != "rejected"],
        )
        for account in (FUZZ, TRADER, MAKER, PROVIDER)
    }


def _templates(symbol: str, order_id: int) -> dict[str, dict[str, Any]]:
    """A valid request of every method, about the listed symbol and another account's order."""
    key = parse_symbol(symbol)
    window = {"start_ns": str(key.start_ns), "end_ns": str(key.end_ns)}
    access = {"host": "gpu-7.example.com", "port": 22, "user": "root"}
    return {
        "ping": {},
        "subscribe": {"channel": "book", "symbols": [symbol], "depth": 10},
        "unsubscribe": {"channel": "book", "symbols": [symbol]},
        "order.place": {
            "symbol": symbol, "side": "buy", "type": "limit", "price": "2.500", "qty": "1",
            "tif": "gtc", "post_only": False, "stp": "cancel_taker", "expire_ns": "0",
            "client_order_id": "fz-1",
        },
        "order.amend": {"order_id": order_id, "price": "2.400", "qty": "1"},
        "order.cancel": {"order_id": order_id},
        "order.cancel_all": {"symbol": symbol},
        "order.status": {"order_id": order_id},
        "order.route": {"gpu": key.gpu, "gpu_hours": 1, "max_price": "3.000", **window},
        "cancel_all_after": {"timeout_ms": 60_000},
        "capacity.update": {"gpu": key.gpu, "region": key.region, "gpus": 1, **window},
        "provision.confirm": {"obligation_id": 1, "access": access},
        "provision.fail": {"obligation_id": 1, "hours_delivered": 0, "reason": "no machines"},
        "ssh_key.list": {},
        "ssh_key.add": {"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuzz fuzz@gx"},
        "ssh_key.remove": {"fingerprint": "SHA256:" + "A" * 43},
        "delivery.list": {"state": "assigned", "role": "holder"},
        "delivery.dispute": {"obligation_id": 1, "reason": "unreachable"},
    }  # fmt: skip


def _alternatives(symbol: str, order_id: int) -> dict[str, list[Any]]:
    """Values a field may take that the gateway accepts (or just refuses): requests built of
    them get past parsing to the engine, which refuses them for want of money."""
    key = parse_symbol(symbol)
    hour = 3_600_000_000_000
    starts = [str(key.start_ns), str(key.start_ns + hour), "0", str(key.start_ns + 1)]
    return {
        "symbol": [symbol, key.symbol.replace("us-east", "eu-west")],
        "symbols": [[symbol], [symbol, symbol]],
        "side": ["buy", "sell"],
        "type": ["limit", "market"],
        "tif": ["gtc", "gtd", "ioc", "fok"],
        "stp": ["none", "cancel_taker", "cancel_maker", "cancel_both", "decrement"],
        "post_only": [True, False],
        "price": ["0.010", "2.400", "2.500", "100.000", "100.001", "0.001"],
        "max_price": ["0.010", "2.500", "100.000"],
        "qty": ["1", "2", "1000", "1001"],
        "expire_ns": ["0", str(key.start_ns), str(2**63 - 2)],
        "client_order_id": ["fz-1", "fz-2", "a" * 36, "a" * 37],
        "order_id": [order_id, order_id + 1, 1, 0],
        "timeout_ms": [0, 99, 100, 3_600_000, 3_600_001],
        "channel": ["book", "trades", "ticker", "candles", "executions", "balances", "positions",
                    "deliveries", "provisioning", "index", "curve"],
        "depth": [1, 10, 25, 100, 7],
        "interval": ["1m", "1h", "1d"],
        "resume_from_seq": [0, 1, 2**63 - 2],
        "gpu": [key.gpu, "B200"],
        "region": [key.region, "us-west"],
        "gpu_hours": [1, 24, 0, -1],
        "gpus": [0, 1, 1000],
        "start_ns": starts,
        "end_ns": [str(key.end_ns), str(key.end_ns + 71 * hour), *starts],
        "regions": [[], [key.region]],
        "products": [[], ["1h"], ["1d", "1w"]],
        "obligation_id": [1, 2, 2**63 - 2],
        "hours_delivered": [0, 1, 2],
        "reason": ["", "no machines", "x" * 501],
        "state": ["assigned", "confirmed", "disputed", "settled"],
        "role": ["holder", "provider"],
        "amount": ["1.000000", "0.000001", "0", "1000000.000000"],
        "destination": ["acct-7", ""],
        "fingerprint": ["SHA256:" + "A" * 43],
    }  # fmt: skip


def _values(symbol: str, order_id: int) -> st.SearchStrategy[Any]:
    """A field's new value: anything JSON, or a near miss of a real one."""
    near = st.sampled_from(
        [symbol, symbol.lower(), symbol + "\n", order_id, order_id + 1, -order_id, 2**63 - 1,
         2**63, 2**64, "2.5", "2.5001", "1e3", "-1", "0", "１", str(2**63), "sell", "market",
         "ioc", "fok", "executions", "balances", "provisioning", "1h", [symbol] * 101]
    )  # fmt: skip
    return st.one_of(json_values(), near, mutated_text(st.just(symbol)))


@st.composite
def _params(
    draw: st.DrawFn, template: dict[str, Any], how: str, symbol: str, order_id: int
) -> dict[str, Any]:
    """A method's params: the template with fields edited (`how`: "valid" alternatives, or
    "near-valid" edits of any kind)."""
    if how == "near-valid":
        return draw(mutated_fields(st.just(template), _values(symbol, order_id), ["x", "id"]))
    params = dict(template)
    alternatives = _alternatives(symbol, order_id)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(set(params) | set(alternatives))))
        if name in params and draw(st.integers(0, 5)) == 0:
            del params[name]
        elif name in alternatives:
            params[name] = draw(st.sampled_from(alternatives[name]))
    return params


def _frames(symbol: str, order_id: int) -> st.SearchStrategy[tuple[str, str | bytes]]:
    """(kind, frame) of every kind the fuzz sends."""
    templates = _templates(symbol, order_id)
    values = _values(symbol, order_id)
    methods = sorted(templates) + ["session.logout", "order.fly", "", "ORDER.PLACE"]

    @st.composite
    def frame(draw: st.DrawFn) -> tuple[str, str | bytes]:
        kind = draw(
            st.sampled_from(
                ["valid", "valid", "near-valid", "near-valid", "near-valid", "random bytes",
                 "random text", "random JSON", "deep JSON"]
            )
        )  # fmt: skip
        if kind == "random bytes":
            return kind, draw(st.binary(max_size=100))
        if kind == "random text":
            return kind, draw(st.text(max_size=100))
        if kind == "random JSON":
            return kind, _json(draw(json_values()))
        if kind == "deep JSON":
            return kind, draw(deep_json().filter(lambda d: len(d) < 16_000)).decode()
        method = draw(st.sampled_from(methods if kind == "near-valid" else sorted(templates)))
        params = draw(_params(templates.get(method, {}), kind, symbol, order_id))
        request: dict[str, Any] = {"id": f"fz-{draw(st.integers(0, 10**6))}", "method": method}
        request["params"] = params
        if kind == "near-valid" and draw(st.integers(0, 4)) == 0:  # the envelope: id, method...
            request = draw(mutated_fields(st.just(request), values, ["id", "method", "params"]))
        return f"{kind} {method}", _json(request)

    return frame()


def _json(value: Any) -> str:
    """JSON text of a value; integers of any size (orjson stops at 64 bits)."""
    return msgspec.json.encode(value).decode()


_probes = itertools.count()


async def _answers_to(ws: Socket, frame: str | bytes) -> list[dict[str, Any]]:
    """Send one frame, then a ping; return the answers that came before the ping's."""
    first_anonymous = len(ws.anonymous)
    await ws.send_raw(frame)
    probe = f"probe-{next(_probes)}"  # an id no fuzzed frame uses
    await ws.send_raw(orjson.dumps({"id": probe, "method": "ping"}).decode())
    deadline = time.monotonic() + ANSWER_WAIT_S
    while probe not in ws.answers:
        assert not ws.closed.is_set(), f"the gateway closed the socket after {frame!r:.200}"
        assert time.monotonic() < deadline, f"no answer to ping after {frame!r:.200}"
        await asyncio.sleep(0.001)
    assert ws.answers.pop(probe)["status"] == 200
    answers = [*ws.answers.values(), *ws.anonymous[first_anonymous:]]
    ws.answers.clear()
    del ws.anonymous[first_anonymous:]
    return answers


def _check_error(error: dict[str, Any], status: int, what: object) -> str:
    code = error["code"]
    assert code != ErrorCode.INTERNAL and status != 500, (what, error)
    assert code in CODES, (what, error)
    assert error["msg"] and len(error["msg"]) <= MSG_CHARS_MAX, (what, error)
    return str(code)


def _fuzz_ws(loop: asyncio.AbstractEventLoop, ws: Socket, symbol: str, order_id: int) -> None:
    @GATEWAY_BUDGET
    @given(case=_frames(symbol, order_id))
    def fuzz(case: tuple[str, str | bytes]) -> None:
        kind, frame = case
        future = asyncio.run_coroutine_threadsafe(_answers_to(ws, frame), loop)
        answers = future.result(ANSWER_WAIT_S * 2)
        assert len(answers) == 1, (frame, answers)  # one answer per frame, whatever it held
        answer = answers[0]
        if answer["status"] == 200:
            covered("gateway.ws", f"{kind}: answered")
            return
        code = _check_error(answer["error"], answer["status"], frame)
        covered("gateway.ws", f"{kind}: {code}")

    fuzz()


def _rest_cases(symbol: str, order_id: int) -> st.SearchStrategy[tuple[str, str, str, bytes]]:
    """(kind, method, path, body) of REST requests with bodies or ids in their paths."""
    t = _templates(symbol, order_id)
    with_body = [
        ("POST", "/api/v1/orders", t["order.place"]),
        ("PATCH", f"/api/v1/orders/{order_id}", {"price": "2.400", "qty": "1"}),
        ("POST", "/api/v1/route", t["order.route"]),
        ("POST", "/api/v1/capacity", t["capacity.update"]),
        ("POST", "/api/v1/withdrawals", {"amount": "1.000000", "destination": "acct-7"}),
        ("POST", "/api/v1/deliveries/1/dispute", {"reason": "unreachable"}),
        ("POST", "/api/v1/ssh_keys", t["ssh_key.add"]),
    ]
    ids = st.one_of(st.just(str(order_id)), mutated_text(st.just(str(order_id))), st.text())
    symbols = st.one_of(mutated_text(st.just(symbol)), st.text(max_size=40))

    def quote(text: str) -> str:
        return urllib.parse.quote(text, safe="") or "x"

    @st.composite
    def case(draw: st.DrawFn) -> tuple[str, str, str, bytes]:
        how = draw(
            st.sampled_from(
                ["valid", "near-valid", "near-valid", "random JSON", "random bytes", "path id",
                 "path symbol"]
            )
        )  # fmt: skip
        if how == "path id":
            method, path = draw(
                st.sampled_from(
                    [("DELETE", "/api/v1/orders/{}"), ("GET", "/api/v1/orders/{}"),
                     ("POST", "/api/v1/deliveries/{}/dispute"), ("PATCH", "/api/v1/orders/{}")]
                )
            )  # fmt: skip
            body = b'{"price": "2.400", "qty": "1"}' if method == "PATCH" else b""
            return f"{how} {method}", method, path.format(quote(draw(ids))), body
        if how == "path symbol":
            depth = draw(st.one_of(ids, st.sampled_from(["10", "0", "1001"])))
            return how, "GET", f"/api/v1/book/{quote(draw(symbols))}?depth={quote(depth)}", b""
        method, path, template = draw(st.sampled_from(with_body))
        if how in ("valid", "near-valid"):
            data = _json(draw(_params(template, how, symbol, order_id))).encode()
        elif how == "random JSON":
            data = _json(draw(json_values())).encode()
        else:
            data = draw(st.binary(max_size=100))
        return f"{how} {method} {path.split('/')[3]}", method, path, data

    return case()


def _fuzz_rest(
    loop: asyncio.AbstractEventLoop,
    client: httpx.AsyncClient,
    keys: Keys,
    symbol: str,
    order_id: int,
) -> None:
    async def send(method: str, path: str, body: bytes) -> httpx.Response:
        headers = signed_headers(keys, method, path, body)
        return await client.request(method, path, content=body or None, headers=headers)

    @GATEWAY_BUDGET
    @given(case=_rest_cases(symbol, order_id))
    def fuzz(case: tuple[str, str, str, bytes]) -> None:
        kind, method, path, body = case
        future = asyncio.run_coroutine_threadsafe(send(method, path, body), loop)
        response = future.result(ANSWER_WAIT_S * 2)
        what = (method, path, body[:200])
        answer = response.json()  # JSON, whatever went wrong
        if response.status_code < 400:
            covered("gateway.rest", f"{kind}: answered")
            return
        code = _check_error(answer["error"], response.status_code, what)
        covered("gateway.rest", f"{kind}: {code}")

    fuzz()


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[name] = time.monotonic() - started


def _logon_params(keys: Keys) -> dict[str, Any]:
    ts_ms = int(time.time() * 1000)
    nonce = secrets.token_hex(12)
    sig = signature(keys.secret, keys.key_id, ts_ms, nonce, "GET", "/ws", b"")
    return {
        "key": keys.key_id,
        "ts_ms": ts_ms,
        "nonce": nonce,
        "signature": sig,
        "sig_version": SIGN_VERSION,
    }


def _fuzz_logon(loop: asyncio.AbstractEventLoop, ex: Any, keys: Keys, symbol: str) -> None:
    """`session.logon` on a fresh socket per example (five refusals close a socket)."""
    values = _values(symbol, 0)
    edits = {
        "ts_ms": [str(int(time.time() * 1000)), 0, 2**63 - 2, "1e3", "-1"],
        "key": [ex.keys["trader"].key_id, keys.key_id.upper(), ""],
        "nonce": ["", "a" * 65, "nonce-reused-0001"],
        "signature": ["0" * 64, "A" * 64, ""],
        "cancel_on_disconnect": ["none", "connection", "account", "all"],
        "sig_version": [1, 3, "2", None, 2**70],
    }

    async def attempt(params: dict[str, Any]) -> dict[str, Any]:
        async with socket(ex) as ws:
            answers = await _answers_to(
                ws, _json({"id": 1, "method": "session.logon", "params": params})
            )
            assert len(answers) == 1, (params, answers)
            return answers[0]

    @LOGON_BUDGET
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        params = _logon_params(keys)
        how = data.draw(st.sampled_from(["valid", "near-valid"]), label="how")
        if how == "near-valid":
            params = data.draw(mutated_fields(st.just(params), values, ["x", *edits]))
        else:
            for name in data.draw(st.lists(st.sampled_from(sorted(edits)), max_size=2)):
                params[name] = data.draw(st.sampled_from(edits[name]), label=name)
        answer = asyncio.run_coroutine_threadsafe(attempt(params), loop).result(ANSWER_WAIT_S)
        if answer["status"] == 200:
            assert answer["result"]["account"] == FUZZ  # no edit logs on as another account
            covered("gateway.ws session.logon", f"{how}: logged on")
            return
        code = _check_error(answer["error"], answer["status"], params)
        covered("gateway.ws session.logon", f"{how}: {code}")

    fuzz()


def test_fuzzed_websocket_frames_and_rest_requests_get_stable_refusals_and_change_nothing(
    broker, dsn
):
    async def scenario() -> None:
        async with running_exchange(broker, dsn, limits=UNLIMITED) as ex:
            key, secret = await ex.gateway.keys.create(
                FUZZ, ("read", "trade", "provide", "withdraw")
            )
            fuzzer = Keys(key.key_id, secret, FUZZ)
            ask = {
                "symbol": ex.symbol,
                "side": "sell",
                "type": "limit",
                "price": "2.500",
                "qty": "2",
            }
            placed = await rest(ex, "POST", "/api/v1/orders", ex.keys["provider"], ask)
            assert placed.status_code == 200, placed.text
            order_id = placed.json()["order"]["order_id"]  # another account's order to aim at
            before = _state(ex)
            failed_before = ex.gateway.hub.stats.failed
            loop = asyncio.get_running_loop()
            seconds: dict[str, float] = {}
            async with socket(ex) as ws:
                assert (await ws.logon(fuzzer))["status"] == 200
                with _timed(seconds, "WebSocket"):
                    await asyncio.to_thread(_fuzz_ws, loop, ws, ex.symbol, order_id)
                with _timed(seconds, "REST"):
                    async with httpx.AsyncClient(base_url=ex.url, timeout=ANSWER_WAIT_S) as c:
                        await asyncio.to_thread(_fuzz_rest, loop, c, fuzzer, ex.symbol, order_id)
                assert (await ws.request("ping"))["status"] == 200  # the socket survived it all
            with _timed(seconds, "logon"):
                await asyncio.to_thread(_fuzz_logon, loop, ex, fuzzer, ex.symbol)
            print("\ngateway fuzz: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
            # Whatever reached the engine was refused there: give a late change time to show.
            with contextlib.suppress(AssertionError):
                await ex.wait_for(lambda: _state(ex) != before, timeout_s=1.0)
            assert _state(ex) == before
            assert ex.gateway.hub.stats.failed == failed_before  # no projection failed

    run(scenario(), timeout_s=230)
