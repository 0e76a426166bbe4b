"""The engine runner over the embedded broker and database: exactly once through restarts and kill -9.

The reference for every test is `Engine.apply` run directly, in one call, over the commands log the
runner read: the runner's events must equal it byte for byte, whatever the batching, snapshots,
restarts and kills in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from exchange.cli.gx import main as gx_main
from matching.engine import Engine
from matching.state import SNAPSHOT_VERSION
from schemas import events as e
from schemas.catalog import Catalog
from schemas.codec import decode_event, encode
from schemas.codes import Reject
from schemas.commands import ClockTick, Command
from streams.admin import create_topics
from streams.clock import Clock
from streams.embedded.broker import API_KEY_PRODUCE, EmbeddedBroker
from streams.engine_runner import EngineRunner, RecoveryError, decode_record
from streams.event_records import split_event_record
from streams.settings import Settings
from streams.snapshots import LeaseError, SnapshotStore
from streams.topics import topics
from tests.conftest import SMALL, T0_NS
from tests.support.simulation import Simulation

from .conftest import consume, run

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- fixtures and helpers


def _settings(broker: EmbeddedBroker, dsn: str, **overrides: object) -> Settings:
    base = Settings(
        kafka_bootstrap=broker.bootstrap_servers,
        database_url=dsn,
        snapshot_every_commands=500,
        engine_batch_max=256,
    )
    return msgspec.structs.replace(base, **overrides)


def workload(catalog: Catalog, seed: int, count: int) -> list[Command]:
    """`count` commands of funded accounts trading: deposits, capacity, orders, clock ticks.

    The simulation picks its instruments once; here they roll forward with the listing calendar
    (with fresh deposits and capacity), so orders keep reaching open books for the whole stream.
    """
    engine = Engine(catalog, SMALL)
    commands: list[Command] = [ClockTick(ts_ns=T0_NS)]
    listed = engine.apply(commands, [0])
    symbols = [ev.symbol for ev in listed if isinstance(ev, e.InstrumentListed)]
    sim = Simulation(seed, symbols, T0_NS)
    rng = random.Random(seed)

    def apply(batch: list[Command]) -> list:
        out = engine.apply(batch, range(len(commands), len(commands) + len(batch)))
        commands.extend(batch)
        sim.observe(out)
        return out

    apply(sim.opening())
    while len(commands) < count:
        if rng.random() < 0.03:
            open_now = engine.open_symbols()
            sim.symbols = [s for s in open_now if ".1h." in s][:3]
            sim.symbols += [s for s in open_now if ".1d." in s][:1]
            for symbol in sim.symbols:
                sim.mid.setdefault(symbol, 2400 + rng.randint(0, 200))
            apply(sim.opening())
        apply(sim.batch(rng.randint(1, 40)))
    return commands[:count]


def reference(catalog: Catalog, payloads: list[bytes | None]) -> list[bytes]:
    """Events of one direct `Engine.apply` over the whole log, offsets 0..n-1, encoded."""
    engine = Engine(catalog, SMALL)
    commands = [decode_record(p) for p in payloads]
    return [encode(ev) for ev in engine.apply(commands, range(len(payloads)))]  # type: ignore[arg-type]


async def produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, p, key=b"0", partition=0) for p in payloads]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def last_seq(bootstrap: str, topic: str) -> int:
    """The seq of the last event in partition 0 (0 when empty; no transaction markers here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, check_crcs=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            return 0
        consumer.assign([tp])
        consumer.seek(tp, end - 1)
        while True:
            records = (await consumer.getmany(tp, timeout_ms=500)).get(tp)
            if records:
                return decode_event(split_event_record(records[-1].value)[-1]).seq
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[int, bytes]]:
    """Partition 0's records: (offset, value)."""
    received = await consume(bootstrap, topic, 1, expected, timeout_s=20.0)
    return received[0]


async def read_events(bootstrap: str, topic: str, expected: int) -> list[tuple[int, bytes]]:
    """Partition 0's events, each (offset of its record, its encoding), in log order."""
    count_of = lambda value: len(split_event_record(value))  # noqa: E731
    received = await consume(bootstrap, topic, 1, expected, timeout_s=20.0, count_of=count_of)
    return [(offset, event) for offset, value in received[0] for event in split_event_record(value)]


async def run_until(runner: EngineRunner, offset: int, timeout_s: float = 30.0) -> None:
    """Run `runner` until it has applied every command before `offset`, then stop it."""
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + timeout_s
    while runner.stats.next_offset < offset and not task.done():
        assert time.monotonic() < deadline, f"runner stuck at {runner.stats}"
        await asyncio.sleep(0.02)
    runner.stop()
    await task


