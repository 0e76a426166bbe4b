"""The embedded broker (librdkafka's mock cluster) serves aiokafka clients end to end."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.embedded.broker import API_KEY_PRODUCE, EmbeddedBroker, EmbeddedBrokerError

from .conftest import consume, run

NOT_ENOUGH_REPLICAS = 19  # retriable Kafka protocol error
INVALID_REQUIRED_ACKS = 21  # not retriable


def _producer(broker: EmbeddedBroker, **options: object) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        retry_backoff_ms=50,
        **options,
    )


@pytest.mark.timeout(60)
def test_start_stop_exposes_bootstrap_servers_and_refuses_calls_after_stop() -> None:
    broker = EmbeddedBroker(broker_count=2).start()
    try:
        hosts = broker.bootstrap_servers.split(",")
        assert len(hosts) == 2
        assert all(host.startswith("127.0.0.1:") for host in hosts)
    finally:
        broker.stop()
    broker.stop()  # idempotent
    assert not broker.running
    with pytest.raises(EmbeddedBrokerError, match="start"):
        broker.create_topic("late", 1)


@pytest.mark.timeout(60)
def test_control_calls_report_librdkafka_errors(broker: EmbeddedBroker) -> None:
    broker.create_topic("dup", 1)
    with pytest.raises(EmbeddedBrokerError, match="already exists"):
        broker.create_topic("dup", 1)
    with pytest.raises(EmbeddedBrokerError, match="broker 99"):
        broker.broker_down(99)
    with pytest.raises(ValueError, match="replication_factor"):
        broker.create_topic("too-replicated", 1, replication_factor=4)


@pytest.mark.timeout(60)
def test_idempotent_producer_round_trips_per_partition(broker: EmbeddedBroker) -> None:
    broker.create_topic("orders", partitions=3, replication_factor=3)
    per_partition = 10

    async def scenario() -> dict[int, list[tuple[int, bytes]]]:
        producer = _producer(broker)
        await producer.start()
        try:
            futures = [
                await producer.send("orders", f"{p}-{i}".encode(), partition=p)
                for p in range(3)
                for i in range(per_partition)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return await consume(broker.bootstrap_servers, "orders", 3, 3 * per_partition)

    received = run(scenario())
    for p in range(3):
        assert received[p] == [(i, f"{p}-{i}".encode()) for i in range(per_partition)]


@pytest.mark.timeout(60)
def test_transactional_producer_commits(broker: EmbeddedBroker) -> None:
    broker.create_topic("fills", partitions=1)

    async def scenario() -> dict[int, list[tuple[int, bytes]]]:
        producer = _producer(broker, transactional_id="gx-test-tx")
        await producer.start()
        try:
            for batch in range(2):
                async with producer.transaction():
                    for i in range(3):
                        await producer.send("fills", f"{batch}-{i}".encode(), partition=0)
        finally:
            await producer.stop()
        return await consume(
            broker.bootstrap_servers, "fills", 1, 6, isolation_level="read_committed"
        )

    received = run(scenario())
    # Offsets skip the commit markers the mock writes after each transaction.
    values = [value for _, value in received[0]]
    assert values == [f"{b}-{i}".encode() for b in range(2) for i in range(3)]
    offsets = [offset for offset, _ in received[0]]
    assert offsets == sorted(offsets) and len(set(offsets)) == 6


@pytest.mark.timeout(60)
def test_producer_retries_through_broker_down_and_up(broker: EmbeddedBroker) -> None:
    broker.create_topic("trades", partitions=1)
    broker.set_partition_leader("trades", 0, 1)

    async def scenario() -> dict[int, list[tuple[int, bytes]]]:
        producer = _producer(broker, request_timeout_ms=20_000)
        await producer.start()
        try:
            await producer.send_and_wait("trades", b"before", partition=0)
            broker.broker_down(1)
            pending = asyncio.ensure_future(
                producer.send_and_wait("trades", b"during", partition=0)
            )
            await asyncio.sleep(1.0)
            assert not pending.done(), "the leader is down, delivery must wait"
            broker.broker_up(1)
            await pending
            await producer.send_and_wait("trades", b"after", partition=0)
        finally:
            await producer.stop()
        return await consume(broker.bootstrap_servers, "trades", 1, 3)

    received = run(scenario())
    assert received[0] == [(0, b"before"), (1, b"during"), (2, b"after")]


@pytest.mark.timeout(60)
def test_retriable_produce_errors_still_deliver_exactly_once(broker: EmbeddedBroker) -> None:
    broker.create_topic("settlements", partitions=1)

    async def scenario() -> dict[int, list[tuple[int, bytes]]]:
        producer = _producer(broker)
        await producer.start()
        try:
            await producer.send_and_wait("settlements", b"warm-up", partition=0)
            broker.push_request_errors(API_KEY_PRODUCE, [NOT_ENOUGH_REPLICAS] * 3)
            for i in range(5):
                await producer.send_and_wait("settlements", f"s-{i}".encode(), partition=0)
        finally:
            await producer.stop()
        return await consume(broker.bootstrap_servers, "settlements", 1, 6)

    received = run(scenario())
    expected = [b"warm-up"] + [f"s-{i}".encode() for i in range(5)]
    assert received[0] == list(enumerate(expected))


@pytest.mark.timeout(60)
def test_pushed_nonretriable_error_reaches_the_producer(broker: EmbeddedBroker) -> None:
    broker.create_topic("rejects", partitions=1)

    async def scenario() -> None:
        producer = _producer(broker)
        await producer.start()
        try:
            await producer.send_and_wait("rejects", b"ok", partition=0)
            broker.push_request_errors(API_KEY_PRODUCE, [INVALID_REQUIRED_ACKS])
            with pytest.raises(KafkaError):
                await producer.send_and_wait("rejects", b"refused", partition=0)
        finally:
            await producer.stop()

    run(scenario())


@pytest.mark.timeout(60)
def test_broker_error_rtts_delay_and_fail_produce(broker: EmbeddedBroker) -> None:
    broker.create_topic("slow", partitions=1)
    broker.set_partition_leader("slow", 0, 2)
    rtt_ms = 600

    async def scenario() -> tuple[float, dict[int, list[tuple[int, bytes]]]]:
        producer = _producer(broker)
        await producer.start()
        try:
            await producer.send_and_wait("slow", b"warm-up", partition=0)
            broker.push_request_error_rtts(
                2, API_KEY_PRODUCE, [(NOT_ENOUGH_REPLICAS, rtt_ms), (0, rtt_ms)]
            )
            started = time.monotonic()
            await producer.send_and_wait("slow", b"delayed", partition=0)
            elapsed_s = time.monotonic() - started
        finally:
            await producer.stop()
        return elapsed_s, await consume(broker.bootstrap_servers, "slow", 1, 2)

    elapsed_s, received = run(scenario())
    # Two answered requests, each held back by rtt_ms: the failed one and its retry.
    assert elapsed_s >= 2 * rtt_ms / 1000 * 0.9
    assert received[0] == [(0, b"warm-up"), (1, b"delayed")]


@pytest.mark.timeout(60)
def test_group_consumer_joins_without_initial_rebalance_delay(broker: EmbeddedBroker) -> None:
    broker.create_topic("events", partitions=3)

    async def scenario() -> list[bytes]:
        producer = _producer(broker)
        await producer.start()
        try:
            for p in range(3):
                await producer.send_and_wait("events", f"e{p}".encode(), partition=p)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            "events",
            bootstrap_servers=broker.bootstrap_servers,
            group_id="gx-test-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            check_crcs=False,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            while len(values) < 3:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    values.extend(r.value for r in records if r.value is not None)
            await consumer.commit()
        finally:
            await consumer.stop()
        return sorted(values)

    assert run(scenario(), timeout_s=20) == [b"e0", b"e1", b"e2"]


def test_a_fetch_returns_one_record_batch_per_partition(broker: EmbeddedBroker) -> None:
    """A known limit of the mock (README, Benchmarks): a consumer behind a producer of small
    batches reads one batch per round trip. Real Kafka fills the fetch. If this starts failing,
    the mock changed and the paced benchmark figures with it."""
    broker.create_topic("small-batches", partitions=1)
    batches, per_batch = 20, 5

    async def scenario() -> list[int]:
        producer = _producer(broker)
        await producer.start()
        try:
            for _ in range(batches):
                batch = producer.create_batch()
                for _ in range(per_batch):
                    batch.append(key=None, value=b"x" * 100, timestamp=None)
                batch.close()
                await (await producer.send_batch(batch, "small-batches", partition=0))
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tp = TopicPartition("small-batches", 0)
            consumer.assign([tp])
            sizes: list[int] = []
            while sum(sizes) < batches * per_batch:
                found = await consumer.getmany(tp, timeout_ms=1000)
                sizes.append(len(found.get(tp, [])))
            return sizes
        finally:
            await consumer.stop()

    assert run(scenario()) == [per_batch] * batches
