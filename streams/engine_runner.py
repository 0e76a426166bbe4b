"""The engine runner (`gx engine --shard N`): one shard's matching engine between two partitions.

A plain aiokafka batch loop (ARCHITECTURE 5-6):

    getmany(commands[shard]) -> msgspec decode -> Engine.apply -> encode -> produce(events[shard])
    -> await delivery of the whole batch -> every N commands, snapshot (state, next input offset)

A gx.events record holds the events of whole commands (`pack_records`; a command too big for
one record is split, its records but the last marked with the `gx-partial` header), so a step
of 1,000 commands is a handful of records, not 6,000.

No loss, no duplicates, across kill -9 at any moment:

- Every event carries its shard sequence number (`seq`, contiguous from 1) and the offset of the
  command that caused it. The engine is a pure function of the commands log, so replaying any
  suffix of the log from a snapshot regenerates exactly the events produced the first time.
- Recovery loads the newest snapshot (or a fresh engine at offset 0), reads the LAST event (of
  the last record) of the shard's events partition to learn the last sequence number produced, replays the commands from
  the snapshot's offset and drops every regenerated event whose seq is at or below it. The
  regenerated copy of that last event must equal the stored one byte for byte, or the runner
  stops: a divergence means a different engine, configuration or catalog, never something to
  paper over.
- Events are produced in record batches awaited one at a time, so the log never has a gap: a
  later batch is only sent once every earlier one is acknowledged. A snapshot is saved only after
  the events of every command before its offset are acknowledged, so a snapshot is never ahead of
  the log. Any delivery failure stops the runner (its state is then ahead of the log) and the
  restart reconciles the two.
- One writer per shard: the runner holds a PostgreSQL advisory lock (the lease) for its whole
  life; a second runner of the same shard waits for it and gives up with an error. With
  `settings.kafka_transactions` (real Kafka), each batch's sends are one transaction under
  `transactional_id=gx-engine-<shard>`, which also fences a zombie producer at the broker.

A command record that does not decode (or has no value) is logged with its offset, counted, and
fed to the engine as a `Malformed` placeholder, which the engine refuses like any command it does
not know: `CommandRejected(command="Malformed", code=1014 MALFORMED, account=0)`. So every
command offset leaves a trace in the events log and replays see the very same placeholder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client.core import Metric

from matching.engine import Engine, EngineConfig
from matching.state import SNAPSHOT_VERSION, SnapshotVersionError
from schemas.catalog import Catalog
from schemas.codec import DecodeError, decode_bounded, decode_command, encode
from schemas.commands import Command
from schemas.shards import ShardMap, shard_map
from streams.consumers import log_consumer, read_batch
from streams.event_records import (
    EVENTS_RECORD_BYTES_MAX,
    PARTIAL_HEADERS,
    EventRecord,
    pack_records,
    split_event_record,
)
from streams.metrics import Health, check_health, consumer_lag, counter, step_histogram
from streams.settings import Settings
from streams.snapshots import Snapshot, SnapshotStore
from streams.topics import shard_key, topics

__all__ = [
    "EngineRunner",
    "Malformed",
    "RecoveryError",
    "RunnerStats",
    "decode_record",
    "unsuppressed",
]

log = logging.getLogger("gx.engine")

record_batch_bytes_max = 512 * 1024  # one produce record batch; below the broker's 1 MiB default
poll_timeout_ms = 100
linger_ms = 5
last_event_window_min = 16  # records read back from the end to find the last event
recovery_timeout_s = 60
# Events not acknowledged for this long: the broker counts as gone (health(), streams/waits.py).
unacknowledged_silent_s = 3.0
no_database_message = (
    "no snapshot database: set GX_DATABASE_URL=postgresql://... (or pass --database-url); "
    "snapshots must outlive the process, or pass --no-snapshots to replay the log from its start"
)


class Malformed(msgspec.Struct, frozen=True):
    """Stand-in for a command record that does not decode; the engine refuses it as MALFORMED."""


class RecoveryError(RuntimeError):
    """Raise when the snapshot, the commands log and the events log cannot be reconciled."""


class RunnerStats(msgspec.Struct, kw_only=True):
    """Counters of one runner process (since it started)."""

    commands: int = 0  # command records applied, malformed ones included
    events: int = 0  # events produced
    malformed: int = 0  # command records that did not decode
    suppressed: int = 0  # events regenerated by the replay that the log already had
    batches: int = 0
    snapshots: int = 0
    next_offset: int = 0  # the next command offset to apply
    event_seq: int = 0  # the last event sequence number the engine has produced
    recovered_offset: int = 0  # where the replay started (the snapshot's input offset)
    recovered_seq: int = 0  # the last event seq found in the log at start


def decode_record(value: bytes | None) -> Command | Malformed:
    """Decode a command record's value, or return the `Malformed` placeholder."""
    if value is None:
        return Malformed()
    try:
        return decode_command(value)
    except DecodeError:
        return Malformed()


