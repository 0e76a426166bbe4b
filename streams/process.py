"""Running a stream process in the foreground: signals, exit status, counters."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, Protocol

import msgspec

__all__ = ["Process", "serve"]


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
    try:
        import uvloop
    except ImportError:  # the design card installs it; tolerate its absence
        return asyncio.run(_serve(process, name, fatal, stats))
    return uvloop.run(_serve(process, name, fatal, stats))


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
