"""A stream process serves /healthz, /readyz and /metrics when GX_HEALTH_PORT is set.

`gx marketdata` runs as its own process against the embedded broker, as in production; the test
scrapes it with the Prometheus client's own parser while it reads a trade."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.admin import create_topics
from streams.embedded.broker import EmbeddedBroker
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
START_WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.timeout(120)
def test_a_stream_process_serves_health_and_its_counters_as_prometheus_metrics(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap_servers)
    asyncio.run(create_topics(settings, broker))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GX_HEALTH_PORT": str(port)}
    args = [sys.executable, "-m", "exchange.cli.gx", "marketdata", "--mock-broker",
            "--bootstrap", broker.bootstrap_servers]  # fmt: skip
    log_path = tmp_path / "marketdata.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_WAIT_S
        while True:
            try:
                status, body = _get(base + "/healthz")
                break
            except OSError:
                assert child.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no /healthz: " + log_path.read_text()
                time.sleep(0.1)
        assert (status, body) == (200, '{"alive":true}')
        assert _get(base + "/readyz") == (200, '{"ready":true}')
        assert _get(base + "/nothing")[0] == 404
        status, text = _get(base + "/metrics")
        assert status == 200
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples["gx_marketdata_up"] == 1 and samples["gx_marketdata_ready"] == 1
        counters = [name for name in samples if name.startswith("gx_marketdata_")]
        assert len(counters) > 2, samples  # the process's own counters, not only up and ready
        assert samples["gx_marketdata_events_total"] == 0  # typed: a counter
        assert samples["gx_consumer_lag_records"] == 0  # caught up with the (empty) events log
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0, log_path.read_text()
        with pytest.raises(OSError):  # the server stopped with the process
            _get(base + "/healthz")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