class EngineRunner:
    """Run one shard's engine from the commands partition to the events partition."""

    def __init__(
        self,
        settings: Settings,
        shard: int,
        catalog: Catalog,
        engine_config: EngineConfig,
        *,
        mock_broker: bool = False,
        snapshots: bool = True,
    ) -> None:
        """Describe the runner; nothing connects until `run()`.

        `mock_broker`: the broker is librdkafka's mock cluster, whose transaction markers carry
        CRC 0, so consumers skip CRC checks (never set it against real Kafka).
        `snapshots`: save and load snapshots in `settings.database_url` and hold the shard's
        single-writer lease there; without them a restart replays the commands log from its
        start (correct, just slower) and nothing but the supervisor keeps a second runner of
        the same shard away.
        """
        settings.broker()  # refuses a missing broker, saying what to set
        if snapshots and settings.database_url is None:
            raise ValueError(f"settings.database_url: {no_database_message}")
        if not 0 <= shard < settings.shards:
            raise ValueError(f"shard: expected 0..{settings.shards - 1}, found {shard}")
        if engine_config.shard != shard:
            raise ValueError(
                f"engine_config.shard: expected {shard} (the runner's shard), "
                f"found {engine_config.shard}"
            )
        if settings.snapshot_every_commands < 1 or settings.engine_batch_max < 1:
            raise ValueError("snapshot_every_commands and engine_batch_max: expected >= 1")
        self.settings = settings
        self.shard = shard
        self.catalog = catalog
        self.shard_map = shard_map(settings, catalog)
        self.engine_config = shard_engine_config(engine_config, self.shard_map)
        self.mock_broker = mock_broker
        self.use_snapshots = snapshots
        by_role = topics(settings)
        self.commands_tp = TopicPartition(by_role["commands"].name, shard)
        self.events_tp = TopicPartition(by_role["events"].name, shard)
        self.key = shard_key(shard)
        self.stats = RunnerStats()
        self.ready = asyncio.Event()  # set once recovery is done and the loop runs
        self.engine: Engine | None = None
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._store: SnapshotStore | None = None
        self._suppress_through = 0  # drop regenerated events with seq <= this
        self._last_event: bytes | None = None  # the log's last event, to check the replay
        self._since_snapshot = 0
        self._producing_since: float | None = None  # monotonic start of the produce in flight
        self.step_seconds = step_histogram(
            "gx_engine_step_seconds", "one step: decode, match, produce and acknowledgement"
        )

    # ------------------------------------------------------------------ health and metrics

    async def health(self) -> Health:
        """Ready: recovered, caught up with the commands partition, snapshot database reachable."""
        consumer = self._consumer
        lag = None
        if consumer is not None and self.ready.is_set():
            lag = consumer_lag(consumer.end_offsets, self._applied_position, [self.commands_tp])
        dsn = self.settings.database_url if self.use_snapshots else None
        look = await check_health(
            self.ready.is_set() and lag is not None, lag, dsn, self.settings.ready_lag_records_max
        )
        since = self._producing_since
        if since is not None and (silent_s := time.monotonic() - since) > unacknowledged_silent_s:
            # The commands partition answers, but the events wait: the broker is gone for us.
            why = f"events not acknowledged for {silent_s:.0f} s"
            return msgspec.structs.replace(look, ready=False, lag=None, broker_silent=why)
        return look

    async def _applied_position(self, tp: TopicPartition) -> int:
        # The next command to apply, not the read position: a batch read but not yet produced
        # (its produce stuck) is still behind.
        return self.stats.next_offset

    def metrics(self) -> Iterator[Metric]:
        stats = self.stats
        yield counter("gx_engine_commands", "command records applied", stats.commands)
        yield counter("gx_engine_events", "events produced", stats.events)
        yield counter("gx_engine_malformed", "command records that did not decode", stats.malformed)
        yield counter("gx_engine_snapshots", "snapshots saved", stats.snapshots)
        yield from self.step_seconds.collect()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return from `run()`."""
        self._stopping.set()

    async def run(self) -> None:
        """Recover, then apply command batches until `stop()`; raise on any delivery failure."""
        try:
            await self._open()
            await self._recover()
            self.ready.set()
            log.info(
                "engine running shard=%d offset=%d seq=%d",
                self.shard,
                self.stats.next_offset,
                self.stats.event_seq,
            )
            while not self._stopping.is_set():
                await self.step()
        finally:
            await self._close()

    async def _open(self) -> None:
        bootstrap = self.settings.kafka_bootstrap
        transactional_id = f"gx-engine-{self.shard}" if self.settings.kafka_transactions else None
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            transactional_id=transactional_id,
            linger_ms=linger_ms,
            max_batch_size=record_batch_bytes_max,
            max_request_size=2 * record_batch_bytes_max,
        )
        self._consumer = self._new_consumer(auto_offset_reset="none")
        if self.use_snapshots:
            assert self.settings.database_url is not None
            self._store = SnapshotStore(self.settings.database_url)
            await self._store.open()
            await self._store.acquire_lease(self.shard)
        await self._producer.start()
        await self._consumer.start()
        self._consumer.assign([self.commands_tp])

    def _new_consumer(self, **options: Any) -> AIOKafkaConsumer:
        return log_consumer(
            self.settings.kafka_bootstrap,
            check_crcs=not self.mock_broker,
            fetch_wait_ms=self.settings.kafka_fetch_wait_ms,
            **options,
        )

    async def _close(self) -> None:
        consumer, producer, store = self._consumer, self._producer, self._store
        self._consumer = self._producer = self._store = None
        for closing in (
            consumer.stop() if consumer else None,
            producer.stop() if producer else None,
            store.close() if store else None,
        ):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing

    # ------------------------------------------------------------------ recovery

    async def _recover(self) -> None:
        """Rebuild the engine from the newest snapshot and position the replay."""
        snapshot = await self._store.latest(self.shard) if self._store else None
        if snapshot is None:
            engine, offset = Engine(self.catalog, self.engine_config), 0
        else:
            try:
                engine, offset = self._restore(snapshot), snapshot.input_offset
            except SnapshotVersionError as error:
                engine, offset = await self._after_upgrade(snapshot, error), 0
        last = await self._read_last_event()
        last_seq = 0 if last is None else last[0]
        if last_seq < engine.event_seq:
            raise RecoveryError(
                f"shard {self.shard}: the events log ends at seq {last_seq} but the snapshot at "
                f"offset {offset} has produced up to seq {engine.event_seq}: the events partition "
                f"lost data (retention? the embedded mock keeps only about 5 MiB per partition)"
            )
        self.engine = engine
        self._suppress_through = last_seq
        self._last_event = None if last is None else last[1]
        self._since_snapshot = 0
        assert self._consumer is not None
        self._consumer.seek(self.commands_tp, offset)
        self.stats.next_offset = self.stats.recovered_offset = offset
        self.stats.event_seq = engine.event_seq
        self.stats.recovered_seq = last_seq
        log.info(
            "engine recovering shard=%d from_offset=%d snapshot_seq=%d log_seq=%d",
            self.shard,
            offset,
            engine.event_seq,
            last_seq,
        )

    async def _after_upgrade(self, snapshot: Snapshot, error: SnapshotVersionError) -> Engine:
        """A fresh engine to replay the whole commands log, when the newest snapshot was written
        by another engine version; refused when retention has removed the log's start."""
        assert self._consumer is not None
        begin = (await self._consumer.beginning_offsets([self.commands_tp]))[self.commands_tp]
        if begin > 0:
            raise RecoveryError(
                f"shard {self.shard}: the snapshot at offset {snapshot.input_offset} is version "
                f"{error.found}, which this engine cannot read, and the commands log starts at "
                f"offset {begin} (retention removed its start), so the state cannot be rebuilt: "
                f"run the previous engine version until it writes a snapshot, or restore the log"
            )
        log.warning(
            "engine shard=%d: the snapshot at offset %d is version %d, this engine reads %d: "
            "replaying the commands log from its start (new snapshots replace the old ones)",
            self.shard,
            snapshot.input_offset,
            error.found,
            SNAPSHOT_VERSION,
        )
        return Engine(self.catalog, self.engine_config)

    def _restore(self, snapshot: Snapshot) -> Engine:
        engine = Engine.restore(snapshot.snapshot, self.catalog)
        if engine.state_hash() != snapshot.state_hash or engine.event_seq != snapshot.event_seq:
            raise RecoveryError(
                f"shard {self.shard}: snapshot at offset {snapshot.input_offset} restores to "
                f"hash {engine.state_hash()} seq {engine.event_seq}, expected "
                f"{snapshot.state_hash} seq {snapshot.event_seq}: the snapshot is corrupt or "
                f"the catalog changed"
            )
        if engine.config.shard != self.shard:
            raise RecoveryError(
                f"shard {self.shard}: the snapshot belongs to shard {engine.config.shard}"
            )
        check_shard_map(engine.config, self.shard_map, snapshot.input_offset)
        # A snapshot from before shard maps (one shard, the whole catalog) takes the map's record.
        engine.config = msgspec.structs.replace(
            engine.config,
            pairs=self.engine_config.pairs,
            shard_map_digest=self.engine_config.shard_map_digest,
        )
        return engine

    async def _read_last_event(self) -> tuple[int, bytes] | None:
        """Return (seq, value) of the shard's last committed event, or None if there is none.

        Reads back from the end in a growing window: the last offsets may be transaction
        markers, which carry no record.
        """
        consumer = self._new_consumer(auto_offset_reset="none")
        await consumer.start()
        try:
            tp = self.events_tp
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            begin = (await consumer.beginning_offsets([tp]))[tp]
            window = last_event_window_min
            while True:
                start = max(begin, end - window)
                value = await self._last_value_between(consumer, start, end)
                if value is not None:
                    last = _last_event_of(value)
                    return _event_seq(last), last
                if start == begin:
                    return None
                window *= 4
        finally:
            await consumer.stop()

    async def _last_value_between(
        self, consumer: AIOKafkaConsumer, start: int, end: int
    ) -> bytes | None:
        tp = self.events_tp
        consumer.seek(tp, start)
        last: bytes | None = None
        deadline = time.monotonic() + recovery_timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise RecoveryError(
                    f"shard {self.shard}: could not read {tp.topic}[{tp.partition}] up to "
                    f"offset {end} within {recovery_timeout_s} s"
                )
            batches = await consumer.getmany(tp, timeout_ms=poll_timeout_ms)
            for record in batches.get(tp, ()):
                if record.offset < end and record.value is not None:
                    last = record.value
        return last

    # ------------------------------------------------------------------ the loop

    async def step(self) -> int:
        """Apply one batch of commands (if any arrive within the poll timeout); return its size."""
        consumer, engine = self._consumer, self.engine
        assert consumer is not None and engine is not None, "run() opens and recovers first"
        batches = await read_batch(
            consumer,
            (self.commands_tp,),
            timeout_ms=poll_timeout_ms,
            max_records=self.settings.engine_batch_max,
        )
        records = batches.get(self.commands_tp)
        if not records:
            return 0
        started = time.perf_counter()
        commands: list[Any] = []
        offsets: list[int] = []
        for record in records:
            command = decode_record(record.value)
            if isinstance(command, Malformed):
                self.stats.malformed += 1
                log.warning(
                    "malformed command shard=%d offset=%d bytes=%d: refused as MALFORMED; find and fix "
                    "the producer that wrote it (the record stays in the log)",
                    self.shard,
                    record.offset,
                    len(record.value or b""),
                )
            commands.append(command)
            offsets.append(record.offset)
        events = engine.apply(commands, offsets)
        await self._produce(self._unsuppressed(events))
        self.step_seconds.observe(time.perf_counter() - started)
        next_offset = records[-1].offset + 1
        stats = self.stats
        stats.commands += len(records)
        stats.batches += 1
        stats.next_offset = next_offset
        stats.event_seq = engine.event_seq
        self._since_snapshot += len(records)
        if (
            self._store is not None
            and self._since_snapshot >= self.settings.snapshot_every_commands
        ):
            await self._snapshot(next_offset)
        return len(records)

    def _unsuppressed(self, events: list) -> list:
        """Drop the events the log already has; check the replay against the log's last one."""
        kept, self._last_event = unsuppressed(
            events, self._suppress_through, self._last_event, self.shard
        )
        self.stats.suppressed += len(events) - len(kept)
        return kept

    async def _produce(self, events: list) -> None:
        """Send the events and wait until every one is acknowledged."""
        if not events:
            return
        producer = self._producer
        assert producer is not None
        payloads = pack_records(events, EVENTS_RECORD_BYTES_MAX)
        self._producing_since = time.monotonic()
        try:
            await self._send(producer, payloads)
        finally:
            self._producing_since = None
        self.stats.events += len(events)

    async def _send(self, producer: AIOKafkaProducer, payloads: Sequence[EventRecord]) -> None:
        if not self.settings.kafka_transactions:
            # One record batch at a time: a later batch never lands after an earlier one failed,
            # so the log has no gaps for recovery to mistake for produced events.
            for batch in self._record_batches(producer, payloads):
                await (await producer.send_batch(batch, self.events_tp.topic, partition=self.shard))
        else:
            async with producer.transaction():
                futures = [
                    await producer.send_batch(batch, self.events_tp.topic, partition=self.shard)
                    for batch in self._record_batches(producer, payloads)
                ]
                await asyncio.gather(*futures)

    def _record_batches(
        self, producer: AIOKafkaProducer, records: Sequence[EventRecord]
    ) -> list[BatchBuilder]:
        batches: list[BatchBuilder] = []
        batch = producer.create_batch()
        for record in records:
            value, headers = record.value, PARTIAL_HEADERS if record.partial else []
            if batch.append(key=self.key, value=value, timestamp=None, headers=headers) is None:
                batches.append(batch)
                batch = producer.create_batch()
                if batch.append(key=self.key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"record of {len(value)} bytes exceeds one record batch")
        batch.close()
        batches.append(batch)
        return batches

    async def _snapshot(self, next_offset: int) -> None:
        engine, store = self.engine, self._store
        assert engine is not None and store is not None
        await store.save(
            Snapshot(
                shard=self.shard,
                input_offset=next_offset,
                event_seq=engine.event_seq,
                state_hash=engine.state_hash(),
                snapshot=engine.snapshot(),
            )
        )
        self._since_snapshot = 0
        self.stats.snapshots += 1
        log.info("snapshot shard=%d offset=%d seq=%d", self.shard, next_offset, engine.event_seq)


