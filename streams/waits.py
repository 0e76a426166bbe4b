"""Saying what a process waits for: the broker or PostgreSQL gone, and when it has resumed.

Every stream process that offers `health()` (streams/metrics.py) is watched by `watch` while it
runs: each `watch_interval_s` it looks at its health afresh, and when a resource stops answering
(the broker's end offsets or, for the clock, which only writes, the acknowledgement of its
ticks; PostgreSQL's `SELECT 1`) it logs one WARNING line naming that
resource and where it is, then one `resumed:` line once the resource answers again and the
process is ready (caught up). The clients (aiokafka, asyncpg) retry by themselves; without these
lines an operator would see a process that has gone quiet and not know why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from streams.metrics import Health, database_check_timeout_s, lag_check_timeout_s

__all__ = ["watch", "watch_interval_s"]

watch_interval_s = 1.0


def _lost(health: Health) -> dict[str, str]:
    """The resources that did not answer this look: name -> why."""
    lost = {}
    if health.lag is None:
        lost["broker"] = health.broker_silent or (
            f"its end offsets did not come in time ({lag_check_timeout_s:.0f} s or more)"
        )
    if health.database is False:
        lost["database"] = f"SELECT 1 did not answer within {database_check_timeout_s:.0f} s"
    return lost


async def watch(
    health: Callable[[], Awaitable[Health]], log: logging.Logger, broker_at: str
) -> None:
    """Log what the process waits for, and when it resumed, until cancelled."""
    advice = {
        "broker": "check that the broker runs and GX_KAFKA_BOOTSTRAP reaches it",
        "database": "check that PostgreSQL runs and GX_DATABASE_URL reaches it",
    }
    waiting: dict[str, float] = {}  # resource -> when it stopped answering
    outage_started: float | None = None  # the first of the current outage's resources
    while True:
        await asyncio.sleep(watch_interval_s)
        try:
            look = await health()
        except Exception:  # noqa: BLE001 - a health check that fails says nothing of resources
            continue
        now = time.monotonic()
        lost = _lost(look)
        names = {
            "broker": f"the Kafka broker at {broker_at}",
            "database": f"PostgreSQL at {look.database_at}",
        }
        for name, why in lost.items():
            if name not in waiting:
                waiting[name] = now
                outage_started = now if outage_started is None else outage_started
                log.warning(
                    "waiting for %s: %s; the process retries by itself: %s",
                    names[name],
                    why,
                    advice[name],
                )
        for name in [n for n in waiting if n not in lost]:
            log.info("%s answers again after %.1f s", names[name], now - waiting.pop(name))
        if outage_started is not None and not waiting and look.ready:
            log.warning("resumed: ready again %.1f s after the outage began", now - outage_started)
            outage_started = None
