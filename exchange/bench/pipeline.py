"""`gx bench pipeline`: stream orders through broker, engine, settlement and market data, end to end.

The embedded broker (librdkafka's mock cluster), the producer and the probe run in this process;
the engine runner, the settlement writer and the market-data process run in one child process
each, as `gx engine`, `gx settle` and `gx marketdata` do in production (exchange/bench/stages.py;
`--one-process` puts them on this loop instead). The ledger is an embedded PostgreSQL (or
`GX_DATABASE_URL`):

    producer -> gx.commands -> EngineRunner -> gx.events -> SettlementWriter (PostgreSQL ledger)
                                                         -> MarketDataProcess -> gx.marketdata
                                                         -> probe (latency, loss, duplicates)

The producer first sends a setup (one ClockTick, a deposit and provider capacity for each of
`ACCOUNTS` accounts on one hourly instrument, as `gx bench matching` does), waits until it is
settled, then streams N PlaceOrder commands (about 30% crossing, prices around a random-walk mid)
with `ts_init` = the time the command is produced.

Figures:
- `orders_per_s`: N over the time from the first order produced to the settlement commit that
  covers the last event; `settled_fills_per_s`: TradeExecuted rows settled over the same time.
- `p50_ms`/`p99_ms`: per order, from its produce time to the probe reading its first event.
- `raw_loop_msgs_per_s`: afterwards, the same N command payloads streamed through a bare aiokafka
  getmany -> send_batch loop between two other topics of the same broker (the practical limit);
  `ratio_vs_raw` = orders_per_s / raw_loop_msgs_per_s.
- `lost`: orders whose events never arrived; `duplicated`: event sequence numbers read twice.

The mock keeps only about 5 MiB per partition, so the producer never lets the unread backlog of
any topic grow past `backlog_bytes_max` (flow control, as a real client's lag limit would);
a run that still outpaces the retention shows up as `lost` and `seq_gaps`, never silently.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from exchange.bench.report import Report, add_benchmark, print_report
from exchange.bench.stages import Stage, StageSpec, start_stage, wait_ready
from matching import layout as lay
from matching.engine import Engine, EngineConfig
from schemas import commands as cmd
from schemas.catalog import Catalog, load_catalog
from schemas.codec import encode
from schemas.codes import SelfTradePrevention, Side
from schemas.units import NS_PER_HOUR
from streams.admin import create_topics
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import EmbeddedPostgres, database_url
from streams.engine_runner import RunnerStats
from streams.marketdata.process import ProcessStats
from streams.settings import Settings
from streams.settlement import SettlementStats
from streams.topics import shard_key, topics

__all__ = ["register", "run", "bench_pipeline", "generate_orders"]

ORDERS_DEFAULT = 200_000
SEED_DEFAULT = 20_240_601
ACCOUNT_FIRST = 10
ACCOUNTS = 1000
DEPOSIT_MICROS = 10**15
CAPACITY_GPUS = 1_000_000
# 2026-12-01T00:00Z minus 3 hours: hourly instruments from 03:00 on are listed at the first tick.
T0_NS = 1_796_083_200_000_000_000 - 3 * NS_PER_HOUR
MID_TICKS = 2400
MID_RANGE_TICKS = 400
CROSS_SHARE = 0.30
DEPTH_TICKS = 20
LOTS_MAX = 10
produce_chunk_max = 256  # orders per send_batch call: small steps keep the backlog bounded
backlog_bytes_max = 2 * 2**20  # unread bytes any partition may hold (the mock keeps ~5 MiB)
event_bytes_guess = 200  # until the probe has measured the mean event size
events_per_command_guess = 8.0  # until the engine has applied some orders
rate_tick_s = 0.001
poll_timeout_ms = 50
probe_fetch_wait_ms = 5  # an idle fetch must not add the default 500 ms to what we measure
stall_s_max = 10.0  # no progress for this long: stop waiting and report what was lost
raw_topics = ("bench.raw.in", "bench.raw.out")


# ============================================================================ command line


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `pipeline` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "pipeline",
        "stream orders through broker, engine, settlement and market data",
        __doc__,
    )
    p.add_argument("--orders", type=int, default=ORDERS_DEFAULT, help="PlaceOrder commands")
    p.add_argument(
        "--rate", type=float, default=0.0, help="offered orders per second (0: as fast as possible)"
    )
    p.add_argument("--seed", type=int, default=SEED_DEFAULT, help="seed of the orders")
    p.add_argument(
        "--snapshots",
        action="store_true",
        help="let the engine save snapshots to PostgreSQL (default: off, replay from the start)",
    )
    p.add_argument(
        "--fetch-wait-ms",
        type=int,
        help="diagnostic: how long the stages' idle fetches wait (default: the kafka_fetch_wait_ms "
        "setting; the mock holds an empty fetch that long even when data arrives)",
    )
    p.add_argument(
        "--settle-nice",
        type=int,
        help="how much nicer the settlement process runs (0-19; default: the settle_nice "
        "setting; 0 compares with settlement at the engine's priority)",
    )
    p.add_argument(
        "--one-process",
        action="store_true",
        help="run engine, settlement and market data on the benchmark's own event loop "
        "(default: one process each, as in production)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline benchmark and print its figures."""
    if args.orders <= 0:
        raise SystemExit(f"--orders: expected a positive count, found {args.orders}")
    if args.rate < 0:
        raise SystemExit(f"--rate: expected >= 0 orders per second, found {args.rate}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    report = bench_pipeline(
        args.orders,
        args.rate,
        args.seed,
        snapshots=args.snapshots,
        fetch_wait_ms=args.fetch_wait_ms,
        settle_nice=args.settle_nice,
        one_process=args.one_process,
    )
    print_report(report, args.json)
    return 0


