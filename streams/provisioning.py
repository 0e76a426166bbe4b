"""The provisioning process (`gx provision`): delivery obligations <-> provider agents.

A faust-streaming worker (ARCHITECTURE 5) with two agents and one table:

    gx.events        -> DeliveryAssigned / DeliveryStarted / DeliverySettled, engine time
                     -> ProvisionRequested on gx.provisioning (key = provider)
    gx.provisioning  -> ProvisionConfirmed / ProvisionFailed from the providers
                     -> DeliveryConfirmed / DeliveryFailed on gx.commands (key = shard)

Each obligation's lifecycle lives in the table `obligations` keyed by obligation id:

    assigned -> requested -> confirmed | failed -> settled

`requested`: the "assigned" request went out at gate closure; the "start" request follows once
engine time reaches the delivery start. `confirmed` / `failed`: the outcome was sent to the
engine (or the engine said so itself). `settled`: the engine settled it; nothing more happens.

Time is engine time, never the wall clock: the latest `ts_event` of each shard. The provisioning
deadline (start + the catalog's 15 minutes) is checked against the time of the last *complete*
command (one whose events are all read: a later command's event has arrived), so the engine's
own auto-fail at the deadline tick, which shares that tick's events, is seen first. The engine
auto-fails an unconfirmed delivery anyway; our `DeliveryFailed(account=0)` is a courtesy that
the engine refuses harmlessly when it is late (UNKNOWN_OBLIGATION once the obligation is settled
and its slot freed). Engine time only moves when events flow: a quiet shard delays the "start"
request and the courtesy fail until its next event.

At-least-once and idempotent: faust commits offsets after the handlers ran, so a crash replays
some records. Every handler looks at the obligation's state first, and every message sent is
remembered in the table before the next record, so a replayed event or a provider's repeated
reply sends nothing twice (a crash between send and table write can still repeat one message,
which the provider and the engine both drop). Money never lives here: the engine settles.

A bad record never stops the worker: one that does not decode, or a failure report out of
bounds (`schemas.provisioning.failure_error`: hours beyond the delivery's, a long reason), is
logged, counted and skipped before anything changes; a record whose handling raises anyway (a
bug) is logged with its traceback, counted and skipped, and the next record is read.

Against librdkafka's mock cluster faust needs `topic_allow_declare=False` and
`topic_disable_leader=True`, and every topic, the tables' changelogs included
(`changelog_topics`), must exist beforehand (create them through the mock's API). The tables
write their changelog partition by key hash (`_KeyedTable`) because records from two differently
partitioned topics update them; run one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol, TypeVar

import faust
import msgspec
from faust.types import StreamT
from prometheus_client.core import Metric

from schemas import commands as c
from schemas import events as e
from schemas.catalog import load_catalog
from schemas.codec import DecodeError, encode
from schemas.provisioning import (
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionMessage,
    ProvisionRequested,
    decode_provision,
    encode_provision,
    failure_error,
    provider_key,
    window_hours,
)
from streams.event_records import decode_event_record
from streams.metrics import Health, check_health, consumer_lag, counter, lag_check_timeout_s
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = [
    "Lifecycle",
    "ObligationRecord",
    "Outgoing",
    "ProvisioningProcess",
    "ProvisioningStats",
    "ShardClock",
    "app_id_default",
    "changelog_topics",
]

log = logging.getLogger("gx.provisioning")
_T = TypeVar("_T")

app_id_default = "gx-provisioning"
open_obligations_max = 100_000  # obligations awaiting an outcome, scanned at every time step
session_timeout_s = 6.0
deadline_reason = "provisioning deadline passed"

State = Literal["assigned", "requested", "confirmed", "failed", "settled"]
_awaiting: tuple[State, ...] = ("assigned", "requested")


class ObligationRecord(msgspec.Struct, kw_only=True):
    """One obligation's provisioning lifecycle (the value of the `obligations` table)."""

    obligation_id: int
    shard: int
    symbol: str
    provider: int
    holder: int
    gpus: int
    start_ns: int
    end_ns: int
    deadline_ns: int
    state: State = "assigned"
    start_requested: bool = False  # the "start" stage request went out


