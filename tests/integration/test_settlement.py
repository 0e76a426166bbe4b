"""The settlement writer settles a simulated market into PostgreSQL exactly once in effect.

A seeded simulation runs through the engine; its events are produced to the events topic of the
embedded broker and settled into an embedded PostgreSQL. The ledger must then agree with the
engine's own state (balances, positions, resting orders), hold postings that sum to zero after
every commit, and stay unchanged under replay, duplicates and garbage.

`python -m tests.integration.test_settlement` runs the benchmark (`bench_settlement`) and prints
settled events per second; it is not part of the test suite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from exchange.cli.gx import main as gx_main
from matching import layout as lay
from matching.engine import Engine
from schemas import events as e
from schemas.catalog import Catalog, load_catalog
from schemas.codec import encode
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import EmbeddedPostgres
from streams.event_records import PARTIAL_HEADER, EventRecord, pack_events, pack_records
from streams.logs import database_at
from streams.settings import Settings
from streams.settlement import Malformed, SettlementWriter, decode_record, plan_commit
from streams.topics import shard_key, topics
from tests.conftest import SMALL
from tests.support.records import per_command
from tests.support.simulation import run_simulation

from .conftest import run

pytestmark = pytest.mark.timeout(60)

SEED = 5
BATCHES = 60  # seed 5 at 60 batches: open positions, held cash, escrow and deliveries all occur
settle_deadline_s = 20.0
REPO = Path(__file__).resolve().parents[2]


# ============================================================================ the market


class Market(msgspec.Struct):
    """A simulated shard: its engine after the run and every event it produced, in order."""

    engine: Engine
    events: list[Any]


def simulate(catalog: Catalog, seed: int, batches: int, shard: int = 0) -> Market:
    """Drive a seeded simulation through `Engine.apply` with input offsets."""
    config = msgspec.structs.replace(SMALL, shard=shard)
    engine, _, events = run_simulation(catalog, seed, batches, config)
    return Market(engine=engine, events=events)


def engine_resting_orders(engine: Engine) -> dict[int, int]:
    """Resting lots by order id."""
    st = engine.state
    orders = st[lay.ST_ORDERS][: int(st[lay.ST_META][0, lay.M_ORDER_HWM])]
    return {int(o[lay.O_ID]): int(o[lay.O_LOTS]) for o in orders if o[lay.O_ID] != 0}


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def market() -> Market:
    return simulate(load_catalog(), SEED, BATCHES)


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(broker_count=1) as embedded:
        yield embedded


def settings_for(broker: EmbeddedBroker, batch_max: int = 5000, shards: int = 1) -> Settings:
    settings = Settings(settle_batch_max=batch_max, shards=shards)
    topic = topics(settings)["events"]
    broker.create_topic(topic.name, topic.partitions)
    return settings


# ============================================================================ helpers


async def produce(bootstrap: str, topic: str, values: list[Any], partition: int = 0) -> int:
    """Produce `values` (bytes, None or EventRecord) to one partition in order (key = shard);
    return the end offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = []
        for value in values:
            headers = None
            if isinstance(value, EventRecord):
                headers = [(PARTIAL_HEADER, b"1")] if value.partial else None
                value = value.value
            futures.append(
                await producer.send(
                    topic, value, key=shard_key(partition), partition=partition, headers=headers
                )
            )
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return int(metadata[-1].offset) + 1


async def settle(
    settings: Settings,
    dsn: str,
    bootstrap: str,
    until: dict[int, int] | None,
    *,
    on_commit: Any = None,
    stop_after_transactions: int | None = None,
) -> SettlementWriter:
    """Run a writer until its committed positions reach `until` (or after N commits); stop it."""
    writer = SettlementWriter(settings, dsn, bootstrap, check_crcs=False, on_commit=on_commit)
    task = asyncio.create_task(writer.run())
    deadline = time.monotonic() + settle_deadline_s
    while time.monotonic() < deadline and not task.done():
        if until is not None and writer.positions == until:
            break
        if (
            stop_after_transactions is not None
            and writer.stats.transactions >= stop_after_transactions
        ):
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # raise what stopped it
    writer.stop()
    await task
    if until is not None and stop_after_transactions is None:
        assert writer.positions == until, f"not caught up: {writer.positions} != {until}"
    return writer


