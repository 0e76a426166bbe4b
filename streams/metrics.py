"""What every stream process measures for Prometheus, and when it says it is ready.

A process may offer two things to its health server (streams/health.py):

- `metrics()`: typed metric families read from its counters at each scrape (`counter`,
  `histogram`), so its hot path pays only for what it counts anyway;
- `health()`: an awaitable `Health`, checked at each /readyz and each scrape: consumer lag per
  topic and partition (`consumer_lag`: the log end offset minus the read position, asked of the
  broker then, not a cached high-water mark) and, for a process that uses PostgreSQL, whether a
  `SELECT 1` answers (`database_reachable`). Ready = started, every partition within
  `Settings.ready_lag_records_max` of the log's end, and the database reachable.

The shared names: `gx_consumer_lag_records{topic,partition}` and `gx_database_up`; Prometheus
adds the job (the process) to each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import asyncpg
import msgspec
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streams import logs

__all__ = [
    "STEP_BUCKETS_S",
    "Health",
    "check_health",
    "consumer_lag",
    "counter",
    "database_reachable",
    "health_families",
    "step_histogram",
]

database_check_timeout_s = 2.0  # a `SELECT 1` slower than this: the database is unreachable
lag_check_timeout_s = 2.0  # the broker answers end offsets within this, or the lag is unknown
# Engine steps and settlement transactions: from a few commands to a full batch on a busy host.
STEP_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0, 2.5)  # fmt: skip


class Health(msgspec.Struct, kw_only=True):
    """One look at a process: ready, its lag per (topic, partition), its database."""

    ready: bool
    lag: dict[tuple[str, int], int] | None = None  # None: unknown (the broker did not answer)
    database: bool | None = None  # None: the process uses no database
    database_at: str | None = None  # host:port/database, for log lines
    # Why the broker counts as gone when `lag` is None for another reason than end offsets
    # that did not come (a producer-only process: its writes are not acknowledged).
    broker_silent: str | None = None

    def lag_total(self) -> int | None:
        return None if self.lag is None else sum(self.lag.values())


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter family `name` (its sample is `name_total`)."""
    return CounterMetricFamily(name, documentation, value=value)


def step_histogram(name: str, documentation: str) -> Histogram:
    """A histogram owned by one process object, yielded by its `metrics()` (no global registry)."""
    return Histogram(name, documentation, buckets=STEP_BUCKETS_S, registry=None)


async def database_reachable(dsn: str) -> bool:
    """Whether a new connection to `dsn` answers `SELECT 1` within `database_check_timeout_s`."""
    try:
        async with asyncio.timeout(database_check_timeout_s):
            conn = await asyncpg.connect(dsn)
            try:
                return bool(await conn.fetchval("SELECT 1") == 1)
            finally:
                await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


async def consumer_lag(
    end_offsets: Callable[[list[Any]], Awaitable[Mapping[Any, int]]],
    position: Callable[[Any], Awaitable[int | None]],
    partitions: Iterable[Any],
) -> dict[tuple[str, int], int] | None:
    """Log end offset minus read position per partition; None if the broker does not answer.

    `end_offsets` and `position` are the consumer's (aiokafka's, or faust's `highwaters`).
    """
    tps = list(partitions)
    try:
        async with asyncio.timeout(lag_check_timeout_s):
            ends = await end_offsets(tps) if tps else {}
            lag: dict[tuple[str, int], int] = {}
            for tp in tps:
                at = await position(tp)
                lag[(tp.topic, tp.partition)] = max(0, ends[tp] - (at or 0))
            return lag
    except (TimeoutError, Exception):  # any client error: unknown, so not ready
        return None


async def check_health(
    started: bool,
    lag: Awaitable[dict[tuple[str, int], int] | None] | None,
    dsn: str | None,
    lag_max: int,
) -> Health:
    """Ready = `started`, every partition's lag <= `lag_max`, and `dsn` (if any) reachable."""
    lags = await lag if lag is not None else {}
    database = None if dsn is None else await database_reachable(dsn)
    caught_up = lags is not None and all(v <= lag_max for v in lags.values())
    return Health(
        ready=started and caught_up and database is not False,
        lag=lags,
        database=database,
        database_at=None if dsn is None else logs.database_at(dsn),
    )


def health_families(health: Health | None) -> Iterable[Metric]:
    """`gx_consumer_lag_records{topic,partition}` and `gx_database_up` of the last look."""
    if health is None:
        return
    if health.lag:
        family = GaugeMetricFamily(
            "gx_consumer_lag_records",
            "records between the consumer's read position and the log's end",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(health.lag.items()):
            family.add_metric([topic, str(partition)], value)
        yield family
    if health.database is not None:
        yield GaugeMetricFamily(
            "gx_database_up", "1 while PostgreSQL answers SELECT 1", value=int(health.database)
        )