class ShardClock(msgspec.Struct, kw_only=True):
    """Engine time of one shard (the value of the `clocks` store; in memory in the worker)."""

    now_ns: int = 0  # the latest ts_event seen
    input_offset: int = -1  # the command of the latest event
    complete_ns: int = 0  # ts_event of the latest command whose events are all read


class Outgoing(msgspec.Struct, frozen=True):
    """A record to produce: to `role` ("commands" or "provisioning")."""

    role: Literal["commands", "provisioning"]
    key: bytes
    value: bytes
    partition: int | None = None


class ProvisioningStats(msgspec.Struct, kw_only=True):
    """Counters of one provisioning process (since it started)."""

    events: int = 0
    malformed: int = 0  # records of either topic that did not decode
    replies: int = 0  # provider confirmations and failures read
    ignored_replies: int = 0  # unknown obligation, wrong provider, or already decided
    unfit_replies: int = 0  # failure reports out of bounds (failure_error): dropped
    errors: int = 0  # records whose handling raised (a bug): logged and skipped
    requests: int = 0  # ProvisionRequested sent
    confirmed: int = 0  # DeliveryConfirmed sent
    failed: int = 0  # DeliveryFailed sent on a provider's report
    deadline_failed: int = 0  # DeliveryFailed sent by the deadline


class Store(Protocol):
    """The key-value tables the lifecycle keeps its state in (a dict, or a faust Table)."""

    def get(self, key: Any, /) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def items(self) -> Any: ...


def _load(raw: Any, kind: type[_T]) -> _T:
    return msgspec.convert(raw, kind)


def _dump(value: msgspec.Struct) -> Any:
    # Plain JSON-able values: faust's changelog recovery decodes values with the app's default
    # JSON serializer whatever the table's schema says.
    return msgspec.to_builtins(value)


