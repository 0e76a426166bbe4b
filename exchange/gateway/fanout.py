"""How pushes reach the sockets: one queue per connection, write passes, frames, the fan-out.

A push body is encoded once for all subscribers; the fan-out appends it (without its leading
`{`) to the queue of every subscribed connection, a list append per subscriber. The queues of all
connections are written in write passes (`Flusher`), paced by what the last pass cost, one
socket write per connection per pass; `frame_pushes` splices each connection's `conn_seq` in
front of the shared bodies as the frames are built. The connection itself (requests, answers,
subscriptions) is exchange/gateway/ws.py.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["Flusher", "Frames", "Queued", "fan_out", "flusher", "frame_pushes", "text_frame"]

# The flusher's pacing (see Flusher): after a write pass that took D seconds, the next starts
# no sooner than flush_gap_ratio * D later, within [flush_gap_min_s, flush_gap_max_s].
flush_gap_ratio = 1.25  # write passes use at most 45% of the loop
flush_gap_min_s = 0.002
flush_gap_max_s = 0.050


class Queued(Protocol):
    """A connection as the fan-out and the write passes see it."""

    # its gateway: a push that finds `send_queue_pushes_max` frames waiting stops its
    # subscription; no frame of any kind is queued past `send_queue_max`
    gw: Any
    queue: deque[bytes | tuple[bytes]]  # pushes as bodies without `{`, answers as (body,)
    closed: bool

    def overflow(self, key: Any) -> None:
        """Stop the subscription `key` (the client reads too slowly) with `resync_required`."""

    def flush(self) -> None:
        """Write what is queued (a write pass calls this)."""


def fan_out(key: Any, body: bytes, subscribers: Iterable[Queued]) -> None:
    """Queue one push for every subscriber of a public stream.

    This loop runs once per push per subscriber (1,000 subscribers at 200 pushes a second each:
    200,000 times a second), so it is a list append and a length check per subscriber, with
    no call per subscriber; a subscriber whose queue is full is stopped (`overflow`), which
    removes it from `subscribers`, hence the copy.
    """
    tail = body[1:]
    passes = flusher()
    dirty = passes.dirty
    before = len(dirty)
    for connection in tuple(subscribers):
        if connection.closed:
            continue
        queue = connection.queue
        if len(queue) >= connection.gw.send_queue_pushes_max:
            connection.overflow(key)
            continue
        queue.append(tail)
        if len(queue) == 1:  # else the flusher has it already, or its resume task will
            dirty.append(connection)
    if len(dirty) > before:
        passes.schedule()


def text_frame(body: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 5.2), as a server sends it."""
    size = len(body)
    if size < 126:
        return bytes((0x81, size)) + body
    if size < 65_536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + body
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + body


_CONN_SEQ_SIZE = len(b'{"conn_seq":,')  # the spliced prefix without its digits


def frame_pushes(pushes: list[bytes], conn_seq: int, parts: list[bytes]) -> int:
    """Append the text frames of pushes numbered from `conn_seq` + 1 to `parts`; return the last.

    A push is kept as its body without the leading `{` (shared by every subscriber), so a
    frame is a header with `{"conn_seq":N,` (one bytes format) and that shared tail: the bytes
    of `text_frame(with_conn_seq(body, N))` without copying the body (a test compares them).
    This is the inner loop of every fan-out: it runs once per push per subscriber.
    """
    digits = len(str(conn_seq + 1))
    next_digit_at = 10**digits
    for tail in pushes:
        conn_seq += 1
        if conn_seq == next_digit_at:
            digits += 1
            next_digit_at *= 10
        size = _CONN_SEQ_SIZE + digits + len(tail)
        if size < 126:
            parts.append(b'\x81%c{"conn_seq":%d,' % (size, conn_seq))
        elif size < 65_536:
            parts.append(b'\x81~%c%c{"conn_seq":%d,' % (size >> 8, size & 0xFF, conn_seq))
        else:
            parts.append(b"\x81\x7f" + size.to_bytes(8, "big") + b'{"conn_seq":%d,' % conn_seq)
        parts.append(tail)
    return conn_seq


