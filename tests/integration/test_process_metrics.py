"""Each stream process's metrics move under real traffic, and /readyz follows lag and database.

`gx settle` and `gx engine` run as their own processes against the embedded broker and the
session's PostgreSQL, with GX_LOG_FORMAT=json (every stderr line must parse as JSON):

- settle: records that are no events become dead letters (the counter equals the rows in
  dead_letters); with consumer_positions locked by the test, the writer cannot commit, so it
  falls behind: lag > 0 and /readyz 503, then 200 once the lock goes; with new connections to
  its database refused (`ALLOW_CONNECTIONS false`; its own connection lives on) /readyz is 503
  while the writer still runs, then 200 again;
- engine: commands in, events out, the step histogram counts the steps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.admin import create_topics
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import EmbeddedPostgres
from streams.settings import Settings
from streams.topics import topics
from tests.integration.test_process_health import _free_port, _get

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(base + "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), float("nan"))


def wait_for(what: str, condition: Callable[[], bool], log: Path) -> None:
    """Poll `condition`; a request that times out (the engine's first step compiles its
    kernels and holds the loop meanwhile) counts as not yet."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"never: {what}\n{log.read_text()}"
        time.sleep(0.1)


@contextmanager
def gx(args: list[str], log: Path, **env: str) -> Iterator[str]:
    """Run `gx ARGS` with its health server; yield its base URL; stop it with SIGTERM."""
    port = _free_port()
    environ = {**os.environ, "PYTHONPATH": str(REPO), "GX_HEALTH_PORT": str(port),
               "GX_LOG_FORMAT": "json", "GX_LOG_LEVEL": "INFO", **env}  # fmt: skip
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "exchange.cli.gx", *args], cwd=REPO,
                                 env=environ, stdout=out, stderr=out)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def serving() -> bool:
            assert child.poll() is None, log.read_text()
            return _get(base + "/healthz")[0] == 200

        wait_for("/healthz answers", serving, log)
        yield base
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = log.read_text().splitlines()
    assert lines, "the process wrote nothing"
    for line in lines:  # GX_LOG_FORMAT=json: every line one JSON object
        record = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= record.keys(), line


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for v in values:
                await producer.send_and_wait(topic, v, partition=0)
        finally:
            await producer.stop()

    asyncio.run(send())


def sql(dsn: str, statement: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.mark.timeout(120)
def test_settle_metrics_and_readiness_follow_lag_and_database(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    asyncio.run(create_topics(settings, broker))
    events = topics(settings)["events"].name
    database = dsn.rsplit("/", 1)[1]
    log = tmp_path / "settle.log"
    args = ["settle", "--bootstrap", broker.bootstrap_servers, "--dsn", dsn]
    with gx(args, log, GX_READY_LAG_RECORDS_MAX="0") as base:
        wait_for("ready on an empty log", lambda: _get(base + "/readyz")[0] == 200, log)
        lag = {"name": "gx_consumer_lag_records", "topic": events, "partition": "0"}

        produce(broker.bootstrap_servers, events, [b"not an event"] * 3)
        wait_for("3 dead letters", lambda: value(scrape(base), "gx_settle_dead_letters_total") == 3, log)  # fmt: skip
        assert sql(dsn, "SELECT count(*) FROM dead_letters") == 3
        samples = scrape(base)
        assert value(samples, lag.pop("name"), **lag) == 0
        assert value(samples, "gx_database_up") == 1
        assert value(samples, "gx_settle_transaction_seconds_count") >= 1
        assert value(samples, "gx_settle_behind_seconds") == 0

        # Behind: the test holds the lock the writer's commit needs.
        async def behind() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE consumer_positions IN ACCESS EXCLUSIVE MODE")
                    await asyncio.to_thread(produce, broker.bootstrap_servers, events, [b"x"] * 5)
                    await asyncio.to_thread(
                        wait_for, "503 while behind",
                        lambda: _get(base + "/readyz") == (503, '{"ready":false}'), log,
                    )  # fmt: skip
                    samples = await asyncio.to_thread(scrape, base)
                    assert value(samples, "gx_consumer_lag_records", topic=events, partition="0") == 5  # fmt: skip
                    assert value(samples, "gx_database_up") == 1  # behind, not unreachable
            finally:
                await conn.close()

        asyncio.run(behind())
        wait_for("ready once caught up", lambda: _get(base + "/readyz")[0] == 200, log)
        assert value(scrape(base), "gx_settle_dead_letters_total") == 8

        # Unreachable: no new connection to its database (the writer's own one lives on).
        sql(postgres.dsn, f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        try:
            wait_for("503 while the database refuses", lambda: _get(base + "/readyz")[0] == 503, log)  # fmt: skip
            assert value(scrape(base), "gx_database_up") == 0
        finally:
            sql(postgres.dsn, f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        wait_for("ready again", lambda: _get(base + "/readyz")[0] == 200, log)
    assert any(json.loads(line)["level"] == "WARNING" for line in log.read_text().splitlines())


@pytest.mark.timeout(120)
def test_engine_counts_commands_events_and_steps(broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    asyncio.run(create_topics(settings, broker))
    log = tmp_path / "engine.log"
    args = ["engine", "--shard", "0", "--mock-broker", "--no-snapshots",
            "--bootstrap", broker.bootstrap_servers]  # fmt: skip
    with gx(args, log) as base:
        wait_for("ready after recovery", lambda: _get(base + "/readyz")[0] == 200, log)
        before = scrape(base)
        assert value(before, "gx_engine_commands_total") == 0
        # Records that are no commands: each is refused with an event (MALFORMED).
        produce(broker.bootstrap_servers, topics(settings)["commands"].name, [b"?"] * 4)
        wait_for("4 commands", lambda: value(scrape(base), "gx_engine_commands_total") == 4, log)
        samples = scrape(base)
        assert value(samples, "gx_engine_events_total") == 4
        assert value(samples, "gx_engine_malformed_total") == 4
        assert value(samples, "gx_engine_step_seconds_count") >= 1
        assert value(samples, "gx_consumer_lag_records", topic="gx.commands", partition="0") == 0


@pytest.mark.timeout(120)
def test_provision_reports_lag_of_both_topics_it_reads(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    asyncio.run(create_topics(settings, broker))
    names = topics(settings)
    log = tmp_path / "provision.log"
    args = ["provision", "--mock-broker", "--bootstrap", broker.bootstrap_servers]
    with gx(args, log, GX_READY_LAG_RECORDS_MAX="0") as base:
        wait_for("ready once assigned and caught up", lambda: _get(base + "/readyz")[0] == 200, log)
        produce(broker.bootstrap_servers, names["provisioning"].name, [b"not a reply"])
        wait_for("the record read", lambda: value(scrape(base), "gx_provision_malformed") == 1, log)
        samples = scrape(base)
        for topic in (names["events"].name, names["provisioning"].name):
            assert value(samples, "gx_consumer_lag_records", topic=topic, partition="0") == 0
        assert value(samples, "gx_provision_events_total") == 0
