"""The clients of `gx bench flood`: each flood, and the well-behaved probe, in a process of its own.

`python -m exchange.bench.flood_clients ROLE SPEC_PATH OUT_PATH` reads a JSON spec (`FloodSpec`)
and runs one ROLE:
- `key`: connections logged on with one key, sending `rate` requests/s between them (order.place,
  order.place, order.status, ping, in turn) whatever the answers;
- `spread`: the same with more connections, from several source addresses (`ips`);
- `logons`: sockets that never log on: each sends `session.logon`s naming a random key at its
  share of `rate`, and connects again when the gateway closes it;
- `probe`: the well-behaved client: one connection of its own key placing one order at a time,
  `rate` a second, timing each place -> answer.

Each prints `ready` once connected (and logged on) and starts on a line `go` on stdin. A flood
runs `duration_s`; the probe runs its unloaded phase for `duration_s`, prints `phase`, waits for
the next `go` and runs its loaded phase. Then it writes one JSON object to OUT_PATH.

The clients speak RFC 6455 by hand (as exchange/bench/feed_clients.py does): a client library
parses every frame in Python and would measure itself. Frames go out with a zero mask key, so
a request's frame is built once and sent many times; the gateway unmasks it all the same.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import secrets
import sys
import time
from typing import Any

import msgspec
import orjson
import uvloop

from exchange.bench.ws_frames import text_frame, upgrade_request
from exchange.client import signing

__all__ = ["Counts", "FloodSpec", "Socket", "connect", "logon_params", "main"]

write_buffer_max = 65_536  # bytes a client lets wait in its socket; beyond, a send is held back
tick_s = 0.001  # how often a flood sends what is due
answer_wait_s = 10.0  # the probe's wait for one answer
close_none = "none"  # the socket ended without a close frame


class FloodSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one client process does (written by exchange/bench/flood.py)."""

    host: str
    port: int
    symbol: str
    connections: int
    rate: int  # requests per second, all connections together
    duration_s: float
    ips: list[str]  # source addresses, the connections spread over them in turn
    key: str = ""
    secret: str = ""


class Counts:
    """What a role saw: requests sent and held back, answers by code, closes by code."""

    def __init__(self, methods: dict[int, str] | None = None) -> None:
        self.methods = methods  # answers by `method:code` (request id -> method), else by code
        self.sent = 0
        self.held_back = 0  # due, but the socket's buffer was full (the gateway read too slowly)
        self.answers: collections.Counter[str] = collections.Counter()
        self.retry_after_missing = 0  # RATE_LIMITED answers without a retry_after_ms
        self.closes: collections.Counter[str] = collections.Counter()
        self.connects = 0
        self.upgrades_refused = 0

    def result(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "held_back": self.held_back,
            "answered": sum(self.answers.values()),
            "answers": dict(self.answers),
            "retry_after_missing": self.retry_after_missing,
            "closes": dict(self.closes),
            "connects": self.connects,
            "upgrades_refused": self.upgrades_refused,
        }


