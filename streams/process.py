"""Running a stream process in the foreground: signals, exit status, counters."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import msgspec

__all__ = ["GC_THRESHOLDS", "Process", "lower_priority", "run_loop", "serve", "tune_gc"]

# Allocations before a young collection, then the ratios of middle and full collections. Python's
# (700, 10, 10) runs a full collection of every tracked object every 70,000 allocations: tens of
# milliseconds once a process holds books, histories and projections, often enough to be the p99
# of command -> feed latency (`gx bench feed --subscribers 10`: p99 148 ms with the defaults, 40 ms
# with these; 38 ms with no collection at all).
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
    process: Process, name: str, fatal: tuple[type[BaseException], ...] = (), stats: Any = None
) -> int:
    """Run `process` until it stops or SIGINT/SIGTERM arrives; print its counters on exit.

    Returns 0, or 3 after one of the `fatal` errors (printed as `gx NAME: error`).
    """
    return run_loop(_serve(process, name, fatal, stats))


async def _serve(
    process: Process, name: str, fatal: tuple[type[BaseException], ...], stats: Any
) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, process.stop)
    try:
        await process.run()
    except fatal as error:
        print(f"gx {name}: {error}", file=sys.stderr)
        return 3
    if stats is not None:
        print(msgspec.json.encode(stats() if callable(stats) else stats).decode(), file=sys.stderr)
    return 0
