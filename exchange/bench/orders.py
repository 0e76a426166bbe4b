"""`gx bench orders`: WebSocket `order.place` to its answer, against the broker floor, per fetch wait.

For each fetch wait (`--fetch-waits`, ms: `GX_KAFKA_FETCH_WAIT_MS`, how long a stage's idle
fetch waits on the broker) a fresh exchange runs as deployed: `gx engine`, `gx marketdata` and
`gx gateway`, each a process of its own, over this process's embedded broker and a private
PostgreSQL, all started with that fetch wait. Settlement is left out: no answer waits for it, and
on the embedded broker, which keeps only the newest few MiB of a partition, a writer behind the
load would lose its place in the log (its cost per order is `gx bench pipeline`'s). A client process
(exchange/bench/orders_clients.py) holds one logged-on WebSocket per account and the floor's
producers and consumers. Per rate (`--rates`, orders/s) the phases alternate floor, orders,
floor, orders (`--pairs` pairs, each `--duration` s), so the floor is measured under the same
machine load as the orders it is compared with:
- orders: IOC buys on a book without asks, open loop at the rate, spread over the accounts so
  each stays within the gateway's default order limit (`RateLimits().orders_per_account_per_s`);
  nothing rests, and each answer waits for the engine's events, as every placement does;
- floor: the same rate of records through two produce-to-fetch hops on the same broker at the
  same fetch wait (the path of a command and its events without the exchange's work).
Figures per fetch wait and rate: p50 and p99 of both, and `orders_vs_floor_p50`/`_p99`.

CPU: each exchange process's own accounting (/proc/PID/stat user + system): milliseconds of CPU
per second over `--duration` s of no load (`idle_cpu_ms_per_s`: what the fetch wait costs when
nothing happens), and microseconds per order over the order phases of each rate
(`cpu_us_per_order`). The embedded broker lives in this process and is reported as `broker`
(this process's CPU less nothing else it does during a phase: it only waits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

import asyncpg
import httpx
import msgspec
import numpy as np
import orjson
import uvloop
from aiokafka import AIOKafkaProducer

from exchange.bench.orders_clients import OrdersSpec
from exchange.bench.report import Report, add_benchmark, print_report, require_positive
from exchange.gateway.keys import KeyStore
from exchange.gateway.ratelimit import RateLimits
from exchange.stack import Stack, stack_engine_config
from schemas import commands as c
from schemas.codec import encode
from schemas.ids import ACCOUNT_FIRST_USER
from schemas.units import NS_PER_HOUR
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import open_database
from streams.ledger.schema import migrate
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["register", "run", "bench_orders"]

FETCH_WAITS_DEFAULT = "1,10"
RATES_DEFAULT = "100,1000"
PAIRS_DEFAULT = 2
DURATION_S_DEFAULT = 5.0
MASTER_KEY = "bench-orders-master-key-not-a-secret-000"
FUNDS_MICROS = 10**13
SYMBOL_PREFIX = "H100-SXM.us-east.1h."
HOP_TOPICS = ("bench.orders.hop1", "bench.orders.hop2")
PROCESSES = ("engine", "marketdata", "gateway")
start_wait_s = 180.0  # the engine's first compile, the gateway reading the log
stop_wait_s = 15.0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `orders` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "orders",
        "WebSocket order round trip against two broker hops, per fetch wait, with its CPU",
        __doc__,
    )
    p.add_argument("--fetch-waits", default=FETCH_WAITS_DEFAULT, help="ms, comma separated")
    p.add_argument("--rates", default=RATES_DEFAULT, help="orders/s, comma separated")
    p.add_argument("--pairs", type=int, default=PAIRS_DEFAULT, help="floor/orders pairs per rate")
    p.add_argument("--duration", type=float, default=DURATION_S_DEFAULT, help="seconds per phase")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the order round-trip benchmark and print its figures."""
    require_positive(args, "pairs", "duration")
    try:
        fetch_waits = [int(v) for v in args.fetch_waits.split(",")]
        rates = [int(v) for v in args.rates.split(",")]
    except ValueError:
        raise SystemExit("--fetch-waits, --rates: expected comma-separated integers") from None
    if not fetch_waits or not rates or min(fetch_waits) < 0 or min(rates) <= 0:
        raise SystemExit("--fetch-waits: expected ms >= 0; --rates: expected orders/s > 0")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    print_report(bench_orders(fetch_waits, rates, args.pairs, args.duration), args.json)
    return 0


def _progress(text: str) -> None:
    print(f"gx bench orders: {text}", file=sys.stderr, flush=True)


