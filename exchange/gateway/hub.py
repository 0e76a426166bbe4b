"""The gateway's Kafka side: one producer, three readers, command completion.

    gx.events       -> Accounts (private feeds, order state), Provisioning (settled deliveries),
                       Deliveries (each account's deliveries, the `deliveries` channel)
                    -> completes the commands this gateway sent (by their gx.commands offset)
    gx.marketdata   -> MarketFeed (books, trades, candles, index, curve)
    gx.provisioning -> Provisioning (outstanding requests per provider), Deliveries (access)
    commands        -> gx.commands (partition = shard), provider replies -> gx.provisioning

The hub feeds the projections it is given and hands the pushes they return to the
Subscriptions; request handlers read the projections and register subscribers themselves
(exchange/gateway/context.py), never through the hub.

Every gateway reads the three topics from their beginning, or from a snapshot of the projections
with the offsets it was taken at (exchange/gateway/snapshot.py; `GX_GATEWAY_SNAPSHOT_EVERY_EVENTS`),
so any number of them serve the same sequence numbers: they are stateless apart from what the
log rebuilds. A command's events are
complete at the end of the gx.events record that ends it (streams/event_records.py).

Until the projections have read every partition up to where it ended when the hub started
(`ready`), they hold a past state of the exchange: the gateway refuses private requests
meanwhile (exchange/gateway/context.py `require_ready`) and `GET /ready` fails. `behind()` says
how many offsets are left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from exchange.gateway.accounts import Accounts
from exchange.gateway.deliveries import Deliveries
from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.provisioning import Provisioning
from exchange.gateway.snapshot import GatewaySnapshots, SnapshotInvalid, capture, restore
from exchange.gateway.ssh_keys import SshKeyStore
from exchange.gateway.subscriptions import Subscriptions
from exchange.wire import ErrorCode, WireError
from schemas import commands as c
from schemas import events as e
from schemas.codec import DecodeError, encode
from schemas.marketdata import decode_message
from schemas.provisioning import (
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionMessage,
    ProvisionRequested,
    decode_provision,
    encode_provision,
    provider_key,
)
from streams.consumers import log_consumer, partitions_of
from streams.event_records import CommandEvents, CommandGrouper
from streams.metrics import consumer_lag
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["Hub", "HubStats", "NotSent", "RecentCommands", "command_timeout_s"]

log = logging.getLogger("gx.gateway")

poll_timeout_ms = 50
poll_records_max = 10_000
linger_ms = 1
command_timeout_s = 5.0  # a command the engine has not answered by then is reported TIMEOUT
# A command's events can arrive before the producer acknowledged its write (so before `submit`
# waits for them): they are kept for longer than any acknowledgement is waited for (aiokafka's
# request timeout, 40 s), and never more than `recent_commands_max` of them.
recent_commands_s = 60.0
recent_commands_max = 100_000
# A snapshot capture stops the loop: at most this share of it (in time since the last one).
snapshot_duty_max = 0.1


class RecentCommands:
    """The events of the commands completed in the last `window_s` seconds, by (shard, offset).

    Bounded by time, not only by count: a count alone fills with every command of the last
    hours under a steady load (and holds their events) although only the last seconds are asked.
    """

    def __init__(
        self,
        window_s: float = recent_commands_s,
        count_max: int = recent_commands_max,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s: expected > 0, found {window_s}")
        if count_max <= 0:
            raise ValueError(f"count_max: expected > 0, found {count_max}")
        self.window_s = window_s
        self.count_max = count_max
        self._clock = clock
        self._done: OrderedDict[tuple[int, int], tuple[float, list[e.Event]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._done)

    def add(self, key: tuple[int, int], events: list[e.Event]) -> None:
        """Keep a completed command's events; forget those older than the window."""
        now = self._clock()
        self._done[key] = (now, events)
        self._done.move_to_end(key)
        oldest = now - self.window_s
        while self._done:
            first = next(iter(self._done.values()))
            if first[0] >= oldest and len(self._done) <= self.count_max:
                break
            self._done.popitem(last=False)

    def get(self, key: tuple[int, int]) -> list[e.Event] | None:
        """The events of a command completed within the window, or None."""
        kept = self._done.get(key)
        return None if kept is None else kept[1]


class HubStats:
    """Counters of one gateway's readers (since it started)."""

    def __init__(self) -> None:
        self.records = 0  # records read, of the three topics (a start from a snapshot: the tail)
        self.events = 0
        self.marketdata = 0
        self.provisioning = 0
        self.malformed = 0
        self.failed = 0  # records a projection raised on: logged with their position, skipped
        self.commands_sent = 0