def _progress(text: str) -> None:
    print(f"gx bench pipeline: {text}", file=sys.stderr, flush=True)


# ============================================================================ workload


class Orders(msgspec.Struct, frozen=True):
    """N orders as columns: account, side (0 buy, 1 sell), price_ticks, lots."""

    account: list[int]
    side: list[int]
    price_ticks: list[int]
    lots: list[int]


def generate_orders(count: int, seed: int) -> Orders:
    """Orders around a random-walk mid: ~30% cross it by 1-3 ticks, the rest rest 1-20 ticks off."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(-1, 2, count)
    mid = np.clip(
        MID_TICKS + np.cumsum(steps), MID_TICKS - MID_RANGE_TICKS, MID_TICKS + MID_RANGE_TICKS
    )
    side = rng.integers(0, 2, count)
    sign = np.where(side == 0, 1, -1)  # a buy crosses upwards, a sell downwards
    crossing = rng.random(count) < CROSS_SHARE
    offset = np.where(crossing, rng.integers(1, 4, count), -rng.integers(1, DEPTH_TICKS + 1, count))
    price = mid + sign * offset
    return Orders(
        account=(ACCOUNT_FIRST + rng.integers(0, ACCOUNTS, count)).tolist(),
        side=side.tolist(),
        price_ticks=price.tolist(),
        lots=rng.integers(1, LOTS_MAX + 1, count).tolist(),
    )


class Market(msgspec.Struct, frozen=True):
    """The instrument the benchmark trades and how to list and fund it."""

    symbol: str
    gpu: str
    region: str
    start_ns: int
    end_ns: int


def _market(catalog: Catalog, config: EngineConfig) -> Market:
    """The first hourly instrument a ClockTick at T0 lists (found with a throwaway engine)."""
    engine = Engine(catalog, config)
    engine.apply([cmd.ClockTick(ts_ns=T0_NS)])
    hourly = [s for s in engine.open_symbols() if ".1h." in s] or engine.open_symbols()
    symbol = hourly[0]
    row = engine.state[lay.ST_INSTRS][engine.symbol_slot(symbol)]
    start = int(row[lay.I_START])
    return Market(
        symbol=symbol,
        gpu=catalog.gpus[int(row[lay.I_GPU])].model,
        region=catalog.regions[int(row[lay.I_REGION])],
        start_ns=start,
        end_ns=start + int(row[lay.I_HOURS]) * NS_PER_HOUR,
    )


def _config(orders: int) -> EngineConfig:
    room = orders + 1024
    return EngineConfig(
        accounts_max=ACCOUNT_FIRST + ACCOUNTS,
        instruments_max=1 << 11,
        orders_max=room,
        levels_max=4 * MID_RANGE_TICKS + 4 * DEPTH_TICKS + 64,
        positions_max=4 * ACCOUNTS,
        capacity_rows_max=4 * ACCOUNTS,
        obligations_max=8 * ACCOUNTS,
        orders_open_max=room,
        capacity_gpus_max=CAPACITY_GPUS,
    )


def _setup_commands(market: Market) -> list[cmd.Command]:
    setup: list[cmd.Command] = [cmd.ClockTick(ts_ns=T0_NS)]
    for account in range(ACCOUNT_FIRST, ACCOUNT_FIRST + ACCOUNTS):
        setup.append(cmd.Deposit(account=account, amount_micros=DEPOSIT_MICROS))
        setup.append(
            cmd.CapacityUpdate(
                account=account, gpu=market.gpu, region=market.region,
                start_ns=market.start_ns, end_ns=market.end_ns, gpus=CAPACITY_GPUS,
            )
        )  # fmt: skip
    return setup


# ============================================================================ the probe


class _EventHead(msgspec.Struct):
    """Just what the probe reads of any event."""

    type: str = ""
    seq: int = 0
    input_offset: int = -1


_heads_decoder = msgspec.msgpack.Decoder(list[_EventHead] | _EventHead)


class Probe:
    """Read the events topic: first-event latency per order, fills, duplicated and missing seqs."""

    def __init__(self, bootstrap: str, tp: TopicPartition, first_order: int, orders: int) -> None:
        self.tp = tp
        self.first_order = first_order
        self.produced_ns = np.zeros(orders, dtype=np.int64)  # filled in by the producer
        self.latency_ns = np.full(orders, -1, dtype=np.int64)
        self.records = 0
        self.events = 0
        self.bytes = 0
        self.fills = 0
        self.duplicated = 0
        self.seq_gaps = 0
        self.next_seq = 1
        self.last_event_ns = 0
        self._bootstrap = bootstrap
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the current batch and return from `run()`."""
        self._stopping.set()

    @property
    def event_bytes(self) -> float:
        """Mean encoded event size so far."""
        return self.bytes / self.events if self.events > 100 else event_bytes_guess

    async def run(self) -> None:
        """Consume from the start until stopped."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            check_crcs=False,  # the mock writes transaction markers with CRC 0
            fetch_max_wait_ms=probe_fetch_wait_ms,
        )
        await consumer.start()
        try:
            consumer.assign([self.tp])
            while not self._stopping.is_set():
                batches = await consumer.getmany(self.tp, timeout_ms=poll_timeout_ms)
                records = batches.get(self.tp)
                if records:
                    self._observe(records, time.time_ns())
        finally:
            await consumer.stop()

    def _observe(self, records: list[Any], now_ns: int) -> None:
        decode = _heads_decoder.decode
        first, n = self.first_order, len(self.latency_ns)
        latency, produced = self.latency_ns, self.produced_ns
        for record in records:
            value = record.value or b""
            self.bytes += len(value)
            heads = decode(value)
            for head in heads if isinstance(heads, list) else [heads]:
                self.events += 1
                if head.seq < self.next_seq:
                    self.duplicated += 1
                    continue
                if head.seq > self.next_seq:
                    self.seq_gaps += head.seq - self.next_seq
                self.next_seq = head.seq + 1
                if head.type == "TradeExecuted":
                    self.fills += 1
                i = head.input_offset - first
                if 0 <= i < n and latency[i] < 0:
                    latency[i] = now_ns - produced[i]
        self.records += len(records)
        self.last_event_ns = now_ns


# ============================================================================ the pipeline


class Pipeline:
    """The processes under test: stages (child processes or tasks) and the probe on this loop."""

    def __init__(self, settings: Settings, dsn: str, config: EngineConfig, snapshots: bool,
                 first_order: int, orders: int, one_process: bool) -> None:  # fmt: skip
        bootstrap = settings.kafka_bootstrap
        assert bootstrap is not None
        self._specs = [
            StageSpec("engine", settings, dsn, engine_config=config, snapshots=snapshots),
            StageSpec("settlement", settings, dsn),
            StageSpec("marketdata", settings, dsn),
        ]
        self.one_process = one_process
        self.stages: dict[str, Stage] = {}
        self.nice: dict[str, int] = {}  # how much nicer than the benchmark each stage runs
        events = TopicPartition(topics(settings)["events"].name, 0)
        self.probe = Probe(bootstrap, events, first_order, orders)
        self._probe_task: asyncio.Task[None] | None = None
        self.setup_commands = first_order
        self.setup_events = 0  # known once the setup is settled

    @property
    def runner(self) -> RunnerStats:
        return self.stages["engine"].stats  # type: ignore[no-any-return]

    @property
    def writer(self) -> SettlementStats:
        return self.stages["settlement"].stats  # type: ignore[no-any-return]

    @property
    def marketdata(self) -> ProcessStats:
        return self.stages["marketdata"].stats  # type: ignore[no-any-return]

    @property
    def settled_ns(self) -> int:
        """Wall time of the newest settlement commit."""
        return self.stages["settlement"].settled_ns

    async def start(self) -> None:
        """Start every process; return once each runs (the engine recovered)."""
        for spec in self._specs:
            self.stages[spec.kind] = start_stage(spec, in_process=self.one_process)
        self._probe_task = asyncio.create_task(self.probe.run(), name="probe")
        await wait_ready(list(self.stages.values()), self.check)
        self.nice = {name: stage.nice for name, stage in self.stages.items()}

    def check(self) -> None:
        """Raise the error of any process that stopped by itself."""
        for stage in self.stages.values():
            stage.check()
        task = self._probe_task
        if task is not None and task.done() and task.exception() is not None:
            raise RuntimeError(f"probe failed: {task.exception()!r}")

    def settled_events(self) -> int:
        c = self.writer
        return c.events_settled + c.seq_gaps + c.malformed

    def slowest_read_events(self) -> int:
        """Events read by the slowest consumer of the events topic."""
        md = self.marketdata
        return min(self.writer.events_read, md.events + md.malformed, self.probe.events)

    def backlog_bytes(self, produced_commands: int, command_bytes: float) -> float:
        """Unread bytes the engine and the events consumers have yet to catch up with."""
        stats = self.runner
        pending = max(produced_commands - stats.next_offset, 0)
        orders_applied = stats.commands - self.setup_commands
        per_command = (
            (stats.events - self.setup_events) / orders_applied if orders_applied > 1000 else None
        )
        event_bytes = self.probe.event_bytes
        events_unread = stats.events - self.slowest_read_events()
        coming = pending * (per_command or events_per_command_guess)
        return max(pending * command_bytes, (events_unread + coming) * event_bytes)

    async def stop(self) -> None:
        """Stop every process and wait for them."""
        self.probe.stop()
        for name, stage in self.stages.items():
            try:
                await stage.stop()
            except Exception as error:  # report, and still stop the others
                _progress(f"{name} stopped with {error!r}")
        if self._probe_task is not None:
            with contextlib.suppress(Exception):
                await self._probe_task


async def _wait_for(done: Callable[[], bool], progress: Callable[[], int], what: str,
                    check: Callable[[], None]) -> bool:  # fmt: skip
    """Wait until `done()`; give up (False) once `progress()` has not moved for `stall_s_max`."""
    last, since = progress(), time.monotonic()
    while not done():
        check()
        await asyncio.sleep(0.005)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s_max:
            _progress(f"{what}: no progress for {stall_s_max:.0f} s; reporting what arrived")
            return False
    return True


class _Sender:
    """Produce records to one partition in record batches, keeping the acknowledgements."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, key: bytes | None) -> None:
        self.producer = producer
        self.topic = topic
        self.key = key
        self.acks: list[asyncio.Future[Any]] = []
        self.bytes = 0
        self.count = 0

    async def send(self, payloads: list[bytes]) -> None:
        batch = self.producer.create_batch()
        for value in payloads:
            if batch.append(key=self.key, value=value, timestamp=None) is None:
                batch.close()
                self.acks.append(await self.producer.send_batch(batch, self.topic, partition=0))
                batch = self.producer.create_batch()
                if batch.append(key=self.key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds one record batch")
            self.bytes += len(value)
        batch.close()
        self.acks.append(await self.producer.send_batch(batch, self.topic, partition=0))
        self.count += len(payloads)

    async def settle(self) -> list[Any]:
        """Wait for every acknowledgement; return their metadata."""
        acks, self.acks = self.acks, []
        return list(await asyncio.gather(*acks))


def _new_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=1,
        max_batch_size=512 * 1024,
        max_request_size=1024 * 1024,
    )


