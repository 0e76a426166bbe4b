"""The provisioning process over the embedded broker: obligations in, engine commands out.

A seeded delivery scenario runs through an engine; its events are produced to gx.events; the
test plays the providers on gx.provisioning; the commands the process sends are fed back into
the engine, which must settle every obligation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from matching.engine import Engine, EngineConfig
from schemas import commands as c
from schemas import events as e
from schemas.catalog import load_catalog
from schemas.codec import decode_command
from schemas.codes import Reject
from schemas.provisioning import (
    Access,
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionRequested,
    decode_provision,
    encode_provision,
    provider_key,
)
from streams.provisioning import ProvisioningProcess, changelog_topics, deadline_reason
from streams.settings import Settings
from streams.topics import shard_key, topics
from tests.golden.runner import BASE_CONFIG
from tests.support.records import per_command

from .conftest import consume, run

T0_NS = 1_796_072_400_000_000_000
GATE_NS = 1_796_075_100_000_000_000  # gate closure of SYMBOL: T0 + 45 min
START_NS = 1_796_076_000_000_000_000  # delivery start: T0 + 1 h
MINUTE_NS = 60_000_000_000
SYMBOL = "H100-SXM.us-east.1h.2026-11-30T22"
HOLDER = 10
PROVIDERS = (20, 21, 22)  # 20 confirms, 21 fails, 22 never answers


class Exchange:
    """An engine with its command log, so input offsets stay contiguous."""

    def __init__(self) -> None:
        self.engine = Engine(load_catalog(), msgspec.convert(BASE_CONFIG, EngineConfig))
        self.offset = 0

    def apply(self, commands: list[c.Command]) -> list[e.Event]:
        offsets = range(self.offset, self.offset + len(commands))
        self.offset += len(commands)
        return self.engine.apply(commands, offsets)


def opening() -> list[c.Command]:
    """Three providers sell one GPU-hour lot each to one holder; the clock reaches the start."""
    out: list[c.Command] = [c.ClockTick(ts_ns=T0_NS)]
    for p in PROVIDERS:
        out += [
            c.CapacityUpdate(
                account=p,
                gpu="H100-SXM",
                region="us-east",
                start_ns=START_NS,
                end_ns=START_NS + 26 * 60 * MINUTE_NS,
                gpus=10,
            ),
            c.Deposit(account=p, amount_micros=100_000_000),
            c.PlaceOrder(account=p, symbol=SYMBOL, side="sell", lots=1, price_ticks=2400),
        ]
    out += [
        c.Deposit(account=HOLDER, amount_micros=100_000_000),
        c.PlaceOrder(account=HOLDER, symbol=SYMBOL, side="buy", lots=3, price_ticks=2400),
        c.ClockTick(ts_ns=GATE_NS),
        c.ClockTick(ts_ns=START_NS),
        c.Deposit(account=HOLDER, amount_micros=1),  # an event at engine time START_NS
    ]
    return out


def later(minutes: int) -> list[c.Command]:
    """Engine time moves to start + `minutes`, seen through two deposits' events."""
    return [
        c.ClockTick(ts_ns=START_NS + minutes * MINUTE_NS),
        c.Deposit(account=HOLDER, amount_micros=1),
        c.Deposit(account=HOLDER, amount_micros=1),
    ]


def _setup(broker) -> tuple[Settings, dict]:
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    names = topics(settings)
    for role in ("events", "commands", "provisioning"):
        broker.create_topic(names[role].name, names[role].partitions)
    for name in changelog_topics():
        broker.create_topic(name, settings.provisioning_partitions)
    return settings, names


