"""The client process of `gx bench orders`: WebSocket orders and the broker floor, phase by phase.

`python -m exchange.bench.orders_clients SPEC_PATH OUT_PATH` reads an `OrdersSpec`, opens one
logged-on connection per key and the floor's producers and consumers, prints `ready`, then
runs one phase per line on stdin, printing `done` after each:
- `orders RATE`: `order.place` requests, RATE a second for `duration_s`, open loop (each sent
  when due, whatever is still unanswered), spread over the connections in turn; each timed
  from the frame's send to its answer;
- `floor RATE`: the same rate of records through two produce-to-fetch hops on the same broker:
  produced to the first topic (the gateway's producer settings), read by a consumer polling
  with the stages' fetch wait, produced again to the second topic (the engine's producer
  settings), read by a second such consumer; each timed from the first send to the second read.
  That is the path of a command and its events (gateway -> gx.commands -> engine -> gx.events
  -> gateway) without the exchange's own work;
- `quit`: write every phase's samples to OUT_PATH as JSON and exit.

The connections speak RFC 6455 by hand (exchange/bench/flood_clients.py), so the client costs
little next to what it measures.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from typing import Any

import msgspec
import orjson
import uvloop
from aiokafka import AIOKafkaProducer, TopicPartition

from exchange.bench.flood_clients import Counts, Socket, connect, logon_params
from exchange.gateway.hub import linger_ms as gateway_linger_ms
from streams.consumers import log_consumer
from streams.engine_runner import linger_ms as engine_linger_ms

__all__ = ["OrdersSpec", "main"]

tick_s = 0.001  # how often a phase sends what is due
drain_s = 2.0  # after a phase's last send, how long its answers may still come


class OrdersSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the client process does (written by exchange/bench/orders.py)."""

    host: str
    port: int
    symbol: str
    keys: list[tuple[str, str]]  # (key, secret): one connection each
    bootstrap: str
    fetch_wait_ms: int
    hop_topics: tuple[str, str]
    duration_s: float
    check_crcs: bool = False  # the embedded broker's records carry CRC 0 in markers


