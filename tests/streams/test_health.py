"""The health server of a stream process: readiness from the process's own event, counters as
Prometheus samples (streams/health.py), over a real socket."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from streams.health import HealthServer, metric_fields


class _Inner(msgspec.Struct):
    lag: int = 7


class _Stats(msgspec.Struct):
    commands: int = 3
    name: str = "not a number"
    caught_up: bool = True
    inner: _Inner = msgspec.field(default_factory=_Inner)


def test_numeric_fields_become_samples_and_nested_ones_are_joined():
    assert metric_fields(_Stats()) == {"commands": 3, "caught_up": 1, "inner_lag": 7}
    assert metric_fields({"a-b": 1.5, "c": "x"}) == {"a_b": 1.5}
    assert metric_fields(None) == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_ready_follows_the_process_and_alive_ends_with_its_task():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        task: asyncio.Future[None] = loop.create_future()  # the process's run, still going
        ready = asyncio.Event()
        port = _free_port()
        server = HealthServer(
            "engine", task, stats=_Stats, ready=ready.is_set, host="127.0.0.1", port=port
        )
        await server.start()
        base = f"http://127.0.0.1:{port}"

        async def get(path: str) -> tuple[int, bytes]:
            return await asyncio.to_thread(_get, base + path)

        try:
            assert await get("/healthz") == (200, b'{"alive":true}')
            assert await get("/readyz") == (503, b'{"ready":false}')
            ready.set()
            assert await get("/readyz") == (200, b'{"ready":true}')
            status, body = await get("/metrics")
            samples = {
                s.name: s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples
            }
            assert status == 200
            assert samples["gx_engine_up"] == 1 and samples["gx_engine_ready"] == 1
            assert samples["gx_engine_commands"] == 3 and samples["gx_engine_inner_lag"] == 7
            task.set_result(None)  # the process ended: not alive, not ready
            assert await get("/healthz") == (503, b'{"alive":false}')
            assert await get("/readyz") == (503, b'{"ready":false}')
        finally:
            await server.stop()

    asyncio.run(scenario())