def unsuppressed(
    events: list, through: int, last_event: bytes | None, shard: int
) -> tuple[list, bytes | None]:
    """Recovery's filter: drop replayed events the log already has (seq <= `through`).

    The regenerated copy of the log's last event (seq `through`, bytes `last_event`) must equal
    it byte for byte, or RecoveryError. Returns the events to produce and the last event still
    to compare (None once compared).
    """
    if not events or events[0].seq > through:
        return events, last_event
    keep = next((i for i, e in enumerate(events) if e.seq > through), len(events))
    if events[keep - 1].seq == through:
        regenerated = encode(events[keep - 1])
        if regenerated != last_event:
            raise RecoveryError(
                f"shard {shard}: the replay regenerated event seq {through} as "
                f"{regenerated!r}, but the log has {last_event!r}: the engine, its "
                f"configuration (GX_SHARDS, GX_SHARD_MAP included) or the catalog differ from "
                f"the run that produced the log"
            )
        last_event = None
    return events[keep:], last_event


class _SeqOnly(msgspec.Struct, kw_only=True):
    seq: int = 0


_seq_only_decoder = msgspec.msgpack.Decoder(_SeqOnly)


def _last_event_of(value: bytes) -> bytes:
    """The encoded last event of a gx.events record."""
    try:
        events = split_event_record(value)
    except DecodeError as error:
        raise RecoveryError(f"the events log's last record does not decode: {error}") from None
    if not events:
        raise RecoveryError("the events log's last record holds no event")
    return events[-1]


