"""Health and Prometheus metrics of a stream process, served over HTTP when GX_HEALTH_PORT is set.

- `GET /healthz`: 200 while the process runs (its task has not ended);
- `GET /readyz`: 200 while the process says it is ready (`ready()` when it has one, else while
  it runs), 503 otherwise;
- `GET /metrics`: the process's typed metrics (`metrics()`, streams/metrics.py), its lag and
  database from `health()`, and the other numeric fields of its counters (the struct it prints
  on exit) as untyped samples named `gx_<process>_<field>`.

With `health` (an async function returning `streams.metrics.Health`) /readyz and every scrape
ask it afresh: lag against the log's end, a `SELECT 1`.

uvicorn serves it on the process's own event loop, and `prometheus-client` writes the format;
the figures are read from the counters at each scrape, so the process's hot path pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import msgspec
import orjson
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from streams.metrics import Health, health_families

__all__ = ["HealthServer", "metric_fields"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_fields(stats: Any) -> dict[str, float]:
    """The numeric fields of a counters struct (or dict), nested ones joined by `_`."""
    if isinstance(stats, msgspec.Struct):
        stats = msgspec.structs.asdict(stats)
    if not isinstance(stats, dict):
        return {}
    fields: dict[str, float] = {}
    for name, value in stats.items():
        key = _NAME.sub("_", str(name))
        if isinstance(value, bool):
            fields[key] = int(value)
        elif isinstance(value, int | float):
            fields[key] = value
        elif isinstance(value, msgspec.Struct | dict):
            for inner, number in metric_fields(value).items():
                fields[f"{key}_{inner}"] = number
    return fields


class _Counters(Collector):
    def __init__(
        self,
        name: str,
        stats: Callable[[], Any] | None,
        server: HealthServer,
        metrics: Callable[[], Iterable[Metric]] | None,
    ) -> None:
        self._prefix = f"gx_{_NAME.sub('_', name)}"
        self._stats = stats
        self._server = server
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{self._prefix}_up", "1 while the process runs", value=int(self._server.alive())
        )
        yield GaugeMetricFamily(
            f"{self._prefix}_ready", "1 while the process is ready", value=int(self._server.ok())
        )
        yield from health_families(self._server.last_health)
        typed = list(self._metrics()) if self._metrics is not None else []
        yield from typed
        if self._stats is None:
            return
        # The counters struct does not say which fields only grow: untyped, as Prometheus allows,
        # except where the process exports the field typed (one family per name).
        names = {family.name for family in typed}
        for field, value in metric_fields(self._stats()).items():
            name = f"{self._prefix}_{field}"
            if name not in names:
                yield UnknownMetricFamily(name, f"{field} (counters)", value=value)


class HealthServer:
    """The health and metrics endpoints of one process (`start`, then `stop`)."""

    def __init__(
        self,
        name: str,
        task: asyncio.Future[Any],
        *,
        stats: Callable[[], Any] | None = None,
        ready: Callable[[], bool] | None = None,
        health: Callable[[], Awaitable[Health]] | None = None,
        metrics: Callable[[], Iterable[Metric]] | None = None,
        host: str = "0.0.0.0",
        port: int,
    ) -> None:
        self._task = task
        self._ready = ready
        self._health = health
        self.last_health: Health | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Counters(name, stats, self, metrics))
        config = uvicorn.Config(
            self._app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # uvicorn's records go through the process's logging (JSON or text)
            lifespan="off",
            ws="none",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._serving: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return not self._task.done()

    def ok(self) -> bool:
        if self._health is not None:
            return self.alive() and self.last_health is not None and self.last_health.ready
        return self.alive() and (self._ready is None or bool(self._ready()))

    async def look(self) -> None:
        """Ask the process's `health()` afresh (lag, database) for /readyz and /metrics."""
        if self._health is not None and self.alive():
            self.last_health = await self._health()

    async def start(self) -> None:
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():  # the port was taken: say so as the process starts
                self._serving.result()
                raise OSError("the health server did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path in ("/metrics", "/readyz"):
            await self.look()
        if path == "/metrics":
            status, body, kind = 200, bytes(generate_latest(self.registry)), CONTENT_TYPE
        elif path == "/healthz":
            alive = self.alive()
            status, body, kind = (200 if alive else 503), orjson.dumps({"alive": alive}), b"application/json"  # fmt: skip
        elif path == "/readyz":
            ready = self.ok()
            status, body, kind = (200 if ready else 503), orjson.dumps({"ready": ready}), b"application/json"  # fmt: skip
        else:
            status, body, kind = 404, orjson.dumps({"error": "not found"}), b"application/json"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