def _assert_log_equals(events: list[tuple[int, bytes]], expected: list[bytes]) -> None:
    assert [value for _, value in events] == expected
    decoded = [decode_event(value) for _, value in events]
    assert [ev.seq for ev in decoded] == list(range(1, len(expected) + 1))


# ---------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
def test_commands_in_events_out_equal_a_direct_engine_run(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    settings = _settings(broker, dsn)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=1, count=3000)]
    expected = reference(catalog, payloads)  # type: ignore[arg-type]

    async def scenario() -> tuple[EngineRunner, list[tuple[int, bytes]]]:
        assert set((await create_topics(settings, broker)).values()) == {"created"}
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        runner = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        await run_until(runner, len(payloads))
        return runner, await read_events(
            broker.bootstrap_servers, names["events"].name, len(expected)
        )

    runner, events = run(scenario(), timeout_s=50)
    _assert_log_equals(events, expected)
    offsets = {decode_event(value).input_offset for _, value in events}
    assert offsets <= set(range(len(payloads))) and 0 in offsets
    assert runner.stats.commands == len(payloads)
    assert runner.stats.events == len(expected)
    assert runner.stats.malformed == runner.stats.suppressed == 0
    assert runner.stats.snapshots > 0


@pytest.mark.timeout(60)
def test_transactional_runner_produces_the_same_events(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    # The mock's transactions are not real (ARCHITECTURE 7): this checks the code path only.
    settings = _settings(broker, dsn, kafka_transactions=True)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=2, count=1500)]
    expected = reference(catalog, payloads)  # type: ignore[arg-type]

    async def scenario() -> list[tuple[int, bytes]]:
        await create_topics(settings, broker)
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        await run_until(EngineRunner(settings, 0, catalog, SMALL, mock_broker=True), len(payloads))
        return await read_events(broker.bootstrap_servers, names["events"].name, len(expected))

    events = run(scenario(), timeout_s=50)
    _assert_log_equals(events, expected)


@pytest.mark.timeout(60)
def test_restart_from_snapshot_replays_and_suppresses_already_produced_events(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    settings = _settings(broker, dsn, snapshot_every_commands=700, engine_batch_max=100)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=3, count=4000)]
    expected = reference(catalog, payloads)  # type: ignore[arg-type]
    first_half = 2550  # not a multiple of 700: events beyond the last snapshot are in the log

    async def scenario() -> tuple[EngineRunner, EngineRunner, int, list[tuple[int, bytes]]]:
        await create_topics(settings, broker)
        commands = names["commands"].name
        await produce(broker.bootstrap_servers, commands, payloads[:first_half])
        first = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        await run_until(first, first_half)
        await produce(broker.bootstrap_servers, commands, payloads[first_half:])
        second = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        await run_until(second, len(payloads))
        async with SnapshotStore(dsn) as store:
            kept = await store.count(0)
        events = await read_events(broker.bootstrap_servers, names["events"].name, len(expected))
        return first, second, kept, events

    first, second, kept, events = run(scenario(), timeout_s=50)
    _assert_log_equals(events, expected)
    assert first.stats.next_offset >= first_half
    # The second runner resumed from a snapshot, not from the start of the log ...
    assert 0 < second.stats.recovered_offset < first.stats.next_offset
    assert second.stats.recovered_seq == first.stats.event_seq
    # ... and regenerated, but did not produce again, what the first had produced after it.
    assert second.stats.suppressed > 0
    assert first.stats.events + second.stats.events == len(expected)
    assert kept == 3  # only the newest few per shard


@pytest.mark.timeout(60)
def test_restart_without_snapshots_replays_the_whole_log_and_produces_nothing_twice(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    settings = _settings(broker, dsn)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=4, count=1200)]
    expected = reference(catalog, payloads)  # type: ignore[arg-type]

    async def scenario() -> tuple[EngineRunner, list[tuple[int, bytes]]]:
        await create_topics(settings, broker)
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        for _ in range(2):
            runner = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True, snapshots=False)
            await run_until(runner, len(payloads))
        return runner, await read_events(
            broker.bootstrap_servers, names["events"].name, len(expected)
        )

    last, events = run(scenario(), timeout_s=50)
    _assert_log_equals(events, expected)
    assert last.stats.recovered_offset == 0
    assert last.stats.suppressed == len(expected) and last.stats.events == 0


