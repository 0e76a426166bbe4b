"""The market-data process over the embedded broker: gx.events in, gx.marketdata out."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from matching.engine import Engine
from schemas.marketdata import BookDelta, BookSnapshot, TradePrints, decode_message
from streams.marketdata.process import MarketDataProcess
from streams.settings import Settings
from streams.topics import shard_key, topics
from tests.streams.marketdata.test_state import engine_books, replay_deltas
from tests.support.records import per_command
from tests.support.simulation import run_simulation

from .conftest import consume, run

GARBAGE = b"\xc1 not an event"


def simulated_events(catalog, seed: int, batches: int) -> tuple[Engine, list]:
    """Run a seeded simulation through an engine; return it and every event it produced."""
    engine, _, events = run_simulation(catalog, seed, batches)
    return engine, events


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=shard_key(0), partition=0) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _run_until_caught_up(process: MarketDataProcess, records: int) -> None:
    task = asyncio.ensure_future(process.run())
    try:
        while process.stats.records < records or process.md.pending_shards():
            if task.done():
                task.result()  # raises what stopped it
            await asyncio.sleep(0.05)
    finally:
        process.stop()
        await task


@pytest.mark.timeout(60)
def test_process_publishes_books_equal_to_the_engine_and_skips_garbage(catalog, broker):
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    names = topics(settings)
    broker.create_topic(names["events"].name, 1)
    broker.create_topic(names["marketdata"].name, names["marketdata"].partitions)
    engine, events = simulated_events(catalog, seed=3, batches=40)
    values = per_command(events)
    middle = len(values) // 2
    values.insert(middle, GARBAGE)
    process = MarketDataProcess(settings, mock_broker=True, snapshot_every=25)

    async def scenario() -> dict[int, list[tuple[int, bytes]]]:
        await _produce(broker.bootstrap_servers, names["events"].name, values)
        await _run_until_caught_up(process, len(values))
        return await consume(
            broker.bootstrap_servers,
            names["marketdata"].name,
            names["marketdata"].partitions,
            process.stats.messages,
        )

    received = run(scenario())
    assert process.stats.malformed == 1
    assert process.stats.events == len(events)
    messages = []
    for partition, records in received.items():
        for _, value in records:
            m = decode_message(value)
            # key = symbol: every message of one symbol lands in one partition, in order
            messages.append((partition, m))
    assert len(messages) == process.stats.messages
    by_symbol: dict[str, set[int]] = {}
    for partition, m in messages:
        by_symbol.setdefault(m.symbol, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_symbol.values())
    ordered = [m for _, m in messages]
    assert any(isinstance(m, TradePrints) for m in ordered)
    books = replay_deltas(ordered)
    expected = engine_books(engine)
    nonempty = {s: b for s, b in books.items() if b[0] or b[1]}
    assert nonempty == expected
    # The periodic full books agree with the deltas before them.
    assert any(isinstance(m, BookSnapshot) and m.seq > 0 for m in ordered)
    last_seq = {m.symbol: m.seq for m in ordered if isinstance(m, BookDelta)}
    for symbol in expected:
        assert process.md.snapshot(symbol).seq == last_seq[symbol]


@pytest.mark.timeout(60)
def test_restart_rebuilds_from_the_log_and_republishes_the_same_messages(catalog, broker):
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    names = topics(settings)
    broker.create_topic(names["events"].name, 1)
    broker.create_topic(names["marketdata"].name, names["marketdata"].partitions)
    _, events = simulated_events(catalog, seed=5, batches=15)
    values = per_command(events)
    first = MarketDataProcess(settings, mock_broker=True)
    second = MarketDataProcess(settings, mock_broker=True)

    async def scenario() -> dict[int, list[tuple[int, bytes]]]:
        await _produce(broker.bootstrap_servers, names["events"].name, values)
        await _run_until_caught_up(first, len(values))
        await _run_until_caught_up(second, len(values))
        return await consume(
            broker.bootstrap_servers,
            names["marketdata"].name,
            names["marketdata"].partitions,
            first.stats.messages + second.stats.messages,
        )

    received = run(scenario())
    assert first.stats.messages == second.stats.messages > 0
    for records in received.values():
        payloads = [value for _, value in records]
        half = len(payloads) // 2
        # Same log, same messages, same (symbol, seq): clients drop the repeats by seq.
        assert payloads[:half] == payloads[half:]