class _Reader:
    """One topic read by assignment from its beginning."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.partitions: list[TopicPartition] = []


class NotSent(WireError):
    """A command that certainly never reached Kafka (no producer, or the producer refused it).

    Only this failure lets a caller undo what it did for the command (a client order id's
    reservation): any later one may have been written, and the engine may still act on it.
    The answer says so with `"sent": false`.
    """

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(code, msg, sent=False)


def _holders(values: Iterable[bytes | None]) -> set[int]:
    """The holders of the provisioning requests among gx.provisioning record values."""
    holders = set()
    for value in values:
        with contextlib.suppress(DecodeError):
            message = decode_provision(value or b"")
            if isinstance(message, ProvisionRequested):
                holders.add(message.holder)
    return holders


class Hub:
    """Read the exchange's topics into the projections, send commands, await their events."""

    def __init__(
        self,
        settings: Settings,
        *,
        accounts: Accounts,
        feed: MarketFeed,
        provisioning: Provisioning,
        deliveries: Deliveries,
        subscriptions: Subscriptions,
        ssh_keys: SshKeyStore | None = None,
        mock_broker: bool = False,
        snapshots: GatewaySnapshots | None = None,
    ) -> None:
        settings.broker()  # refuses a missing broker, saying what to set
        self.settings = settings
        self.mock_broker = mock_broker
        names = topics(settings)
        self.commands_topic = names["commands"].name
        self.provisioning_topic = names["provisioning"].name
        self._accounts = accounts
        self._feed = feed
        self._provisioning = provisioning
        self._deliveries = deliveries
        self._subscriptions = subscriptions
        self._ssh_keys = ssh_keys
        # The projections and subscriptions the hub feeds; the handlers are given them too
        # (exchange/gateway/app.py), never reach them through the hub. The private routing is
        # read per event: the Subscriptions' own dict, not a copy.
        self._private = subscriptions.private
        self.stats = HubStats()
        self.ready = asyncio.Event()  # every partition read up to where it ended at start
        # Called with each gx.marketdata message as it is read, before its fan-out (benchmarks
        # time arrivals with it; a tap must be quick and must not raise).
        self.taps: list[Callable[[Any], None]] = []
        self._readers = {
            "events": _Reader(names["events"].name),
            "marketdata": _Reader(names["marketdata"].name),
            "provisioning": _Reader(self.provisioning_topic),
        }
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._commands = CommandGrouper()  # gx.events records -> whole commands
        self._done = RecentCommands()
        self._waiting: dict[tuple[int, int], asyncio.Future[list[e.Event]]] = {}
        # partition -> (end offset at start, position): the partitions not read that far yet
        self._behind: dict[TopicPartition, tuple[int, int]] = {}
        # Snapshots (exchange/gateway/snapshot.py): the next offset of every partition, as read
        # by the projections, and how many messages were applied since the last one was saved.
        self.snapshots = snapshots
        self.snapshot_every_events = settings.gateway_snapshot_every_events
        self._next: dict[TopicPartition, int] = {}
        self._since_snapshot = 0
        self._saving: asyncio.Task[None] | None = None  # the snapshot being written, if any
        self._captured_at = 0.0  # monotonic time the last capture ended
        self._capture_s = 0.0  # how long it took

    def projections(self) -> dict[str, object]:
        """The projections a snapshot holds, by name (a pure function of the log read)."""
        return {
            "accounts": self._accounts,
            "feed": self._feed,
            "provisioning": self._provisioning,
            "deliveries": self._deliveries,
            "commands": self._commands,
        }

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset of every partition the projections have read up to."""
        return self.positions_of(self._next)

    @staticmethod
    def positions_of(offsets: dict[TopicPartition, int]) -> dict[tuple[str, int], int]:
        """Offsets by (topic, partition) instead of TopicPartition."""
        return {(tp.topic, tp.partition): offset for tp, offset in offsets.items()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, assign every partition of the three topics, start reading."""
        bootstrap = self.settings.kafka_bootstrap
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms
        )
        await self._producer.start()
        # One consumer for the three topics: one fetch request a round covers them all (a consumer
        # per topic tripled the fetches, each built and parsed in Python on the fan-out's core).
        self._consumer = log_consumer(
            bootstrap,
            check_crcs=not self.mock_broker,
            fetch_wait_ms=self.settings.kafka_fetch_wait_ms,
        )
        await self._consumer.start()
        for reader in self._readers.values():
            reader.partitions = await self._partitions(reader.topic)
        everything = [tp for reader in self._readers.values() for tp in reader.partitions]
        self._consumer.assign(everything)
        ends = await self._end_offsets(self._consumer, everything)
        self._next = dict.fromkeys(everything, 0)
        if self.snapshots is not None:
            await self._load_snapshot(ends)
        for tp, offset in self._next.items():
            if offset:
                self._consumer.seek(tp, offset)
            else:  # the log's start, wherever retention has moved it
                await self._consumer.seek_to_beginning(tp)
        self._behind = {tp: (ends[tp], self._next[tp]) for tp in everything}
        await self._catch_up(self._consumer)
        self._tasks.append(asyncio.create_task(self._read(self._consumer)))

    async def stop(self) -> None:
        """Stop reading, finish background commands, close the clients."""
        for task in self._tasks:
            task.cancel()
        if self._saving is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._saving
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._background:
            await asyncio.wait(self._background, timeout=command_timeout_s)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        for future in self._waiting.values():
            if not future.done():
                future.cancel()

    async def _load_snapshot(self, ends: dict[TopicPartition, int]) -> None:
        """Start the projections from the newest snapshot that restores, or leave them empty.

        Each kept snapshot is tried newest first; one that does not restore (damaged, another
        format, ahead of this log) is refused with its reason and leaves the projections as they
        were, so the worst case is the full replay, never a state of some other log.
        """
        assert self.snapshots is not None
        tried = 0
        try:
            async for payload in self.snapshots.candidates():
                tried += 1
                try:
                    offsets = restore(payload, self.projections(), ends=self.positions_of(ends))
                except SnapshotInvalid as error:
                    log.warning("gateway snapshot refused: %s; trying an older one", error)
                    continue
                break
            else:
                if tried or self.snapshots.damaged:
                    log.warning("no gateway snapshot restores: replaying the whole log")
                return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("gateway snapshots not read (%s): replaying the whole log", error)
            return
        for tp in self._next:
            self._next[tp] = offsets.get((tp.topic, tp.partition), 0)
        self.snapshots.loaded_position = sum(self._next.values())
        log.info(
            "gateway started from a snapshot at position %d (%d records left to read)",
            self.snapshots.loaded_position, sum(ends.values()) - self.snapshots.loaded_position,
        )  # fmt: skip
        await self._load_holders_keys()

    async def _load_holders_keys(self) -> None:
        """Cache the SSH keys of the requests restored outstanding, as reading them would have."""
        if self._ssh_keys is None:
            return
        holders = {
            request.holder
            for requests in self._provisioning.outstanding.values()
            for request in requests.values()
        }
        try:
            await self._ssh_keys.of_accounts(holders)
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("reading holders' SSH keys: %s; pushing without", error)

    def _snapshot_due(self) -> bool:
        """Whether to capture now: enough applied, caught up, and the last capture paid for.

        Not before the hub is ready: a capture stops the loop (it must see one consistent
        state), and a start must not wait for it. Not while the last write is under way (a slow
        database delays snapshots, never the readers). And not before `snapshot_duty_max`
        of the time since the last capture has passed again: a large state takes long to
        capture, and the readers keep most of the loop.
        """
        if self.snapshots is None or not self.snapshot_every_events:
            return False
        if self._since_snapshot < self.snapshot_every_events or not self.ready.is_set():
            return False
        if self._saving is not None and not self._saving.done():
            return False
        elapsed_s = time.monotonic() - self._captured_at
        return self._capture_s <= snapshot_duty_max * elapsed_s

    def _save_snapshot(self) -> None:
        """Capture the projections now (between batches: consistent), write them in the background."""
        began = time.monotonic()
        self._since_snapshot = 0
        offsets = self.positions()
        payload = capture(self.projections(), offsets)
        self._captured_at = time.monotonic()
        self._capture_s = self._captured_at - began
        self._saving = asyncio.create_task(self._write_snapshot(payload, offsets))

    async def _write_snapshot(self, payload: bytes, offsets: dict[tuple[str, int], int]) -> None:
        assert self.snapshots is not None
        try:
            await self.snapshots.save(payload, offsets)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("gateway snapshot not saved: %s; the next one is tried later", error)

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        assert self._producer is not None
        return [TopicPartition(topic, p) for p in await partitions_of(self._producer, topic)]

    # ------------------------------------------------------------------ reading

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        names = {reader.topic: name for name, reader in self._readers.items()}
        while True:
            try:
                batches = await consumer.getmany(
                    timeout_ms=poll_timeout_ms, max_records=poll_records_max
                )
            except KafkaError as error:
                log.warning(
                    "reading the exchange's topics: %s; retrying: check that the brokers in "
                    "GX_KAFKA_BOOTSTRAP are up",
                    error,
                )
                await asyncio.sleep(0.5)
                continue
            applied = self._applied()
            for tp, records in batches.items():
                name = names[tp.topic]
                if name == "provisioning" and self._ssh_keys is not None:
                    # A request carries its holder's SSH keys: read them before it is pushed.
                    try:
                        await self._ssh_keys.of_accounts(_holders(r.value for r in records))
                    except (OSError, asyncpg.PostgresError) as error:
                        log.warning(
                            "reading holders' SSH keys: %s; pushing without: check PostgreSQL "
                            "(GX_DATABASE_URL)",
                            error,
                        )
                for record in records:
                    self._apply(name, tp.partition, record.offset, record.value, record.headers)
                if records:
                    self._next[tp] = records[-1].offset + 1
                    self.stats.records += len(records)
            self._since_snapshot += self._applied() - applied
            if self._snapshot_due():
                self._save_snapshot()
            if self._behind:
                await self._catch_up(consumer)

    def _applied(self) -> int:
        """Messages applied to the projections since start (what a snapshot saves replaying)."""
        stats = self.stats
        return stats.events + stats.marketdata + stats.provisioning

    @staticmethod
    async def _end_offsets(
        consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Where each partition ends now (its last stable offset: committed records only)."""
        return {tp: int(end) for tp, end in (await consumer.end_offsets(partitions)).items()}

    async def _catch_up(self, consumer: AIOKafkaConsumer) -> None:
        """Forget the partitions read up to their end at start; once none is left, be ready."""
        behind = {}
        for tp, (end, _) in self._behind.items():
            position = await consumer.position(tp)
            if position < end:
                behind[tp] = (end, position)
        self._behind = behind
        if not behind and not self.ready.is_set():
            log.info("caught up: every topic read to where it ended at start")
            self.ready.set()

    def lag(self) -> Awaitable[dict[tuple[str, int], int] | None] | None:
        """Each read partition's offsets left to its end (None once awaited: the broker did not
        answer); None before `start()`."""
        consumer = self._consumer
        if consumer is None:
            return None
        return consumer_lag(consumer.end_offsets, consumer.position, consumer.assignment())

    def behind(self) -> dict[str, int]:
        """Offsets left to read, by topic, before the hub is ready (empty once it is)."""
        left: dict[str, int] = {}
        for tp, (end, position) in self._behind.items():
            left[tp.topic] = left.get(tp.topic, 0) + end - position
        return left

    def _apply(
        self, name: str, partition: int, offset: int, value: bytes | None, headers: Any = ()
    ) -> None:
        try:
            if value is None:
                raise DecodeError("the record has no value")
            if name == "events":
                commands, errors = self._commands.feed(value, headers)
                for _, error in errors:  # a bad event spoils only itself
                    self._malformed(name, partition, offset, error)
                for command in commands:
                    self._on_command(command)
            elif name == "marketdata":
                self._on_marketdata(decode_message(value), partition, offset)
            else:
                self._on_provisioning(decode_provision(value))
        except DecodeError as error:
            self._malformed(name, partition, offset, error)
        except Exception:
            # A bug in one projection must not stop every reader of this gateway (the task
            # would end, and the gateway serve stale state with nothing said): name the record
            # so it can be read again from the log, count it, and go on with the next.
            self.stats.failed += 1
            log.exception(
                "record skipped, a projection failed on it (a bug): topic=%s partition=%d offset=%d; "
                "report it with this traceback; restarting the gateway re-reads the record",
                self._readers[name].topic, partition, offset,
            )  # fmt: skip

    def _malformed(self, name: str, partition: int, offset: int, error: Exception) -> None:
        self.stats.malformed += 1
        log.warning(
            "malformed record skipped: topic=%s partition=%d offset=%d: %s; check the process "
            "that produced it",
            self._readers[name].topic, partition, offset, error,
        )  # fmt: skip

    def _on_command(self, command: CommandEvents) -> None:
        self.stats.events += len(command.events)
        for event in command.events:
            for account, channel, body in self._accounts.apply(event):
                for subscriber in self._private.get(account, ()):
                    subscriber.push(channel, body)
            for account, channel, body in self._deliveries.apply(event):
                for subscriber in self._private.get(account, ()):
                    subscriber.push(channel, body)
            if isinstance(event, e.DeliverySettled):
                self._provisioning.settled(event.provider, event.obligation_id)
        self._resolve(command.shard, command.input_offset - 1)
        self._finish(command.shard, command.input_offset, command.events)

    def _on_marketdata(self, message: Any, partition: int, offset: int) -> None:
        self.stats.marketdata += 1
        for tap in self.taps:
            tap(message)
        self._subscriptions.publish(self._feed.apply(message, partition, offset))

    def _on_provisioning(self, message: ProvisionMessage) -> None:
        self.stats.provisioning += 1
        self._subscriptions.deliver(self._provisioning.apply(message))
        self._subscriptions.deliver(self._deliveries.apply_provision(message))

    # ------------------------------------------------------------------ command completion

    def _finish(self, shard: int, input_offset: int, events: list[e.Event]) -> None:
        key = (shard, input_offset)
        self._done.add(key, events)
        self._resolve(shard, input_offset)

    def _resolve(self, shard: int, up_to_offset: int) -> None:
        """Answer every waiting command of the shard up to an offset the engine has passed.

        A command that produced no event (a cancel-all with nothing open) ends when a later one
        shows up.
        """
        if not self._waiting:
            return
        for waiting_key in [k for k in self._waiting if k[0] == shard and k[1] <= up_to_offset]:
            future = self._waiting.pop(waiting_key)
            if not future.done():
                future.set_result(self._done.get(waiting_key) or [])

    async def submit(self, command: c.Command) -> list[e.Event]:
        """Send a command to its shard; return the events it caused, once all have arrived.

        Raises WireError(TIMEOUT) when the engine has not answered within command_timeout_s
        (the command may still take effect: ask `order.status`).
        """
        offset = await self.send_command(command)
        key = (command.shard, offset)
        if (done := self._done.get(key)) is not None:
            return done
        future: asyncio.Future[list[e.Event]] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            async with asyncio.timeout(command_timeout_s):
                return await future
        except TimeoutError:
            raise WireError(
                ErrorCode.TIMEOUT,
                f"the engine has not answered command offset {offset} within "
                f"{command_timeout_s:g} s; it may still take effect (ask order.status)",
            ) from None
        finally:
            self._waiting.pop(key, None)

    async def send_command(self, command: c.Command) -> int:
        """Produce a command to gx.commands; return its offset.

        Raises NotSent when the command certainly did not reach Kafka; WireError(UNAVAILABLE)
        when its write failed after the producer took it (it may still have been written).
        """
        if self._producer is None:
            raise NotSent(ErrorCode.UNAVAILABLE, "the gateway is not connected to Kafka")
        try:
            value = encode(command)
        except (OverflowError, TypeError, ValueError) as error:  # a gateway bug: fields unchecked
            message = f"gx.commands: the command does not encode ({error})"
            raise NotSent(ErrorCode.INTERNAL, message) from None
        try:
            future = await self._producer.send(
                self.commands_topic, value, key=shard_key(command.shard), partition=command.shard
            )
        except KafkaError as error:
            raise NotSent(
                ErrorCode.UNAVAILABLE, f"gx.commands: {error}; nothing was sent"
            ) from None
        try:
            metadata = await future
        except KafkaError as error:
            raise WireError(
                ErrorCode.UNAVAILABLE,
                f"gx.commands: {error}; the command may still have been written: ask order.status",
            ) from None
        self.stats.commands_sent += 1
        return int(metadata.offset)

    async def send_commands(self, commands: Sequence[c.Command]) -> list[int]:
        """Produce commands in one go (operators, benchmarks); return their offsets."""
        if self._producer is None:
            raise WireError(ErrorCode.UNAVAILABLE, "the gateway is not connected to Kafka")
        futures = [
            await self._producer.send(
                self.commands_topic, encode(cmd), key=shard_key(cmd.shard), partition=cmd.shard
            )
            for cmd in commands
        ]
        offsets = [int(meta.offset) for meta in await asyncio.gather(*futures)]
        self.stats.commands_sent += len(commands)
        return offsets

    def submit_later(self, command: c.Command) -> None:
        """Send a command from a connection that is going away (cancel-on-disconnect)."""
        task = asyncio.create_task(self._submit_quietly(command))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _submit_quietly(self, command: c.Command) -> None:
        try:
            await self.submit(command)
        except WireError as error:
            log.warning(
                "background %s refused: %s; the client's next request retries it",
                type(command).__name__,
                error.msg,
            )

    async def send_provision(self, message: ProvisionConfirmed | ProvisionFailed) -> None:
        """Produce a provider's reply to gx.provisioning (key = provider)."""
        if self._producer is None:
            raise WireError(ErrorCode.UNAVAILABLE, "the gateway is not connected to Kafka")
        try:
            future = await self._producer.send(
                self.provisioning_topic,
                encode_provision(message),
                key=provider_key(message.provider),
            )
            await future
        except KafkaError as error:
            raise WireError(ErrorCode.UNAVAILABLE, f"gx.provisioning: {error}") from None