class _Phases:
    """Every phase's round trips (ns) and what went wrong, by phase label (`orders@100`)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[list[int]]] = collections.defaultdict(list)
        self.errors: collections.Counter[str] = collections.Counter()


async def _paced(rate: int, duration_s: float, send: Any) -> None:
    """Call `send(n)` for n = 0, 1, ... at `rate` a second for `duration_s` (open loop)."""
    t0 = time.monotonic()
    total = int(rate * duration_s)
    sent = 0
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - t0)) + 1)
        while sent < due:
            send(sent)
            sent += 1
        await asyncio.sleep(tick_s)


class _Orders:
    def __init__(self, spec: OrdersSpec) -> None:
        self.spec = spec
        self.counts = Counts()
        self.sockets: list[Socket] = []
        self.request_id = 0
        self.place = {"symbol": spec.symbol, "side": "buy", "type": "limit", "price": "1.000",
                      "qty": "1", "tif": "ioc"}  # fmt: skip

    async def start(self) -> None:
        for i, (key, secret) in enumerate(self.spec.keys):
            client = await connect(self.spec.host, self.spec.port, "127.0.0.1", self.counts)
            self.request_id += 1
            answer = await client.request(
                self.request_id, "session.logon", logon_params(key, secret)
            )
            if answer.get("status") != 200:
                raise RuntimeError(f"connection {i} logon: expected status 200, found {answer}")
            self.sockets.append(client)

    async def phase(self, rate: int, phases: _Phases) -> list[int]:
        round_trips: list[int] = []
        pending: set[asyncio.Task[None]] = set()

        async def one(client: Socket, request_id: int) -> None:
            sent_ns = time.perf_counter_ns()
            try:
                answer = await client.request(request_id, "order.place", self.place)
            except (TimeoutError, ConnectionError) as error:
                phases.errors[type(error).__name__] += 1
                return
            if answer.get("error") is not None:
                phases.errors[str(answer["error"].get("code"))] += 1
                return
            round_trips.append(time.perf_counter_ns() - sent_ns)

        def send(n: int) -> None:
            self.request_id += 1
            task = asyncio.create_task(one(self.sockets[n % len(self.sockets)], self.request_id))
            pending.add(task)
            task.add_done_callback(pending.discard)

        await _paced(rate, self.spec.duration_s, send)
        if pending:
            await asyncio.wait(pending, timeout=drain_s + 10.0)
        return round_trips

    def close(self) -> None:
        for client in self.sockets:
            if client.transport is not None:
                client.transport.close()


class _Floor:
    """Two produce-to-fetch hops; the relay between them is this process's own consumer."""

    def __init__(self, spec: OrdersSpec) -> None:
        self.spec = spec
        first, second = spec.hop_topics
        self.first, self.second = first, second
        self.producer = AIOKafkaProducer(
            bootstrap_servers=spec.bootstrap, acks="all", enable_idempotence=True,
            linger_ms=gateway_linger_ms,
        )  # fmt: skip
        self.relay_producer = AIOKafkaProducer(
            bootstrap_servers=spec.bootstrap, acks="all", enable_idempotence=True,
            linger_ms=engine_linger_ms,
        )  # fmt: skip
        self.relay = log_consumer(
            spec.bootstrap, check_crcs=spec.check_crcs, fetch_wait_ms=spec.fetch_wait_ms,
            auto_offset_reset="latest",
        )  # fmt: skip
        self.reader = log_consumer(
            spec.bootstrap, check_crcs=spec.check_crcs, fetch_wait_ms=spec.fetch_wait_ms,
            auto_offset_reset="latest",
        )  # fmt: skip
        self.sent: dict[int, int] = {}  # record number -> its send time (ns), until read
        self.numbered = 0
        self.arrived: list[int] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.producer.start()
        await self.relay_producer.start()
        for consumer, topic in ((self.relay, self.first), (self.reader, self.second)):
            await consumer.start()
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_end(partition)
        self.tasks = [asyncio.create_task(self._relay()), asyncio.create_task(self._read())]

    async def _relay(self) -> None:
        while True:
            batches = await self.relay.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    await self.relay_producer.send(self.second, record.value, partition=0)

    async def _read(self) -> None:
        while True:
            batches = await self.reader.getmany(timeout_ms=1000)
            now = time.perf_counter_ns()
            for records in batches.values():
                for record in records:
                    n = int(record.value)
                    sent_ns = self.sent.pop(n, None)
                    if sent_ns is not None:
                        self.arrived.append(now - sent_ns)

    async def phase(self, rate: int, phases: _Phases) -> list[int]:
        self.arrived = []

        def send(_: int) -> None:
            self.numbered += 1
            self.sent[self.numbered] = time.perf_counter_ns()
            asyncio.ensure_future(
                self.producer.send(self.first, str(self.numbered).encode(), partition=0)
            )

        await _paced(rate, self.spec.duration_s, send)
        deadline = time.monotonic() + drain_s + 10.0
        while self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        phases.errors["floor_lost"] += len(self.sent)
        self.sent.clear()
        return self.arrived

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for closing in (self.relay, self.reader, self.producer, self.relay_producer):
            await closing.stop()


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _run(spec: OrdersSpec, out_path: str) -> None:
    orders, floor, phases = _Orders(spec), _Floor(spec), _Phases()
    await orders.start()
    await floor.start()
    stdin = await _lines()
    print("ready", flush=True)
    while line := await stdin.readline():
        words = line.decode().split()
        if words == ["quit"]:
            break
        kind, rate = words[0], int(words[1])
        runner = orders if kind == "orders" else floor
        phases.samples[f"{kind}@{rate}"].append(await runner.phase(rate, phases))
        print("done", flush=True)
    orders.close()
    await floor.stop()
    result: dict[str, Any] = {"samples": phases.samples, "errors": dict(phases.errors)}
    with open(out_path, "wb") as file:  # not stdout: see exchange/bench/feed.py, _child_result
        file.write(orjson.dumps(result))


def main(argv: list[str]) -> None:
    """Run the client (arguments: SPEC_PATH OUT_PATH)."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m exchange.bench.orders_clients SPEC_PATH OUT_PATH")
    with open(argv[0], "rb") as file:
        spec = msgspec.json.decode(file.read(), type=OrdersSpec)
    uvloop.run(_run(spec, argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