class Lifecycle:
    """The provisioning decisions over two stores; returns what to send, sends nothing.

    Keys are strings (`str(obligation_id)`, `str(shard)`), values the structs as JSON-able builtins.
    """

    def __init__(
        self, obligations: Store, clocks: Store, deadline_ns: int, stats: ProvisioningStats
    ) -> None:
        if deadline_ns <= 0:
            raise ValueError(f"deadline_ns: expected > 0, found {deadline_ns}")
        self.obligations = obligations
        self.clocks = clocks
        self.deadline_ns = deadline_ns
        self.stats = stats
        self._open: dict[int, set[int]] | None = None  # shard -> obligations awaiting outcome

    # ------------------------------------------------------------------ events

    def on_event(self, event: Any) -> list[Outgoing]:
        """Apply one engine event: track its obligation and engine time; fire due timers."""
        self.stats.events += 1
        shard = event.shard
        clock = self._clock(shard)
        before = (clock.now_ns, clock.complete_ns)
        if event.input_offset != clock.input_offset:
            clock.complete_ns = clock.now_ns  # the previous command's events are all read
            clock.input_offset = event.input_offset
            self.clocks[str(shard)] = _dump(clock)
        if event.ts_event > clock.now_ns:
            clock.now_ns = event.ts_event
            self.clocks[str(shard)] = _dump(clock)
        out: list[Outgoing] = []
        if isinstance(event, e.DeliveryAssigned):
            out += self._assigned(event)
        elif isinstance(event, e.DeliveryStarted):
            self._engine_outcome(event.obligation_id, "confirmed")
        elif isinstance(event, e.DeliverySettled):
            self._engine_outcome(event.obligation_id, "settled")
        if out or (clock.now_ns, clock.complete_ns) != before:
            out += self._timers(shard, clock)  # only when time moved or an obligation came
        return out

    def _assigned(self, ev: e.DeliveryAssigned) -> list[Outgoing]:
        if self._get(ev.obligation_id) is not None:
            return []  # a replayed event
        record = ObligationRecord(
            obligation_id=ev.obligation_id,
            shard=ev.shard,
            symbol=ev.symbol,
            provider=ev.provider,
            holder=ev.holder,
            gpus=ev.gpus,
            start_ns=ev.start_ns,
            end_ns=ev.end_ns,
            deadline_ns=ev.start_ns + self.deadline_ns,
        )
        open_ids = self._open_ids(ev.shard)
        if len(open_ids) >= open_obligations_max:
            raise RuntimeError(
                f"open obligations: more than open_obligations_max={open_obligations_max}"
            )
        open_ids.add(record.obligation_id)
        record.state = "requested"
        self._put(record)
        return [self._request(record, "assigned")]

    def _engine_outcome(self, obligation_id: int, state: State) -> None:
        record = self._get(obligation_id)
        if record is None or record.state == "settled" or record.state == state:
            return
        if state == "confirmed" and record.state == "failed":
            return  # our failure is on its way; the engine will settle it
        record.state = state
        self._put(record)
        if state == "settled":
            self._open_ids(record.shard).discard(obligation_id)

    def _timers(self, shard: int, clock: ShardClock) -> list[Outgoing]:
        out: list[Outgoing] = []
        for obligation_id in sorted(self._open_ids(shard)):
            record = self._get(obligation_id)
            if record is None or record.state not in _awaiting:
                continue
            if not record.start_requested and clock.now_ns >= record.start_ns:
                record.start_requested = True
                self._put(record)
                out.append(self._request(record, "start"))
            if clock.complete_ns >= record.deadline_ns:
                record.state = "failed"
                self._put(record)
                self.stats.deadline_failed += 1
                out.append(
                    self._command(
                        record,
                        c.DeliveryFailed(
                            account=0,
                            obligation_id=obligation_id,
                            hours_delivered=0,
                            reason=deadline_reason,
                        ),
                    )
                )
        return out

    # ------------------------------------------------------------------ provider replies

    def on_reply(self, message: ProvisionMessage) -> list[Outgoing]:
        """Apply one message of gx.provisioning; requests (our own) are ignored."""
        if isinstance(message, ProvisionRequested):
            return []
        self.stats.replies += 1
        record = self._get(message.obligation_id)
        if record is None or record.provider != message.provider:
            self.stats.ignored_replies += 1
            log.warning(
                "reply for an unknown obligation or from another provider ignored: %s; the "
                "provider's agent must answer only its own open obligations",
                message,
            )
            return []
        if isinstance(message, ProvisionConfirmed):
            return self._confirmed(record)
        return self._failed(record, message)

    def _confirmed(self, record: ObligationRecord) -> list[Outgoing]:
        if record.state not in _awaiting:
            self.stats.ignored_replies += 1
            return []
        record.state = "confirmed"
        self._put(record)
        self.stats.confirmed += 1
        command = c.DeliveryConfirmed(account=record.provider, obligation_id=record.obligation_id)
        return [self._command(record, command)]

    def _failed(self, record: ObligationRecord, message: ProvisionFailed) -> list[Outgoing]:
        if record.state not in (*_awaiting, "confirmed"):
            self.stats.ignored_replies += 1
            return []
        why = failure_error(message, window_hours(record.start_ns, record.end_ns))
        if why is not None:  # the gateway refuses these: another producer wrote it
            self.stats.unfit_replies += 1
            log.warning(
                "obligation %d: failure report dropped: %s; the provider must report again "
                "within the bounds, or the deadline fails the delivery",
                record.obligation_id,
                why,
            )
            return []
        command = c.DeliveryFailed(
            account=record.provider,
            obligation_id=record.obligation_id,
            hours_delivered=message.hours_delivered,
            reason=message.reason,
        )
        out = [self._command(record, command)]  # encoded before the state changes
        record.state = "failed"
        self._put(record)
        self.stats.failed += 1
        return out

    # ------------------------------------------------------------------ leaves

    def _request(self, record: ObligationRecord, stage: Literal["assigned", "start"]) -> Outgoing:
        self.stats.requests += 1
        message = ProvisionRequested(
            obligation_id=record.obligation_id,
            provider=record.provider,
            holder=record.holder,
            symbol=record.symbol,
            gpus=record.gpus,
            start_ns=record.start_ns,
            end_ns=record.end_ns,
            deadline_ns=record.deadline_ns,
            stage=stage,
        )
        return Outgoing("provisioning", provider_key(record.provider), encode_provision(message))

    @staticmethod
    def _command(record: ObligationRecord, command: c.Command) -> Outgoing:
        return Outgoing("commands", shard_key(record.shard), encode(command), record.shard)

    def _get(self, obligation_id: int) -> ObligationRecord | None:
        raw = self.obligations.get(str(obligation_id))
        return None if raw is None else _load(raw, ObligationRecord)

    def _put(self, record: ObligationRecord) -> None:
        self.obligations[str(record.obligation_id)] = _dump(record)

    def _clock(self, shard: int) -> ShardClock:
        raw = self.clocks.get(str(shard))
        return ShardClock() if raw is None else _load(raw, ShardClock)

    def _open_ids(self, shard: int) -> set[int]:
        if self._open is None:  # first use after a start: index the recovered table once
            self._open = {}
            for _, raw in self.obligations.items():
                record = _load(raw, ObligationRecord)
                if record.state != "settled":
                    self._open.setdefault(record.shard, set()).add(record.obligation_id)
        return self._open.setdefault(shard, set())


