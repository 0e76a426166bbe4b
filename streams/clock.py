"""The clock (`gx clock`): the only process that reads the wall clock for the engines.

Every `clock_interval_ms` it writes `ClockTick(ts_ns=now)` to every shard's commands partition, so
order expiry, listing and gate closure enter the engine through the log and replay exactly
(ARCHITECTURE 5: the engine never reads a clock). Ticks are scheduled on the monotonic clock
without drift; a tick that comes late (a stalled process) is sent once, never caught up in a
burst. Two clocks running at once are harmless: the engine's time only moves forward.

A tick the broker does not acknowledge (it is down, or leaderless) is logged and dropped, not
fatal: the next interval sends a fresh one, and `health()` reports the broker gone once no tick
was acknowledged for `silent_after_s`, so the clock says what it waits for (streams/waits.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client.core import Metric

from schemas.codec import encode
from schemas.commands import ClockTick
from streams.metrics import Health, counter
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["Clock"]

log = logging.getLogger("gx.clock")

silent_after_s = 3.0  # no tick acknowledged for this long (and 3 intervals): the broker is gone


class Clock:
    """Send a ClockTick to every shard every `settings.clock_interval_ms`."""

    def __init__(self, settings: Settings) -> None:
        """Describe the clock; nothing connects until `run()`."""
        settings.broker()  # refuses a missing broker, saying what to set
        if settings.clock_interval_ms < 1:
            raise ValueError(
                f"clock_interval_ms: expected >= 1, found {settings.clock_interval_ms}"
            )
        self.settings = settings
        self.topic = topics(settings)["commands"].name
        self.ticks = 0  # ticks sent (one per shard per interval)
        self.undelivered = 0  # ticks the broker did not acknowledge (dropped)
        self._acknowledged_at: float | None = None  # monotonic time of the last acknowledged tick
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None

    def metrics(self) -> Iterator[Metric]:
        yield counter("gx_clock_ticks", "clock-tick commands sent (one per shard)", self.ticks)
        yield counter(
            "gx_clock_ticks_undelivered",
            "clock ticks the broker did not acknowledge",
            self.undelivered,
        )

    async def health(self) -> Health:
        """Ready while ticks are acknowledged; the broker is gone when none was for a while."""
        if self._producer is None or self._acknowledged_at is None:
            return Health(ready=False, lag={})  # starting: nothing to say of the broker yet
        silent_s = time.monotonic() - self._acknowledged_at
        if silent_s > max(silent_after_s, 3 * self.settings.clock_interval_ms / 1000):
            why = f"no clock tick acknowledged for {silent_s:.0f} s"
            return Health(ready=False, lag=None, broker_silent=why)
        return Health(ready=True, lag={})

    def stop(self) -> None:
        """Ask `run()` to return after the tick in progress."""
        self._stopping.set()

    async def run(self, ticks_max: int | None = None) -> None:
        """Tick until `stop()` (or `ticks_max` intervals, for tests and tools)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        self._producer = producer
        interval_s = self.settings.clock_interval_ms / 1000
        next_at = time.monotonic()
        intervals = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self.tick()
                except KafkaError as error:  # a fresh tick follows; health() tells the outage
                    self.undelivered += self.settings.shards
                    log.debug("tick not acknowledged (%s); the next one follows", error)
                intervals += 1
                if ticks_max is not None and intervals >= ticks_max:
                    return
                next_at += interval_s
                now = time.monotonic()
                if next_at < now:  # late: skip the missed ticks instead of bursting
                    next_at = now
                try:
                    await asyncio.wait_for(self._stopping.wait(), next_at - now)
                except TimeoutError:
                    pass
        finally:
            self._producer = None
            await producer.stop()

    async def tick(self) -> int:
        """Send one tick to every shard now and wait for delivery; return the time sent."""
        producer = self._producer
        assert producer is not None, "run() starts the producer"
        ts_ns = time.time_ns()
        futures = [
            await producer.send(
                self.topic,
                encode(ClockTick(ts_ns=ts_ns, shard=shard, ts_init=ts_ns)),
                key=shard_key(shard),
                partition=shard,
            )
            for shard in range(self.settings.shards)
        ]
        await asyncio.gather(*futures)
        self._acknowledged_at = time.monotonic()
        self.ticks += len(futures)
        log.debug("tick ts_ns=%d shards=%d", ts_ns, len(futures))
        return ts_ns
