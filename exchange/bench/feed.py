"""`gx bench feed`: WebSocket subscribers on one book while the engine moves it at a fixed rate.

As deployed, the engine and market data run in processes of their own (`exchange/bench/stages.py`;
`--one-process` puts them on the gateway's loop); the gateway serves from this process and the
subscribers run in another one (`python -m exchange.bench.feed --clients ...`), so the gateway
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
- `missing`: updates the recorded subscribers never received before their resync (if any);
- `gateway_loop_cpu_pct`: CPU time of the gateway's event loop thread during the load, in % of
  one core (the broker's threads in the same process not counted);
- `write_passes_per_s`, `write_pass_ms`, `write_us_per_connection`: the gateway's write passes
  (exchange/gateway/fanout.py) during the load: how often, how long, and the cost of one
  connection's write in a pass (`gx bench writes` measures the socket's share of it).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import orjson
import uvloop

from exchange.bench.feed_load import BUYER, PROVIDER
from exchange.bench.report import Report, add_benchmark, print_report, require_positive
from exchange.bench.stages import Stage, StageSpec, start_stage, wait_ready
from exchange.gateway.fanout import flusher
from exchange.gateway.ratelimit import RateLimits
from exchange.stack import Stack, StackOptions, stack_engine_config
from schemas import commands as c
from schemas.codes import Side
from schemas.marketdata import TradePrints
from schemas.symbols import parse_symbol
from schemas.units import NS_PER_HOUR
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import open_database
from streams.settings import Settings

__all__ = ["register", "run", "bench_feed"]

SUBSCRIBERS_DEFAULT = 1000
RATE_DEFAULT = 5000  # book updates per second
DURATION_S_DEFAULT = 10.0
RECORDED_DEFAULT = 20  # subscribers that keep the receive time of every update
MASTER_KEY = "bench-feed-master-key-not-a-secret-0000"
drain_s = 3.0  # after the load, how long the subscribers may catch up


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `feed` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "feed",
        "WebSocket subscribers on one book while the engine moves it",
        __doc__,
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
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the feed benchmark and print its figures."""
    require_positive(args, "subscribers", "rate", "duration", "recorded")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    report = bench_feed(
        args.subscribers, args.rate, args.duration, args.recorded, one_process=args.one_process
    )
    print_report(report, args.json)
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
    # every subscriber connects from one address: the per-IP limits scale with them
    limits = RateLimits(
        ws_connections_per_ip=subscribers + 10, ws_messages_per_ip_burst=10 * subscribers + 4_000
    )
    stack = Stack(
        broker, dsn, settings,
        options=StackOptions(provisioning=False, settlement=False, limits=limits,
                             engine=one_process, marketdata=one_process),
    )  # fmt: skip
    _progress("starting the exchange")
    stages: list[Stage] = []
    results = tempfile.mkdtemp(prefix="gx-bench-feed-")
    try:
        if not one_process:
            stack.create_topics()
            stages = [
                start_stage(StageSpec("engine", stack.settings, dsn,
                                      engine_config=stack_engine_config), in_process=False),
                start_stage(StageSpec("marketdata", stack.settings, dsn), in_process=False),
            ]  # fmt: skip
            await wait_ready(stages, functools.partial(_check, stages))
        await stack.start()
        symbol = await _setup(stack)
        arrived = _TradeArrivals(stack)
        assert stack.gateway is not None and stack.gateway.gateway is not None
        url = stack.gateway.url.replace("http://", "ws://") + "/ws"
        _progress(f"connecting {subscribers} subscribers to {symbol}")
        clients_out = os.path.join(results, "clients.json")
        clients = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exchange.bench.feed_clients", url, symbol,
            str(subscribers), str(recorded), clients_out,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert clients.stdout is not None and clients.stdin is not None
        ready = await clients.stdout.readline()
        if not ready.startswith(b"ready"):
            raise RuntimeError(f"the subscribers did not start: {ready!r}")
        _progress(f"load: {rate} updates/s for {duration_s:g} s")
        passes = flusher()
        before = (
            time.thread_time(),
            time.monotonic(),
            passes.passes,
            passes.written,
            passes.busy_s,
        )
        sent_ns = await _load(stack, symbol, rate, duration_s, results)
        after = (time.thread_time(), time.monotonic(), passes.passes, passes.written, passes.busy_s)
        cpu_s, wall_s, pass_count, written, busy_s = (
            b - a for a, b in zip(before, after, strict=True)
        )
        gateway = {
            "gateway_loop_cpu_pct": round(100 * cpu_s / wall_s, 1),
            "write_passes_per_s": round(pass_count / wall_s, 1),
            "write_pass_ms": round(1e3 * busy_s / pass_count, 2) if pass_count else None,
            "write_us_per_connection": round(1e6 * busy_s / written, 2) if written else None,
        }
        await asyncio.sleep(drain_s)
        clients.stdin.close()
        result = await _child_result(clients, clients_out)
    finally:
        await stack.stop()
        for stage in stages:
            await stage.stop()
        shutil.rmtree(results, ignore_errors=True)
    report = _report(result, sent_ns, arrived.ns, subscribers, duration_s)
    report.update(gateway)
    return report


