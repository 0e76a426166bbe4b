"""Fixtures and helpers for tests over the embedded broker and database."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.embedded_broker import EmbeddedBroker

T = TypeVar("T")

test_deadline_s = 30


def run(coro: Coroutine[Any, Any, T], timeout_s: float = test_deadline_s) -> T:
    """Run ``coro`` on a fresh event loop, failing it after ``timeout_s`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """Yield a running three-broker mock cluster, destroyed after the test."""
    with EmbeddedBroker(broker_count=3) as embedded:
        # Kafka's 3 s default would dominate every group test.
        embedded.group_initial_rebalance_delay_ms(0)
        yield embedded


async def consume(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    expected: int,
    timeout_s: float = 10.0,
    **consumer_options: Any,
) -> dict[int, list[tuple[int, bytes]]]:
    """Read ``expected`` records of ``topic`` by assignment; return (offset, value) by partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # The mock writes transaction markers with CRC 0 (streams/embedded_broker.py).
        check_crcs=False,
        **consumer_options,
    )
    await consumer.start()
    received: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        count = 0
        while count < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    assert record.value is not None
                    received[tp.partition].append((record.offset, record.value))
                    count += 1
        # One more short poll so that duplicates beyond ``expected`` would show up.
        for tp, records in (await consumer.getmany(timeout_ms=300)).items():
            for record in records:
                assert record.value is not None
                received[tp.partition].append((record.offset, record.value))
    finally:
        await consumer.stop()
    return received