async def _stream(
    sender: _Sender,
    count: int,
    rate: float,
    make: Callable[[int, int, int], list[bytes]],
    backlog: Callable[[int], float],
    check: Callable[[], None],
    produced_ns: np.ndarray | None,
) -> int:
    """Send `count` records made by `make(start, stop, now_ns)`, paced at `rate` (0: at once)
    and never past `backlog_bytes_max` unread; return the time the first was produced."""
    first_ns = 0
    t0 = time.perf_counter()
    sent = 0
    while sent < count:
        check()
        room = count - sent
        if rate > 0:
            due = min(count, int((time.perf_counter() - t0) * rate) + 1)
            room = due - sent
        if backlog(sent) > backlog_bytes_max:
            room = 0
        if room <= 0:
            await asyncio.sleep(rate_tick_s)
            continue
        stop = sent + min(room, produce_chunk_max)
        now_ns = time.time_ns()
        first_ns = first_ns or now_ns
        await sender.send(make(sent, stop, now_ns))
        if produced_ns is not None:
            produced_ns[sent:stop] = now_ns
        sent = stop
        if len(sender.acks) > 64:
            acks = sender.acks[:-8]
            sender.acks = sender.acks[-8:]
            await asyncio.gather(*acks)
        await asyncio.sleep(0)  # let the consumers run between chunks
    await sender.settle()
    return first_ns


