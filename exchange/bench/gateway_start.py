"""`gx bench gateway-start`: how long a gateway takes to start on a long log, snapshots off and on.

The embedded broker and PostgreSQL (or `GX_DATABASE_URL`) run in this process. The log is filled
once, without the stream processes: one in-process engine per shard (matching/) applies a
setup and then `gx bench pipeline`'s order workload, its events are packed into gx.events records
as the engine runner packs them and produced to the shard's partition, and the market-data state
(streams/marketdata/) turns each record into gx.marketdata messages as the market-data process
does; a few provisioning requests go to gx.provisioning. The mock keeps only about 5 MiB per
partition, so the events are spread over `--shards` partitions and produced gzip-compressed;
the fill fails if any partition no longer starts at offset 0 (the mock dropped its start).

Then a gateway (`GatewayServer`: pool, migrations, hub, HTTP listener) is started and closed
several times, alternating snapshots off (`A`: it replays the whole log) and on (`B`: it starts
from its newest snapshot and reads the tail), after one warm-up start with snapshots on that
replays the whole log and saves the snapshots the `B` starts load.

Figures:
- `events`, `records`, `fill_s`: the gx.events events and records in the log, the fill's time;
- `off_s` / `on_s`: per start, from `GatewayServer.start()` called to the hub ready (every
  partition read to where it ended at start), in run order;
- `off_s_median`, `on_s_median`, `speedup` = off / on;
- `on_records_read`: records the `B` starts read (the tail), against `log_records` in all;
- `snapshot_bytes`: the newest snapshot's size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition

from exchange.bench import pipeline as workload
from exchange.bench.report import Report, add_benchmark, print_report, require_positive
from exchange.gateway.app import GatewayServer
from exchange.gateway.snapshot import GATEWAY_SNAPSHOT_KEY
from matching.engine import Engine
from schemas import commands as cmd
from schemas.catalog import Catalog, load_catalog
from schemas.codes import Side
from schemas.marketdata import encode_message
from schemas.provisioning import ProvisionRequested, encode_provision, provider_key
from schemas.units import NS_PER_HOUR
from streams.consumers import log_consumer
from streams.embedded.broker import EmbeddedBroker, EmbeddedBrokerError
from streams.embedded.postgres import open_database
from streams.engine_runner import EVENTS_RECORD_BYTES_MAX
from streams.event_records import PARTIAL_HEADERS, pack_records
from streams.marketdata.state import MarketData
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = [
    "FilledLog",
    "LogFiller",
    "bench_gateway_start",
    "fill_log",
    "register",
    "run",
    "time_start",
]

EVENTS_DEFAULT = 1_000_000
SHARDS_DEFAULT = 8
PAIRS_DEFAULT = 2
EVERY_EVENTS_DEFAULT = 100_000
MASTER_KEY = "bench-gateway-start-master-key-not-a-secret"
ACCOUNTS_DEFAULT = 200  # per shard: funded, with capacity, trading the workload's orders
PROVISION_REQUESTS = 20
orders_per_step = 1024  # commands per engine step, as the runner batches them
events_per_order_guess = 6
batch_bytes_max = 2**20  # one record batch: a whole 128 KiB record and then some


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `gateway-start` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers, "gateway-start", "gateway start time on a long log", __doc__
    )
    p.add_argument("--events", type=int, default=EVENTS_DEFAULT, help="gx.events events to fill")
    p.add_argument("--shards", type=int, default=SHARDS_DEFAULT, help="gx.events partitions")
    p.add_argument("--pairs", type=int, default=PAIRS_DEFAULT, help="off/on start pairs")
    p.add_argument(
        "--every", type=int, default=EVERY_EVENTS_DEFAULT, help="GX_GATEWAY_SNAPSHOT_EVERY_EVENTS"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    require_positive(args, "events", "shards", "pairs", "every")
    report = bench_gateway_start(args.events, args.shards, args.pairs, args.every)
    print_report(report, args.json)
    return 0


def _progress(text: str) -> None:
    print(f"gateway-start: {text}", file=sys.stderr, flush=True)


# ============================================================================ the log


@dataclass
class FilledLog:
    """What `fill_log` wrote."""

    events: int = 0
    records: int = 0
    marketdata: int = 0
    provisioning: int = 0
    last_seq: dict[tuple[int, int], int] = field(default_factory=dict)  # (shard, account) -> seq
    symbol: str = ""


async def fill_log(
    broker: EmbeddedBroker,
    settings: Settings,
    events: int,
    *,
    accounts: int = ACCOUNTS_DEFAULT,
    seed: int = workload.SEED_DEFAULT,
    catalog: Catalog | None = None,
) -> FilledLog:
    """Create the topics and fill them with at least `events` engine events (see the module doc)."""
    filler = LogFiller(broker, settings, events, accounts=accounts, seed=seed, catalog=catalog)
    await filler.open()
    try:
        await filler.fill(events)
        await filler.provision()
    finally:
        await filler.close()
    return filler.filled


class LogFiller:
    """Fill the topics in steps: each `fill` goes on where the last one stopped.

    Every shard of `settings.shards` has its own engine, setup and share of the orders; room is
    made for `events_max` events in all.
    """

    def __init__(
        self,
        broker: EmbeddedBroker,
        settings: Settings,
        events_max: int,
        *,
        accounts: int = ACCOUNTS_DEFAULT,
        seed: int = workload.SEED_DEFAULT,
        catalog: Catalog | None = None,
    ) -> None:
        """Describe the log; nothing is written before `open()` and `fill()`."""
        self.broker = broker
        self.settings = settings
        self.catalog = catalog or load_catalog()
        self.accounts = accounts
        self.seed = seed
        self.filled = FilledLog()
        self.orders_max = -(-events_max // settings.shards) // events_per_order_guess * 2
        self.orders_max += orders_per_step
        self._producer: AIOKafkaProducer | None = None
        self._shards: list[_Shard] = []

    async def open(self) -> None:
        """Create the topics (if missing) and connect."""
        names = topics(self.settings)
        for topic in names.values():
            with contextlib.suppress(EmbeddedBrokerError):  # it exists already
                self.broker.create_topic(topic.name, topic.partitions)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.broker.bootstrap_servers,
            acks="all",
            compression_type="gzip",
            max_batch_size=batch_bytes_max,
            max_request_size=4 * batch_bytes_max,
        )
        await self._producer.start()

    async def close(self) -> None:
        """Disconnect; refuse a log whose start the mock dropped."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        names = topics(self.settings)
        await _check_whole(
            self.broker.bootstrap_servers, [(t.name, t.partitions) for t in names.values()]
        )

    async def fill(self, events: int) -> None:
        """Produce at least `events` more events, spread over the shards."""
        assert self._producer is not None
        if not self._shards:
            self._shards = [self._shard(k) for k in range(self.settings.shards)]
        per_shard = -(-events // self.settings.shards)
        for shard in self._shards:
            await shard.fill(per_shard, self.filled)

    async def provision(self) -> None:
        """A few outstanding provisioning requests (the Provisioning projection's state)."""
        assert self._producer is not None
        await _provision(self._producer, self.settings, self.filled)

    def _shard(self, shard: int) -> _Shard:
        assert self._producer is not None
        config = msgspec.structs.replace(workload._config(self.orders_max), shard=shard)
        market = workload._market(self.catalog, msgspec.structs.replace(config, shard=0))
        self.filled.symbol = market.symbol
        names = topics(self.settings)
        sender = _Sender(
            self._producer, names["events"].name, names["marketdata"].name, shard, MarketData()
        )
        return _Shard(Engine(self.catalog, config), market, sender, self.accounts, self.orders_max,
                      workload.generate_orders(self.orders_max, self.seed + shard))  # fmt: skip


class _Shard:
    """One shard's engine and where its order workload stands."""

    def __init__(
        self,
        engine: Engine,
        market: workload.Market,
        sender: _Sender,
        accounts: int,
        orders_max: int,
        orders: workload.Orders,
    ) -> None:
        self.engine = engine
        self.market = market
        self.sender = sender
        self.accounts = accounts
        self.orders_max = orders_max
        self.orders = orders
        self.offset = 0  # the next gx.commands offset the events name as their input
        self.next_order = -1  # -1: the setup is not applied yet

    async def fill(self, events: int, filled: FilledLog) -> None:
        produced = 0
        if self.next_order < 0:
            setup = [
                msgspec.structs.replace(c, shard=self.engine.config.shard)  # engines skip others
                for c in workload._setup_commands(self.market)
                if not hasattr(c, "account") or c.account < workload.ACCOUNT_FIRST + self.accounts
            ]
            produced += await self._apply(setup, filled)
            self.next_order = 0
        while produced < events and self.next_order < self.orders_max:
            first, last = self.next_order, min(self.next_order + orders_per_step, self.orders_max)
            produced += await self._apply([self._order(i) for i in range(first, last)], filled)
            self.next_order = last
        await self.sender.flush()

    def _order(self, i: int) -> cmd.PlaceOrder:
        o = self.orders
        return cmd.PlaceOrder(
            account=workload.ACCOUNT_FIRST + (o.account[i] - workload.ACCOUNT_FIRST) % self.accounts,
            symbol=self.market.symbol, side=Side.BUY if o.side[i] == 0 else Side.SELL,
            price_ticks=o.price_ticks[i], lots=o.lots[i], shard=self.engine.config.shard,
        )  # fmt: skip

    async def _apply(self, commands: list[Any], filled: FilledLog) -> int:
        offsets = list(range(self.offset, self.offset + len(commands)))
        self.offset += len(commands)
        return await self.sender.send(self.engine.apply(commands, offsets), filled)


async def _check_whole(bootstrap: str, names: list[tuple[str, int]]) -> None:
    """Refuse a log whose start the mock dropped (it keeps about 5 MiB per partition)."""
    consumer = log_consumer(bootstrap, check_crcs=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(name, p) for name, count in names for p in range(count)]
        starts = await consumer.beginning_offsets(partitions)
    finally:
        await consumer.stop()
    dropped = {f"{tp.topic}/{tp.partition}": int(o) for tp, o in starts.items() if o > 0}
    if dropped:
        raise RuntimeError(
            f"the broker dropped the start of {dropped} (first offsets kept): the mock keeps "
            f"about 5 MiB per partition; pass more --shards or fewer --events"
        )


class _Sender:
    """Produce one shard's events as the runner does and its market data as the process does."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        events_topic: str,
        marketdata_topic: str,
        shard: int,
        md: MarketData,
    ) -> None:
        self.producer = producer
        self.events_topic = events_topic
        self.marketdata_topic = marketdata_topic
        self.shard = shard
        self.md = md
        self.pending: list[Any] = []
        self.record_offset = 0

    async def send(self, events: list[Any], filled: FilledLog) -> int:
        """Produce `events` (one engine step); return how many."""
        records = pack_records(events, EVENTS_RECORD_BYTES_MAX)
        key = shard_key(self.shard)
        batch = self.producer.create_batch()
        for record in records:
            headers = PARTIAL_HEADERS if record.partial else []
            if batch.append(key=key, value=record.value, timestamp=None, headers=headers) is None:
                await self._send_events(batch)
                batch = self.producer.create_batch()
                batch.append(key=key, value=record.value, timestamp=None, headers=headers)
        await self._send_events(batch)
        messages = []
        for event in events:
            messages += self.md.apply(event, self.record_offset)
            seq_key = (event.shard, getattr(event, "account", -1))
            filled.last_seq[seq_key] = event.seq
        messages += self.md.flush(self.shard)
        self.record_offset += len(records)
        filled.events += len(events)
        filled.records += len(records)
        if messages:
            batch = self.producer.create_batch()
            for message in messages:
                value = encode_message(message)
                if batch.append(key=None, value=value, timestamp=None) is None:
                    self.pending.append(await self._send(batch, self.marketdata_topic))
                    batch = self.producer.create_batch()
                    batch.append(key=None, value=value, timestamp=None)
            self.pending.append(await self._send(batch, self.marketdata_topic))
            filled.marketdata += len(messages)
        return len(events)

    async def _send_events(self, batch: Any) -> None:
        self.pending.append(await self._send(batch, self.events_topic))
        if len(self.pending) > 64:
            await self.flush()

    async def _send(self, batch: Any, topic: str) -> Any:
        batch.close()
        partition = self.shard if topic == self.events_topic else self.shard % 4
        return await self.producer.send_batch(batch, topic, partition=partition)

    async def flush(self) -> None:
        """Wait until every batch sent is acknowledged."""
        pending, self.pending = self.pending, []
        await asyncio.gather(*pending)


async def _provision(producer: AIOKafkaProducer, settings: Settings, filled: FilledLog) -> None:
    """A few outstanding provisioning requests (the Provisioning projection's state)."""
    topic = topics(settings)["provisioning"].name
    start = workload.T0_NS + 6 * NS_PER_HOUR
    for i in range(PROVISION_REQUESTS):
        provider = workload.ACCOUNT_FIRST + i % 3
        request = ProvisionRequested(
            obligation_id=i + 1, provider=provider, holder=workload.ACCOUNT_FIRST + 5 + i,
            symbol=filled.symbol, gpus=1 + i % 4, start_ns=start, end_ns=start + NS_PER_HOUR,
            deadline_ns=start + NS_PER_HOUR // 4,
        )  # fmt: skip
        await producer.send_and_wait(topic, encode_provision(request), key=provider_key(provider))
    filled.provisioning += PROVISION_REQUESTS


# ============================================================================ the starts


async def time_start(settings: Settings, dsn: str, catalog: Catalog) -> dict[str, Any]:
    """Start a gateway, wait until its hub is ready, close it; return what it took."""
    server = GatewayServer(settings, dsn, catalog=catalog, mock_broker=True, port=0)
    began = time.perf_counter()
    try:
        await server.start()
        assert server.gateway is not None
        hub = server.gateway.hub
        await hub.ready.wait()
        took = time.perf_counter() - began
        loaded = hub.snapshots.loaded_position if hub.snapshots is not None else None
        return {"s": took, "records_read": hub.stats.records, "loaded_position": loaded}
    finally:
        await server.close()


async def _snapshot_bytes(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT length(snapshot) FROM engine_snapshots WHERE shard = $1 "
            "ORDER BY input_offset DESC LIMIT 1",
            GATEWAY_SNAPSHOT_KEY,
        )
        return int(value or 0)
    finally:
        await conn.close()


async def _bench(events: int, shards: int, pairs: int, every: int, dsn: str) -> Report:
    catalog = load_catalog()
    with EmbeddedBroker(broker_count=1) as broker:
        base = Settings(
            gateway_master_key=MASTER_KEY,
            kafka_fetch_wait_ms=5,
            shards=shards,
            kafka_bootstrap=broker.bootstrap_servers,
            database_url=dsn,
        )
        began = time.perf_counter()
        filled = await fill_log(broker, base, events, catalog=catalog)
        fill_s = time.perf_counter() - began
        _progress(f"filled {filled.events} events in {filled.records} records in {fill_s:.1f} s")
        off = msgspec.structs.replace(base, gateway_snapshot_every_events=0)
        on = msgspec.structs.replace(base, gateway_snapshot_every_events=every)
        warm = await time_start(on, dsn, catalog)
        _progress(f"warm-up start (full replay, saving snapshots): {warm['s']:.2f} s")
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for pair in range(pairs):
            for name, settings in (("off", off), ("on", on)):
                result = await time_start(settings, dsn, catalog)
                runs[name].append(result)
                _progress(f"pair {pair + 1} snapshots {name}: {result['s']:.2f} s")
        snapshot_bytes = await _snapshot_bytes(dsn)
    off_s = [r["s"] for r in runs["off"]]
    on_s = [r["s"] for r in runs["on"]]
    return {
        "events": filled.events,
        "records": filled.records,
        "marketdata_messages": filled.marketdata,
        "shards": shards,
        "fill_s": round(fill_s, 2),
        "snapshot_every_events": every,
        "warmup_s": round(warm["s"], 3),
        "off_s": [round(s, 3) for s in off_s],
        "on_s": [round(s, 3) for s in on_s],
        "off_s_median": round(statistics.median(off_s), 3),
        "on_s_median": round(statistics.median(on_s), 3),
        "speedup": round(statistics.median(off_s) / statistics.median(on_s), 2),
        "off_records_read": [r["records_read"] for r in runs["off"]],
        "on_records_read": [r["records_read"] for r in runs["on"]],
        "on_loaded_position": [r["loaded_position"] for r in runs["on"]],
        "snapshot_bytes": snapshot_bytes,
    }


def bench_gateway_start(events: int, shards: int, pairs: int, every: int) -> Report:
    """Fill the log, time the gateway's starts with snapshots off and on; return the figures."""
    logging.getLogger("gx.gateway").setLevel(logging.WARNING)
    with open_database("gx_bench_gateway_start") as dsn:
        return asyncio.run(_bench(events, shards, pairs, every, dsn))
