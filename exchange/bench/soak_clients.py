"""The subscribers of `gx bench soak`: a process of light WebSocket clients that check sequences.

`python -m exchange.bench.soak_clients WS_URL SYMBOLS SUBSCRIBERS OUT_PATH` connects the
subscribers (subscriber i on the i-th of the comma-separated SYMBOLS, round robin), subscribes
each to that symbol's book (depth 10) and trades, prints `ready`, reads every push until its
stdin closes, then writes one JSON object to OUT_PATH.

Every push is parsed and checked: its `conn_seq` must follow the connection's previous push by
one, a book update's `prev_seq` must be the book's last `seq` (from its snapshot on), and a
trades push's `prev_seq` the last trades push's `seq`. Each break counts one gap. The gateway
caps open connections per IP address, so the subscribers answer the server's pings (else it closes them)
and connect from several loopback
addresses (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127/8 to the loopback interface),
as subscribers on different machines would.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any

import orjson
import uvloop

from exchange.bench.ws_frames import text_frame, upgrade_request

__all__ = ["main", "subscribers_per_address"]

subscribers_per_address = 40  # below the gateway's default of 50 open connections per IP
connect_batch = 20  # subscribers connecting at once
connect_timeout_s = 60.0


class _Subscriber(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) that parses every push and checks its sequences."""

    def __init__(self, host: str, symbol: str, counts: dict[str, int]) -> None:
        self.host = host
        self.symbol = symbol
        self.counts = counts
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: Any = None
        self.conn_seq = 0
        self.book_seq: int | None = None
        self.trades_seq: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(upgrade_request(self.host))

    def _send(self, message: dict[str, Any]) -> None:
        self.transport.write(text_frame(orjson.dumps(message)))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {bytes(self.buffer[:80])!r}")
            del self.buffer[: end + 4]
            self.upgraded = True
            self._send({"id": 1, "method": "subscribe", "params": {
                "channel": "book", "symbols": [self.symbol], "depth": 10}})  # fmt: skip
            self._send({"id": 2, "method": "subscribe", "params": {
                "channel": "trades", "symbols": [self.symbol]}})  # fmt: skip
            self.counts["connected"] += 1
        data = bytes(self.buffer)
        at, size_all = 0, len(data)
        while size_all - at >= 2:
            size = data[at + 1] & 0x7F
            head = 2
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
            opcode = data[at] & 0x0F
            if opcode == 0x1:  # text; the server sends no fragments
                self._read(data[at + head : end])
            elif opcode == 0x9:  # the server's ping: unanswered, it closes the connection
                self._pong(data[at + head : end])
            at = end
        del self.buffer[:at]

    def _pong(self, payload: bytes) -> None:
        self.counts["pings"] += 1
        size = len(payload)  # a control frame's payload is at most 125 bytes
        self.transport.write(bytes((0x8A, 0x80 | size)) + b"\x00\x00\x00\x00" + payload)

    def _read(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        conn_seq = message.get("conn_seq")
        if conn_seq is None:  # an answer to a request, not a push
            return
        counts = self.counts
        counts["messages"] += 1
        if self.conn_seq and conn_seq != self.conn_seq + 1:
            counts["conn_seq_gaps"] += 1
        self.conn_seq = conn_seq
        channel, kind = message.get("channel"), message.get("type")
        if kind == "resync_required":
            counts["resyncs"] += 1
            self.book_seq = None
        elif channel == "book":
            if kind == "snapshot":
                self.book_seq = message["seq"]
            elif kind == "update":
                counts["book_updates"] += 1
                prev = message.get("prev_seq", message["seq"] - 1)
                if self.book_seq is not None and prev != self.book_seq:
                    counts["book_gaps"] += 1
                self.book_seq = message["seq"]
        elif channel == "trades" and "seq" in message:
            counts["trade_pushes"] += 1
            prev = message.get("prev_seq")
            if self.trades_seq is not None and prev is not None and prev != self.trades_seq:
                counts["trade_gaps"] += 1
            self.trades_seq = message["seq"]

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts["closed"] += 1


def _same(client: _Subscriber) -> _Subscriber:
    return client


async def _clients(url: str, symbols: list[str], subscribers: int, out_path: str) -> None:
    counts = dict.fromkeys(
        ("connected", "closed", "pings", "messages", "resyncs", "book_updates", "trade_pushes",
         "conn_seq_gaps", "book_gaps", "trade_gaps"),
        0,
    )  # fmt: skip
    host, port = url.removeprefix("ws://").removesuffix("/ws").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    clients: list[_Subscriber] = []
    async with asyncio.timeout(connect_timeout_s):
        for start in range(0, subscribers, connect_batch):
            for i in range(start, min(start + connect_batch, subscribers)):
                client = _Subscriber(f"{host}:{port}", symbols[i % len(symbols)], counts)
                source = f"127.0.0.{2 + i // subscribers_per_address}"
                await loop.create_connection(
                    functools.partial(_same, client), host, int(port), local_addr=(source, 0)
                )
                clients.append(client)
            while counts["connected"] < len(clients):
                await asyncio.sleep(0.01)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    closed_before_end = counts["closed"]
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    out = {**counts, "closed_before_end": closed_before_end}
    with open(out_path, "wb") as file:
        file.write(orjson.dumps(out))


def main(argv: list[str]) -> None:
    """Run the subscribers (arguments: WS_URL SYMBOLS SUBSCRIBERS OUT_PATH)."""
    if len(argv) != 4:
        raise SystemExit(
            "usage: python -m exchange.bench.soak_clients WS_URL SYMBOLS SUBSCRIBERS OUT_PATH"
        )
    uvloop.run(_clients(argv[0], argv[1].split(","), int(argv[2]), argv[3]))


if __name__ == "__main__":
    main(sys.argv[1:])
