"""`gx bench feed`: WebSocket subscribers on one book while the engine moves it at a fixed rate.

As deployed, the engine and market data run in processes of their own (`exchange/bench_stages.py`;
`--one-process` puts them on the gateway's loop); the gateway serves from this process and the
subscribers run in another one (`python -m exchange.bench_feed --clients ...`), so the gateway
and its clients do not share a core. The load is command pairs on one instrument: a provider
offers two lots at one of `offer_levels` prices, a buyer takes one lot (IOC), so every engine
step changes the book's levels and every second command prints a trade. Market data publishes
one book update per symbol and gx.events record (a record holds the commands of one engine
step), so the book updates are fewer than the commands; each take prints its own trade, and the
k-th trade of the load is the (2k+1)-th command, which gives each trade print its send time.

Figures:
- `lag_p50_ms` / `lag_p99_ms`: take command produced -> its trade print received by a subscriber
  (engine, market data and gateway included; measured on `recorded` subscribers);
- `messages_per_s`: pushes received per second by all subscribers together;
- `updates_per_s`: commands sent per second, each a change of the book (the offered rate);
- `book_updates_per_s`: book update pushes one subscriber received per second;
- `resyncs`: subscriptions stopped with `resync_required` (clients too slow for the rate);
- `missing`: updates the recorded subscribers never received before their resync (if any).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import orjson
import uvloop

from exchange.bench_stages import Stage, StageSpec, start_stage, wait_ready
from exchange.gateway.ratelimit import RateLimits
from exchange.stack import Stack, StackOptions, stack_engine_config
from schemas import commands as c
from schemas.codes import Side, TimeInForce
from schemas.symbols import parse_symbol
from schemas.units import NS_PER_HOUR
from streams.embedded_broker import EmbeddedBroker
from streams.embedded_postgres import open_database
from streams.settings import Settings

__all__ = ["register", "run", "bench_feed"]

SUBSCRIBERS_DEFAULT = 1000
RATE_DEFAULT = 5000  # book updates per second
DURATION_S_DEFAULT = 10.0
RECORDED_DEFAULT = 20  # subscribers that keep the receive time of every update
MASTER_KEY = "bench-feed-master-key-not-a-secret-0000"
PROVIDER, BUYER = 20, 21
tick_s = 0.01  # the generator sends a batch every tick
drain_s = 3.0  # after the load, how long the subscribers may catch up
connect_batch = 50  # subscribers connecting at once
offer_levels = 10  # the provider's offers cycle over this many prices
offer_price_ticks = 2400  # the lowest of them

Report = dict[str, Any]


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `feed` to the `gx bench` group."""
    p = bench_subparsers.add_parser(
        "feed",
        help="WebSocket subscribers on one book while the engine moves it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--subscribers", type=int, default=SUBSCRIBERS_DEFAULT)
    p.add_argument("--rate", type=int, default=RATE_DEFAULT, help="book updates per second")
    p.add_argument("--duration", type=float, default=DURATION_S_DEFAULT, help="seconds of load")
    p.add_argument("--recorded", type=int, default=RECORDED_DEFAULT)
    p.add_argument(
        "--one-process",
        action="store_true",
        help="run the engine and market data on the gateway's loop, not in processes of their own",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the feed benchmark and print its figures."""
    for name in ("subscribers", "rate", "duration", "recorded"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name}: expected > 0, found {getattr(args, name)}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    report = bench_feed(
        args.subscribers, args.rate, args.duration, args.recorded, one_process=args.one_process
    )
    if args.json:
        print(json.dumps(report))
    else:
        width = max(len(k) for k in report)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in report.items()))
    return 0


def _progress(text: str) -> None:
    print(f"gx bench feed: {text}", file=sys.stderr, flush=True)


def bench_feed(
    subscribers: int, rate: int, duration_s: float, recorded: int, *, one_process: bool = False
) -> Report:
    """Start the exchange, the subscribers and the load; return the figures."""
    with EmbeddedBroker(broker_count=1) as broker, open_database("gx_bench_feed") as dsn:
        return uvloop.run(_bench(broker, dsn, subscribers, rate, duration_s, recorded, one_process))


async def _bench(
    broker: EmbeddedBroker,
    dsn: str,
    subscribers: int,
    rate: int,
    duration_s: float,
    recorded: int,
    one_process: bool,
) -> Report:
    settings = Settings(gateway_master_key=MASTER_KEY, kafka_fetch_wait_ms=5)
    limits = RateLimits(ws_connections_per_ip=subscribers + 10)
    stack = Stack(
        broker, dsn, settings,
        options=StackOptions(provisioning=False, settlement=False, limits=limits,
                             engine=one_process, marketdata=one_process),
    )  # fmt: skip
    _progress("starting the exchange")
    stages: list[Stage] = []
    try:
        if not one_process:
            stack.create_topics()
            stages = [
                start_stage(StageSpec("engine", stack.settings, dsn,
                                      engine_config=stack_engine_config), in_process=False),
                start_stage(StageSpec("marketdata", stack.settings, dsn), in_process=False),
            ]  # fmt: skip
            await wait_ready(stages, lambda: [s.check() for s in stages])
        await stack.start()
        symbol, send = await _setup(stack)
        assert stack.gateway is not None and stack.gateway.gateway is not None
        url = stack.gateway.url.replace("http://", "ws://") + "/ws"
        _progress(f"connecting {subscribers} subscribers to {symbol}")
        clients = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exchange.bench_feed", "--clients", url, symbol,
            str(subscribers), str(recorded),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert clients.stdout is not None and clients.stdin is not None
        ready = await clients.stdout.readline()
        if not ready.startswith(b"ready"):
            raise RuntimeError(f"the subscribers did not start: {ready!r}")
        _progress(f"load: {rate} updates/s for {duration_s:g} s")
        sent_ns = await _load(send, symbol, rate, duration_s)
        await asyncio.sleep(drain_s)
        clients.stdin.close()
        result = orjson.loads(await clients.stdout.read())
        await clients.wait()
    finally:
        await stack.stop()
        for stage in stages:
            await stage.stop()
    return _report(result, sent_ns, subscribers, duration_s)


async def _setup(stack: Stack) -> tuple[str, Any]:
    """List instruments at the current hour, fund the buyer, give the provider capacity."""
    assert stack.gateway is not None and stack.gateway.gateway is not None
    hub = stack.gateway.gateway.hub
    send = hub.send_commands

    now_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
    await send(
        [c.ClockTick(ts_ns=now_ns)]
        + [c.Deposit(account=a, amount_micros=10**13) for a in (PROVIDER, BUYER)]
    )
    deadline = time.monotonic() + 30
    while not hub.accounts.instruments():
        if time.monotonic() > deadline:
            raise RuntimeError("no instrument listed")
        await asyncio.sleep(0.05)
    symbol = sorted(
        i["symbol"]
        for i in hub.accounts.instruments()
        if i["symbol"].startswith("H100-SXM.us-east.1h.")
    )[-1]
    key = parse_symbol(symbol)
    await send(
        [c.CapacityUpdate(account=PROVIDER, gpu=key.gpu, region=key.region, start_ns=key.start_ns,
                          end_ns=key.end_ns, gpus=1_000_000)]
    )  # fmt: skip
    # one first update so the book exists in the feed before anyone subscribes
    await send(
        [c.PlaceOrder(account=PROVIDER, symbol=symbol, side=Side.SELL, lots=1, price_ticks=9000)]
    )
    while hub.feed.snapshot(("book", symbol, 10)) is None:
        hub.feed.watch(("book", symbol, 10))
        await asyncio.sleep(0.05)
    return symbol, send


async def _load(send: Any, symbol: str, rate: int, duration_s: float) -> list[int]:
    """Send offer/take pairs at `rate` commands per second; return each command's send time.

    An offer rests two lots at one of `offer_levels` prices at or below the take's limit, and a
    take fills one lot from the best level: the levels change at every engine step.
    """
    per_tick = max(1, round(rate * tick_s))
    total = int(rate * duration_s)
    sent_ns: list[int] = []
    start = time.monotonic()
    i = 0
    while i < total:
        batch: list[c.Command] = []
        for _ in range(min(per_tick, total - i)):
            n = i + len(batch)
            if n % 2 == 0:
                price = offer_price_ticks + n // 2 % offer_levels
                batch.append(c.PlaceOrder(account=PROVIDER, symbol=symbol, side=Side.SELL, lots=2,
                                          price_ticks=price))  # fmt: skip
            else:
                batch.append(c.PlaceOrder(account=BUYER, symbol=symbol, side=Side.BUY, lots=1,
                                          price_ticks=offer_price_ticks + offer_levels,
                                          tif=TimeInForce.IOC))  # fmt: skip
        now = time.time_ns()
        await send(batch)
        sent_ns += [now] * len(batch)
        i += len(batch)
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    return sent_ns


def _report(result: dict[str, Any], sent_ns: list[int], subscribers: int,
            duration_s: float) -> Report:  # fmt: skip
    sent = np.asarray(sent_ns, dtype=np.int64)
    takes = sent[1::2]  # the k-th take prints the k-th trade of the load
    recorded = [(np.asarray(ids, dtype=np.int64), np.asarray(recv, dtype=np.int64))
                for ids, recv, _ in result["recorded"]]  # fmt: skip
    first = min((int(ids.min()) for ids, _ in recorded if len(ids)), default=0)
    lags: list[np.ndarray] = []
    missing = 0
    for ids, recv in recorded:
        k = ids - first
        keep = (k >= 0) & (k < len(takes))
        lags.append((recv[keep] - takes[k[keep]]) / 1e6)
        missing += len(takes) - int(keep.sum())
    lag = np.concatenate(lags) if lags else np.zeros(0)
    books = [count for _, _, count in result["recorded"]]
    return {
        "subscribers": subscribers,
        "connected": result["connected"],
        "updates": len(sent_ns),
        "updates_per_s": round(len(sent_ns) / duration_s),
        "trades": len(takes),
        "book_updates_per_s": round(float(np.mean(books)) / duration_s) if books else 0,
        "messages": result["messages"],
        "messages_per_s": round(result["messages"] / result["receive_s"])
        if result["receive_s"]
        else 0,
        "lag_p50_ms": round(float(np.percentile(lag, 50)), 2) if len(lag) else None,
        "lag_p99_ms": round(float(np.percentile(lag, 99)), 2) if len(lag) else None,
        "resyncs": result["resyncs"],
        "missing": missing,
    }


# ============================================================================ the subscribers


class _Subscriber(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) that counts frames and parses only what it records.

    The subscribers share one core with nothing else to do but read; a full client library
    parses every frame in Python and would measure itself instead of the gateway.
    """

    def __init__(self, host: str, symbol: str, record: bool, counts: dict[str, Any]) -> None:
        self.host = host
        self.symbol = symbol
        self.record = record
        self.counts = counts
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.trade_ids: list[int] = []
        self.recv: list[int] = []
        self.book_updates = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def _send(self, message: dict[str, Any]) -> None:
        payload = orjson.dumps(message)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126 and self.transport is not None
        self.transport.write(bytes((0x81, 0x80 | len(payload))) + mask + masked)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if buffer or not self.upgraded:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                buffer += data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {data[:80]!r}")
            data = data[end + 4 :]
            self.upgraded = True
            self._send({"id": 1, "method": "subscribe", "params": {
                "channel": "book", "symbols": [self.symbol], "depth": 10}})  # fmt: skip
            self._send({"id": 2, "method": "subscribe", "params": {
                "channel": "trades", "symbols": [self.symbol]}})  # fmt: skip
            self.counts["connected"] += 1
        now = time.time_ns()
        at = self._frames(data, now)
        if at < len(data):
            buffer += data[at:]
        if at:
            counts = self.counts
            if counts["first_ns"] == 0:
                counts["first_ns"] = now
            counts["last_ns"] = now

    def _frames(self, data: bytes, now: int) -> int:
        """Count (and when recording, read) the whole frames in `data`; return the bytes used."""
        at = 0
        size_all = len(data)
        messages = resyncs = 0
        while size_all - at >= 2:
            size = data[at + 1] & 0x7F
            head = 2
            if size == 126:
                if size_all - at < 4:
                    break
                size = int.from_bytes(data[at + 2 : at + 4], "big")
                head = 4
            elif size == 127:
                if size_all - at < 10:
                    break
                size = int.from_bytes(data[at + 2 : at + 10], "big")
                head = 10
            end = at + head + size
            if end > size_all:
                break
            messages += 1
            if data.find(b"resync_required", at + head, min(end, at + head + 80)) >= 0:
                resyncs += 1
            elif self.record:
                self._read(data[at + head : end], now)
            at = end
        self.counts["messages"] += messages
        self.counts["resyncs"] += resyncs
        return at

    def _read(self, payload: bytes, now: int) -> None:
        if not payload.startswith(b'{"conn_seq"'):
            return
        message = orjson.loads(payload)
        channel = message.get("channel")
        if channel == "trades" and message.get("type") == "update":
            for trade in message["trades"]:
                self.trade_ids.append(trade["trade_id"])
                self.recv.append(now)
        elif channel == "book" and message.get("type") == "update":
            self.book_updates += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _same(client: _Subscriber) -> _Subscriber:
    return client


async def _clients(url: str, symbol: str, subscribers: int, recorded: int) -> None:
    counts: dict[str, Any] = {
        "connected": 0, "messages": 0, "resyncs": 0, "first_ns": 0, "last_ns": 0,
    }  # fmt: skip
    host, port = url.removeprefix("ws://").removesuffix("/ws").split(":")
    loop = asyncio.get_running_loop()
    clients: list[_Subscriber] = []
    for start in range(0, subscribers, connect_batch):
        for i in range(start, min(start + connect_batch, subscribers)):
            client = _Subscriber(f"{host}:{port}", symbol, i < recorded, counts)
            await loop.create_connection(functools.partial(_same, client), host, int(port))
            clients.append(client)
        while counts["connected"] < len(clients):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # the snapshots
    counts["messages"] = 0
    counts["first_ns"] = 0
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    receive_s = (counts["last_ns"] - counts["first_ns"]) / 1e9
    out = {
        "connected": counts["connected"],
        "messages": counts["messages"],
        "resyncs": counts["resyncs"],
        "receive_s": receive_s,
        "recorded": [(cl.trade_ids, cl.recv, cl.book_updates) for cl in clients if cl.record],
    }
    sys.stdout.write(orjson.dumps(out).decode())


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--clients":
        url, symbol, subscribers, recorded = (
            sys.argv[2],
            sys.argv[3],
            int(sys.argv[4]),
            int(sys.argv[5]),
        )
        uvloop.run(_clients(url, symbol, subscribers, recorded))
    else:
        raise SystemExit("usage: gx bench feed (this module's --clients mode is internal)")
