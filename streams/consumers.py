"""How every process of the exchange reads its logs from Kafka."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

__all__ = [
    "log_consumer",
    "partitions_of",
    "read_batch",
    "fill_wait_ms",
    "fill_time_max_s",
    "partitions_wait_s",
]

fill_wait_ms = 2  # how long each further read of a reader that is behind waits for its fetch
fill_time_max_s = 0.005  # how long a reader may go on reading before it handles what it has
partitions_wait_s = 30.0  # how long a process waits at start for a topic to exist


def log_consumer(
    bootstrap: str | None, *, check_crcs: bool, fetch_wait_ms: int | None = None, **options: Any
) -> AIOKafkaConsumer:
    """A consumer for reading topics by assignment from a position the reader keeps itself.

    No group offsets are committed (every sink stores its own position), only committed
    transactions are read, and reading starts at the beginning unless `options` say otherwise.
    `check_crcs` is False only against the embedded broker, whose transaction markers carry
    CRC 0 (streams/embedded/broker.py).
    """
    settings: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "check_crcs": check_crcs,
    }
    if fetch_wait_ms is not None:
        settings["fetch_max_wait_ms"] = fetch_wait_ms
    settings.update(options)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, **settings)


async def partitions_of(producer: AIOKafkaProducer, topic: str) -> list[int]:
    """The topic's partitions, waiting up to `partitions_wait_s` for it to exist.

    Raises RuntimeError naming the command that creates the topics when it does not.
    """
    try:
        async with asyncio.timeout(partitions_wait_s):
            found = await producer.partitions_for(topic)
    except (TimeoutError, KafkaError):
        found = set()
    if not found:
        raise RuntimeError(f"topic {topic} not found: create it with `gx topics create`")
    return sorted(found)


async def read_batch(
    consumer: AIOKafkaConsumer,
    partitions: tuple[TopicPartition, ...],
    *,
    timeout_ms: int,
    max_records: int,
) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
    """Read up to `max_records`: one getmany, then more while the log held more when it began.

    Kafka answers a fetch with up to a megabyte per partition, so one getmany fills a batch when
    the reader is behind. The embedded broker answers with one record batch per partition (one
    engine step's records): a reader that fell behind would take one small step per fetch (a
    settlement transaction each) and never catch up. So after the first read, the reader goes
    on reading up to the ends the log had then (not chasing records produced since), for at
    most `fill_time_max_s` (what it has must not wait long), and a reader at the end of its log
    goes on at once.
    """
    batches = await consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
    count = sum(len(records) for records in batches.values())
    if not 0 < count < max_records:
        return batches
    ends = {tp: consumer.last_stable_offset(tp) or consumer.highwater(tp) for tp in partitions}
    deadline_s = time.monotonic() + fill_time_max_s
    while count < max_records and time.monotonic() < deadline_s and await _behind(consumer, ends):
        more = await consumer.getmany(
            *partitions, timeout_ms=fill_wait_ms, max_records=max_records - count
        )
        if not more:
            break
        for tp, records in more.items():
            batches.setdefault(tp, []).extend(records)
            count += len(records)
    return batches


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int | None]) -> bool:
    """Whether any partition's position is below the end given for it."""
    for tp, end in ends.items():
        if end is not None and await consumer.position(tp) < end:
            return True
    return False
