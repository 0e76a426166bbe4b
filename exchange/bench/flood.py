"""`gx bench flood`: three floods at once against one gateway, and a well-behaved client's orders.

The gateway runs as deployed, `gx gateway` in a process of its own (so its RSS is the gateway's
alone, not the embedded broker's that this process holds); the engine and market data run in
processes of their own too (exchange/bench/stages.py). The clients are processes of their own
(exchange/bench/flood_clients.py), each flood from its own loopback source addresses so that
the per-IP limits meet only the clients they are meant for:
- `key`: one connection of one key sending `--rate` requests/s (order.place, order.place,
  order.status, ping in turn), whatever the answers;
- `spread`: `--connections` connections of one key from several addresses, `--rate` requests/s
  between them: each stays under its connection's limit, so the per-key order limit must hold;
- `logons`: `--logon-sockets` sockets from one address sending `session.logon`s of random keys
  (`--logon-rate` between them), each connecting again when the gateway closes it.
The gateway's limits are its defaults (`RateLimits()`), as `gx gateway` runs them.

The probe, a client of its own key and address, places one IOC order at a time (`--probe-rate`
a second) and times place -> answer: first for `--duration` seconds with no flood (unloaded),
then for as long again while the floods run (loaded). Nothing rests on the book: every order
is an IOC buy on a book without asks.

Figures: per flood, requests `sent`, `held_back` (due but the client's socket buffer was full,
because the gateway read no faster), `answered`, the answers by code, closes by code and
connects; the probe's `p50`/`p99` unloaded and loaded and `p99_ratio` (the target: <= 2);
the gateway's RSS at the start of the loaded phase, its peak while loaded, at the end (after the
floods closed) and its high-water mark (`VmHWM`, start-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import asyncpg
import httpx
import msgspec
import numpy as np
import uvloop
from aiokafka import AIOKafkaProducer

from exchange.bench.flood_clients import FloodSpec
from exchange.bench.report import Report, add_benchmark, print_report, require_positive
from exchange.bench.stages import Stage, StageSpec, start_stage, wait_ready
from exchange.gateway.keys import KeyStore
from exchange.gateway.ratelimit import RateLimits
from exchange.stack import Stack, StackOptions, stack_engine_config
from schemas import commands as c
from schemas.codec import encode
from schemas.ids import ACCOUNT_FIRST_USER
from schemas.units import NS_PER_HOUR
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import open_database
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["register", "run", "bench_flood"]

RATE_DEFAULT = 10_000  # requests per second, per keyed flood
CONNECTIONS_DEFAULT = 200  # the spread flood's
LOGON_SOCKETS_DEFAULT = 50
LOGON_RATE_DEFAULT = 1_000  # session.logon attempts per second, all sockets together
PROBE_RATE_DEFAULT = 40  # the well-behaved client's orders per second
DURATION_S_DEFAULT = 10.0  # each phase
MASTER_KEY = "bench-flood-master-key-not-a-secret-0000"
FLOOD_KEY, FLOOD_SPREAD, PROBE = ACCOUNT_FIRST_USER, ACCOUNT_FIRST_USER + 1, ACCOUNT_FIRST_USER + 2
FUNDS_MICROS = 10**13
SYMBOL_PREFIX = "H100-SXM.us-east.1h."
PROBE_IP, KEY_IP, LOGON_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
spread_ip_first = 10  # the spread flood's addresses: 127.0.0.10 on
fetch_wait_ms = 5
ramp_s = 1.0  # the floods run this long before the loaded phase starts, and after it ends
settle_s = 2.0  # after the floods, before the end RSS
rss_every_s = 0.05
start_wait_s = 120.0  # the gateway reading the topics, the engine's first compile


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `flood` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "flood",
        "floods of requests and logons against the gateway's limits, and a client's order latency",
        __doc__,
    )
    p.add_argument("--rate", type=int, default=RATE_DEFAULT, help="requests/s per keyed flood")
    p.add_argument("--connections", type=int, default=CONNECTIONS_DEFAULT)
    p.add_argument("--logon-sockets", type=int, default=LOGON_SOCKETS_DEFAULT)
    p.add_argument("--logon-rate", type=int, default=LOGON_RATE_DEFAULT)
    p.add_argument("--probe-rate", type=int, default=PROBE_RATE_DEFAULT)
    p.add_argument("--duration", type=float, default=DURATION_S_DEFAULT, help="seconds per phase")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the flood benchmark and print its figures."""
    require_positive(
        args, "rate", "connections", "logon_sockets", "logon_rate", "probe_rate", "duration"
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    options = _Options(
        rate=args.rate,
        connections=args.connections,
        logon_sockets=args.logon_sockets,
        logon_rate=args.logon_rate,
        probe_rate=args.probe_rate,
        duration_s=args.duration,
    )
    print_report(bench_flood(options), args.json)
    return 0


class _Options(msgspec.Struct, frozen=True, kw_only=True):
    rate: int = RATE_DEFAULT
    connections: int = CONNECTIONS_DEFAULT
    logon_sockets: int = LOGON_SOCKETS_DEFAULT
    logon_rate: int = LOGON_RATE_DEFAULT
    probe_rate: int = PROBE_RATE_DEFAULT
    duration_s: float = DURATION_S_DEFAULT


def _progress(text: str) -> None:
    print(f"gx bench flood: {text}", file=sys.stderr, flush=True)


def bench_flood(options: _Options) -> Report:
    """Start the exchange, run the unloaded and the loaded phase; return the figures."""
    with EmbeddedBroker(broker_count=1) as broker, open_database("gx_bench_flood") as dsn:
        return uvloop.run(_bench(broker, dsn, options))


def spread_ips(connections: int, limits: RateLimits) -> list[str]:
    """Source addresses for `connections` logged-on sockets, half the per-IP limits each."""
    per_ip = max(1, min(limits.ws_connections_per_ip, limits.ws_logons_per_ip_burst) // 2)
    return [f"127.0.0.{spread_ip_first + i}" for i in range(math.ceil(connections / per_ip))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Rss:
    """The gateway process's resident memory, sampled every `rss_every_s`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []  # (monotonic s, bytes)
        self._task = asyncio.create_task(self._sample())

    def read(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/{self.pid}/status: no {field} line")

    async def _sample(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # the gateway stopped: nothing to sample
            while True:
                self.samples.append((time.monotonic(), self.read()))
                await asyncio.sleep(rss_every_s)

    def peak(self, from_s: float, to_s: float) -> int:
        return max((b for t, b in self.samples if from_s <= t <= to_s), default=0)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from the kernel's own accounting."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core), from /proc/stat."""
    with open("/proc/stat") as stat:
        cpu = [int(v) for v in stat.readline().split()[1:]]
    idle = cpu[3] + cpu[4]  # idle, iowait
    return (sum(cpu[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class _Cpu:
    """CPU seconds of named processes (and the machine), sampled every `rss_every_s` so that a
    process that ends (a flood client whose sockets were all closed) keeps its last reading."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._read({})
        self.last = dict(self.start)
        self._task = asyncio.create_task(self._sample())

    def _read(self, last: dict[str, float]) -> dict[str, float]:
        used = dict(last)
        for name, pid in self.pids.items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                used[name] = _cpu_s(pid)
        used["machine"] = _busy_s()
        return used

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(rss_every_s)
            self.last = self._read(self.last)

    async def cores(self, wall_s: float) -> dict[str, float]:
        """Cores each process used on average since the start (the machine: all of them)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        end = self._read(self.last)
        return {
            name: round((end[name] - self.start.get(name, end[name])) / wall_s, 2) for name in end
        }


class _Child:
    """One client process (exchange/bench/flood_clients.py) and its result file."""

    def __init__(self, role: str, spec: FloodSpec, results: str) -> None:
        self.role = role
        self.spec_path = os.path.join(results, f"{role}.spec.json")
        self.out_path = os.path.join(results, f"{role}.json")
        with open(self.spec_path, "wb") as file:
            file.write(msgspec.json.encode(spec))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exchange.bench.flood_clients", self.role, self.spec_path,
            self.out_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await self.expect("ready")

    async def expect(self, word: str) -> None:
        assert self.process is not None and self.process.stdout is not None
        async with asyncio.timeout(start_wait_s):
            line = await self.process.stdout.readline()
        if line.strip() != word.encode():
            raise RuntimeError(f"flood client {self.role}: expected {word!r}, found {line!r}")

    def go(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def result(self) -> dict[str, Any]:
        assert self.process is not None
        code = await self.process.wait()
        if code != 0:
            raise RuntimeError(f"flood client {self.role} failed (exit code {code}); see stderr")
        with open(self.out_path, "rb") as file:
            result: dict[str, Any] = msgspec.json.decode(file.read())
            return result

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def _bench(broker: EmbeddedBroker, dsn: str, options: _Options) -> Report:
    settings = Settings(gateway_master_key=MASTER_KEY, kafka_fetch_wait_ms=fetch_wait_ms)
    stack = Stack(broker, dsn, settings, options=StackOptions(provisioning=False))
    stack.create_topics()
    limits = RateLimits()  # what `gx gateway` runs with
    results = tempfile.mkdtemp(prefix="gx-bench-flood-")
    stages: list[Stage] = []
    gateway: asyncio.subprocess.Process | None = None
    children: list[_Child] = []
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    try:
        _progress("starting the engine, market data and the gateway")
        stages = [
            start_stage(StageSpec("engine", stack.settings, dsn,
                                  engine_config=stack_engine_config), in_process=False),
            start_stage(StageSpec("marketdata", stack.settings, dsn), in_process=False),
        ]  # fmt: skip
        await wait_ready(stages, functools.partial(_check, stages))
        port = _free_port()
        gateway = await _start_gateway(stack.settings, dsn, port)
        await producer.start()
        url = f"http://127.0.0.1:{port}"
        symbol = await _setup(stack.settings, producer, url, gateway)
        keys = await _keys(dsn)
        rss = _Rss(gateway.pid)
        duration_s = options.duration_s

        def spec(**fields: Any) -> FloodSpec:
            return FloodSpec(host="127.0.0.1", port=port, symbol=symbol, **fields)

        probe = _Child("probe", spec(connections=1, rate=options.probe_rate,
                                     duration_s=duration_s, ips=[PROBE_IP], **keys[PROBE]),
                       results)  # fmt: skip
        flood_s = duration_s + 2 * ramp_s
        floods = [
            _Child("key", spec(connections=1, rate=options.rate, duration_s=flood_s,
                               ips=[KEY_IP], **keys[FLOOD_KEY]), results),
            _Child("spread", spec(connections=options.connections, rate=options.rate,
                                  duration_s=flood_s, ips=spread_ips(options.connections, limits),
                                  **keys[FLOOD_SPREAD]), results),
            _Child("logons", spec(connections=options.logon_sockets, rate=options.logon_rate,
                                  duration_s=flood_s, ips=[LOGON_IP]), results),
        ]  # fmt: skip
        children = [probe, *floods]
        await probe.start()
        _progress(f"unloaded: {options.probe_rate} orders/s for {duration_s:g} s")
        probe.go()
        await probe.expect("phase")
        _progress("connecting the floods")
        for flood in floods:
            await flood.start()
        rss_start = rss.read()
        for flood in floods:
            flood.go()
        await asyncio.sleep(ramp_s)
        _progress(f"loaded: floods of {options.rate} requests/s for {duration_s:g} s")
        loaded_from = time.monotonic()
        pids = {"gateway": gateway.pid, "bench_and_broker": os.getpid()}
        for child in children:
            assert child.process is not None
            pids[f"client_{child.role}"] = child.process.pid
        cpu = _Cpu(pids)
        probe.go()
        probed = await probe.result()
        loaded_cores = await cpu.cores(time.monotonic() - loaded_from)
        flooded = {flood.role: await flood.result() for flood in floods}
        loaded_to = time.monotonic()
        await asyncio.sleep(settle_s)
        memory = {
            "gateway_rss_start_mib": _mib(rss_start),
            "gateway_rss_peak_mib": _mib(rss.peak(loaded_from - ramp_s, loaded_to)),
            "gateway_rss_end_mib": _mib(rss.read()),
            "gateway_rss_hwm_mib": _mib(rss.read("VmHWM")),
        }
        await rss.stop()
    finally:
        for child in children:
            child.kill()
        with contextlib.suppress(Exception):
            await producer.stop()
        if gateway is not None and gateway.returncode is None:
            gateway.terminate()
            await gateway.wait()
        for stage in stages:
            await stage.stop()
        shutil.rmtree(results, ignore_errors=True)
    report = _report(options, limits, probed, flooded, memory)
    # Where the machine's cores went while the probe ran loaded: the flood clients are on the
    # same two cores as the exchange, so their own cost is part of what the probe waits behind.
    report["loaded_cores"] = loaded_cores
    return report


def _check(stages: list[Stage]) -> None:
    for stage in stages:
        stage.check()


async def _start_gateway(settings: Settings, dsn: str, port: int) -> asyncio.subprocess.Process:
    """`gx gateway` on `port`, over this process's embedded broker and the database."""
    assert settings.kafka_bootstrap is not None
    env = {**os.environ, "GX_GATEWAY_MASTER_KEY": MASTER_KEY,
           "GX_KAFKA_FETCH_WAIT_MS": str(fetch_wait_ms), "GX_LOG_LEVEL": "warning"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.cli.gx", "gateway", "--mock-broker",
        "--bootstrap", settings.kafka_bootstrap, "--dsn", dsn, "--port", str(port), env=env,
    )  # fmt: skip
    return process


async def _setup(
    settings: Settings, producer: AIOKafkaProducer, url: str, gateway: asyncio.subprocess.Process
) -> str:
    """Fund the three accounts, list the instruments; return the hourly symbol the orders use."""
    topic = topics(settings)["commands"].name
    now_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
    for command in [
        *(c.Deposit(account=a, amount_micros=FUNDS_MICROS) for a in (FLOOD_KEY, FLOOD_SPREAD,
                                                                        PROBE)),
        c.ClockTick(ts_ns=now_ns),
    ]:  # fmt: skip
        await producer.send_and_wait(topic, encode(command), key=shard_key(0), partition=0)
    deadline = time.monotonic() + start_wait_s
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while True:
            if gateway.returncode is not None:
                raise RuntimeError(f"gx gateway exited with {gateway.returncode}; see stderr")
            with contextlib.suppress(httpx.HTTPError):
                listed = (await client.get("/api/v1/instruments")).json()
                symbols = sorted(
                    i["symbol"] for i in listed.get("instruments", listed)
                    if isinstance(i, dict) and i["symbol"].startswith(SYMBOL_PREFIX)
                )  # fmt: skip
                if symbols:
                    return symbols[-1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {SYMBOL_PREFIX}* instrument within {start_wait_s:.0f} s")
            await asyncio.sleep(0.1)


async def _keys(dsn: str) -> dict[int, dict[str, str]]:
    """A key with the read and trade scopes for each account, as `gx keys create` makes it."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        store = KeyStore(pool, MASTER_KEY)
        keys = {}
        for account in (FLOOD_KEY, FLOOD_SPREAD, PROBE):
            api_key, secret = await store.create(account, ("read", "trade"))
            keys[account] = {"key": api_key.key_id, "secret": secret}
        return keys
    finally:
        await pool.close()


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


def _ms(values_ns: list[int], q: float) -> float | None:
    if not values_ns:
        return None
    return round(float(np.percentile(np.asarray(values_ns, dtype=np.float64), q)) / 1e6, 2)


def _report(
    options: _Options,
    limits: RateLimits,
    probed: dict[str, Any],
    flooded: dict[str, dict[str, Any]],
    memory: dict[str, float],
) -> Report:
    report: Report = {"duration_s": options.duration_s, "rate": options.rate}
    for role, result in flooded.items():
        run_s = result["run_s"]
        report[f"{role}_connections"] = result["connections"]
        report[f"{role}_sent"] = result["sent"]
        report[f"{role}_sent_per_s"] = round(result["sent"] / run_s) if run_s else 0
        report[f"{role}_held_back"] = result["held_back"]
        report[f"{role}_answered"] = result["answered"]
        report[f"{role}_answers"] = result["answers"]
        report[f"{role}_closes"] = result["closes"]
        report[f"{role}_connects"] = result["connects"]
        report[f"{role}_retry_after_missing"] = result["retry_after_missing"]
    # what the limits allow the keyed floods, for comparison with their OK order answers
    report["orders_per_account_per_s"] = limits.orders_per_account_per_s
    report["ws_messages_per_conn_per_s"] = limits.ws_messages_per_conn_per_s
    unloaded, loaded = probed["unloaded_ns"], probed["loaded_ns"]
    report["probe_rate"] = options.probe_rate
    report["probe_sent"] = probed["sent"] + probed["unanswered"]
    report["probe_answers"] = probed["answers"]
    report["probe_unanswered"] = probed["unanswered"]
    report["probe_unloaded_p50_ms"] = _ms(unloaded, 50)
    report["probe_unloaded_p99_ms"] = _ms(unloaded, 99)
    report["probe_loaded_p50_ms"] = _ms(loaded, 50)
    report["probe_loaded_p99_ms"] = _ms(loaded, 99)
    p99_unloaded, p99_loaded = report["probe_unloaded_p99_ms"], report["probe_loaded_p99_ms"]
    report["probe_p99_ratio"] = (
        round(p99_loaded / p99_unloaded, 2) if p99_unloaded and p99_loaded else None
    )
    report.update(memory)
    return report
