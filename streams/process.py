"""Running a stream process in the foreground: signals, exit status, counters."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import msgspec

from streams import logs, waits
from streams.logs import say

__all__ = ["GC_THRESHOLDS", "Process", "lower_priority", "run_loop", "serve", "tune_gc"]

# Allocations before a young collection, then the ratios of middle and full collections. Python's
# (700, 10, 10) runs a full collection of every tracked object every 70,000 allocations: tens of
# milliseconds once a process holds books, histories and projections, often enough to be the p99
# of command -> feed latency (the README's benchmark table has the figures).
GC_THRESHOLDS = (100_000, 50, 1000)

_T = TypeVar("_T")


def tune_gc() -> None:
    """Collect cyclic garbage rarely: the exchange's processes make little of it."""
    gc.set_threshold(*GC_THRESHOLDS)


def lower_priority(steps: int) -> None:
    """Make this process `steps` nicer (0: leave it as it is).

    For throughput work (the settlement writer) that shares cores with the latency path (engine,
    market data, gateways): the scheduler then gives those a core first, and the nicer process
    uses what they leave, catching up with bigger batches.
    """
    if steps > 0:
        os.nice(steps)


def run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` as a `gx` process runs: uvloop, cyclic garbage collected rarely."""
    tune_gc()
    try:
        import uvloop
    except ImportError:  # the design card installs it; tolerate its absence
        return asyncio.run(main)
    return uvloop.run(main)


class Process(Protocol):
    """What every stream process offers: run until stopped, stop on request."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def serve(
    process: Process,
    name: str,
    fatal: tuple[type[BaseException], ...] = (),
    stats: Any = None,
    *,
    progress_s: float | None = None,
    health: tuple[str, int] | None = None,
    broker_at: str = "",
) -> int:
    """Run `process` until it stops or SIGINT/SIGTERM arrives; print its counters on exit.

    `stats` is the counters (or a function returning them); with `progress_s` they are also
    logged (INFO, logger `gx.NAME`) that often while the process runs. With `health` (host,
    port) it serves /healthz, /readyz and /metrics there (streams/health.py). A process with
    `health()` also says when it waits for the broker (at `broker_at`) or its database, and when
    it resumed (streams/waits.py). Returns 0, or 3 after one of the `fatal` errors (printed as
    `gx NAME: error`).
    """
    return run_loop(_serve(process, name, fatal, stats, progress_s, health, broker_at))


def _counters(stats: Any) -> Any:
    return stats() if callable(stats) else stats


async def _serve(
    process: Process,
    name: str,
    fatal: tuple[type[BaseException], ...],
    stats: Any,
    progress_s: float | None,
    health: tuple[str, int] | None = None,
    broker_at: str = "",
) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, process.stop)
    task = asyncio.ensure_future(process.run())
    log = logging.getLogger(f"gx.{name}")
    look = getattr(process, "health", None)
    watcher = None if look is None else asyncio.ensure_future(waits.watch(look, log, broker_at))
    server = None
    if health is not None:
        from streams.health import HealthServer  # only processes that serve it import uvicorn

        # A process says when it is ready with `ready`: an event (the engine runner's, set
        # once recovery is done) or a function; without one it is ready while it runs.
        ready = getattr(process, "ready", None)
        if isinstance(ready, asyncio.Event):
            ready = ready.is_set
        server = HealthServer(
            name,
            task,
            stats=None if stats is None else (lambda: _counters(stats)),
            ready=ready if callable(ready) else None,
            # `health()`: lag and database afresh; `metrics()`: typed families (streams/metrics.py)
            health=getattr(process, "health", None),
            metrics=getattr(process, "metrics", None),
            host=health[0],
            port=health[1],
        )
        await server.start()
    try:
        while not task.done():
            await asyncio.wait([task], timeout=progress_s)
            if progress_s is not None and stats is not None and not task.done():
                log.info("progress %s", _counters(stats))
        task.result()
    except fatal as error:
        say(name, f"{error}; the process stopped: fix the cause, then start it again")
        return 3
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if server is not None:
            await server.stop()
    if stats is not None:
        counters = msgspec.json.encode(_counters(stats)).decode()
        if logs.json_format():
            say(name, "stopped", level="INFO", counters=msgspec.json.decode(counters))
        else:
            print(counters, file=sys.stderr)
    return 0