def _event_seq(value: bytes) -> int:
    """Read just the `seq` of an encoded event (any event type)."""
    try:
        return decode_bounded(_seq_only_decoder, value).seq
    except DecodeError as error:
        raise RecoveryError(f"the events log's last record does not decode: {error}") from None


def shard_engine_config(config: EngineConfig, shards: ShardMap) -> EngineConfig:
    """The engine configuration of `config.shard` under a shard map: its pairs and the digest."""
    return msgspec.structs.replace(
        config, pairs=shards.pairs_of(config.shard), shard_map_digest=shards.digest()
    )


def check_shard_map(restored: EngineConfig, shards: ShardMap, offset: int) -> None:
    """Refuse a snapshot taken under another shard map than `shards`, raising RecoveryError.

    The map decides which instruments a shard lists and which commands it refuses, so the same
    commands replayed under another map would produce other events: the log would no longer be
    the engine's output. A snapshot from before shard maps (no digest) was taken by an engine
    that owned the whole catalog: the map of one shard.
    """
    digest = shards.digest()
    if restored.shard_map_digest == digest:
        return
    if not restored.shard_map_digest and shards.shards == 1:
        return
    found = restored.shard_map_digest or "none (one shard, the whole catalog)"
    owned = ", ".join(f"{g}/{r}" for g, r in restored.pairs or ()) or "the whole catalog"
    raise RecoveryError(
        f"shard {restored.shard}: the snapshot at offset {offset} was taken under shard map "
        f"{found} (this shard owned {owned}), but GX_SHARDS={shards.shards} and GX_SHARD_MAP "
        f"now give map {digest}: the map is part of the log's configuration and cannot change "
        f"under a running exchange. Start the engine with the GX_SHARDS and GX_SHARD_MAP the "
        f"log was written under, or move to the new map on new topics by replaying the commands"
    )