def _order_maker(orders: Orders, symbol: str) -> Callable[[int, int, int], list[bytes]]:
    sides = (Side.BUY, Side.SELL)
    stp = SelfTradePrevention.NONE

    def make(start: int, stop: int, now_ns: int) -> list[bytes]:
        return [
            encode(
                cmd.PlaceOrder(
                    account=orders.account[i], symbol=symbol, side=sides[orders.side[i]],
                    lots=orders.lots[i], price_ticks=orders.price_ticks[i], stp=stp,
                    ts_init=now_ns,
                )
            )
            for i in range(start, stop)
        ]  # fmt: skip

    return make


async def _run_pipeline(
    bootstrap: str, dsn: str, settings: Settings, orders: Orders, options: RunOptions
) -> tuple[Report, list[bytes]]:
    rate, snapshots, one_process = options.rate, options.snapshots, options.one_process
    catalog = load_catalog()
    count = len(orders.account)
    config = _config(count)
    market = _market(catalog, config)
    setup = [encode(c) for c in _setup_commands(market)]
    pipe = Pipeline(settings, dsn, config, snapshots, len(setup), count, one_process)
    where = "on this loop" if one_process else "in processes of their own"
    _progress(f"starting engine, settlement and market data {where}, and the probe")
    await pipe.start()
    producer = _new_producer(bootstrap)
    await producer.start()
    commands_topic = topics(settings)["commands"].name
    sender = _Sender(producer, commands_topic, shard_key(0))
    payloads: list[bytes] = []
    try:
        await sender.send(setup)
        (meta, *_) = await sender.settle()
        if meta.offset != 0:  # the probe maps input offsets to orders from here
            raise RuntimeError(f"setup: expected commands at offset 0, found {meta.offset}")
        setup_events = await _settle_setup(pipe, len(setup))
        _progress(f"streaming {count} orders" + (f" at {rate:,.0f}/s" if rate else ""))
        make_orders = _order_maker(orders, market.symbol)

        def make(start: int, stop: int, now_ns: int) -> list[bytes]:
            out = make_orders(start, stop, now_ns)
            payloads.extend(out)
            return out

        command_bytes = len(make_orders(0, 1, 0)[0])
        first_ns = await _stream(
            sender, count, rate,
            make, lambda sent: pipe.backlog_bytes(len(setup) + sent, command_bytes),
            pipe.check, pipe.probe.produced_ns,
        )  # fmt: skip
        last_produced_ns = time.time_ns()
        end = len(setup) + count
        await _wait_for(lambda: pipe.runner.next_offset >= end,
                        lambda: pipe.runner.next_offset, "engine", pipe.check)  # fmt: skip
        settled = await _wait_for(
            lambda: pipe.settled_events() >= pipe.runner.events,
            pipe.settled_events, "settlement", pipe.check,
        )  # fmt: skip
        probe = pipe.probe
        await _wait_for(lambda: probe.events >= pipe.runner.events,
                        lambda: probe.events, "probe", pipe.check)  # fmt: skip
        await _wait_for(lambda: pipe.marketdata.events >= pipe.runner.events,
                        lambda: pipe.marketdata.events, "market data", pipe.check)  # fmt: skip
        settled_ns = pipe.settled_ns
    finally:
        await producer.stop()
        await pipe.stop()
    report = _pipeline_report(
        pipe, count, rate, first_ns, last_produced_ns, settled_ns, setup_events
    )
    report["settled_all"] = settled
    report["snapshots"] = snapshots
    report.update(await _ledger_totals(dsn))
    return report, payloads


