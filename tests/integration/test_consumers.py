"""streams/consumers.py: a reader that is behind reads up to its budget, not one batch a step."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams import consumers
from streams.consumers import read_batch
from streams.embedded.broker import EmbeddedBroker

from .conftest import run

TOPIC = "read-batch"
BATCHES, PER_BATCH = 20, 5


async def _produce_small_batches(broker: EmbeddedBroker, first: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for b in range(BATCHES):
            batch = producer.create_batch()
            for i in range(PER_BATCH):
                value = b"%d" % (first + b * PER_BATCH + i)
                batch.append(key=None, value=value, timestamp=None)
            batch.close()
            await (await producer.send_batch(batch, TOPIC, partition=0))
    finally:
        await producer.stop()


def _values(batches: dict[TopicPartition, list]) -> list[int]:
    return [int(r.value) for records in batches.values() for r in records]


def test_a_reader_behind_small_batches_reads_on_up_to_its_budget(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mock answers a fetch with one record batch (test_embedded_broker pins that); read_batch
    reads on while the log held more when it began, within max_records, in order, and stops at
    the end of the log. (The time limits are lifted: a loaded machine must not make this flaky;
    a fetch answered later than `fill_wait_ms` cut the read at 10 records.)"""
    monkeypatch.setattr(consumers, "fill_time_max_s", 30.0)
    monkeypatch.setattr(consumers, "fill_wait_ms", 5000)
    broker.create_topic(TOPIC, partitions=1)
    tp = TopicPartition(TOPIC, 0)

    async def scenario() -> tuple[list[int], list[int], list[int], dict]:
        await _produce_small_batches(broker, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            budgeted = await read_batch(consumer, (tp,), timeout_ms=5000, max_records=12)
            rest = await read_batch(consumer, (tp,), timeout_ms=5000, max_records=1000)
            await _produce_small_batches(broker, BATCHES * PER_BATCH)
            more = await read_batch(consumer, (tp,), timeout_ms=5000, max_records=1000)
            idle = await read_batch(consumer, (tp,), timeout_ms=50, max_records=1000)
            return _values(budgeted), _values(rest), _values(more), idle
        finally:
            await consumer.stop()

    budgeted, rest, more, idle = run(scenario())
    assert budgeted == list(range(12))  # batches of five: the third is cut at the budget
    assert rest == list(range(12, BATCHES * PER_BATCH))  # one call, not one batch per call
    assert more == list(range(BATCHES * PER_BATCH, 2 * BATCHES * PER_BATCH))
    assert idle == {}  # at the end of the log: nothing, after the poll's own timeout