@pytest.mark.timeout(60)
def test_a_changed_shard_map_is_refused_and_the_unchanged_one_restarts(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    settings = _settings(broker, dsn)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=6, count=1200)]
    expected = reference(catalog, payloads)  # type: ignore[arg-type]
    moved = msgspec.structs.replace(settings, shards=2)

    async def scenario() -> tuple[str, EngineRunner, list[tuple[int, bytes]]]:
        await create_topics(settings, broker)
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        await run_until(EngineRunner(settings, 0, catalog, SMALL, mock_broker=True), len(payloads))
        with pytest.raises(RecoveryError) as refused:
            await run_until(EngineRunner(moved, 0, catalog, SMALL, mock_broker=True), 1)
        again = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        await run_until(again, len(payloads))
        events = await read_events(broker.bootstrap_servers, names["events"].name, len(expected))
        return str(refused.value), again, events

    message, again, events = run(scenario(), timeout_s=50)
    assert "cannot change under a running exchange" in message
    assert "GX_SHARDS=2" in message and "GX_SHARD_MAP" in message
    _assert_log_equals(events, expected)
    assert again.stats.recovered_offset > 0 and again.stats.events == 0


def _as_version(data: bytes, version: int) -> bytes:
    """A snapshot's bytes relabelled as another layout version (what an older engine wrote)."""
    snap = msgspec.msgpack.decode(zlib.decompress(data))
    return zlib.compress(msgspec.msgpack.encode({**snap, "version": version}), 1)


@pytest.mark.timeout(60)
def test_a_snapshot_of_an_older_engine_version_is_replaced_by_a_replay_from_the_start(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(broker, dsn)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=5, count=1500)]
    expected = reference(catalog, payloads)  # type: ignore[arg-type]

    async def scenario() -> tuple[EngineRunner, list[tuple[int, bytes]], int]:
        await create_topics(settings, broker)
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        await run_until(EngineRunner(settings, 0, catalog, SMALL, mock_broker=True), len(payloads))
        conn = await asyncpg.connect(dsn)
        try:  # every kept snapshot now reads as one of an older engine's
            rows = await conn.fetch("SELECT input_offset, snapshot FROM engine_snapshots")
            for row in rows:
                await conn.execute(
                    "UPDATE engine_snapshots SET snapshot = $1 WHERE input_offset = $2",
                    _as_version(bytes(row["snapshot"]), SNAPSHOT_VERSION - 1),
                    row["input_offset"],
                )
        finally:
            await conn.close()
        second = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        await run_until(second, len(payloads))
        events = await read_events(broker.bootstrap_servers, names["events"].name, len(expected))
        return second, events, len(rows)

    with caplog.at_level(logging.WARNING, logger="gx.engine"):
        second, events, relabelled = run(scenario(), timeout_s=50)
    assert relabelled > 0
    _assert_log_equals(events, expected)
    # A fresh engine replayed the whole log, produced nothing twice and saved new snapshots.
    assert second.stats.recovered_offset == 0
    assert second.stats.suppressed == len(expected) and second.stats.events == 0
    assert second.stats.snapshots > 0
    assert "replaying the commands log from its start" in caplog.text


