"""A running exchange with its gateway on loopback, and raw protocol clients for the tests.

The clients here speak the wire format by hand (httpx, websockets) so that the tests check the
protocol itself; the SDK has tests of its own over the same harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from aiokafka import AIOKafkaProducer

from exchange.gateway.app import WEBSOCKET_IMPL
from exchange.gateway.keys import SCOPES, KeyStore
from exchange.gateway.ratelimit import RateLimits
from exchange.stack import Stack, StackOptions
from exchange.wire import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGN_VERSION,
    HEADER_SIGNATURE,
    HEADER_TS,
    SIGN_VERSION,
    signature,
    signature_v1,
)
from schemas import commands as c
from schemas.codec import encode
from schemas.symbols import parse_symbol
from streams.embedded.broker import EmbeddedBroker
from streams.settings import Settings
from streams.topics import shard_key, topics
from tests.conftest import T0_NS

MASTER_KEY = "test-master-key-0123456789abcdefghijklmnopqrstuv"
# The gateway's two WebSocket paths, for tests parametrized over `websocket_impl`.
WEBSOCKET_IMPLS = [
    WEBSOCKET_IMPL,  # "websockets-sansio": frames batched into one socket write (fanout.py `Frames`)
    pytest.param(  # no batching: the plain ASGI path, one send per frame
        "websockets",
        marks=[
            pytest.mark.filterwarnings("ignore::DeprecationWarning"),
            pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
        ],
    ),  # (uvicorn and websockets deprecate this implementation: the warnings are known)
]
TRADER, MAKER, PROVIDER = 10, 11, 12
FUNDS_MICROS = 1_000_000 * 1_000_000  # one million USD each


class Keys:
    """One API key: its id, secret and account."""

    def __init__(self, key_id: str, secret: str, account: int) -> None:
        self.key_id = key_id
        self.secret = secret
        self.account = account


class Exchange:
    """The stack, its keys and helpers to drive it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.keys: dict[str, Keys] = {}
        self.symbol = ""
        self._producer: AIOKafkaProducer | None = None

    @property
    def url(self) -> str:
        assert self.stack.gateway is not None
        return self.stack.gateway.url

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    @property
    def gateway(self) -> Any:
        assert self.stack.gateway is not None and self.stack.gateway.gateway is not None
        return self.stack.gateway.gateway

    @property
    def gateway_app(self) -> Any:
        assert self.stack.gateway is not None
        return self.stack.gateway.app

    async def send(self, *commands: c.Command) -> None:
        """Put commands straight into gx.commands (what the clock and operators do)."""
        assert self._producer is not None
        topic = topics(self.stack.settings)["commands"].name
        futures = [
            await self._producer.send(topic, encode(command), key=shard_key(0), partition=0)
            for command in commands
        ]
        await asyncio.gather(*futures)

    async def wait_for(self, check: Any, timeout_s: float = 10.0, what: str = "") -> Any:
        """Poll `check()` until it returns a true value; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or check}")
            await asyncio.sleep(0.02)


def first_symbol(exchange: Exchange, gpu: str = "H100-SXM", region: str = "us-east") -> str:
    """The first listed hourly instrument of a model and region, as the gateway sees it."""
    for instrument in sorted(exchange.gateway.accounts.instruments(), key=lambda i: i["symbol"]):
        key = parse_symbol(instrument["symbol"])
        if key.product == "1h" and key.gpu == gpu and key.region == region:
            return str(instrument["symbol"])
    raise LookupError("no hourly instrument listed")


@contextlib.asynccontextmanager
async def running_exchange(
    broker: EmbeddedBroker,
    dsn: str,
    *,
    limits: RateLimits | None = None,
    provisioning: bool = False,
    extra_handlers: list[Any] | None = None,
    websocket_impl: str = WEBSOCKET_IMPL,
) -> AsyncIterator[Exchange]:
    """Start the stack, list instruments, fund three accounts, give each a key with all scopes
    (`admin` included: it manages the account's keys).

    `extra_handlers` are more gateway routes (the browser test adds the demo keys route).
    """
    settings = Settings(gateway_master_key=MASTER_KEY, kafka_fetch_wait_ms=5)
    stack = Stack(
        broker,
        dsn,
        settings,
        options=StackOptions(
            provisioning=provisioning,
            settlement=True,
            limits=limits,
            gateway_websocket_impl=websocket_impl,
        ),
        extra_handlers=extra_handlers,
    )
    await stack.start()
    exchange = Exchange(stack)
    exchange._producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await exchange._producer.start()
    try:
        await exchange.send(c.ClockTick(ts_ns=T0_NS))
        for account in (TRADER, MAKER, PROVIDER):
            await exchange.send(c.Deposit(account=account, amount_micros=FUNDS_MICROS))
        accounts = exchange.gateway.accounts
        # the first engine of a fresh checkout compiles its kernels here (about 25 s on 2 cores)
        await exchange.wait_for(lambda: accounts.instruments(), timeout_s=180, what="the listing")
        exchange.symbol = first_symbol(exchange)
        key = parse_symbol(exchange.symbol)
        await exchange.send(
            c.CapacityUpdate(
                account=PROVIDER, gpu=key.gpu, region=key.region, start_ns=key.start_ns,
                end_ns=key.start_ns + 72 * 3_600_000_000_000, gpus=1000,
            )
        )  # fmt: skip
        await exchange.wait_for(
            lambda: (
                accounts.capacity(PROVIDER)
                and accounts.balances(PROVIDER)["available"] != "0.000000"
            ),
            what="deposits and capacity",
        )
        store: KeyStore = exchange.gateway.keys
        for name, account in (("trader", TRADER), ("maker", MAKER), ("provider", PROVIDER)):
            api_key, secret = await store.create(account, SCOPES)
            exchange.keys[name] = Keys(api_key.key_id, secret, account)
        yield exchange
    finally:
        await exchange._producer.stop()
        await stack.stop()


class KeyQueries:
    """A pool wrapper counting the queries that read `api_keys` (put it in a KeyStore's place).

    `delay_s` holds each such statement that long before it runs, so that concurrent lookups
    overlap; `in_flight_max` is the most that were running at once.
    """

    def __init__(self, pool: Any, delay_s: float = 0.0) -> None:
        self._pool = pool
        self.delay_s = delay_s
        self.count = 0
        self.in_flight = 0
        self.in_flight_max = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._pool, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute"):
            return method

        async def counted(query: str, *args: Any, **kwargs: Any) -> Any:
            if not (query.lstrip().startswith("SELECT") and "FROM api_keys" in query):
                return await method(query, *args, **kwargs)
            self.count += 1
            self.in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self.in_flight)
            try:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                return await method(query, *args, **kwargs)
            finally:
                self.in_flight -= 1

        return counted


# ---------------------------------------------------------------------- raw clients


def signed_headers(
    keys: Keys, method: str, path: str, body: bytes = b"", **overrides: Any
) -> dict[str, str]:
    """Headers of a signed REST request, version 2 (overrides replace any part, to test
    refusals; `sig_version=1` signs the old way, without the version header)."""
    ts_ms = overrides.get("ts_ms", int(time.time() * 1000))
    nonce = overrides.get("nonce", secrets.token_hex(12))
    key_id = overrides.get("key", keys.key_id)
    version = overrides.get("sig_version", SIGN_VERSION)
    if version == 1:
        signed = signature_v1(keys.secret, ts_ms, nonce, method, path, body)
    else:
        signed = signature(keys.secret, key_id, ts_ms, nonce, method, path, body)
    headers = {
        HEADER_KEY: key_id,
        HEADER_TS: str(ts_ms),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: overrides.get("signature") or signed,
        "content-type": "application/json",
    }
    if version != 1:
        headers[HEADER_SIGN_VERSION] = str(version)
    return headers


async def rest(
    exchange: Exchange,
    method: str,
    path: str,
    keys: Keys | None = None,
    body: Any = None,
    base_url: str | None = None,
) -> httpx.Response:
    """One REST request, signed when `keys` is given (to another gateway with `base_url`)."""
    raw = b"" if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    headers = signed_headers(keys, method, path, raw) if keys else {}
    async with httpx.AsyncClient(base_url=base_url or exchange.url, timeout=10) as client:
        return await client.request(method, path, content=raw or None, headers=headers)


class Socket:
    """A raw WebSocket client: requests by id, pushes collected in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pushes: list[dict[str, Any]] = []
        self.answers: dict[Any, dict[str, Any]] = {}
        self.anonymous: list[dict[str, Any]] = []  # answers to requests without a usable id
        self._next_id = 0
        self._reader = asyncio.create_task(self._read())
        self.closed = asyncio.Event()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                if "channel" in message:
                    self.pushes.append(message)
                elif message.get("id") is None:
                    self.anonymous.append(message)
                else:
                    self.answers[message["id"]] = message
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def request(
        self, method: str, params: Any = None, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Send a request; return its answer (status and result or error)."""
        self._next_id += 1
        request_id = self._next_id
        await self.ws.send(
            orjson.dumps({"id": request_id, "method": method, "params": params or {}}).decode()
        )
        deadline = time.monotonic() + timeout_s
        while request_id not in self.answers:
            if time.monotonic() > deadline or self.closed.is_set():
                raise AssertionError(f"no answer to {method}")
            await asyncio.sleep(0.005)
        return self.answers.pop(request_id)

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def logon(
        self, keys: Keys, cancel_on_disconnect: str = "none", sig_version: int = SIGN_VERSION
    ) -> dict[str, Any]:
        """Log on with `keys`, signed with `sig_version` (1: the old way, no `sig_version`)."""
        ts_ms = int(time.time() * 1000)
        nonce = secrets.token_hex(12)
        params: dict[str, Any] = {
            "key": keys.key_id,
            "ts_ms": ts_ms,
            "nonce": nonce,
            "cancel_on_disconnect": cancel_on_disconnect,
        }
        if sig_version == 1:
            params["signature"] = signature_v1(keys.secret, ts_ms, nonce, "GET", "/ws", b"")
        else:
            params["signature"] = signature(
                keys.secret, keys.key_id, ts_ms, nonce, "GET", "/ws", b""
            )
            params["sig_version"] = sig_version
        return await self.request("session.logon", params)

    def channel(self, name: str, symbol: str | None = None) -> list[dict[str, Any]]:
        """The pushes of one channel (and symbol) received so far."""
        return [
            p
            for p in self.pushes
            if p["channel"] == name and (symbol is None or p.get("symbol") == symbol)
        ]

    async def wait_push(self, check: Any, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait for a push matching `check(push)`; return it."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for push in self.pushes[seen:]:
                if check(push):
                    return push
            seen = len(self.pushes)
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for a push")
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def socket(exchange: Exchange) -> AsyncIterator[Socket]:
    """A connected raw WebSocket client."""
    async with websockets.connect(exchange.ws_url, max_size=None) as ws:
        client = Socket(ws)
        try:
            yield client
        finally:
            await client.close()