def _check(stages: list[Stage]) -> None:
    for stage in stages:
        stage.check()


async def _setup(stack: Stack) -> str:
    """List instruments at the current hour, fund the buyer, give the provider capacity."""
    assert stack.gateway is not None and stack.gateway.gateway is not None
    gateway = stack.gateway.gateway
    send, accounts, feed = gateway.hub.send_commands, gateway.accounts, gateway.feed

    now_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
    await send(
        [c.ClockTick(ts_ns=now_ns)]
        + [c.Deposit(account=a, amount_micros=10**13) for a in (PROVIDER, BUYER)]
    )
    deadline = time.monotonic() + 30
    while not accounts.instruments():
        if time.monotonic() > deadline:
            raise RuntimeError("no instrument listed")
        await asyncio.sleep(0.05)
    symbol = sorted(
        i["symbol"]
        for i in accounts.instruments()
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
    while feed.snapshot(("book", symbol, 10)) is None:
        feed.watch(("book", symbol, 10))
        await asyncio.sleep(0.05)
    return symbol


async def _load(stack: Stack, symbol: str, rate: int, duration_s: float, results: str) -> list[int]:
    """Run the load process (exchange/bench/feed_load.py); return each command's send time."""
    assert stack.gateway is not None and stack.gateway.gateway is not None
    out = os.path.join(results, "load.json")
    load = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.bench.feed_load", stack.broker.bootstrap_servers,
        stack.gateway.gateway.hub.commands_topic, symbol, str(rate), str(duration_s), out,
    )  # fmt: skip
    sent_ns: list[int] = await _child_result(load, out)
    return sent_ns


async def _child_result(child: asyncio.subprocess.Process, path: str) -> Any:
    """Wait for a child process and read the JSON result it wrote to `path`.

    Through a file, not its stdout: uvloop's subprocess pipes lost the end of a large output
    when the child exited right after writing it (the load's 1 MB list came back cut at a
    multiple of 4 KiB, now and then).
    """
    code = await child.wait()
    if code != 0:
        raise RuntimeError(f"a benchmark child process failed (exit code {code}); see stderr")
    with open(path, "rb") as file:
        return orjson.loads(file.read())


class _TradeArrivals:
    """When the gateway's hub read each trade print of gx.marketdata (by trade id)."""

    def __init__(self, stack: Stack) -> None:
        assert stack.gateway is not None and stack.gateway.gateway is not None
        self.ns: dict[int, int] = {}
        stack.gateway.gateway.hub.taps.append(self._tap)

    def _tap(self, message: Any) -> None:
        if isinstance(message, TradePrints):
            now = time.time_ns()
            for trade in message.trades:
                self.ns[trade.trade_id] = now


def _report(result: dict[str, Any], sent_ns: list[int], arrived_ns: dict[int, int],
            subscribers: int, duration_s: float) -> Report:  # fmt: skip
    sent = np.asarray(sent_ns, dtype=np.int64)
    takes = sent[1::2]  # the k-th take prints the k-th trade of the load
    recorded = [(np.asarray(ids, dtype=np.int64), np.asarray(recv, dtype=np.int64))
                for ids, recv, _ in result["recorded"]]  # fmt: skip
    first = min((int(ids.min()) for ids, _ in recorded if len(ids)), default=0)
    arrived = np.full(len(takes), -1, dtype=np.int64)  # the hub read trade `first + k` at
    for trade_id, ns in arrived_ns.items():
        if 0 <= trade_id - first < len(takes):
            arrived[trade_id - first] = ns
    lags: list[np.ndarray] = []
    fan_out: list[np.ndarray] = []
    missing = 0
    for ids, recv in recorded:
        k = ids - first
        keep = (k >= 0) & (k < len(takes))
        lags.append((recv[keep] - takes[k[keep]]) / 1e6)
        seen = keep.copy()
        seen[keep] = arrived[k[keep]] >= 0
        fan_out.append((recv[seen] - arrived[k[seen]]) / 1e6)
        missing += len(takes) - int(keep.sum())
    lag = np.concatenate(lags) if lags else np.zeros(0)
    server = np.concatenate(fan_out) if fan_out else np.zeros(0)
    upstream = (arrived[arrived >= 0] - takes[arrived >= 0]) / 1e6
    books = [count for _, _, count in result["recorded"]]

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if len(values) else None

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
        "lag_p50_ms": pct(lag, 50),
        "lag_p99_ms": pct(lag, 99),
        "gateway_to_client_p50_ms": pct(server, 50),
        "gateway_to_client_p99_ms": pct(server, 99),
        "command_to_gateway_p50_ms": pct(upstream, 50),
        "command_to_gateway_p99_ms": pct(upstream, 99),
        "resyncs": result["resyncs"],
        "missing": missing,
    }
