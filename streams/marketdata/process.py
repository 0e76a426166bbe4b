"""The market-data process (`gx marketdata`): gx.events -> MarketData -> gx.marketdata.

A plain aiokafka batch loop over every partition of the events topic, read from the beginning:

    getmany(events) -> decode -> MarketData.apply -> flush caught-up shards -> produce, key = symbol

Idempotent by construction: the state is rebuilt from the log at every start, and the same log
gives the same messages, so a restart republishes messages that clients already hold under the
same (symbol, seq); they drop a delta whose seq is not above the one they have. The events of one
gx.events record (whole commands) are published together at its end: one book update per symbol
and record.

An event record that does not decode is logged with its partition and offset, counted, and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client.core import Metric

from schemas.marketdata import MarketDataMessage, encode_message
from streams.consumers import log_consumer, partitions_of, read_batch
from streams.event_records import CommandGrouper
from streams.marketdata.state import MarketData
from streams.metrics import Health, check_health, consumer_lag, counter
from streams.settings import Settings
from streams.topics import topics

__all__ = ["MarketDataProcess", "ProcessStats"]

log = logging.getLogger("gx.marketdata")

poll_timeout_ms = 100
poll_records_max = 10_000
linger_ms = 5
progress_every_s = 10.0
snapshot_every_deltas = 1000  # a full book follows every N-th delta of a symbol
partition_cache_max = 1 << 16  # symbols whose gx.marketdata partition is remembered


class ProcessStats(msgspec.Struct, kw_only=True):
    """Counters of one market-data process (since it started)."""

    records: int = 0  # event records read, malformed ones included
    events: int = 0
    malformed: int = 0
    messages: int = 0  # market-data messages produced
    batches: int = 0


class MarketDataProcess:
    """Read every events partition from the start; publish market data keyed by symbol."""

    def __init__(
        self,
        settings: Settings,
        *,
        mock_broker: bool = False,
        snapshot_every: int = snapshot_every_deltas,
    ) -> None:
        settings.broker()  # refuses a missing broker, saying what to set
        self.settings = settings
        self.mock_broker = mock_broker
        names = topics(settings)
        self.events_topic = names["events"].name
        self.marketdata_topic = names["marketdata"].name
        self.md = MarketData(snapshot_every=snapshot_every)
        # One book update per record and symbol: a split command is published record by record.
        self._commands = CommandGrouper(hold_partial=False)
        self.stats = ProcessStats()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[TopicPartition] = []
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[bytes, int] = {}  # symbol key -> gx.marketdata partition
        self._all_partitions: list[int] = []

    async def health(self) -> Health:
        """Ready: reading gx.events and caught up with its end (no database)."""
        consumer = self._consumer
        lag = None
        if consumer is not None and self._partitions:
            lag = consumer_lag(consumer.end_offsets, consumer.position, self._partitions)
        return await check_health(lag is not None, lag, None, self.settings.ready_lag_records_max)

    def metrics(self) -> Iterator[Metric]:
        stats = self.stats
        yield counter("gx_marketdata_records", "gx.events records read", stats.records)
        yield counter("gx_marketdata_events", "events read", stats.events)
        yield counter("gx_marketdata_malformed", "records or events that did not decode", stats.malformed)  # fmt: skip
        yield counter("gx_marketdata_messages", "market-data messages produced", stats.messages)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and close."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume, compute and produce until `stop()`."""
        try:
            await self._open()
            last_progress = time.monotonic()
            while not self._stopping.is_set():
                await self.step()
                if time.monotonic() - last_progress >= progress_every_s:
                    last_progress = time.monotonic()
                    log.info("progress %s", msgspec.json.encode(self.stats).decode())
        finally:
            await self._close()

    async def step(self) -> int:
        """One batch: read, apply, flush the shards that are caught up, produce; return records."""
        assert self._consumer is not None
        batches = await read_batch(
            self._consumer,
            tuple(self._partitions),
            timeout_ms=poll_timeout_ms,
            max_records=poll_records_max,
        )
        out: list[MarketDataMessage] = []
        count = 0
        for tp, records in batches.items():
            for record in records:
                count += 1
                out += self._apply(tp.partition, record.offset, record.value)
        self.stats.records += count
        out += await self._flush_caught_up()
        await self._produce(out)
        self.stats.batches += 1 if count else 0
        return count

    def _apply(self, partition: int, offset: int, value: bytes | None) -> list[MarketDataMessage]:
        """One gx.events record: its whole commands are published as one group at its end."""
        if value is None:
            self._malformed(partition, offset, "the record has no value")
            return []
        commands, errors = self._commands.feed(value)
        for _, error in errors:
            self._malformed(partition, offset, str(error))
        out: list[MarketDataMessage] = []
        for command in commands:
            self.stats.events += len(command.events)
            for event in command.events:
                out += self.md.apply(event, offset)
        if commands:
            out += self.md.flush(commands[0].shard)
        return out

    def _malformed(self, partition: int, offset: int, why: str) -> None:
        self.stats.malformed += 1
        log.warning(
            "malformed event record skipped: topic=%s partition=%d offset=%d: %s; check the "
            "engine that produced it (the settlement writer dead-letters it too)",
            self.events_topic, partition, offset, why,
        )  # fmt: skip

    async def _flush_caught_up(self) -> list[MarketDataMessage]:
        """Complete the pending command of every shard whose partition is read to its end."""
        assert self._consumer is not None
        out: list[MarketDataMessage] = []
        for shard in self.md.pending_shards():
            tp = TopicPartition(self.events_topic, shard)
            if tp not in self._partitions:
                out += self.md.flush(shard)  # a shard with no partition of its own: never waits
                continue
            # read_committed reads up to the last stable offset, which is the end to wait for
            end = self._consumer.last_stable_offset(tp) or self._consumer.highwater(tp)
            if end is not None and await self._consumer.position(tp) >= end:
                out += self.md.flush(shard)
        return out

    async def _produce(self, messages: list[MarketDataMessage]) -> None:
        """Send the messages as record batches, one run per partition, in order; await them all.

        Batches built here skip aiokafka's per-message `send()` (a future and a Python murmur2
        hash each); the partition of a symbol is the default partitioner's, computed once.
        """
        if not messages:
            return
        producer = self._producer
        assert producer is not None
        by_partition: dict[int, list[BatchBuilder]] = {}
        for m in messages:
            key = m.symbol.encode()
            partition = self._partition_of.get(key)
            if partition is None:
                if len(self._partition_of) >= partition_cache_max:
                    self._partition_of.clear()  # symbols roll forward; keep the cache bounded
                partition = self._partition_of[key] = self._partitioner(
                    key, self._all_partitions, self._all_partitions
                )
            batches = by_partition.get(partition)
            if batches is None:
                batches = by_partition[partition] = [producer.create_batch()]
            value = encode_message(m)
            if batches[-1].append(key=key, value=value, timestamp=None) is None:
                batches.append(producer.create_batch())
                if batches[-1].append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"market-data message of {len(value)} bytes exceeds a batch")
        futures = []
        for partition, batches in by_partition.items():
            for batch in batches:
                batch.close()
                futures.append(
                    await producer.send_batch(batch, self.marketdata_topic, partition=partition)
                )
        await asyncio.gather(*futures)
        self.stats.messages += len(messages)

    async def _open(self) -> None:
        bootstrap = self.settings.kafka_bootstrap
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms
        )
        self._consumer = log_consumer(
            bootstrap,
            check_crcs=not self.mock_broker,
            fetch_wait_ms=self.settings.kafka_fetch_wait_ms,
        )
        await self._producer.start()
        await self._consumer.start()
        events = await self._partitions_of(self.events_topic)
        self._partitions = [TopicPartition(self.events_topic, p) for p in events]
        self._all_partitions = await self._partitions_of(self.marketdata_topic)
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        log.info("reading %s (%d partitions)", self.events_topic, len(self._partitions))

    async def _partitions_of(self, topic: str) -> list[int]:
        assert self._producer is not None
        return await partitions_of(self._producer, topic)

    async def _close(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        for closing in (consumer, producer):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing.stop()