# ---------------------------------------------------------------------- the faust worker


class _KeyedTable(faust.Table):
    """A table whose changelog partition follows from the key alone.

    Records of two differently partitioned topics write it, so the source record's partition
    (faust's default) does not fit; `use_partitioner` would need producer metadata that faust
    does not load for changelogs it did not declare.
    """

    def partition_for_key(self, key: Any) -> int | None:
        return zlib.crc32(str(key).encode()) % (self.partitions or 1)


def changelog_topics(app_id: str = app_id_default) -> list[str]:
    """The tables' changelog topics, which must exist before the worker starts on the mock."""
    return [f"{app_id}-obligations-changelog"]


class ProvisioningProcess:
    """A faust worker running the `Lifecycle` between gx.events, gx.provisioning, gx.commands."""

    def __init__(
        self,
        settings: Settings,
        *,
        deadline_ns: int | None = None,
        mock_broker: bool = False,
        app_id: str = app_id_default,
    ) -> None:
        """Describe the worker; nothing connects until `run()`.

        `deadline_ns`: how long after delivery start a confirmation may come (default: the
        catalog's provisioning deadline, which the engine enforces too).
        `mock_broker`: the broker is librdkafka's mock cluster (skip CRC checks, declare no
        topics); never against real Kafka.
        """
        settings.broker()  # refuses a missing broker, saying what to set
        if deadline_ns is None:
            deadline_ns = load_catalog().provisioning_deadline_ns
        self.settings = settings
        self.stats = ProvisioningStats()
        self._stopping = asyncio.Event()
        names = topics(settings)
        self.app = faust.App(
            app_id,
            broker=f"kafka://{settings.kafka_bootstrap}",
            store="memory://",
            web_enabled=False,
            topic_allow_declare=not mock_broker,
            topic_disable_leader=True,
            broker_check_crcs=not mock_broker,
            topic_partitions=settings.provisioning_partitions,
            # faust creates its table's changelog itself: with the cluster's replication, or
            # min.insync.replicas would refuse its writes.
            topic_replication_factor=settings.replication_factor,
            consumer_auto_offset_reset="earliest",
            # A restarted worker rejoins quickly even if the broker kept the old member.
            broker_session_timeout=session_timeout_s,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=session_timeout_s,
        )
        schema: faust.Schema = faust.Schema(key_serializer="json", value_serializer="json")
        tables = [
            _KeyedTable(
                self.app,
                name=name,
                schema=schema,
                partitions=settings.provisioning_partitions,
                beacon=self.app.tables.beacon,
            )
            for name in ("obligations",)
        ]
        for table in tables:
            self.app.tables.add(table)
        # Engine time is not kept in a table: the first event after a restart sets it again, and
        # a changelog record per command would cost more than the late timer it could save.
        self.lifecycle = Lifecycle(tables[0], {}, deadline_ns, self.stats)
        raw: dict[str, Any] = {"value_type": bytes, "key_serializer": "raw"}
        raw["value_serializer"] = "raw"
        self._topics = {
            "events": self.app.topic(names["events"].name, **raw),
            "provisioning": self.app.topic(names["provisioning"].name, **raw),
            "commands": self.app.topic(names["commands"].name, **raw),
        }
        self.app.agent(self._topics["events"], name="provisioning-events")(self._on_events)
        self.app.agent(self._topics["provisioning"], name="provisioning-replies")(self._on_replies)

    async def health(self) -> Health:
        """Ready: partitions of gx.events and gx.provisioning assigned, and caught up with them."""
        read = {
            self._topics["events"].get_topic_name(),
            self._topics["provisioning"].get_topic_name(),
        }
        lag = None
        try:
            consumer = self.app.consumer
            tps = sorted(tp for tp in consumer.assignment() if tp.topic in read)
        except Exception:  # not started yet: no consumer
            tps = []
        if tps:
            lag = _lag_in_one_call(consumer, tps)
        return await check_health(bool(tps), lag, None, self.settings.ready_lag_records_max)

    def metrics(self) -> Iterator[Metric]:
        stats = self.stats
        yield counter("gx_provision_events", "events read from gx.events", stats.events)
        yield counter("gx_provision_replies", "provider replies read", stats.replies)
        yield counter("gx_provision_requests", "provisioning requests sent", stats.requests)
        yield counter("gx_provision_errors", "records whose handling raised", stats.errors)

    def stop(self) -> None:
        """Ask the worker to stop."""
        self._stopping.set()

    async def run(self) -> None:
        """Start the worker and run it until `stop()`."""
        await self.app.start()
        try:
            await self._stopping.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.app.stop()

    async def _on_events(self, stream: StreamT[bytes]) -> None:
        async for value in stream:
            try:
                events = decode_event_record(value)
            except TypeError as error:  # not bytes
                events = [DecodeError(str(error))]
            for event in events:
                if isinstance(event, DecodeError):
                    self.stats.malformed += 1
                    log.warning(
                        "malformed event skipped: %s; check the engine that produced it", event
                    )
                    continue
                out = self._guarded(self.lifecycle.on_event, event, "event")
                await self._send(out)

    async def _on_replies(self, stream: StreamT[bytes]) -> None:
        async for value in stream:
            try:
                message = decode_provision(value)
            except (msgspec.DecodeError, TypeError) as error:
                self.stats.malformed += 1
                log.warning(
                    "malformed provisioning record skipped: %s; fix the provider agent that "
                    "wrote it (schemas/provisioning.py)",
                    error,
                )
                continue
            await self._send(self._guarded(self.lifecycle.on_reply, message, "reply"))

    def _guarded(
        self, handler: Callable[[Any], list[Outgoing]], message: Any, kind: str
    ) -> list[Outgoing]:
        """Run one lifecycle handler; a raise (a bug) is logged and the record skipped, so one
        bad record cannot stop the agent, and with it every delivery's provisioning."""
        try:
            out = handler(message)
        except Exception:
            self.stats.errors += 1
            log.exception(
                "%s skipped: handling it raised (a bug): %.200r; report it with this "
                "traceback; the delivery's deadline still applies",
                kind,
                message,
            )
            return []
        return out

    async def _send(self, out: list[Outgoing]) -> None:
        # Wait for every send before the next record, so a committed offset is never ahead.
        futures = [
            await self._topics[o.role].send(key=o.key, value=o.value, partition=o.partition)
            for o in out
        ]
        for future in futures:
            await future


