"""`gx bench writes`: what one socket write to a loopback TCP connection costs on this machine.

The floor under the feed benchmark (exchange/bench/feed.py): a WebSocket fan-out writes once per
connection per pass, so a pass to N subscribers costs at least N socket writes whatever the
gateway does in Python. This command connects N reading clients (a child process, as the feed
benchmark's subscribers are) to a uvloop server and times passes that write `--size` bytes to
every connection, with `--interval-ms` between passes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

import uvloop

from exchange.bench.report import add_benchmark, print_report, require_positive

__all__ = ["register", "run", "bench_writes"]

CONNECTIONS_DEFAULT = 1000
SIZE_DEFAULT = 2000  # bytes per write: about ten feed pushes
PASSES_DEFAULT = 200
INTERVAL_MS_DEFAULT = 20.0


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `writes` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "writes",
        "the cost of one socket write per connection (the floor of a fan-out)",
        __doc__,
    )
    p.add_argument("--connections", type=int, default=CONNECTIONS_DEFAULT)
    p.add_argument("--size", type=int, default=SIZE_DEFAULT, help="bytes per write")
    p.add_argument("--passes", type=int, default=PASSES_DEFAULT)
    p.add_argument("--interval-ms", type=float, default=INTERVAL_MS_DEFAULT)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the write benchmark and print its figures."""
    require_positive(args, "connections", "size", "passes")
    report = bench_writes(args.connections, args.size, args.passes, args.interval_ms)
    print_report(report, args.json)
    return 0


def bench_writes(connections: int, size: int, passes: int, interval_ms: float) -> dict[str, Any]:
    """Time `passes` write passes over `connections` loopback connections; return the figures."""
    return uvloop.run(_server(connections, size, passes, interval_ms / 1000))


class _Server(asyncio.Protocol):
    def __init__(self, transports: list[Any], connected: asyncio.Event, wanted: int) -> None:
        self.transports, self.connected, self.wanted = transports, connected, wanted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transports.append(transport)
        if len(self.transports) == self.wanted:
            self.connected.set()


async def _server(connections: int, size: int, passes: int, interval_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transports: list[Any] = []
    connected = asyncio.Event()
    server = await loop.create_server(
        lambda: _Server(transports, connected, connections), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    context = multiprocessing.get_context("spawn")
    clients = context.Process(target=_clients, args=(port, connections), daemon=True)
    clients.start()
    try:
        await asyncio.wait_for(connected.wait(), timeout=60)
        data = b"x" * size
        durations: list[float] = []
        for _ in range(passes):
            start = time.perf_counter()
            for transport in transports:
                transport.write(data)
            durations.append(time.perf_counter() - start)
            await asyncio.sleep(interval_s)
    finally:
        clients.kill()
        clients.join()
        server.close()
    durations.sort()

    def at(q: float) -> float:
        return durations[min(len(durations) - 1, int(q * len(durations)))]

    return {
        "connections": connections,
        "bytes_per_write": size,
        "passes": passes,
        "pass_p50_ms": round(at(0.5) * 1e3, 4),
        "pass_p90_ms": round(at(0.9) * 1e3, 4),
        "write_p50_us": round(at(0.5) / connections * 1e6, 2),
        "writes_per_s_one_core": round(connections / at(0.5)),
    }


class _Reader(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


def _clients(port: int, connections: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(connections):
            await loop.create_connection(_Reader, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())