class Socket(asyncio.Protocol):
    """One client socket: the upgrade, frames in (answers counted), pings answered."""

    def __init__(self, host: str, counts: Counts) -> None:
        self.host = host
        self.counts = counts
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.buffer = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.close_code: str | None = None
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(upgrade_request(self.host))

    def writable(self) -> bool:
        """Tell whether a frame may go out now (open, and the socket's buffer has room)."""
        transport = self.transport
        return (
            self.upgraded
            and self.close_code is None
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() < write_buffer_max
        )

    def send(self, frame: bytes) -> None:
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.counts.upgrades_refused += 1
                self.transport.close()
                return
            del buffer[: end + 4]
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        at = self._frames(buffer)
        del buffer[:at]

    def _frames(self, data: bytearray) -> int:
        """Handle the whole frames in `data`; return the bytes used."""
        at, size_all = 0, len(data)
        while size_all - at >= 2:
            opcode, size, head = data[at] & 0x0F, data[at + 1] & 0x7F, 2
            if size == 126:
                if size_all - at < 4:
                    break
                size, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
            elif size == 127:
                if size_all - at < 10:
                    break
                size, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
            end = at + head + size
            if end > size_all:
                break
            payload = bytes(data[at + head : end])
            at = end
            if opcode == 0x1:
                self._text(payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._closed(str(code))
            elif opcode == 0x9:  # ping: pong with the same payload
                self.send(bytes((0x8A, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload)
        return at

    def _text(self, payload: bytes) -> None:
        if payload.startswith(b'{"conn_seq"'):
            return  # a push (heartbeats): not an answer
        message = orjson.loads(payload)
        error = message.get("error")
        code = "OK" if error is None else str(error.get("code"))
        methods = self.counts.methods
        if methods is not None:
            request_id = message.get("id")
            # id null: the refusal of the connection itself (too many from its address)
            method = "connect" if request_id is None else methods.get(request_id, "other")
            code = f"{method}:{code}"
        self.counts.answers[code] += 1
        if code == "RATE_LIMITED" and not error.get("retry_after_ms"):
            self.counts.retry_after_missing += 1
        waiter = self.waiting.pop(message.get("id"), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def _closed(self, code: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.counts.closes[code] += 1
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self._closed(close_none)
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the gateway closed the socket"))
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def request(self, request_id: int, method: str, params: Any) -> dict[str, Any]:
        """Send one request and wait for its answer."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = waiter
        body = {"id": request_id, "method": method, "params": params}
        self.send(text_frame(orjson.dumps(body)))
        async with asyncio.timeout(answer_wait_s):
            return await waiter


def _same(client: Socket) -> Socket:
    return client


async def connect(host: str, port: int, ip: str, counts: Counts) -> Socket:
    """Open a WebSocket to the gateway at host:port from source address `ip`."""
    client = Socket(f"{host}:{port}", counts)
    loop = asyncio.get_running_loop()
    await loop.create_connection(functools.partial(_same, client), host, port, local_addr=(ip, 0))
    counts.connects += 1
    await client.opened
    return client


async def _connect(spec: FloodSpec, ip: str, counts: Counts) -> Socket:
    return await connect(spec.host, spec.port, ip, counts)


def logon_params(key: str, secret: str) -> dict[str, Any]:
    """A signed `session.logon` of `key` (as the SDK signs it)."""
    return signing.logon_params(signing.Credentials(key, secret), "none")


def _random_logon() -> bytes:
    """A logon frame naming a key nobody issued (well formed: only the database can tell)."""
    params = logon_params("gx" + secrets.token_hex(12), secrets.token_hex(16))
    return text_frame(orjson.dumps({"id": 5, "method": "session.logon", "params": params}))


# The request ids of a flood's frames (built once, so every copy has the same id), by method;
# the answers are counted by method and code.
_METHODS = {1: "order.place", 2: "order.place", 3: "order.status", 4: "ping", 5: "session.logon"}


def _request_cycle(symbol: str) -> list[bytes]:
    """The frames a flooding key sends in turn: order entry and other requests."""
    place = {"symbol": symbol, "side": "buy", "type": "limit", "price": "1.000", "qty": "1",
             "tif": "ioc"}  # fmt: skip
    requests = [
        {"id": 1, "method": "order.place", "params": place},
        {"id": 2, "method": "order.place", "params": place},
        {"id": 3, "method": "order.status", "params": {"order_id": 1}},
        {"id": 4, "method": "ping", "params": {}},
    ]
    return [text_frame(orjson.dumps(r)) for r in requests]


async def _logged_on(spec: FloodSpec, counts: Counts) -> list[Socket]:
    """Connect and log on every connection of a keyed flood."""
    sockets = []
    for i in range(spec.connections):
        client = await _connect(spec, spec.ips[i % len(spec.ips)], counts)
        answer = await client.request(0, "session.logon", logon_params(spec.key, spec.secret))
        if answer.get("status") != 200:
            raise RuntimeError(f"flood logon {i}: expected status 200, found {answer}")
        sockets.append(client)
    counts.answers.clear()  # only the flood's own answers count
    return sockets


async def _flood_keyed(spec: FloodSpec, counts: Counts, started: asyncio.Event) -> None:
    sockets = await _logged_on(spec, counts)
    frames = _request_cycle(spec.symbol)
    _ready()
    await started.wait()
    t0 = time.monotonic()
    due_total = 0
    turn = 0
    while (elapsed := time.monotonic() - t0) < spec.duration_s:
        due = int(spec.rate * elapsed) - due_total
        due_total += due
        for _ in range(due):
            client = sockets[turn % len(sockets)]
            frame = frames[(turn // len(sockets)) % len(frames)]
            turn += 1
            if client.writable():
                client.send(frame)
                counts.sent += 1
            else:
                counts.held_back += 1
        await asyncio.sleep(tick_s)
    await asyncio.sleep(1.0)  # the last answers
    for client in sockets:
        client.transport.close()


async def _flood_logons(spec: FloodSpec, counts: Counts, started: asyncio.Event) -> None:
    sockets = [await _connect(spec, spec.ips[i % len(spec.ips)], counts)
               for i in range(spec.connections)]  # fmt: skip
    _ready()
    await started.wait()
    reconnects: set[asyncio.Task[Socket]] = set()
    t0 = time.monotonic()
    due_total = 0
    turn = 0
    while (elapsed := time.monotonic() - t0) < spec.duration_s:
        due = int(spec.rate * elapsed) - due_total
        due_total += due
        for _ in range(due):
            i = turn % len(sockets)
            turn += 1
            client = sockets[i]
            if client.closed.done():  # closed by the gateway: a new socket from the same address
                if not any(t.get_name() == str(i) for t in reconnects):
                    task = asyncio.create_task(_reconnect(spec, i, counts, sockets), name=str(i))
                    reconnects.add(task)
                    task.add_done_callback(reconnects.discard)
                counts.held_back += 1
            elif client.writable():
                client.send(_random_logon())
                counts.sent += 1
            else:
                counts.held_back += 1
        await asyncio.sleep(tick_s)
    await asyncio.sleep(1.0)
    for task in list(reconnects):
        task.cancel()
    for client in sockets:
        if client.transport is not None:
            client.transport.close()


async def _reconnect(spec: FloodSpec, i: int, counts: Counts, sockets: list[Socket]) -> Socket:
    try:
        sockets[i] = await _connect(spec, spec.ips[i % len(spec.ips)], counts)
    except (ConnectionError, OSError):
        await asyncio.sleep(0.05)  # refused before the upgrade: the next turn tries again
    return sockets[i]


async def _probe(spec: FloodSpec, counts: Counts, started: asyncio.Event) -> dict[str, Any]:
    client = await _connect(spec, spec.ips[0], counts)
    answer = await client.request(0, "session.logon", logon_params(spec.key, spec.secret))
    if answer.get("status") != 200:
        raise RuntimeError(f"probe logon: expected status 200, found {answer}")
    counts.answers.clear()
    place = {"symbol": spec.symbol, "side": "buy", "type": "limit", "price": "1.000",
             "qty": "1", "tif": "ioc"}  # fmt: skip
    request_id = 0
    phases: dict[str, list[int]] = {}
    unanswered = 0
    _ready()
    for phase in ("unloaded", "loaded"):
        await started.wait()
        started.clear()
        round_trips = phases[phase] = []
        t0 = time.monotonic()
        for n in range(int(spec.rate * spec.duration_s)):
            await asyncio.sleep(max(0.0, t0 + n / spec.rate - time.monotonic()))
            request_id += 1
            sent_ns = time.perf_counter_ns()
            try:
                answer = await client.request(request_id, "order.place", place)
            except (TimeoutError, ConnectionError):
                unanswered += 1
                continue
            round_trips.append(time.perf_counter_ns() - sent_ns)
            counts.sent += 1
        if phase == "unloaded":
            print("phase", flush=True)
    client.transport.close()
    return {"unloaded_ns": phases["unloaded"], "loaded_ns": phases["loaded"],
            "unanswered": unanswered}  # fmt: skip


def _ready() -> None:
    print("ready", flush=True)


async def _read_go(started: asyncio.Event) -> None:
    """Set `started` at every `go` line on stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"go":
            started.set()


async def _run(role: str, spec: FloodSpec, out_path: str) -> None:
    counts = Counts(None if role == "probe" else _METHODS)
    started = asyncio.Event()
    reader = asyncio.create_task(_read_go(started))
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    if role in ("key", "spread"):
        await _flood_keyed(spec, counts, started)
    elif role == "logons":
        await _flood_logons(spec, counts, started)
    elif role == "probe":
        result = await _probe(spec, counts, started)
    else:
        raise SystemExit(f"role: expected key, spread, logons or probe, found {role!r}")
    result.update(counts.result())
    result["connections"] = spec.connections
    result["run_s"] = round(time.monotonic() - t0, 3)
    reader.cancel()
    with open(out_path, "wb") as file:  # not stdout: see exchange/bench/feed.py, _child_result
        file.write(orjson.dumps(result))


def main(argv: list[str]) -> None:
    """Run one role (arguments: ROLE SPEC_PATH OUT_PATH)."""
    if len(argv) != 3:
        raise SystemExit("usage: python -m exchange.bench.flood_clients ROLE SPEC_PATH OUT_PATH")
    with open(argv[1], "rb") as file:
        spec = msgspec.json.decode(file.read(), type=FloodSpec)
    uvloop.run(_run(argv[0], spec, argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