async def fetch_all(dsn: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


async def settled_through(dsn: str) -> int:
    """The settlement writer's stored position (0 before its migrations created the table)."""
    try:
        rows = await fetch_all(dsn, "SELECT max(next_offset) FROM consumer_positions")
    except asyncpg.UndefinedTableError:
        return 0
    return int(rows[0][0] or 0)


async def execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


_SNAPSHOT_QUERIES = (
    "SELECT * FROM postings ORDER BY event_partition, event_offset, posting_index",
    "SELECT * FROM trades ORDER BY shard, trade_id",
    "SELECT * FROM orders ORDER BY shard, order_id",
    "SELECT * FROM positions ORDER BY account, symbol",
    "SELECT * FROM deliveries ORDER BY shard, obligation_id",
    "SELECT * FROM shard_positions ORDER BY consumer, shard",
)


async def snapshot(dsn: str) -> list[list[tuple[Any, ...]]]:
    """Every ledger row (consumer_positions left out: replays legitimately move it)."""
    return [await fetch_all(dsn, q) for q in _SNAPSHOT_QUERIES]


async def postings_sum(dsn: str) -> int:
    rows = await fetch_all(dsn, "SELECT coalesce(sum(amount_micros), 0)::bigint FROM postings")
    return int(rows[0][0])


BATCH_BYTES = 2048  # small batch records: about ten events each, big commands split


def records(events: list[Any]) -> list[Any]:
    """The events as gx.events records as the engine writes them: batches of whole commands,
    the commands too big for one record split over several marked partial."""
    return pack_records(events, BATCH_BYTES)


def command_boundary_after(events: list[Any], index: int) -> int:
    """The first index at or after `index` where a new command starts."""
    while 0 < index < len(events) and events[index].input_offset == events[index - 1].input_offset:
        index += 1
    return index


# ============================================================================ tests


def test_settled_ledger_equals_engine_balances_positions_orders_and_trades(
    market: Market, broker: EmbeddedBroker, dsn: str
) -> None:
    settings = settings_for(broker, batch_max=500)
    topic = topics(settings)["events"].name
    sums: list[int] = []

    async def check_zero(conn: Any) -> None:
        sums.append(
            int(await conn.fetchval("SELECT coalesce(sum(amount_micros), 0) FROM postings"))
        )

    async def scenario() -> tuple[SettlementWriter, list[Any], list[Any]]:
        values = records(market.events)
        assert any(r.partial for r in values)  # splits are exercised
        end = await produce(broker.bootstrap_servers, topic, values)
        writer = await settle(
            settings, dsn, broker.bootstrap_servers, {0: end}, on_commit=check_zero
        )
        balances = await fetch_all(
            dsn, "SELECT account, bucket, amount_micros FROM balances WHERE amount_micros <> 0"
        )
        other = [await fetch_all(dsn, q) for q in _CHECK_QUERIES]
        return writer, balances, other

    writer, balances, (trades, positions, resting, orders, deliveries, filled) = run(scenario())
    kinds = Counter(type(x).__name__ for x in market.events)
    assert len(sums) == writer.stats.transactions > 1
    assert set(sums) == {0}, "the postings must sum to zero after every commit"
    assert {(a, b): amount for a, b, amount in balances} == market.engine.balances()
    assert {b for (_, b) in market.engine.balances()} == {1, 2, 3, 4}  # all buckets used
    assert trades[0][0] == kinds["TradeExecuted"] > 0
    assert {(a, s): lots for a, s, lots in positions} == market.engine.positions() != {}
    assert dict(resting) == engine_resting_orders(market.engine) != {}
    assert orders[0][0] == kinds["OrderAccepted"]
    assert deliveries == [(kinds["DeliveryAssigned"], kinds["DeliverySettled"])]
    assert kinds["DeliverySettled"] > 0
    assert filled[0][0] == 2 * sum(x.lots for x in market.events if type(x) is e.TradeExecuted)
    assert writer.stats.events_settled == len(market.events)
    assert writer.stats.malformed == writer.stats.duplicates == 0


_CHECK_QUERIES = (
    "SELECT count(*) FROM trades",
    "SELECT account, symbol, lots FROM positions WHERE lots <> 0",
    "SELECT order_id, lots_open FROM orders WHERE status = 1",
    "SELECT count(*) FROM orders",
    "SELECT count(*), count(*) FILTER (WHERE state = 3) FROM deliveries",
    "SELECT sum(lots_filled)::bigint FROM orders",
)


def test_stopping_and_restarting_mid_stream_keeps_postings_zero_sum_and_loses_nothing(
    market: Market, broker: EmbeddedBroker, dsn: str
) -> None:
    # Tiny batches: most transactions end inside a command and must hold its tail back.
    settings = settings_for(broker, batch_max=7)
    topic = topics(settings)["events"].name
    sums: list[int] = []

    async def check_zero(conn: Any) -> None:
        sums.append(
            int(await conn.fetchval("SELECT coalesce(sum(amount_micros), 0) FROM postings"))
        )

    async def scenario() -> tuple[list[int], list[dict[int, int]], list[Any]]:
        half = command_boundary_after(market.events, len(market.events) // 2)
        bootstrap = broker.bootstrap_servers
        await produce(bootstrap, topic, records(market.events[:half]))
        after_stop: list[int] = []
        stopped_at: list[dict[int, int]] = []
        for _ in range(3):  # stop mid-stream, restart from the stored position
            writer = await settle(
                settings, dsn, bootstrap, None, on_commit=check_zero, stop_after_transactions=5
            )
            stopped_at.append(writer.positions)
            after_stop.append(await postings_sum(dsn))
        end = await produce(bootstrap, topic, records(market.events[half:]))
        await settle(settings, dsn, bootstrap, {0: end}, on_commit=check_zero)
        balances = await fetch_all(
            dsn, "SELECT account, bucket, amount_micros FROM balances WHERE amount_micros <> 0"
        )
        return after_stop, stopped_at, balances

    after_stop, stopped_at, balances = run(scenario())
    assert after_stop == [0, 0, 0]
    offsets = [p[0] for p in stopped_at]
    assert 0 < offsets[0] < offsets[1] < offsets[2] < len(market.events) // 2
    assert set(sums) == {0} and len(sums) > 15
    assert {(a, b): amount for a, b, amount in balances} == market.engine.balances()


def test_replay_from_offset_zero_and_duplicate_records_change_nothing(
    market: Market, broker: EmbeddedBroker, dsn: str
) -> None:
    settings = settings_for(broker, batch_max=1000)
    topic = topics(settings)["events"].name
    count = len(market.events)

    async def scenario() -> tuple[list[Any], list[list[Any]], list[SettlementWriter]]:
        bootstrap = broker.bootstrap_servers
        end = await produce(bootstrap, topic, per_command(market.events))
        await settle(settings, dsn, bootstrap, {0: end})
        before = await snapshot(dsn)
        after: list[list[Any]] = []
        writers = []
        # 1. Redelivery: the consumer position goes back to the start of the log.
        await execute(dsn, "UPDATE consumer_positions SET next_offset = 0")
        writers.append(await settle(settings, dsn, bootstrap, {0: end}))
        after.append(await snapshot(dsn))
        # 2. Forget the shard sequences too: only the conflict keys and seq guards remain.
        await execute(dsn, "UPDATE consumer_positions SET next_offset = 0")
        await execute(dsn, "DELETE FROM shard_positions")
        writers.append(await settle(settings, dsn, bootstrap, {0: end}))
        after.append(await snapshot(dsn))
        # 3. Every event produced a second time, at new offsets.
        end2 = await produce(bootstrap, topic, per_command(market.events))
        writers.append(await settle(settings, dsn, bootstrap, {0: end2}))
        after.append(await snapshot(dsn))
        return before, after, writers

    before, after, writers = run(scenario())
    assert before[0] and before[1] and before[2]
    for i, rows in enumerate(after):
        assert rows == before, f"replay {i + 1} changed the ledger"
    assert writers[0].stats.duplicates == count and writers[0].stats.events_settled == 0
    # Without shard sequences every event is re-applied, and every insert conflicts.
    assert writers[1].stats.events_settled == count
    assert writers[1].stats.copy_conflicts > 0  # the direct copies fell back to ON CONFLICT
    assert writers[2].stats.duplicates == count and writers[2].stats.events_settled == 0


def test_garbage_records_are_logged_counted_dead_lettered_and_skipped(
    market: Market, broker: EmbeddedBroker, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(broker)
    topic = topics(settings)["events"].name
    # Cut inside a deposit: between its two CashChanged events (the command's cash must still
    # be settled in one transaction, the garbage in between notwithstanding).
    cut = next(
        i + 1
        for i, x in enumerate(market.events)
        if type(x) is e.CashChanged and x.reason == 1 and x.account != 0
    )
    sample = market.events[cut]
    assert (
        type(sample) is e.CashChanged and sample.input_offset == market.events[cut - 1].input_offset
    )
    overflow = msgspec.structs.replace(sample, available_delta=2**63 + 5)
    gap = msgspec.structs.replace(sample, seq=10**9)
    garbage: list[Any] = [
        b"\xc1 not msgpack",
        pack_events([msgspec.msgpack.encode({"type": "PriceSpiked", "shard": 0, "seq": 1})]),
        pack_events([msgspec.msgpack.encode(overflow)]),
        None,
        pack_events([encode(gap)]),
        msgspec.msgpack.encode(sample),  # one event map, not a record
    ]
    head = per_command(market.events[:cut])
    # The deposit's first record is marked partial, as the engine marks a command it splits.
    values = [*head[:-1], EventRecord(head[-1] or b"", partial=True), *garbage]
    values += per_command(market.events[cut:])

    async def scenario() -> tuple[SettlementWriter, list[Any], list[Any]]:
        end = await produce(broker.bootstrap_servers, topic, values)
        writer = await settle(settings, dsn, broker.bootstrap_servers, {0: end})
        balances = await fetch_all(
            dsn, "SELECT account, bucket, amount_micros FROM balances WHERE amount_micros <> 0"
        )
        dead = await fetch_all(dsn, 'SELECT partition, "offset", reason FROM dead_letters')
        return writer, balances, dead

    with caplog.at_level(logging.WARNING, logger="gx.settle"):
        writer, balances, dead = run(scenario())
    assert writer.stats.malformed == 5
    assert writer.stats.seq_gaps == 1
    assert writer.stats.events_settled == len(market.events)
    assert {(a, b): amount for a, b, amount in balances} == market.engine.balances()
    offsets = list(range(len(head), len(head) + len(garbage)))
    assert sorted(offset for _, offset, _ in dead) == offsets
    assert {p for p, _, _ in dead} == {0}
    reasons = " | ".join(r for _, _, r in dead)
    for expected in ("undecodable", "available_delta", "no value", "sequence gap"):
        assert expected in reasons
    for offset in offsets:
        assert f"[0]@{offset}#0:" in caplog.text  # partition, offset, event in the record


def cash(seq: int, command: int, amount: int) -> e.CashChanged:
    return e.CashChanged(
        account=10, available_delta=amount, held_delta=0, escrow_delta=0,
        collateral_delta=0, reason=1, ref_id=1, shard=0, seq=seq, input_offset=command,
    )  # fmt: skip


def test_dead_letters_in_batch_records_are_named_by_their_place_in_the_record() -> None:
    pending = [
        (10, cash(1, 100, 5)),
        (10, Malformed("junk", b"a")),
        (10, cash(2, 100, -5)),
        (10, Malformed("more junk", b"b")),
        (11, cash(3, 101, 7)),  # an unbalanced command: both its events are dead letters
        (11, cash(4, 101, 1)),
        (12, cash(5, 102, 0)),
    ]
    plan = plan_commit(pending, {}, caught_up=True)
    assert plan.count == len(pending)
    assert [(offset, index) for offset, index, _, _ in plan.dead] == [
        (10, 1), (10, 3), (11, 0), (11, 1),
    ]  # fmt: skip
    assert [payload for _, _, _, payload in plan.dead[:2]] == [b"a", b"b"]
    assert [offset for offset, _ in plan.events] == [10, 10, 12]


def test_two_bad_events_of_one_batch_record_keep_a_dead_letter_each(
    market: Market, broker: EmbeddedBroker, dsn: str
) -> None:
    settings = settings_for(broker)
    topic = topics(settings)["events"].name
    unknown = msgspec.msgpack.encode({"type": "PriceSpiked", "shard": 0, "seq": 1})
    sample = next(x for x in market.events if type(x) is e.CashChanged)
    overflow = encode(msgspec.structs.replace(sample, available_delta=2**63 + 5))
    cut = next(i for i in range(1, len(market.events)) if market.events[i].input_offset
               != market.events[i - 1].input_offset)  # fmt: skip
    first = [encode(x) for x in market.events[:cut]]
    record = pack_events([first[0], unknown, *first[1:], overflow])
    values = [record, *per_command(market.events[cut:])]

    async def scenario() -> tuple[SettlementWriter, list[Any], list[Any]]:
        end = await produce(broker.bootstrap_servers, topic, values)
        writer = await settle(settings, dsn, broker.bootstrap_servers, {0: end})
        dead = await fetch_all(
            dsn, 'SELECT "offset", event_index, reason, payload FROM dead_letters ORDER BY 2'
        )
        balances = await fetch_all(
            dsn, "SELECT account, bucket, amount_micros FROM balances WHERE amount_micros <> 0"
        )
        return writer, dead, balances

    writer, dead, balances = run(scenario())
    assert writer.stats.malformed == 2
    assert writer.stats.events_settled == len(market.events)
    assert [(o, i) for o, i, _, _ in dead] == [(0, 1), (0, cut + 1)]
    assert "undecodable" in dead[0][2] and "available_delta" in dead[1][2]
    assert [bytes(p) for _, _, _, p in dead] == [unknown, overflow]  # each its own bytes
    assert {(a, b): amount for a, b, amount in balances} == market.engine.balances()


def test_plan_holds_back_an_incomplete_command_and_dead_letters_an_unbalanced_one() -> None:
    pending = [
        (0, cash(1, 100, 5)),
        (1, cash(2, 100, -5)),
        (2, Malformed("junk", b"x")),
        (3, cash(3, 101, 7)),  # unbalanced: settled only as a dead letter
        (4, cash(2, 100, -5)),  # a duplicate
        (5, cash(4, 102, 9)),  # trailing, incomplete
    ]
    plan = plan_commit(pending, {}, caught_up=True)
    assert plan.count == 5
    assert [offset for offset, _ in plan.events] == [0, 1]
    assert [(offset, why.split(":")[0]) for offset, _, why, _ in plan.dead] == [
        (2, "junk"),
        (3, "unbalanced command"),
    ]
    assert (plan.duplicates, plan.malformed, plan.unbalanced, plan.last_seq) == (1, 1, 1, {0: 3})
    balanced_tail = [*pending[:5], (5, cash(4, 102, 0)), (6, cash(5, 102, 0))]
    assert plan_commit(balanced_tail, {}, caught_up=False).count == 5
    assert plan_commit(balanced_tail, {}, caught_up=True).count == 7
    assert plan_commit(pending[:3], {0: 2}, caught_up=False).count == 3  # all duplicates or junk


def test_decode_record_names_what_is_wrong() -> None:
    [junk] = decode_record(b"\x00")
    assert isinstance(junk, Malformed)
    [bad] = decode_record(pack_events([msgspec.msgpack.encode({"type": "CashChanged", "seq": 1})]))
    assert isinstance(bad, Malformed) and "undecodable" in bad.reason
    too_big = e.PositionChanged(
        account=1, symbol="x", delta_lots=1, position_lots=2**64 - 1, reason=1, ref_id=1, seq=1
    )
    [result] = decode_record(pack_events([msgspec.msgpack.encode(too_big)]))
    assert isinstance(result, Malformed) and "position_lots" in result.reason
    [one_map] = decode_record(msgspec.msgpack.encode(too_big))  # an event, not a record
    assert isinstance(one_map, Malformed) and "expected `array`" in one_map.reason.lower()


def test_gx_settle_without_kafka_bootstrap_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GX_KAFKA_BOOTSTRAP", raising=False)
    assert gx_main(["settle"]) == 2
    assert "GX_KAFKA_BOOTSTRAP" in capsys.readouterr().err


def test_gx_settle_settles_at_its_lower_priority_and_stops_cleanly_on_sigterm(
    market: Market, broker: EmbeddedBroker, dsn: str, tmp_path: Path
) -> None:
    settings = settings_for(broker)
    topic = topics(settings)["events"].name
    end = run(produce(broker.bootstrap_servers, topic, records(market.events)))
    args = [
        "-m",
        "exchange.cli.gx",
        "settle",
        "--bootstrap",
        broker.bootstrap_servers,
        "--dsn",
        dsn,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GX_SETTLE_NICE": "7"}
    with (tmp_path / "settle.log").open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stderr=log_file)
    try:
        deadline = time.monotonic() + settle_deadline_s
        while run(settled_through(dsn)) != end and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "settle.log").read_text()
            time.sleep(0.05)
        nicer_by = os.getpriority(os.PRIO_PROCESS, proc.pid) - os.getpriority(os.PRIO_PROCESS, 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "settle.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert nicer_by == 7
    balances = run(
        fetch_all(
            dsn, "SELECT account, bucket, amount_micros FROM balances WHERE amount_micros <> 0"
        )
    )
    assert {(a, b): amount for a, b, amount in balances} == market.engine.balances()


# ============================================================================ benchmark


def bench_settlement(shards: int = 4, batches: int = 300, batch_max: int = 5000) -> dict[str, Any]:
    """Settle `shards` simulated shards from the embedded broker; return events per second."""
    catalog = load_catalog()
    markets = [simulate(catalog, SEED + s, batches, shard=s) for s in range(shards)]
    with EmbeddedBroker(broker_count=1) as broker, EmbeddedPostgres(database="gx_bench") as pg:
        settings = settings_for(broker, batch_max=batch_max, shards=shards)
        topic = topics(settings)["events"].name

        async def scenario() -> tuple[float, SettlementWriter]:
            ends = {
                s: await produce(
                    broker.bootstrap_servers, topic, per_command(m.events), partition=s
                )
                for s, m in enumerate(markets)
            }
            started = time.perf_counter()
            writer = await settle(settings, pg.dsn, broker.bootstrap_servers, ends)
            return time.perf_counter() - started, writer

        elapsed_s, writer = run(scenario(), timeout_s=600)
    c = writer.stats
    return {
        "events": c.events_settled,
        "postings": c.postings,
        "trades": c.trades,
        "transactions": c.transactions,
        "seconds": round(elapsed_s, 3),
        "events_per_s": round(c.events_settled / elapsed_s),
        "postings_per_s": round(c.postings / elapsed_s),
    }


def test_writer_connection_updates_orders_by_index_however_large_the_ledger(dsn: str) -> None:
    """The staged UPDATE joins by primary key, not by hashing the whole orders table.

    Without the planner settings of `prepare_connection`, a staging table without statistics
    made PostgreSQL hash the whole orders table at every commit (quadratic in the ledger).
    """
    from streams.settlement import prepare_connection
    from streams.settlement.rows import _APPLY

    async def plan() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            await prepare_connection(conn)
            await conn.execute(
                "INSERT INTO orders SELECT 0, i, i % 100, 'S', 'buy', 'limit', 'gtc', 2400, 5, 5, "
                "0, 1, '', 0, i, 0, i, 0 FROM generate_series(1, 20000) AS i"
            )
            await conn.execute("ANALYZE orders")
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO stage_order_updates SELECT 0, i, NULL, 2, false, 1, 0, "
                    "30000, 30001, 0 FROM generate_series(1, 50) AS i"
                )
                rows = await conn.fetch("EXPLAIN ANALYZE " + _APPLY["stage_order_updates"])
                updated = await conn.fetchval("SELECT count(*) FROM orders WHERE seq = 30001")
            assert updated == 50
            return "\n".join(r[0] for r in rows)
        finally:
            await conn.close()

    found = run(plan())
    assert "Index Scan using orders_pkey on orders" in found, found
    assert "Seq Scan on orders" not in found, found


def test_an_accounts_newest_postings_are_read_by_index_not_sorted(dsn: str) -> None:
    """The gateway's ledger page reads backwards along (account, seq), whatever the history."""
    from streams.ledger import schema as ls
    from streams.ledger.reads import ACCOUNT_POSTINGS_SQL as LEDGER_QUERY

    async def plan() -> tuple[str, list[int]]:
        conn = await asyncpg.connect(dsn)
        try:
            await ls.migrate(conn)
            await conn.execute(
                "INSERT INTO postings SELECT 0, i, 0, 0, i, i, i % 50, 1 + i % 4, 1, 1, 0, 0 "
                "FROM generate_series(1, 50000) AS i"
            )
            await conn.execute("ANALYZE postings")
            plans, pages = [], []
            for cursor in ((2**62, 0), (49857, 0)):  # the first page, and one from a cursor
                values = (7, *cursor, 0, 2**62, 5)  # account, cursor, period, limit
                query = LEDGER_QUERY
                for i in reversed(range(len(values))):
                    query = query.replace(f"${i + 1}", str(values[i]))
                plans.append("\n".join(r[0] for r in await conn.fetch("EXPLAIN " + query)))
                pages.append([r["seq"] for r in await conn.fetch(query)])
            return "\n".join(plans), pages
        finally:
            await conn.close()

    found, pages = run(plan())
    assert pages[0] == [49957, 49907, 49857, 49807, 49757]  # the account's newest, newest first
    assert pages[1] == [49807, 49757, 49707, 49657, 49607]  # strictly before the cursor
    assert found.count("Index Scan Backward using postings_by_account_seq") == 2, found
    assert "Sort" not in found, found


def test_a_version_3_ledger_migrates_to_keys_by_shard_sequence(dsn: str) -> None:
    """Migration 4: batch records share a Kafka position, so postings are keyed by (shard, seq)."""
    from streams.ledger import schema as ls

    posting = "INSERT INTO postings VALUES (0, 5, 0, 0, $1, 3, 10, 1, 100, 1, 0, 0)"

    async def scenario() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            assert await ls.migrate(conn, ls.MIGRATIONS[:3]) == [1, 2, 3]
            await conn.execute(posting, 7)
            with pytest.raises(asyncpg.UniqueViolationError):  # v3: one event per offset
                await conn.execute(posting, 8)
            assert await ls.migrate(conn, ls.MIGRATIONS[:4]) == [4]
            await conn.execute(posting, 8)  # the next event of the same record
            with pytest.raises(asyncpg.UniqueViolationError):  # v4: one posting per seq, bucket
                await conn.execute(posting, 8)
            return [tuple(r) for r in await conn.fetch("SELECT seq FROM postings ORDER BY seq")]
        finally:
            await conn.close()

    assert run(scenario()) == [(7,), (8,)]


def test_a_version_4_ledger_migrates_to_a_dead_letter_per_event(dsn: str) -> None:
    """Migration 5: several events of one batch record can be dead letters, each its own row."""
    from streams.ledger import schema as ls

    letter = (
        'INSERT INTO dead_letters (consumer, topic, partition, "offset", reason) '
        "VALUES ('settle', 'gx.events', 0, 9, $1)"
    )

    async def scenario() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            assert await ls.migrate(conn, ls.MIGRATIONS[:4]) == [1, 2, 3, 4]
            await conn.execute(letter, "first")
            assert await ls.migrate(conn, ls.MIGRATIONS[:5]) == [5]
            await conn.execute(letter.replace("reason)", "reason, event_index)").replace(
                "$1)", "$1, 2)"), "third")  # fmt: skip
            with pytest.raises(asyncpg.UniqueViolationError):  # one row per event, not per record
                await conn.execute(letter, "first again")
            rows = await conn.fetch("SELECT event_index, reason FROM dead_letters ORDER BY 1")
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    assert run(scenario()) == [(0, "first"), (2, "third")]  # the old row is event 0


def test_a_database_down_longer_than_the_old_give_up_horizon_is_waited_out(
    market: Market,
    broker: EmbeddedBroker,
    postgres: EmbeddedPostgres,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The writer gave up after 10 reconnects (about 30 s at the default backoff), so a longer
    # outage killed it. The backoff is shrunk so the outage below lasts many old horizons.
    from streams.settlement import writer as writer_module

    monkeypatch.setattr(writer_module, "reconnect_backoff_s_max", 0.05)
    monkeypatch.setattr(writer_module, "reconnect_backoff_s_min", 0.05, raising=False)
    monkeypatch.setattr(writer_module, "wait_log_interval_s", 1.0, raising=False)
    outage_s = 4.0  # 80 attempts at 0.05 s: eight times the old 10
    settings = settings_for(broker, batch_max=50)
    topic = topics(settings)["events"].name

    async def scenario() -> tuple[int, int, int]:
        bootstrap = broker.bootstrap_servers
        half = command_boundary_after(market.events, len(market.events) // 2)
        await produce(bootstrap, topic, records(market.events[:half]))
        writer = SettlementWriter(settings, dsn, bootstrap, check_crcs=False)
        task = asyncio.create_task(writer.run())
        while writer.stats.transactions == 0:
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
        await asyncio.to_thread(postgres.stop_server, "fast")
        try:
            end = await produce(bootstrap, topic, records(market.events[half:]))
            await asyncio.sleep(outage_s)
            assert not task.done(), f"the writer exited during the outage: {task.exception()!r}"
        finally:
            await asyncio.to_thread(postgres.start_server)
        deadline = time.monotonic() + settle_deadline_s
        while writer.positions != {0: end} and time.monotonic() < deadline:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        writer.stop()
        await task
        return writer.positions[0], end, writer.stats.reconnects

    with caplog.at_level(logging.WARNING, logger="gx.settle"):
        settled, end, attempts = run(scenario())
    assert settled == end
    assert asyncio.run(postings_sum(dsn)) == 0
    waiting = [
        r.getMessage() for r in caplog.records if "waiting for PostgreSQL at" in r.getMessage()
    ]
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed:")]
    at = database_at(dsn)
    assert waiting and all(at in line for line in waiting), caplog.text[-2000:]
    assert len(waiting) < attempts  # rate-limited: not a line per attempt
    assert len(resumed) == 1 and at in resumed[0], caplog.text[-2000:]


if __name__ == "__main__":
    shards = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    print(bench_settlement(shards, batches))


def test_a_read_only_database_makes_the_writer_wait_and_resume_not_exit(
    market: Market, broker: EmbeddedBroker, dsn: str
) -> None:
    # Found by the fault suite (tests/faults): writes refused (a read-only database; a full disk
    # is refused the same way) are no connection error, and the writer exited on them.
    settings = settings_for(broker, batch_max=50)
    topic = topics(settings)["events"].name
    database = dsn.rsplit("/", 1)[1]
    kill_others = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )

    async def scenario() -> tuple[int, int]:
        bootstrap = broker.bootstrap_servers
        half = command_boundary_after(market.events, len(market.events) // 2)
        await produce(bootstrap, topic, records(market.events[:half]))
        writer = SettlementWriter(settings, dsn, bootstrap, check_crcs=False)
        task = asyncio.create_task(writer.run())
        while writer.stats.transactions == 0:
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
        await execute(dsn, f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        await execute(dsn, kill_others)  # new sessions are read only
        end = await produce(bootstrap, topic, records(market.events[half:]))
        await asyncio.sleep(3.0)  # the writer meets the refusals
        assert not task.done(), task.exception()
        conn = await asyncpg.connect(dsn, server_settings={"default_transaction_read_only": "off"})
        try:
            await conn.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        finally:
            await conn.close()
        deadline = time.monotonic() + settle_deadline_s
        while writer.positions != {0: end} and time.monotonic() < deadline:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        writer.stop()
        await task
        return writer.positions[0], end

    settled, end = run(scenario())
    assert settled == end
    assert asyncio.run(postings_sum(dsn)) == 0
