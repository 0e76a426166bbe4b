"""The settlement writer process (`gx settle`): `SettlementWriter`, its stats, and its loop
(read, plan, one transaction per commit, reconnects)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.core import GaugeMetricFamily, Metric

from streams.consumers import log_consumer, read_batch
from streams.event_records import is_event_batch, is_partial
from streams.logs import database_at
from streams.metrics import Health, check_health, consumer_lag, counter, step_histogram
from streams.settings import Settings
from streams.settlement.decode import Entry, decode_record
from streams.settlement.plan import Plan, _plan_at_record_boundary
from streams.settlement.rows import (
    _APPEND_ONLY,
    _APPLY,
    _APPLY_ORDER,
    _copy_new,
    _Rows,
    prepare_connection,
)
from streams.topics import topics

log = logging.getLogger("gx.settle")

CONSUMER_DEFAULT = "settlement"
poll_timeout_ms = 200
topic_wait_s = 1.0
# A database outage is waited out however long it lasts (an exit would only hand the wait to
# whoever restarts the process): reconnects back off from the minimum, doubling, to the maximum.
reconnect_backoff_s_min = 0.2
reconnect_backoff_s_max = 5.0
# While the database stays away, say what the writer waits for this often, not at each attempt.
wait_log_interval_s = 10.0
# What a database outage looks like, beyond a lost connection: writes refused (a read-only
# database or standby, a full disk), the server shutting down or starting, a statement cancelled
# (statement timeout), and a connection left mid-operation by one of those. Each clears by
# itself; the writer reconnects and resumes from the stored position instead of exiting.
_RETRIABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.InsufficientResourcesError,  # disk full, out of memory, too many connections
    asyncpg.OperatorInterventionError,  # admin shutdown, cannot connect now, query cancelled
)


class SettlementStats(msgspec.Struct):
    """What the writer has done since it started (committed work only, except `records_read`)."""

    records_read: int = 0
    events_read: int = 0  # events in those records (a record holds one or a batch)
    events_settled: int = 0
    postings: int = 0
    trades: int = 0
    duplicates: int = 0  # events already settled (redelivery or produced twice)
    malformed: int = 0  # undecodable or out-of-range records
    seq_gaps: int = 0  # events after a missing sequence number
    unbalanced_commands: int = 0  # commands whose cash deltas do not sum to zero
    transactions: int = 0
    reconnects: int = 0
    copy_conflicts: int = 0  # direct copies that met existing rows and went through ON CONFLICT
    dead_letters: int = 0  # rows committed to dead_letters (events skipped, with the reason)


class _Tail:
    """What the last record read from a partition was, and its unsettled partial records."""

    __slots__ = ("batch", "partial", "partial_offsets")

    def __init__(self) -> None:
        self.batch = False  # a batch record (not a record without a value, or garbage)
        self.partial = False  # its last command continues in the next record
        self.partial_offsets: set[int] = set()  # pending records marked partial


OnCommit = Callable[[Any], Awaitable[None]]


class SettlementWriter:
    """Consume the events topic into the ledger until `stop()` (once per object); see the package."""

    def __init__(
        self,
        settings: Settings,
        dsn: str,
        bootstrap: str,
        *,
        consumer: str = CONSUMER_DEFAULT,
        check_crcs: bool = True,
        on_commit: OnCommit | None = None,
    ) -> None:
        """Describe a writer; `check_crcs=False` only against the embedded mock broker.

        `on_commit(connection)` runs after every commit (tests check invariants with it).
        """
        if settings.settle_batch_max < 1:
            raise ValueError(f"settle_batch_max: expected >= 1, found {settings.settle_batch_max}")
        self._fetch_wait_ms = settings.kafka_fetch_wait_ms
        events_topic = topics(settings)["events"]
        self.topic = events_topic.name
        self._partitions_n = events_topic.partitions
        self.consumer_name = consumer
        self.stats = SettlementStats()
        self._dsn = dsn
        self._bootstrap = bootstrap
        self._batch_max = settings.settle_batch_max
        self._check_crcs = check_crcs
        self._on_commit = on_commit
        self._conn: Any = None
        self._partitions: list[TopicPartition] = []
        self._pending: dict[int, list[Entry]] = {}
        self._tail: dict[int, _Tail] = {}  # per partition: what the last record read was
        self._events_per_record = 1.0  # running mean, to size reads in events
        self._next_offset: dict[int, int] = {}
        self._last_seq: dict[int, int] = {}
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._kafka: AIOKafkaConsumer | None = None
        self._resumed = False  # positions loaded and sought: the lag means something
        self._ready_lag_max = settings.ready_lag_records_max
        self._last_ts_event = 0  # engine time (ns) of the last event settled
        self._health: Health | None = None
        self.transaction_seconds = step_histogram(
            "gx_settle_transaction_seconds", "one settlement transaction, staging to commit"
        )

    # ------------------------------------------------------------------ health and metrics

    async def health(self) -> Health:
        """Ready: positions resumed, caught up with gx.events, the ledger database reachable."""
        kafka = self._kafka
        lag = None
        if kafka is not None and self._resumed:
            lag = consumer_lag(kafka.end_offsets, self._settled_position, self._partitions)
        self._health = await check_health(
            self._resumed and lag is not None, lag, self._dsn, self._ready_lag_max
        )
        return self._health

    async def _settled_position(self, tp: TopicPartition) -> int:
        """Where settling has got to: the committed offset while records read wait in `pending`
        (a transaction in flight, a held-back command), else the read position, which is past
        the transaction markers that follow the last record."""
        committed = self._next_offset.get(tp.partition, 0)
        if self._pending.get(tp.partition) or self._kafka is None:
            return committed
        return max(committed, await self._kafka.position(tp))

    def behind_s(self) -> float:
        """Seconds between now and the engine time of the last settled event; 0 when caught up."""
        lag = None if self._health is None else self._health.lag_total()
        if lag == 0 or not self._last_ts_event:
            return 0.0
        return max(0.0, (time.time_ns() - self._last_ts_event) / 1e9)

    def metrics(self) -> Iterator[Metric]:
        c = self.stats
        yield counter("gx_settle_events_read", "events read from gx.events", c.events_read)
        yield counter(
            "gx_settle_events_settled", "events settled into the ledger", c.events_settled
        )
        yield counter("gx_settle_postings", "ledger postings written", c.postings)
        yield counter("gx_settle_trades", "trades written", c.trades)
        yield counter("gx_settle_dead_letters", "rows committed to dead_letters", c.dead_letters)
        yield counter("gx_settle_transactions", "ledger transactions committed", c.transactions)
        yield counter("gx_settle_reconnects", "database reconnections", c.reconnects)
        yield GaugeMetricFamily(
            "gx_settle_behind_seconds",
            "now minus the engine time (ts_event) of the last settled event; 0 when caught up",
            value=self.behind_s(),
        )
        yield from self.transaction_seconds.collect()

    # ------------------------------------------------------------------ public API

    @property
    def positions(self) -> dict[int, int]:
        """The committed next offset per partition."""
        return dict(self._next_offset)

    async def run(self) -> None:
        """Settle until `stop()` is called, waiting out database outages however long.

        Raise on what waiting does not cure: a database that refuses the login or does not
        exist, a ledger schema newer than this code.
        """
        self._running = True
        self._done.clear()
        kafka = log_consumer(
            self._bootstrap,
            check_crcs=self._check_crcs,
            fetch_wait_ms=self._fetch_wait_ms,
            client_id=f"gx-settle-{self.consumer_name}",
        )
        try:
            await kafka.start()
            self._kafka = kafka
            try:
                if await self._assign(kafka):
                    while not self._stopping.is_set():
                        await self._step_retrying(kafka)
            finally:
                self._kafka, self._resumed = None, False
                await kafka.stop()
        finally:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            self._running = False
            self._done.set()

    def stop(self) -> None:
        """Ask the writer to stop after its current transaction; `run()` then returns.

        A held-back command is settled by the next run. Synchronous like every process's
        `stop` (`streams.process.Process`), so a signal handler can call it.
        """
        self._stopping.set()

    # ------------------------------------------------------------------ setup

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            applied = await prepare_connection(conn)
            if applied:
                log.info("ledger schema migrated to version %d", applied[-1])
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _assign(self, kafka: AIOKafkaConsumer) -> bool:
        """Assign every partition of the events topic, waiting for it to exist; False if stopped.

        The partitions are the configured layout (streams.topics: one per shard).
        """
        warned = False
        while not self._stopping.is_set():
            if self.topic in await kafka.topics():  # a fresh metadata fetch
                self._partitions = [
                    TopicPartition(self.topic, p) for p in range(self._partitions_n)
                ]
                kafka.assign(self._partitions)
                return True
            if not warned:
                log.warning(
                    "topic %s does not exist yet; waiting for it: run `gx topics create`",
                    self.topic,
                )
                warned = True
            await asyncio.sleep(topic_wait_s)
        return False

    async def _resume(self, kafka: AIOKafkaConsumer) -> None:
        """Load the committed positions and seek there, dropping anything read but not settled."""
        rows = await self._conn.fetch(
            "SELECT partition, next_offset FROM consumer_positions WHERE consumer = $1 "
            "AND topic = $2",
            self.consumer_name,
            self.topic,
        )
        stored = {int(r["partition"]): int(r["next_offset"]) for r in rows}
        seqs = await self._conn.fetch(
            "SELECT shard, last_seq FROM shard_positions WHERE consumer = $1", self.consumer_name
        )
        self._last_seq = {int(r["shard"]): int(r["last_seq"]) for r in seqs}
        for tp in self._partitions:
            self._next_offset[tp.partition] = stored.get(tp.partition, 0)
            self._pending[tp.partition] = []
            self._tail[tp.partition] = _Tail()
            kafka.seek(tp, self._next_offset[tp.partition])

    # ------------------------------------------------------------------ the loop

    async def _step_retrying(self, kafka: AIOKafkaConsumer) -> None:
        """One step, connecting (and resuming from the stored positions) first when there is no
        connection; a database outage is retried with capped exponential backoff until it ends
        or `stop()` is called, saying what the writer waits for every `wait_log_interval_s`."""
        outage_started = 0.0
        attempt = 0
        said_at = 0.0
        while not self._stopping.is_set():
            try:
                if self._conn is None:
                    await self._connect()
                    # Whether a failed commit landed is unknown: the database says where to resume.
                    await self._resume(kafka)
                    self._resumed = True
                await self._step(kafka)
            except _RETRIABLE as error:
                now = time.monotonic()
                if attempt == 0:
                    outage_started = now
                attempt += 1
                self.stats.reconnects += 1
                backoff_s = min(
                    reconnect_backoff_s_min * 2 ** (attempt - 1), reconnect_backoff_s_max
                )
                if attempt == 1 or now - said_at >= wait_log_interval_s:
                    said_at = now
                    log.warning(
                        "waiting for PostgreSQL at %s: %s (%s); attempt %d, %.0f s so far, next "
                        "in %.1f s: check that PostgreSQL runs, has disk space and accepts "
                        "writes, and that GX_DATABASE_URL reaches it",
                        database_at(self._dsn),
                        type(error).__name__,
                        error,
                        attempt,
                        now - outage_started,
                        backoff_s,
                    )
                self._drop_connection()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff_s)
                continue
            if attempt:
                log.warning(
                    "resumed: PostgreSQL at %s answers again after %.1f s and %d attempts; "
                    "settling from the stored positions",
                    database_at(self._dsn),
                    time.monotonic() - outage_started,
                    attempt,
                )
            return

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _step(self, kafka: AIOKafkaConsumer) -> None:
        # settle_batch_max counts events; a record holds the events of one or more commands
        records_max = max(1, int(self._batch_max / self._events_per_record))
        batches = await read_batch(
            kafka, tuple(self._partitions), timeout_ms=poll_timeout_ms, max_records=records_max
        )
        read = 0
        for tp, records in batches.items():
            pending, tail = self._pending[tp.partition], self._tail[tp.partition]
            for r in records:
                offset = r.offset
                items = decode_record(r.value)
                pending.extend((offset, item) for item in items)
                read += len(items)
                tail.partial = is_partial(r.headers)
                tail.batch = r.value is not None and is_event_batch(r.value)
                if tail.partial:
                    tail.partial_offsets.add(offset)
            self.stats.records_read += len(records)
        if read:
            self.stats.events_read += read
            record_count = sum(len(r) for r in batches.values())
            self._events_per_record += 0.2 * (read / record_count - self._events_per_record)
        plans: dict[int, Plan] = {}
        seqs = self._last_seq
        for tp in self._partitions:
            pending = self._pending[tp.partition]
            if not pending:
                continue
            tail = self._tail[tp.partition]
            # The pending events end with a record. A batch record that is not marked partial
            # ends its last command; a record that is no batch (no value, or garbage: dead
            # letters) is only known to end one when nothing follows it yet.
            complete = (tail.batch and not tail.partial) or (
                not tail.batch and await _caught_up(kafka, tp)
            )
            plan = _plan_at_record_boundary(pending, seqs, complete, tail.partial_offsets)
            if plan.count:
                plans[tp.partition] = plan
                seqs = plan.last_seq
        if plans:
            await self._commit(plans, seqs)

    async def _commit(self, plans: dict[int, Plan], seqs: dict[int, int]) -> None:
        rows = _Rows()
        next_offsets: dict[int, int] = {}
        for partition, plan in plans.items():
            for offset, event in plan.events:
                rows.add(partition, offset, event)
            pending = self._pending[partition]
            covered = pending[plan.count - 1][0] + 1
            next_offsets[partition] = (
                pending[plan.count][0] if plan.count < len(pending) else covered
            )
        staged = rows.staged()
        conn = self._conn
        started = time.perf_counter()
        async with conn.transaction():
            for table in _APPLY_ORDER:
                if table not in staged:
                    continue
                ledger_table = _APPEND_ONLY.get(table)
                if ledger_table is not None:
                    if await _copy_new(conn, ledger_table, staged[table]):
                        continue
                    self.stats.copy_conflicts += 1
                await conn.copy_records_to_table(table, records=staged[table])
                await conn.execute(_APPLY[table])
            await self._write_dead_letters(plans)
            await self._write_positions(next_offsets, seqs)
        self.transaction_seconds.observe(time.perf_counter() - started)
        for partition, plan in plans.items():
            pending = self._pending[partition]
            del pending[: plan.count]
            partial = self._tail[partition].partial_offsets
            if partial:  # forget the partial records settled in full
                first = pending[0][0] if pending else None
                partial.difference_update([o for o in partial if first is None or o < first])
        self._next_offset.update(next_offsets)
        self._last_seq = seqs
        self._count(plans, rows)
        if self._on_commit is not None:
            await self._on_commit(conn)

    async def _write_dead_letters(self, plans: dict[int, Plan]) -> None:
        dead = [(p, *d) for p, plan in plans.items() for d in plan.dead]
        if not dead:
            return
        await self._conn.executemany(
            'INSERT INTO dead_letters (consumer, topic, partition, "offset", event_index, reason, '
            "payload) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            [(self.consumer_name, self.topic, *d) for d in dead],
        )

    async def _write_positions(self, next_offsets: dict[int, int], seqs: dict[int, int]) -> None:
        await self._conn.execute(
            "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) "
            "SELECT $1, $2, p, o FROM unnest($3::integer[], $4::bigint[]) AS t(p, o) "
            "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            self.consumer_name,
            self.topic,
            list(next_offsets),
            list(next_offsets.values()),
        )
        changed = {s: q for s, q in seqs.items() if self._last_seq.get(s) != q}
        if changed:
            await self._conn.execute(
                "INSERT INTO shard_positions (consumer, shard, last_seq) "
                "SELECT $1, s, q FROM unnest($2::bigint[], $3::bigint[]) AS t(s, q) "
                "ON CONFLICT (consumer, shard) DO UPDATE SET last_seq = excluded.last_seq",
                self.consumer_name,
                list(changed),
                list(changed.values()),
            )

    def _count(self, plans: dict[int, Plan], rows: _Rows) -> None:
        c = self.stats
        c.transactions += 1
        c.postings += len(rows.postings)
        c.trades += len(rows.trades)
        for partition, plan in plans.items():
            for offset, index, reason, _ in plan.dead:
                log.warning(
                    "skipped %s[%d]@%d#%d: %s; the event is kept in dead_letters: inspect it "
                    "there and settle it by hand or fix its producer",
                    self.topic,
                    partition,
                    offset,
                    index,
                    reason,
                )
            c.events_settled += len(plan.events)
            c.dead_letters += len(plan.dead)
            if plan.events:
                self._last_ts_event = (
                    getattr(plan.events[-1][1], "ts_event", 0) or self._last_ts_event
                )
            c.duplicates += plan.duplicates
            c.malformed += plan.malformed
            c.seq_gaps += plan.seq_gaps
            c.unbalanced_commands += plan.unbalanced


async def _caught_up(kafka: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    """Whether everything readable in the partition has been read (transaction markers too)."""
    end = kafka.last_stable_offset(tp)
    if end is None or end < 0:
        end = kafka.highwater(tp)
    if end is None:
        return False
    return bool(await kafka.position(tp) >= end)