@pytest.mark.timeout(60)
def test_malformed_records_are_counted_and_rejected_without_stopping(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    settings = _settings(broker, dsn)
    names = topics(settings)
    payloads: list[bytes] = [encode(c) for c in workload(catalog, seed=5, count=600)]
    garbage = {
        100: b"\xc1",  # never valid msgpack
        250: b"not msgpack at all",
        400: msgspec.msgpack.encode({"type": "LaunchRocket", "account": 11}),  # unknown type
        401: msgspec.msgpack.encode({"type": "Deposit", "account": "eleven"}),  # wrong field type
    }
    for offset, value in sorted(garbage.items()):
        payloads.insert(offset, value)
    expected = reference(catalog, payloads)  # type: ignore[arg-type]

    async def scenario() -> tuple[EngineRunner, list[tuple[int, bytes]]]:
        await create_topics(settings, broker)
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        runner = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        await run_until(runner, len(payloads))
        return runner, await read_events(
            broker.bootstrap_servers, names["events"].name, len(expected)
        )

    runner, events = run(scenario(), timeout_s=50)
    _assert_log_equals(events, expected)
    assert runner.stats.malformed == len(garbage)
    assert runner.stats.commands == len(payloads)
    rejected = {
        ev.input_offset: ev
        for ev in (decode_event(value) for _, value in events)
        if isinstance(ev, e.CommandRejected) and ev.code == Reject.MALFORMED
    }
    assert set(rejected) == set(garbage)
    assert {ev.command for ev in rejected.values()} == {"Malformed"}


@pytest.mark.timeout(60)
def test_a_second_runner_of_the_same_shard_is_refused_while_the_first_runs(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    settings = _settings(broker, dsn)

    async def scenario() -> None:
        await create_topics(settings, broker)
        first = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(first.ready.wait(), 20)
        async with SnapshotStore(dsn) as store:
            with pytest.raises(LeaseError, match="another engine runner"):
                await store.acquire_lease(0, wait_s=0.3)
            first.stop()
            await task
            await store.acquire_lease(0, wait_s=5)  # released when the first one ends

    run(scenario(), timeout_s=50)


@pytest.mark.timeout(60)
def test_topics_create_is_idempotent_and_clock_ticks_every_shard(broker: EmbeddedBroker) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers, shards=3, clock_interval_ms=50)
    names = topics(settings)

    async def scenario() -> tuple[dict[str, str], dict[str, str], dict[int, list]]:
        created = await create_topics(settings, broker)
        again = await create_topics(settings, broker)
        clock = Clock(settings)
        started = time.monotonic()
        await clock.run(ticks_max=4)
        assert time.monotonic() - started >= 3 * 0.05 * 0.9  # paced, not a burst
        received = await consume(broker.bootstrap_servers, names["commands"].name, 3, 12)
        return created, again, {p: [decode_record(v) for _, v in r] for p, r in received.items()}

    created, again, ticks = run(scenario())
    assert set(created) == {t.name for t in names.values()}
    assert set(created.values()) == {"created"} and set(again.values()) == {"exists"}
    for shard, commands in ticks.items():
        assert len(commands) == 4
        assert all(isinstance(c, ClockTick) and c.shard == shard for c in commands)
        times = [c.ts_ns for c in commands]  # type: ignore[union-attr]
        assert times == sorted(times) and len(set(times)) == 4


def test_stream_commands_without_a_broker_tell_the_user_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GX_KAFKA_BOOTSTRAP", "GX_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for argv in (["engine", "--shard", "0"], ["clock"], ["topics", "create"]):
        assert gx_main(argv) == 2
        assert "GX_KAFKA_BOOTSTRAP" in capsys.readouterr().err
    assert gx_main(["engine", "--shard", "0", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "GX_DATABASE_URL" in capsys.readouterr().err


# ---------------------------------------------------------------------- kill -9


class _RunnerProcess:
    """`gx engine` (`python -m exchange.cli.gx engine`) as a child process, logging to a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    def start(self) -> None:
        assert self.settings.kafka_bootstrap and self.settings.database_url
        args = [
            sys.executable,
            "-m",
            "exchange.cli.gx",
            "engine",
            "--shard",
            "0",
            "--bootstrap",
            self.settings.kafka_bootstrap,
            "--database-url",
            self.settings.database_url,
            "--mock-broker",
            "--engine-config",
            msgspec.json.encode(SMALL).decode(),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "GX_LOG_LEVEL": "INFO",
            "GX_SNAPSHOT_EVERY_COMMANDS": str(self.settings.snapshot_every_commands),
            "GX_ENGINE_BATCH_MAX": str(self.settings.engine_batch_max),
        }
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file, stderr=log_file)

    def running(self) -> bool:
        """Whether this incarnation has finished recovery and runs its loop."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            return b"engine running" in f.read()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _recoveries(log_text: str) -> list[dict[str, int]]:
    out = []
    for line in log_text.splitlines():
        if "engine recovering" in line:
            fields = dict(part.split("=") for part in line.split() if "=" in part)
            out.append({k: int(v) for k, v in fields.items()})
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog, tmp_path: Path
) -> None:
    rng = random.Random(9)
    settings = _settings(broker, dsn, snapshot_every_commands=1500, engine_batch_max=2048)
    names = topics(settings)
    commands_count = 9_000  # about 2 events each: 3.6 MB of events
    payloads: list[bytes] = [encode(c) for c in workload(catalog, seed=9, count=commands_count)]
    for offset in (777, 5555, 8_888):
        payloads.insert(offset, b"\xc1garbage")
    expected = reference(catalog, payloads)  # type: ignore[arg-type]
    # The mock keeps only about 5 MiB per partition; older data would vanish silently.
    assert sum(map(len, expected)) + 40 * len(expected) < 4_500_000
    runner = _RunnerProcess(settings, tmp_path / "runner.log")
    kills_running, kills_starting = 4, 1

    async def stream_commands() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for start in range(0, len(payloads), 200):
                futures = [
                    await producer.send(names["commands"].name, p, key=b"0", partition=0)
                    for p in payloads[start : start + 200]
                ]
                await asyncio.gather(*futures)
                await asyncio.sleep(0.25)  # about 800 commands/s: kills land mid-stream
        finally:
            await producer.stop()

    async def kill_and_restart() -> None:
        runner.start()
        plan = ["running"] * kills_running + ["starting"] * kills_starting
        rng.shuffle(plan)
        for when in plan:
            if when == "running":
                deadline = time.monotonic() + 20
                while not runner.running():
                    assert runner.alive(), runner.log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, "runner never finished recovery"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(rng.uniform(0.05, 2.0))
            else:
                await asyncio.sleep(rng.uniform(0.05, 0.8))  # most likely inside recovery
            runner.kill()
            runner.start()

    async def wait_for_all_events() -> None:
        deadline = time.monotonic() + 40
        while await last_seq(broker.bootstrap_servers, names["events"].name) < len(expected):
            assert runner.alive(), runner.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the runner did not catch up"
            await asyncio.sleep(0.2)

    async def scenario() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        await create_topics(settings, broker)
        # Slow acknowledgements keep the runner inside its produce step most of the time, so
        # kills land while a batch is half delivered, not only while it waits for commands.
        for broker_id in range(1, broker.broker_count + 1):
            broker.push_request_error_rtts(broker_id, API_KEY_PRODUCE, [(0, 60)] * 150)
        await asyncio.gather(stream_commands(), kill_and_restart())
        await wait_for_all_events()
        await asyncio.sleep(0.5)  # anything duplicated late would land now
        assert runner.terminate() == 0, runner.log_path.read_text()[-3000:]
        commands_log = await read_all(
            broker.bootstrap_servers, names["commands"].name, len(payloads)
        )
        events_log = await read_events(
            broker.bootstrap_servers, names["events"].name, len(expected)
        )
        return commands_log, events_log

    started = time.monotonic()
    try:
        commands_log, events_log = run(scenario(), timeout_s=100)
    finally:
        if runner.alive():
            runner.kill()
    elapsed_s = time.monotonic() - started

    # The commands log is exactly what was sent, at offsets 0..n-1.
    assert commands_log == list(enumerate(payloads))
    # Sequence numbers 1..N, no gaps, no duplicates; byte-identical to one direct engine run.
    _assert_log_equals(events_log, expected)
    records = sorted({offset for offset, _ in events_log})
    assert records == list(range(len(records)))  # contiguous records, none twice
    produced_offsets = {decode_event(value).input_offset for _, value in events_log}
    assert produced_offsets == {decode_event(value).input_offset for value in expected}
    # The kills really interrupted work: some restarts resumed from a snapshot, and some found
    # events in the log beyond their snapshot that they had to suppress.
    recoveries = _recoveries(runner.log_path.read_text())
    # (A kill during start-up may land before recovery begins.)
    assert kills_running + 1 <= len(recoveries) <= kills_running + kills_starting + 1
    assert any(r["from_offset"] > 0 for r in recoveries)
    assert any(r["log_seq"] > r["snapshot_seq"] for r in recoveries)
    final = json.loads(runner.log_path.read_text().strip().splitlines()[-1])
    print(f"kill -9 x{kills_running + kills_starting}: {elapsed_s:.1f} s, recoveries {recoveries}")
    print(f"final runner: {final}")


@pytest.mark.timeout(60)
def test_events_the_broker_does_not_acknowledge_make_the_engine_say_it_waits(
    broker: EmbeddedBroker, dsn: str, catalog: Catalog
) -> None:
    # The commands partition answers (its leader is well), the events' leader holds every ack.
    settings = _settings(broker, dsn)
    names = topics(settings)
    payloads = [encode(c) for c in workload(catalog, seed=3, count=50)]

    async def scenario() -> tuple[list[str | None], bool]:
        await create_topics(settings, broker)
        broker.set_partition_leader(names["commands"].name, 0, 1)
        broker.set_partition_leader(names["events"].name, 0, 2)
        runner = EngineRunner(settings, 0, catalog, SMALL, mock_broker=True)
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(runner.ready.wait(), 30)
        said: list[str | None] = [(await runner.health()).broker_silent]
        broker.push_request_error_rtts(2, API_KEY_PRODUCE, [(0, 6000)] * 3)
        await produce(broker.bootstrap_servers, names["commands"].name, payloads)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            look = await runner.health()
            if look.broker_silent is not None:
                assert look.lag is None and not look.ready, look
                said.append(look.broker_silent)
                break
            await asyncio.sleep(0.2)
        while runner.stats.next_offset < len(payloads) and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.1)
        ready_again = (await runner.health()).ready
        runner.stop()
        await task
        return said, ready_again

    said, ready_again = run(scenario(), timeout_s=55)
    assert said[0] is None
    assert len(said) == 2 and said[1] is not None and "events not acknowledged" in said[1], said
    assert ready_again