faust_fetch_wait_s = 1.5  # faust's aiokafka consumer: fetch_max_wait_ms=1500, not configurable


async def _lag_in_one_call(consumer: Any, tps: list[Any]) -> dict[tuple[str, int], int] | None:
    """`consumer_lag` asked of faust's consumer thread in one call, not one per partition.

    Each call to faust's consumer (`highwaters`, `position`) queues behind the thread's fetch,
    which the mock broker holds for its whole wait (faust's 1.5 s): asked one partition at a
    time, the answers missed the lag check's timeout most of the time, so the process looked
    unready and as if it had lost the broker.
    """
    thread = consumer._thread  # faust: the aiokafka consumer lives in this thread
    # The call may wait for one fetch to end first: give it that on top of the check's own time.
    timeout_s = lag_check_timeout_s + faust_fetch_wait_s

    async def look(partitions: list[Any]) -> dict[tuple[str, int], int] | None:
        kafka = thread._ensure_consumer()
        return await consumer_lag(kafka.end_offsets, kafka.position, partitions)

    try:
        async with asyncio.timeout(timeout_s):
            answer: dict[tuple[str, int], int] | None = await thread.call_thread(look, tps)
            return answer
    except Exception:  # noqa: BLE001 - any client error: unknown, so not ready
        return None