def bench_orders(fetch_waits: list[int], rates: list[int], pairs: int, duration_s: float) -> Report:
    """Measure every fetch wait on an exchange of its own; return the figures."""
    report: Report = {"accounts": accounts_for(max(rates), RateLimits()),
                      "duration_s_per_phase": duration_s, "pairs": pairs}  # fmt: skip
    for fetch_wait_ms in fetch_waits:
        with (
            EmbeddedBroker(broker_count=1) as broker,
            open_database(f"gx_bench_orders_{fetch_wait_ms}") as dsn,
        ):
            report[f"fetch_wait_{fetch_wait_ms}ms"] = uvloop.run(
                _bench(broker, dsn, fetch_wait_ms, rates, pairs, duration_s)
            )
    return report


def accounts_for(rate: int, limits: RateLimits) -> int:
    """Accounts to spread `rate` orders/s over, each at half the per-account order limit."""
    return max(1, math.ceil(rate / max(1, limits.orders_per_account_per_s // 2)))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from the kernel's own accounting."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ms(values_ns: list[int], q: float) -> float | None:
    if not values_ns:
        return None
    return round(float(np.percentile(np.asarray(values_ns, dtype=np.float64), q)) / 1e6, 2)


class _Exchange:
    """The exchange's processes, all with one fetch wait."""

    def __init__(self, settings: Settings, dsn: str, fetch_wait_ms: int, port: int) -> None:
        assert settings.kafka_bootstrap is not None
        self.bootstrap = settings.kafka_bootstrap
        self.dsn, self.port = dsn, port
        self.env = {**os.environ, "GX_GATEWAY_MASTER_KEY": MASTER_KEY, "GX_LOG_LEVEL": "warning",
                    "GX_KAFKA_FETCH_WAIT_MS": str(fetch_wait_ms)}  # fmt: skip
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        engine_config = msgspec.json.encode(stack_engine_config).decode()
        args = {
            "engine": ["engine", "--shard", "0", "--mock-broker", "--no-snapshots",
                       "--engine-config", engine_config, "--dsn", self.dsn],
            "marketdata": ["marketdata", "--mock-broker"],
            "gateway": ["gateway", "--mock-broker", "--dsn", self.dsn, "--port", str(self.port)],
        }  # fmt: skip
        for name in PROCESSES:
            self.processes[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "exchange.cli.gx", *args[name], "--bootstrap",
                self.bootstrap, env=self.env,
            )  # fmt: skip

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.returncode is not None:
                raise RuntimeError(f"gx {name} exited with {process.returncode}; see stderr")

    def cpu_s(self) -> dict[str, float]:
        used = {name: _cpu_s(p.pid) for name, p in self.processes.items()}
        used["broker"] = _cpu_s(os.getpid())
        return used

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), stop_wait_s)
            except TimeoutError:
                process.kill()
                await process.wait()


class _Client:
    """The client process (exchange/bench/orders_clients.py) and its result file."""

    def __init__(self, spec: OrdersSpec, workdir: str) -> None:
        self.spec_path = os.path.join(workdir, "orders.spec.json")
        self.out_path = os.path.join(workdir, "orders.json")
        with open(self.spec_path, "wb") as file:
            file.write(msgspec.json.encode(spec))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exchange.bench.orders_clients", self.spec_path, self.out_path,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await self._expect("ready")

    async def _expect(self, word: str) -> None:
        assert self.process is not None and self.process.stdout is not None
        async with asyncio.timeout(start_wait_s):
            line = await self.process.stdout.readline()
        if line.strip() != word.encode():
            raise RuntimeError(f"orders client: expected {word!r}, found {line!r}; see stderr")

    async def phase(self, kind: str, rate: int) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"{kind} {rate}\n".encode())
        await self._expect("done")

    async def result(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"quit\n")
        code = await self.process.wait()
        if code != 0:
            raise RuntimeError(f"orders client failed (exit code {code}); see stderr")
        with open(self.out_path, "rb") as file:
            result: dict[str, Any] = orjson.loads(file.read())
            return result

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def _bench(
    broker: EmbeddedBroker,
    dsn: str,
    fetch_wait_ms: int,
    rates: list[int],
    pairs: int,
    duration_s: float,
) -> Report:
    settings = Settings(gateway_master_key=MASTER_KEY)
    stack = Stack(broker, dsn, settings)
    stack.create_topics()
    for topic in HOP_TOPICS:
        broker.create_topic(topic, 1)
    accounts = [ACCOUNT_FIRST_USER + i for i in range(accounts_for(max(rates), RateLimits()))]
    keys = await _keys(dsn, accounts)
    await _fund(stack.settings, accounts)
    workdir = tempfile.mkdtemp(prefix="gx-bench-orders-")
    try:
        _progress(f"fetch wait {fetch_wait_ms} ms: starting the exchange")
        return await _one_fetch_wait(
            stack.settings, dsn, fetch_wait_ms, rates, pairs, duration_s, keys, workdir
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _one_fetch_wait(
    settings: Settings,
    dsn: str,
    fetch_wait_ms: int,
    rates: list[int],
    pairs: int,
    duration_s: float,
    keys: list[tuple[str, str]],
    workdir: str,
) -> Report:
    port = _free_port()
    exchange = _Exchange(settings, dsn, fetch_wait_ms, port)
    client: _Client | None = None
    try:
        await exchange.start()
        symbol = await _ready(f"http://127.0.0.1:{port}", exchange)
        assert settings.kafka_bootstrap is not None
        spec = OrdersSpec(host="127.0.0.1", port=port, symbol=symbol, keys=keys,
                          bootstrap=settings.kafka_bootstrap, fetch_wait_ms=fetch_wait_ms,
                          hop_topics=HOP_TOPICS, duration_s=duration_s)  # fmt: skip
        client = _Client(spec, workdir)
        await client.start()
        await asyncio.sleep(1.0)  # the logons' own work done before the idle window
        before = exchange.cpu_s()
        await asyncio.sleep(duration_s)
        idle = {k: v - before[k] for k, v in exchange.cpu_s().items()}
        order_cpu: dict[int, dict[str, float]] = {}
        for rate in rates:
            _progress(f"fetch wait {fetch_wait_ms} ms, {rate} orders/s: {pairs} floor/orders pairs")
            order_cpu[rate] = dict.fromkeys(idle, 0.0)
            for _ in range(pairs):
                await client.phase("floor", rate)
                exchange.check()
                before = exchange.cpu_s()
                await client.phase("orders", rate)
                for name, used in exchange.cpu_s().items():
                    order_cpu[rate][name] += used - before[name]
                exchange.check()
        result = await client.result()
    finally:
        if client is not None:
            client.kill()
        await exchange.stop()
    return _figures(result, rates, idle, order_cpu, duration_s)


def _figures(
    result: dict[str, Any],
    rates: list[int],
    idle: dict[str, float],
    order_cpu: dict[int, dict[str, float]],
    duration_s: float,
) -> Report:
    out: Report = {
        "idle_cpu_ms_per_s": {k: round(v * 1000 / duration_s, 2) for k, v in idle.items()},
        "errors": result["errors"],
    }
    out["idle_cpu_ms_per_s"]["total"] = round(sum(idle.values()) * 1000 / duration_s, 2)
    samples = result["samples"]
    for rate in rates:
        orders = [ns for phase in samples.get(f"orders@{rate}", []) for ns in phase]
        floor = [ns for phase in samples.get(f"floor@{rate}", []) for ns in phase]
        figures: Report = {"orders": len(orders), "floor_records": len(floor)}
        for q in (50, 99):
            o, f = _ms(orders, q), _ms(floor, q)
            figures[f"orders_p{q}_ms"], figures[f"floor_p{q}_ms"] = o, f
            figures[f"orders_vs_floor_p{q}"] = round(o / f, 2) if o and f else None
        figures["pairs_p50_ms"] = [
            [_ms(fl, 50), _ms(od, 50)]
            for fl, od in zip(
                samples.get(f"floor@{rate}", []), samples.get(f"orders@{rate}", []), strict=True
            )
        ]
        cpu = order_cpu[rate]
        figures["cpu_us_per_order"] = {
            k: round(v * 1e6 / max(1, len(orders)), 1) for k, v in cpu.items()
        }
        figures["cpu_us_per_order"]["total"] = round(
            sum(cpu.values()) * 1e6 / max(1, len(orders)), 1
        )
        out[f"rate_{rate}"] = figures
    return out


async def _keys(dsn: str, accounts: list[int]) -> list[tuple[str, str]]:
    """A key with the read and trade scopes for each account, as `gx keys create` makes it."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)  # before any process has started: the keys' table first
        store = KeyStore(pool, MASTER_KEY)
        keys = []
        for account in accounts:
            api_key, secret = await store.create(account, ("read", "trade"))
            keys.append((api_key.key_id, secret))
        return keys
    finally:
        await pool.close()


async def _fund(settings: Settings, accounts: list[int]) -> None:
    """Deposit into every account and tick the clock once, so the instruments list."""
    topic = topics(settings)["commands"].name
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        now_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
        for command in [
            *(c.Deposit(account=a, amount_micros=FUNDS_MICROS) for a in accounts),
            c.ClockTick(ts_ns=now_ns),
        ]:
            await producer.send_and_wait(topic, encode(command), key=shard_key(0), partition=0)
    finally:
        await producer.stop()


async def _ready(url: str, exchange: _Exchange) -> str:
    """Wait until the gateway is ready and lists an hourly H100 instrument; return its symbol."""
    deadline = time.monotonic() + start_wait_s
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while True:
            exchange.check()
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await http.get("/readyz")).status_code == 200:
                    listed = (await http.get("/api/v1/instruments")).json()
                    symbols = sorted(
                        i["symbol"] for i in listed.get("instruments", listed)
                        if isinstance(i, dict) and i["symbol"].startswith(SYMBOL_PREFIX)
                    )  # fmt: skip
                    if symbols:
                        return symbols[-1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"the exchange was not ready within {start_wait_s:.0f} s")
            await asyncio.sleep(0.2)
