"""The clock keeps ticking through a broker outage, and says it waits for the broker."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams import waits
from streams.admin import create_topics
from streams.clock import Clock
from streams.embedded.broker import EmbeddedBroker
from streams.settings import Settings

from .conftest import run


@pytest.mark.timeout(90)
def test_the_clock_says_it_waits_for_a_broker_that_is_down_and_resumes_by_itself(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(waits, "watch_interval_s", 0.2)
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers, clock_interval_ms=50)
    log = logging.getLogger("gx.clock")

    async def until(check: object, what: str, timeout_s: float = 30.0) -> None:
        for _ in range(int(timeout_s / 0.1)):
            if check():  # type: ignore[operator]
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def said(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        await create_topics(settings, broker)
        clock = Clock(settings)
        ticking = asyncio.create_task(clock.run())
        watching = asyncio.create_task(waits.watch(clock.health, log, settings.broker()))
        try:
            await until(lambda: clock.ticks >= 3, "the first ticks")
            assert (await clock.health()).ready
            broker.broker_down(-1)
            try:
                await until(lambda: said("waiting for the Kafka broker"), "the waiting line")
                look = await clock.health()
                assert look.lag is None and look.broker_silent is not None, look
            finally:
                broker.broker_up(-1)
            sent = clock.ticks
            await until(lambda: said("resumed:"), "the resumed line", timeout_s=60)
            await until(lambda: clock.ticks > sent + 3, "ticks after the outage")
            assert not ticking.done()
        finally:
            clock.stop()
            watching.cancel()
            await asyncio.gather(ticking, watching, return_exceptions=True)

    with caplog.at_level(logging.INFO, logger="gx.clock"):
        run(scenario(), timeout_s=85)
    lines = [r.getMessage() for r in caplog.records if r.name == "gx.clock"]
    waiting = [line for line in lines if line.startswith("waiting for the Kafka broker")]
    assert len(waiting) == 1 and "no clock tick acknowledged" in waiting[0], lines
    assert "GX_KAFKA_BOOTSTRAP" in waiting[0]