class Frames:
    """Send text frames; a batch goes out in one socket write when the server allows it.

    A socket write (a system call) per push was half of the gateway's time with many
    subscribers, and framing each push in Python a sixth. With uvicorn's sans-I/O WebSocket
    protocol (the ASGI `send` is its bound method), a batch is framed here (a server's text frame
    is a two-to-ten-byte header) and written to its transport at once, respecting its flow
    control (`writable`) and its state; with an extension negotiated the protocol frames them.
    With any other server this falls back to one ASGI send per frame.
    """

    def __init__(self, send: Any) -> None:
        self._send = send
        protocol = getattr(send, "__self__", None)
        usable = type(protocol).__name__ == "WebSocketsSansIOProtocol" and all(
            hasattr(protocol, name)
            for name in ("conn", "transport", "writable", "disconnected", "close_sent")
        )
        self._protocol = protocol if usable else None
        self.batched = usable  # batches go out in one write
        self.raw = False  # frames built by the caller go out as they are (set at accept)

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})
        protocol = self._protocol
        self.raw = protocol is not None and not protocol.conn.extensions

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def shut(self, code: int, reason: str, wait_s: float) -> None:
        """Close with `code`; cut the connection off if the close cannot go out within `wait_s`.

        The close frame goes out behind what the transport holds, once the client reads enough
        of it; a client that reads nothing would keep its socket, and its buffers, for good.
        """
        try:
            async with asyncio.timeout(wait_s):
                await self.close(code, reason)
        except Exception:  # TimeoutError, or the client has gone meanwhile
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, buffers and all (the server's transport, if it has one)."""
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()

    def writable(self) -> bool:
        """Tell whether a batch can be written now (batched, not paused, not closing)."""
        protocol = self._protocol
        return (
            protocol is not None
            and protocol.writable.is_set()
            and not (protocol.disconnected or protocol.close_sent)
            and not protocol.transport.is_closing()
        )

    async def until_writable(self) -> None:
        """Wait until the transport takes data again (after the client read its backlog)."""
        if self._protocol is not None:
            await self._protocol.writable.wait()

    async def send(self, bodies: list[bytes]) -> None:
        """Send each body as one text frame, in order (one ASGI send each when not batched)."""
        if self._protocol is None:
            for body in bodies:
                await self._send({"type": "websocket.send", "text": body.decode()})
            return
        await self._protocol.writable.wait()
        self.write_now(bodies)

    def write_now(self, bodies: list[bytes]) -> None:
        """Write a batch at once; only when `writable()`."""
        protocol = self._protocol
        assert protocol is not None
        self._check_open(protocol)
        if protocol.conn.extensions:  # frames would need transforming: let the protocol do it
            for body in bodies:
                protocol.conn.send_text(body)
            protocol.transport.write(b"".join(protocol.conn.data_to_send()))
            return
        protocol.transport.write(b"".join([text_frame(body) for body in bodies]))

    def write_frames(self, frames: list[bytes]) -> None:
        """Write frames built by the caller in one socket write; only when `writable()` and `raw`."""
        transport = self._protocol.transport  # type: ignore[union-attr]
        if transport.is_closing():
            raise ConnectionError("the client has gone")
        transport.write(b"".join(frames))

    @staticmethod
    def _check_open(protocol: Any) -> None:
        if protocol.disconnected or protocol.close_sent or protocol.transport.is_closing():
            raise ConnectionError("the client has gone")


class Flusher:
    """Write every connection's queued frames in one pass, paced by the cost of the last pass.

    A fan-out of one update to 1,000 subscribers queues 1,000 pushes; a writer task per
    connection would then wake 1,000 times per update. Instead the connections with something
    queued are written in one pass, after the code that queued. A socket write (a system call,
    about 10 us on loopback) per connection is most of a pass's cost, so a wide fan-out must put
    many frames in each write: after a pass of D seconds the next waits `flush_gap_ratio` * D
    (the loop keeps more than half its time for reading the log and serving requests). A pass to
    ten subscribers takes a fraction of a millisecond, so a narrow fan-out goes out almost at
    once, and one to a thousand waits tens of milliseconds, its writes several frames each.
    (Fixed 20 and 40 ms gaps were measured first: `gx bench feed` in exchange/bench/feed.py.)
    """

    def __init__(self) -> None:
        self.dirty: list[Queued] = []
        self.scheduled = False
        self.next_s = 0.0  # time.monotonic() before which the next pass does not start
        self._body = b""  # the push body a fan-out is queueing, and its tail (see tail_of)
        self._tail = b""
        # since the loop started: passes, connections written, seconds spent writing
        self.passes = 0
        self.written = 0
        self.busy_s = 0.0

    def tail_of(self, body: bytes) -> bytes:
        """Return a push body without its leading `{`, sliced once per fan-out, not per subscriber."""
        if body is not self._body:
            self._body, self._tail = body, body[1:]
        return self._tail

    def mark(self, connection: Queued) -> None:
        """Have the connection written in the next pass (marked twice, it is written once)."""
        self.dirty.append(connection)
        self.schedule()

    def schedule(self) -> None:
        """Have the next pass run (once) as soon as the pacing allows."""
        if self.scheduled:
            return
        self.scheduled = True
        loop = asyncio.get_running_loop()
        delay = self.next_s - time.monotonic()
        if delay > 0:
            loop.call_later(delay, self.flush)
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        start_s = time.monotonic()
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            connection.flush()
        end_s = time.monotonic()
        busy_s = end_s - start_s
        self.passes += 1
        self.written += len(dirty)
        self.busy_s += busy_s
        self.next_s = end_s + min(max(busy_s * flush_gap_ratio, flush_gap_min_s), flush_gap_max_s)


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher] = (
    weakref.WeakKeyDictionary()
)


def flusher() -> Flusher:
    """The write passes of the running loop (one per loop: every connection of a gateway)."""
    loop = asyncio.get_running_loop()
    found = _flushers.get(loop)
    if found is None:
        found = _flushers[loop] = Flusher()
    return found
