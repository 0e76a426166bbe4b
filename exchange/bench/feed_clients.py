"""The subscribers of `gx bench feed`: a process of light WebSocket clients (`--clients` mode).

`python -m exchange.bench.feed_clients URL SYMBOL SUBSCRIBERS RECORDED OUT_PATH` connects the
subscribers, subscribes each to the symbol's book (depth 10) and trades, prints `ready`, counts
every frame until its stdin closes, then writes one JSON object to OUT_PATH: connections,
messages, resyncs, receive time, and for the first RECORDED subscribers the receive time of
every trade print.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from typing import Any

import orjson
import uvloop

from exchange.bench.ws_frames import text_frame, upgrade_request

__all__ = ["main"]

connect_batch = 50  # subscribers connecting at once
PUSH_MARK = b'{"conn_seq":'  # how every push starts (exchange/gateway/fanout.py, frame_pushes)
RESYNC_MARK = b'"type":"resync_required"'


class _Subscriber(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) that counts frames and parses only what it records.

    The subscribers share the machine with the exchange; a full client library parses every
    frame in Python and would measure itself instead of the gateway. Recorded subscribers walk
    their frames and read the trade prints; the others only count pushes (`_count`).
    """

    def __init__(self, host: str, symbol: str, record: bool, counts: dict[str, Any]) -> None:
        self.host = host
        self.symbol = symbol
        self.record = record
        self.counts = counts
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.trade_ids: list[int] = []
        self.recv: list[int] = []
        self.book_updates = 0
        self.push_tail = b""  # the end of the last read (see _count)
        self.resync_tail = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(upgrade_request(self.host))

    def _send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(text_frame(orjson.dumps(message)))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if buffer or not self.upgraded:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                buffer += data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {data[:80]!r}")
            data = data[end + 4 :]
            self.upgraded = True
            self._send({"id": 1, "method": "subscribe", "params": {
                "channel": "book", "symbols": [self.symbol], "depth": 10}})  # fmt: skip
            self._send({"id": 2, "method": "subscribe", "params": {
                "channel": "trades", "symbols": [self.symbol]}})  # fmt: skip
            self.counts["connected"] += 1
        now = time.time_ns()
        if self.record:
            at = self._frames(data, now)
            if at < len(data):
                buffer += data[at:]
        else:
            at = self._count(data)
        if at:
            counts = self.counts
            if counts["first_ns"] == 0:
                counts["first_ns"] = now
            counts["last_ns"] = now

    def _count(self, data: bytes) -> int:
        """Count pushes and resyncs by their marks, without walking frames (one C scan each).

        Every push, and nothing else, starts `{"conn_seq":`; the tails kept from the last read
        (one byte shorter than each mark) find a mark split between two reads, never one twice.
        """
        pushes = self.push_tail + data
        resyncs = self.resync_tail + data
        self.counts["messages"] += pushes.count(PUSH_MARK)
        self.counts["resyncs"] += resyncs.count(RESYNC_MARK)
        self.push_tail = pushes[-(len(PUSH_MARK) - 1) :]
        self.resync_tail = resyncs[-(len(RESYNC_MARK) - 1) :]
        return len(data)

    def _frames(self, data: bytes, now: int) -> int:
        """Count (and when recording, read) the whole frames in `data`; return the bytes used."""
        at = 0
        size_all = len(data)
        messages = resyncs = 0
        while size_all - at >= 2:
            size = data[at + 1] & 0x7F
            head = 2
            if size == 126:
                if size_all - at < 4:
                    break
                size = int.from_bytes(data[at + 2 : at + 4], "big")
                head = 4
            elif size == 127:
                if size_all - at < 10:
                    break
                size = int.from_bytes(data[at + 2 : at + 10], "big")
                head = 10
            end = at + head + size
            if end > size_all:
                break
            messages += 1
            if data.find(b"resync_required", at + head, min(end, at + head + 80)) >= 0:
                resyncs += 1
            elif self.record:
                self._read(data[at + head : end], now)
            at = end
        self.counts["messages"] += messages
        self.counts["resyncs"] += resyncs
        return at

    def _read(self, payload: bytes, now: int) -> None:
        if not payload.startswith(b'{"conn_seq"'):
            return
        message = orjson.loads(payload)
        channel = message.get("channel")
        if channel == "trades" and message.get("type") == "update":
            for trade in message["trades"]:
                self.trade_ids.append(trade["trade_id"])
                self.recv.append(now)
        elif channel == "book" and message.get("type") == "update":
            self.book_updates += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _same(client: _Subscriber) -> _Subscriber:
    return client


async def _clients(url: str, symbol: str, subscribers: int, recorded: int, out_path: str) -> None:
    counts: dict[str, Any] = {
        "connected": 0, "messages": 0, "resyncs": 0, "first_ns": 0, "last_ns": 0,
    }  # fmt: skip
    host, port = url.removeprefix("ws://").removesuffix("/ws").split(":")
    loop = asyncio.get_running_loop()
    clients: list[_Subscriber] = []
    for start in range(0, subscribers, connect_batch):
        for i in range(start, min(start + connect_batch, subscribers)):
            client = _Subscriber(f"{host}:{port}", symbol, i < recorded, counts)
            await loop.create_connection(functools.partial(_same, client), host, int(port))
            clients.append(client)
        while counts["connected"] < len(clients):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # the snapshots
    counts["messages"] = 0
    counts["first_ns"] = 0
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    receive_s = (counts["last_ns"] - counts["first_ns"]) / 1e9
    out = {
        "connected": counts["connected"],
        "messages": counts["messages"],
        "resyncs": counts["resyncs"],
        "receive_s": receive_s,
        "recorded": [(cl.trade_ids, cl.recv, cl.book_updates) for cl in clients if cl.record],
    }
    with open(out_path, "wb") as file:  # not stdout: see exchange/bench/feed.py, _child_result
        file.write(orjson.dumps(out))


def main(argv: list[str]) -> None:
    """Run the subscribers (arguments: URL SYMBOL SUBSCRIBERS RECORDED OUT_PATH)."""
    if len(argv) != 5:
        raise SystemExit(
            "usage: python -m exchange.bench.feed_clients URL SYMBOL SUBSCRIBERS RECORDED OUT_PATH"
        )
    url, symbol, subscribers, recorded = argv[0], argv[1], int(argv[2]), int(argv[3])
    uvloop.run(_clients(url, symbol, subscribers, recorded, argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
