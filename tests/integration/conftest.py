"""Fixtures and helpers for tests over the embedded broker and database."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import EmbeddedPostgres

T = TypeVar("T")

test_deadline_s = 30


def run(coro: Coroutine[Any, Any, T], timeout_s: float = test_deadline_s) -> T:
    """Run ``coro`` on a fresh event loop, failing it after ``timeout_s`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """One private PostgreSQL cluster for the whole session, stopped at its end."""
    with EmbeddedPostgres(database="gx_test") as pg:
        yield pg


@pytest.fixture
def dsn(postgres: EmbeddedPostgres) -> str:
    """A fresh, empty database in the session's cluster, so no state leaks between tests."""
    name = f"gx_test_{os.getpid()}_{next(_databases)}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    run(create())
    return postgres.dsn.rsplit("/", 1)[0] + "/" + name


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
    count_of: Callable[[bytes], int] = lambda _: 1,
    **consumer_options: Any,
) -> dict[int, list[tuple[int, bytes]]]:
    """Read ``expected`` records of ``topic`` by assignment; return (offset, value) by partition.

    ``count_of(value)`` says how much a record counts towards ``expected`` (the events of a
    gx.events record, say)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # The mock writes transaction markers with CRC 0 (streams/embedded/broker.py).
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
                    count += count_of(record.value)
        # One more short poll so that duplicates beyond ``expected`` would show up.
        for tp, records in (await consumer.getmany(timeout_ms=300)).items():
            for record in records:
                assert record.value is not None
                received[tp.partition].append((record.offset, record.value))
    finally:
        await consumer.stop()
    return received
