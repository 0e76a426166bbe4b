"""The clock (`gx clock`): the only process that reads the wall clock for the engines.

Every `clock_interval_ms` it writes `ClockTick(ts_ns=now)` to every shard's commands partition, so
order expiry, listing and gate closure enter the engine through the log and replay exactly
(ARCHITECTURE 5: the engine never reads a clock). Ticks are scheduled on the monotonic clock
without drift; a tick that comes late (a stalled process) is sent once, never caught up in a
burst. Two clocks running at once are harmless: the engine's time only moves forward.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from aiokafka import AIOKafkaProducer
from prometheus_client.core import Metric

from schemas.codec import encode
from schemas.commands import ClockTick
from streams.metrics import counter
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["Clock"]

log = logging.getLogger("gx.clock")


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
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None

    def metrics(self) -> Iterator[Metric]:
        yield counter("gx_clock_ticks", "clock-tick commands sent (one per shard)", self.ticks)

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
                await self.tick()
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
        self.ticks += len(futures)
        log.debug("tick ts_ns=%d shards=%d", ts_ns, len(futures))
        return ts_ns