async def _produce(bootstrap: str, records: list[tuple[str, bytes, bytes, int | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition)
            for topic, key, value, partition in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _events(topic: str, events: list[e.Event]) -> list[tuple[str, bytes, bytes, int | None]]:
    return [(topic, shard_key(0), record or b"", 0) for record in per_command(events)]


def _replies(topic: str, replies: list) -> list[tuple[str, bytes, bytes, int | None]]:
    return [(topic, provider_key(r.provider), encode_provision(r), None) for r in replies]


async def _running(
    process: ProvisioningProcess, until: Callable[[], bool], then: Callable[[], Awaitable[None]]
) -> None:
    """Run the process, call `then()` once it is up, wait for `until()`, stop it."""
    task = asyncio.ensure_future(process.run())
    try:
        await then()
        while not until():
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for anything extra (a duplicate) to go out
    finally:
        process.stop()
        await task


async def _read(bootstrap: str, topic: str, partitions: int, expected: int) -> list[bytes]:
    got = await consume(bootstrap, topic, partitions, expected, timeout_s=20.0)
    return [value for records in got.values() for _, value in records]


def _obligations(events: list[e.Event]) -> dict[int, int]:
    return {ev.provider: ev.obligation_id for ev in events if isinstance(ev, e.DeliveryAssigned)}


@pytest.mark.timeout(240)  # faust rejoins a group on every restart; slow on a loaded machine
def test_confirmations_failures_and_deadline_become_commands_the_engine_settles(broker):
    settings, names = _setup(broker)
    bootstrap = broker.bootstrap_servers
    five_min = 5 * MINUTE_NS  # shorter than the engine's 15, so the courtesy fail is on time
    exchange = Exchange()
    events = exchange.apply(opening())
    ids = _obligations(events)
    assert sorted(ids) == list(PROVIDERS)
    replies = [
        ProvisionConfirmed(
            obligation_id=ids[20], provider=20, access=Access(host="10.0.0.20", port=22, user="gpu")
        ),
        ProvisionFailed(obligation_id=ids[21], provider=21, hours_delivered=0, reason="no power"),
        ProvisionConfirmed(
            obligation_id=ids[22],
            provider=99,
            access=Access(host="not.the.provider", port=22, user="x"),
        ),
    ]

    # 1. Assignment and start: six requests; the providers answer; two commands go out.
    first = ProvisioningProcess(settings, deadline_ns=five_min, mock_broker=True)

    async def answer() -> None:
        await _produce(bootstrap, _events(names["events"].name, events))
        while first.stats.requests < 6:  # a provider answers the requests it has read
            await asyncio.sleep(0.05)
        await _produce(bootstrap, _replies(names["provisioning"].name, replies))

    run(
        _running(first, lambda: first.stats.confirmed + first.stats.failed >= 2, answer),
        timeout_s=90,
    )
    assert first.stats.requests == 6 and first.stats.ignored_replies == 1

    # 2. A restart and the providers repeating themselves send nothing new.
    second = ProvisioningProcess(settings, deadline_ns=five_min, mock_broker=True)

    async def repeat() -> None:
        await _produce(bootstrap, _replies(names["provisioning"].name, replies))

    run(_running(second, lambda: second.stats.replies >= 3, repeat), timeout_s=90)
    assert second.stats.requests == second.stats.confirmed == second.stats.failed == 0
    # ...because the lifecycle came back from the table's changelog, not by luck of offsets.
    recovered = {p: second.lifecycle._get(ids[p]) for p in PROVIDERS}
    assert {p: r.state if r else None for p, r in recovered.items()} == {
        20: "confirmed",
        21: "failed",
        22: "requested",
    }
    sent = [decode_command(v) for v in run(_read(bootstrap, names["commands"].name, 1, 2))]
    assert sent == [
        c.DeliveryConfirmed(account=20, obligation_id=ids[20]),
        c.DeliveryFailed(account=21, obligation_id=ids[21], hours_delivered=0, reason="no power"),
    ]
    on_topic = [
        decode_provision(v)
        for v in run(_read(bootstrap, names["provisioning"].name, 4, 6 + 2 * len(replies)))
    ]
    requests = [m for m in on_topic if isinstance(m, ProvisionRequested)]
    assert sorted((m.provider, m.stage) for m in requests) == sorted(
        (p, stage) for p in PROVIDERS for stage in ("assigned", "start")
    )
    assert all(m.deadline_ns == START_NS + five_min for m in requests)

    # 3. The engine applies them; later, 22's deadline passes unconfirmed: a courtesy fail.
    outcome = exchange.apply(sent)
    assert [type(ev).__name__ for ev in outcome if type(ev).__name__.startswith("Delivery")] == [
        "DeliveryStarted",
        "DeliverySettled",
    ]
    outcome += exchange.apply(later(6))
    third = ProvisioningProcess(settings, deadline_ns=five_min, mock_broker=True)

    async def tick() -> None:
        await _produce(bootstrap, _events(names["events"].name, outcome))

    run(_running(third, lambda: third.stats.deadline_failed >= 1, tick), timeout_s=90)
    sent = [decode_command(v) for v in run(_read(bootstrap, names["commands"].name, 1, 3))]
    assert sent[2:] == [
        c.DeliveryFailed(
            account=0, obligation_id=ids[22], hours_delivered=0, reason=deadline_reason
        )
    ]

    # 4. Strongest check: the engine settles all three (22 failed by us, 20 delivered at end).
    final = exchange.apply(sent[2:]) + exchange.apply(
        [c.ClockTick(ts_ns=START_NS + 60 * MINUTE_NS)]
    )
    settled = {ev.obligation_id: ev for ev in outcome + final if isinstance(ev, e.DeliverySettled)}
    assert settled.keys() == set(ids.values())
    assert settled[ids[20]].outcome == 1 and settled[ids[20]].hours_delivered == 1
    assert settled[ids[21]].outcome == 2 and settled[ids[21]].refund_micros > 0
    assert settled[ids[22]].outcome == 2 and settled[ids[22]].penalty_micros > 0
    assert not [ev for ev in final if isinstance(ev, e.CommandRejected)]


@pytest.mark.timeout(240)  # faust rejoins a group on every restart; slow on a loaded machine
def test_engine_auto_fail_at_the_deadline_sends_nothing_and_a_late_fail_is_refused(broker):
    settings, names = _setup(broker)
    bootstrap = broker.bootstrap_servers
    exchange = Exchange()
    events = exchange.apply(opening())
    ids = _obligations(events)
    # Nobody answers; the engine fails all three at start + 15 min (the catalog's deadline).
    events += exchange.apply(later(15)) + exchange.apply(later(20))
    auto = [ev for ev in events if isinstance(ev, e.DeliverySettled)]
    assert {ev.obligation_id for ev in auto} == set(ids.values())
    process = ProvisioningProcess(settings, mock_broker=True)

    async def feed() -> None:
        await _produce(bootstrap, _events(names["events"].name, events))

    run(_running(process, lambda: process.stats.events >= len(events), feed), timeout_s=90)
    assert process.stats.requests == 6
    assert process.stats.deadline_failed == 0
    assert run(_read(bootstrap, names["commands"].name, 1, 0)) == []
    # Had it been late, the engine refuses it and nothing changes: a settled obligation's slot
    # is freed, so the refusal is UNKNOWN_OBLIGATION (OBLIGATION_STATE only before settling).
    late = exchange.apply([c.DeliveryFailed(account=0, obligation_id=ids[20], reason="late")])
    assert [(type(ev).__name__, getattr(ev, "code", None)) for ev in late] == [
        ("CommandRejected", Reject.UNKNOWN_OBLIGATION)
    ]