async def _ledger_totals(dsn: str) -> Report:
    """What the ledger holds: its postings must sum to zero and hold every fill once."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT coalesce(sum(amount_micros), 0) FROM postings) AS postings_sum, "
            "(SELECT count(*) FROM trades) AS trades"
        )
    finally:
        await conn.close()
    assert row is not None
    return {"ledger_postings_sum": int(row["postings_sum"]), "ledger_trades": int(row["trades"])}


async def _settle_setup(pipe: Pipeline, commands: int) -> int:
    """Wait until the setup is applied and settled; return its events."""
    await _wait_for(lambda: pipe.runner.next_offset >= commands,
                    lambda: pipe.runner.next_offset, "setup", pipe.check)  # fmt: skip
    events = pipe.runner.events
    await _wait_for(lambda: pipe.settled_events() >= events and pipe.probe.events >= events,
                    pipe.settled_events, "setup settlement", pipe.check)  # fmt: skip
    pipe.setup_events = events
    refused = pipe.writer.malformed
    if refused:
        raise RuntimeError(f"setup: {refused} events were dead-lettered by settlement")
    return events


def _pipeline_report(pipe: Pipeline, count: int, rate: float, first_ns: int,
                     last_produced_ns: int, settled_ns: int, setup_events: int) -> Report:  # fmt: skip
    probe, writer, runner = pipe.probe, pipe.writer, pipe.runner
    seen = probe.latency_ns[probe.latency_ns >= 0]
    elapsed_s = max(settled_ns - first_ns, 1) / 1e9
    produce_s = max(last_produced_ns - first_ns, 1) / 1e9
    pct = (np.percentile(seen, [50, 99, 100]) / 1e6).tolist() if seen.size else [None] * 3
    return {
        "orders": count,
        "offered_orders_per_s": round(rate) if rate else None,
        "produced_orders_per_s": round(count / produce_s),
        "orders_per_s": round(count / elapsed_s),
        "elapsed_s": round(elapsed_s, 3),
        "fills": probe.fills,
        "settled_fills": writer.trades,
        "settled_fills_per_s": round(writer.trades / elapsed_s),
        "p50_ms": None if pct[0] is None else round(pct[0], 2),
        "p99_ms": None if pct[1] is None else round(pct[1], 2),
        "max_ms": None if pct[2] is None else round(pct[2], 2),
        "lost": int(count - seen.size),
        "duplicated": probe.duplicated,
        "events": runner.events - setup_events,
        "events_per_s": round((runner.events - setup_events) / elapsed_s),
        "event_bytes_mean": round(probe.event_bytes, 1),
        "probe_seq_gaps": probe.seq_gaps,
        "settled_events": writer.events_settled,
        "settlement_duplicates": writer.duplicates,
        "settlement_seq_gaps": writer.seq_gaps,
        "settlement_dead_letters": writer.malformed + writer.unbalanced_commands,
        "settlement_transactions": writer.transactions,
        "settlement_copy_conflicts": writer.copy_conflicts,
        "engine_batches": runner.batches,
        "engine_malformed": runner.malformed,
        "engine_snapshots": runner.snapshots,
        "marketdata_messages": pipe.marketdata.messages,
        "marketdata_missed_events": runner.events - pipe.marketdata.events,
        "event_records": probe.records,
        "stage_nice": dict(pipe.nice),
    }


# ============================================================================ the raw loop


async def _raw_loop(bootstrap: str, payloads: list[bytes]) -> float:
    """Stream `payloads` through a bare getmany -> send_batch loop; return messages per second."""
    count = len(payloads)
    source, sink = TopicPartition(raw_topics[0], 0), raw_topics[1]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        check_crcs=False,
    )  # fmt: skip
    producer, loop_producer = _new_producer(bootstrap), _new_producer(bootstrap)
    await consumer.start()
    await producer.start()
    await loop_producer.start()
    moved = 0
    done_ns = 0

    async def loop() -> None:
        nonlocal moved, done_ns
        out = _Sender(loop_producer, sink, None)
        while moved < count:
            batches = await consumer.getmany(source, timeout_ms=poll_timeout_ms, max_records=4096)
            records = batches.get(source)
            if not records:
                continue
            await out.send([r.value for r in records])
            await out.settle()
            moved += len(records)
        done_ns = time.time_ns()

    try:
        consumer.assign([source])
        task = asyncio.create_task(loop())
        mean_bytes = sum(len(p) for p in payloads[:1000]) / min(count, 1000)

        def check() -> None:
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"raw loop failed: {task.exception()!r}")

        first_ns = await _stream(
            _Sender(producer, source.topic, None), count, 0.0,
            lambda start, stop, _: payloads[start:stop],
            lambda sent: (sent - moved) * mean_bytes, check, None,
        )  # fmt: skip
        await asyncio.wait_for(task, stall_s_max)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await producer.stop()
        await loop_producer.stop()
    return count / (max(done_ns - first_ns, 1) / 1e9)


# ============================================================================ entry point


def bench_pipeline(
    orders: int,
    rate: float,
    seed: int,
    *,
    snapshots: bool = False,
    fetch_wait_ms: int | None = None,
    settle_nice: int | None = None,
    one_process: bool = False,
) -> Report:
    """Run the whole benchmark; return the report.

    `fetch_wait_ms` (diagnostic) is the stages' `kafka_fetch_wait_ms` (how long an idle fetch
    waits); `settle_nice` how much nicer the settlement process runs (the `settle_nice`
    setting); `one_process` runs the stages on this process's loop instead of one process each.
    """
    if fetch_wait_ms is not None and fetch_wait_ms < 0:
        raise SystemExit(f"--fetch-wait-ms: expected >= 0, found {fetch_wait_ms}")
    if settle_nice is not None and not 0 <= settle_nice <= 19:
        raise SystemExit(f"--settle-nice: expected 0 to 19, found {settle_nice}")
    workload = generate_orders(orders, seed)
    options = RunOptions(rate=rate, snapshots=snapshots, one_process=one_process)
    _progress("starting the embedded broker and database")
    with EmbeddedBroker(broker_count=1) as broker, contextlib.ExitStack() as stack:
        dsn = database_url()
        if dsn is None:
            dsn = stack.enter_context(EmbeddedPostgres(database="gx_bench")).dsn
        settings = Settings(kafka_bootstrap=broker.bootstrap_servers, database_url=dsn)
        if fetch_wait_ms is not None:
            settings = msgspec.structs.replace(settings, kafka_fetch_wait_ms=fetch_wait_ms)
        if settle_nice is not None:
            settings = msgspec.structs.replace(settings, settle_nice=settle_nice)
        report = _run(_main(broker, dsn, settings, workload, options))
    report["consumer_fetch_wait_ms"] = settings.kafka_fetch_wait_ms
    report["stages"] = "one process" if one_process else "one process each"
    return report


class RunOptions(msgspec.Struct, frozen=True):
    """How the pipeline runs: offered rate (0: flat out), engine snapshots, stage placement."""

    rate: float = 0.0
    snapshots: bool = False
    one_process: bool = False


def _run(coro: Awaitable[Report]) -> Report:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


async def _main(broker: EmbeddedBroker, dsn: str, settings: Settings, workload: Orders,
                options: RunOptions) -> Report:  # fmt: skip
    await create_topics(settings, broker)
    for name in raw_topics:
        broker.create_topic(name, 1)
    bootstrap = broker.bootstrap_servers
    report, payloads = await _run_pipeline(bootstrap, dsn, settings, workload, options)
    _progress(f"raw loop: {len(payloads)} messages through getmany -> send_batch")
    raw = await _raw_loop(bootstrap, payloads)
    report["raw_loop_msgs_per_s"] = round(raw)
    report["ratio_vs_raw"] = round(report["orders_per_s"] / raw, 3)
    report["event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return report
