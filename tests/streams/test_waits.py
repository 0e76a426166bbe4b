"""`streams.waits.watch` names what a process waits for once, then says when it resumed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams import waits
from streams.metrics import Health

DB = "127.0.0.1:5432/gx"


def _looks() -> list[Health]:
    up = {("gx.events", 0): 0}
    return [
        Health(ready=True, lag=up, database=True, database_at=DB),
        Health(ready=False, lag=up, database=False, database_at=DB),  # PostgreSQL gone
        Health(ready=False, lag=None, database=False, database_at=DB),  # and the broker
        Health(ready=False, lag=None, database=False, database_at=DB),  # still: no new line
        Health(ready=False, lag={("gx.events", 0): 900}, database=True, database_at=DB),  # behind
        Health(ready=True, lag=up, database=True, database_at=DB),  # caught up: resumed
        Health(ready=True, lag=up, database=True, database_at=DB),
    ]


def test_a_lost_database_and_broker_are_named_once_and_resumed_once_caught_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(waits, "watch_interval_s", 0.0)
    looks = iter(_looks())
    done = asyncio.Event()

    async def health() -> Health:
        try:
            return next(looks)
        except StopIteration:
            done.set()
            await asyncio.sleep(3600)
            raise

    async def scenario() -> None:
        task = asyncio.create_task(waits.watch(health, logging.getLogger("gx.t"), "b:9092"))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()

    with caplog.at_level(logging.INFO, logger="gx.t"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    starts = [
        f"waiting for PostgreSQL at {DB}: SELECT 1 did not answer",
        "waiting for the Kafka broker at b:9092: its end offsets did not come in time",
        f"PostgreSQL at {DB} answers again",
        "the Kafka broker at b:9092 answers again",
        "resumed: ready again",
    ]
    assert len(lines) == len(starts), lines
    assert all(line.startswith(s) for line, s in zip(lines, starts, strict=True)), lines
    assert "check that PostgreSQL runs" in lines[0] and "GX_KAFKA_BOOTSTRAP" in lines[1]
