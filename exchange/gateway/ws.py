"""The WebSocket endpoint `/ws`: one `Connection` per socket.

A connection reads requests one at a time (so a client's commands reach the engine in the order
it sent them) and writes through one bounded queue. The queues of all connections are written in
write passes (`_Flusher`), paced by what the last pass cost, one socket write per connection per
pass, numbering every push with `conn_seq` as it goes out. Push bodies come encoded once for all
subscribers; only `conn_seq` is spliced in per connection (`frame_pushes`). A subscription whose
pushes no longer fit the queue is stopped with a `resync_required` push: a slow client is told,
never silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections import deque
from typing import Any, cast

import msgspec
import orjson

from exchange.gateway.context import Gateway
from exchange.gateway.hub import provision_push
from exchange.gateway.market_feed import BOOK_DEPTHS, StreamKey
from exchange.gateway.orders import parse_params
from exchange.wire import ErrorCode, WireError
from schemas import commands as c

__all__ = [
    "Connection",
    "Frames",
    "frame_pushes",
    "serve_socket",
    "message_bytes_max",
    "heartbeat_interval_s",
    "dead_man_timeout_ms_max",
]

log = logging.getLogger("gx.gateway.ws")

message_bytes_max = 16_384  # a larger request is refused (PAYLOAD_TOO_LARGE); the socket stays
heartbeat_interval_s = 1.0
dead_man_timeout_ms_min = 100
dead_man_timeout_ms_max = 3_600_000
symbols_per_subscribe_max = 100
frames_per_write_max = 256  # frames a writer hands to the socket at once
# The flusher's pacing (see _Flusher): after a write pass that took D seconds, the next starts
# no sooner than flush_gap_ratio * D later, within [flush_gap_min_s, flush_gap_max_s].
flush_gap_ratio = 1.25  # write passes use at most 45% of the loop
flush_gap_min_s = 0.002
flush_gap_max_s = 0.050

PUBLIC_CHANNELS = frozenset({"book", "trades", "ticker", "candles", "index", "curve"})
PRIVATE_CHANNELS = {
    "executions": "read",
    "balances": "read",
    "positions": "read",
    "provisioning": "provide",
}
CANCEL_ON_DISCONNECT = ("none", "connection", "account")
CANDLE_INTERVALS = ("1m", "1h", "1d")

_ids = itertools.count(1)


class _Logon(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    key: str
    ts_ms: int | str
    nonce: str
    signature: str
    cancel_on_disconnect: str = "none"


class _Subscribe(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    channel: str
    symbols: list[str] = []
    depth: int = 10
    interval: str = "1m"
    resume_from_seq: int | None = None


class _DeadMan(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    timeout_ms: int


def _stream_name(key: Any) -> str:
    return ":".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


def _text_frame(body: bytes) -> bytes:
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
    of `_text_frame(with_conn_seq(body, N))` without copying the body (a test compares them).
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
        protocol.transport.write(b"".join([_text_frame(body) for body in bodies]))

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


class _Flusher:
    """Write every connection's queued frames in one pass, paced by the cost of the last pass.

    A fan-out of one update to 1,000 subscribers queues 1,000 pushes; a writer task per
    connection would then wake 1,000 times per update. Instead the connections with something
    queued are written in one pass, after the code that queued. A socket write (a system call,
    about 10 us on loopback) per connection is most of a pass's cost, so a wide fan-out must put
    many frames in each write: after a pass of D seconds the next waits `flush_gap_ratio` * D
    (the loop keeps more than half its time for reading the log and serving requests). A pass to
    ten subscribers takes a fraction of a millisecond, so a narrow fan-out goes out almost at
    once, and one to a thousand waits tens of milliseconds, its writes several frames each.
    (Fixed 20 and 40 ms gaps were measured first: `gx bench feed` in exchange/bench_feed.py.)
    """

    def __init__(self) -> None:
        self.dirty: list[Connection] = []
        self.scheduled = False
        self.next_s = 0.0  # time.monotonic() before which the next pass does not start
        self._body = b""  # the push body a fan-out is queueing, and its tail (see tail_of)
        self._tail = b""

    def tail_of(self, body: bytes) -> bytes:
        """Return a push body without its leading `{`, sliced once per fan-out, not per subscriber."""
        if body is not self._body:
            self._body, self._tail = body, body[1:]
        return self._tail

    def mark(self, connection: Connection) -> None:
        """Have the connection written in the next pass (marked twice, it is written once)."""
        self.dirty.append(connection)
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
        gap_s = min(max((end_s - start_s) * flush_gap_ratio, flush_gap_min_s), flush_gap_max_s)
        self.next_s = end_s + gap_s


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher()
    return flusher


class Connection:
    """One WebSocket client: requests in, answers and pushes out."""

    def __init__(self, gateway: Gateway, receive: Any, send: Any, ip: str) -> None:
        self.gw = gateway
        self.receive = receive
        self.frames = Frames(send)
        self.ip = ip
        self.id = next(_ids)
        self.conn_seq = 0
        self.account: int | None = None
        self.scopes: frozenset[str] = frozenset()
        self.key_id = ""
        self.cancel_on_disconnect = "none"
        self.public: set[StreamKey] = set()
        self.private: set[str] = set()
        self.placed: set[int] = set()  # order ids placed through this connection
        # A push as its body without the `{` (see frame_pushes), an answer as (body,).
        self._queue: deque[bytes | tuple[bytes]] = deque()
        self._answers = 0  # answers in the queue
        self._wakeup = asyncio.Event()
        self._resume_task: asyncio.Task[None] | None = None
        self._flusher = _flusher()
        self._closed = False
        self._dead_man: asyncio.TimerHandle | None = None
        # Pushes a subscribe queues after its answer: snapshot first, then the updates after it.
        self._after_answer: list[tuple[Any, bytes]] = []

    # ------------------------------------------------------------------ the socket

    async def serve(self) -> None:
        """Run the connection until the client goes away."""
        tasks = [asyncio.create_task(self._heartbeat())]
        if not self.frames.batched:
            tasks.append(asyncio.create_task(self._write()))
        try:
            while True:
                message = await self.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await self._handle(data)
        finally:
            self._closed = True
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._resume_task is not None:
                self._resume_task.cancel()
            self._detach()

    def _batch(self) -> list[bytes]:
        """Take up to frames_per_write_max queued bodies, pushes numbered with conn_seq."""
        queue = self._queue
        batch = []
        for _ in range(min(len(queue), frames_per_write_max)):
            item = queue.popleft()
            if isinstance(item, bytes):
                self.conn_seq += 1
                batch.append(b'{"conn_seq":%d,' % self.conn_seq + item)
            else:
                self._answers -= 1
                batch.append(item[0])
        return batch

    def _frames(self) -> list[bytes]:
        """Take up to frames_per_write_max queued bodies as ready frames (pushes numbered)."""
        queue = self._queue
        parts: list[bytes] = []
        if not self._answers and len(queue) <= frames_per_write_max:  # pushes only: at once
            self.conn_seq = frame_pushes(cast(list[bytes], list(queue)), self.conn_seq, parts)
            queue.clear()
            return parts
        pushes: list[bytes] = []
        for _ in range(min(len(queue), frames_per_write_max)):
            item = queue.popleft()
            if isinstance(item, bytes):
                pushes.append(item)
                continue
            self._answers -= 1
            if pushes:
                self.conn_seq = frame_pushes(pushes, self.conn_seq, parts)
                pushes = []
            parts.append(_text_frame(item[0]))
        if pushes:
            self.conn_seq = frame_pushes(pushes, self.conn_seq, parts)
        return parts

    def flush(self) -> None:
        """Write what is queued, now, if the socket takes it (the flusher calls this)."""
        queue = self._queue
        if self._closed or not queue:
            return
        frames = self.frames
        if not frames.batched:
            self._wakeup.set()
            return
        if not frames.writable():
            if self._resume_task is None:  # the client reads slowly: write when it catches up
                self._resume_task = asyncio.create_task(self._resume())
            return
        try:
            if frames.raw:
                while queue:
                    frames.write_frames(self._frames())
            else:
                while queue:
                    frames.write_now(self._batch())
        except ConnectionError:
            queue.clear()
            self._answers = 0

    async def _resume(self) -> None:
        await self.frames.until_writable()
        self._resume_task = None
        self._flusher.mark(self)

    async def _write(self) -> None:
        """The writer of a server whose frames cannot be batched: one ASGI send per frame."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self.frames.send(self._batch())

    def _enqueue(self, item: bytes | tuple[bytes]) -> None:
        queue = self._queue
        queue.append(item)
        if len(queue) == 1:  # else the flusher has it already, or the resume task will
            self._flusher.mark(self)

    def _enqueue_push(self, body: bytes) -> None:
        """Queue a push body (encoded once for every subscriber; conn_seq is spliced in later)."""
        self._enqueue(self._flusher.tail_of(body))

    def _enqueue_answer(self, body: bytes) -> None:
        self._answers += 1
        self._enqueue((body,))

    def push(self, key: Any, body: bytes) -> None:
        """Queue a push from the hub; stop the subscription if the client cannot keep up."""
        if self._closed:
            return
        if isinstance(key, str) and key not in self.private:
            return  # a private channel of this account this connection did not subscribe to
        if len(self._queue) >= self.gw.send_queue_max:
            self._overflow(key)
            return
        self._enqueue_push(body)

    def _overflow(self, key: Any) -> None:
        if isinstance(key, tuple):
            if key not in self.public:
                return
            self.public.discard(key)
            self.gw.hub.unsubscribe_public(self, key)
            channel, symbol = key[0], key[1]
        else:
            if key not in self.private:
                return
            self.private.discard(key)
            channel, symbol = key, None
        log.info("connection %d: %s too slow, resync required", self.id, _stream_name(key))
        body = {"channel": channel, "type": "resync_required", "symbol": symbol}
        body["reason"] = f"the client read too slowly: {self.gw.send_queue_max} pushes waited"
        self._enqueue_push(orjson.dumps(body))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(heartbeat_interval_s)
            seqs: dict[str, int] = {}
            for key in self.public:
                seqs[_stream_name(key)] = self.gw.hub.feed.last_seq(key)
            if self.account is not None:
                for channel in self.private:
                    seqs[channel] = self.gw.hub.accounts.last_seq(self.account, channel)
            body = {"channel": "heartbeat", "ts_ns": str(time.time_ns()), "seqs": seqs}
            self._enqueue_push(orjson.dumps(body))

    def _detach(self) -> None:
        hub = self.gw.hub
        for key in list(self.public):
            hub.unsubscribe_public(self, key)
        self.public.clear()
        if self._dead_man is not None:
            self._dead_man.cancel()
        if self.account is None:
            return
        hub.detach_account(self, self.account)
        self.gw.connections_closed(self)
        if self.cancel_on_disconnect == "account":
            hub.submit_later(c.CancelAll(account=self.account, ts_init=time.time_ns()))
        elif self.cancel_on_disconnect == "connection":
            for order_id in sorted(self.placed):
                order = hub.accounts.order(self.account, order_id)
                if order is not None and order["status"] in ("new", "partially_filled"):
                    hub.submit_later(
                        c.CancelOrder(
                            account=self.account, order_id=order_id, ts_init=time.time_ns()
                        )
                    )

    # ------------------------------------------------------------------ requests

    def _answer(self, request_id: Any, result: Any) -> None:
        body = orjson.dumps({"id": request_id, "status": 200, "result": result})
        self._enqueue_answer(body)

    def _error(self, request_id: Any, error: WireError) -> None:
        body = orjson.dumps({"id": request_id, "status": error.status, "error": error.body()})
        self._enqueue_answer(body)

    async def _handle(self, data: str | bytes) -> None:
        request_id: Any = None
        try:
            if len(data) > message_bytes_max:
                raise WireError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"request: at most {message_bytes_max} bytes, found {len(data)}",
                )
            try:
                request = orjson.loads(data)
            except orjson.JSONDecodeError as error:
                self.gw.check_rate(f"conn:{self.id}", "ws_message")
                raise WireError(ErrorCode.BAD_REQUEST, f"request: not JSON ({error})") from None
            if isinstance(request, dict):
                request_id = request.get("id")
            if not isinstance(request_id, int | str) or isinstance(request_id, bool):
                request_id = None
            # after reading the id, so that a refusal names the request it refuses
            self.gw.check_rate(f"conn:{self.id}", "ws_message")
            if not isinstance(request, dict):
                raise WireError(ErrorCode.BAD_REQUEST, "request: expected a JSON object")
            if request_id is None:
                raise WireError(ErrorCode.BAD_REQUEST, "id: expected an integer or a string")
            method = request.get("method")
            if not isinstance(method, str):
                raise WireError(ErrorCode.BAD_REQUEST, "method: expected a string")
            params = request.get("params", {})
            result = await self._dispatch(method, params)
            # No await between the subscription and here: no update can overtake its snapshot.
            self._answer(request_id, result)
            for _key, body in self._after_answer:
                self._enqueue_push(body)
        except WireError as error:
            self._error(request_id, error)
        finally:
            self._after_answer = []

    async def _dispatch(self, method: str, params: Any) -> Any:
        if method == "ping":
            return {"ts_ns": str(time.time_ns())}
        if method == "session.logon":
            return await self._logon(params)
        if method == "subscribe":
            return self._subscribe(params)
        if method == "unsubscribe":
            return self._unsubscribe(params)
        entry = _ACCOUNT_METHODS.get(method)
        if entry is None:
            raise WireError(ErrorCode.UNKNOWN_METHOD, f"method: {method!r} is not a method")
        scope, handler = entry
        account = self._require(scope)
        if method.startswith("order.") and method != "order.status":
            self.gw.check_rate(f"orders:{self.key_id}", "orders")
        return await handler(self, account, params)

    def _require(self, scope: str) -> int:
        if self.account is None:
            raise WireError(ErrorCode.NOT_LOGGED_ON, "log on first (session.logon)")
        if scope not in self.scopes:
            raise WireError(ErrorCode.FORBIDDEN, f"this key lacks the {scope!r} scope")
        return self.account

    async def _logon(self, params: Any) -> dict[str, Any]:
        p = parse_params(params, _Logon)
        if self.account is not None:
            raise WireError(ErrorCode.BAD_REQUEST, "session.logon: already logged on")
        if p.cancel_on_disconnect not in CANCEL_ON_DISCONNECT:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"cancel_on_disconnect: expected one of {CANCEL_ON_DISCONNECT}, "
                f"found {p.cancel_on_disconnect!r}",
            )
        key = await self.gw.verify(p.key, p.ts_ms, p.nonce, p.signature, "GET", "/ws", b"")
        self.account = key.account
        self.scopes = frozenset(key.scopes)
        self.key_id = key.key_id
        self.cancel_on_disconnect = p.cancel_on_disconnect
        self.gw.hub.attach_account(self, key.account)
        return {"account": key.account, "scopes": sorted(self.scopes)}

    # ------------------------------------------------------------------ subscriptions

    def _public_key(self, p: _Subscribe, symbol: str) -> StreamKey:
        feed = self.gw.hub.feed
        if p.channel == "book":
            if p.depth not in BOOK_DEPTHS:
                raise WireError(
                    ErrorCode.BAD_REQUEST, f"depth: expected one of {BOOK_DEPTHS}, found {p.depth}"
                )
            key: StreamKey = ("book", symbol, p.depth)
        elif p.channel == "candles":
            if p.interval not in CANDLE_INTERVALS:
                raise WireError(
                    ErrorCode.BAD_REQUEST,
                    f"interval: expected one of {CANDLE_INTERVALS}, found {p.interval!r}",
                )
            key = ("candles", symbol, p.interval)
        else:
            key = (p.channel, symbol)
        if not self.gw.known_symbol(p.channel, symbol) and symbol not in feed.symbols():
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"{p.channel}: unknown symbol {symbol!r}")
        return key

    def _subscribe(self, params: Any) -> dict[str, Any]:
        p = parse_params(params, _Subscribe)
        if p.channel in PRIVATE_CHANNELS:
            return self._subscribe_private(p.channel)
        if p.channel not in PUBLIC_CHANNELS:
            raise WireError(ErrorCode.UNKNOWN_CHANNEL, f"channel: {p.channel!r} is not a channel")
        if not p.symbols or len(p.symbols) > symbols_per_subscribe_max:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"symbols: expected 1-{symbols_per_subscribe_max} symbols, found {len(p.symbols)}",
            )
        keys = [self._public_key(p, symbol) for symbol in p.symbols]  # all valid, or none
        feed = self.gw.hub.feed
        if p.channel == "book":
            for key in keys:
                if feed.snapshot(key) is None:
                    raise WireError(
                        ErrorCode.UNAVAILABLE, f"book {key[1]}: not synchronised yet; retry"
                    )
        pushes: list[tuple[StreamKey, bytes]] = []
        resumed = True
        for key in keys:
            if key in self.public:
                self.gw.hub.unsubscribe_public(self, key)
            self.gw.hub.subscribe_public(self, key)
            self.public.add(key)
            replay = None
            if p.resume_from_seq is not None:
                replay = feed.resume(key, p.resume_from_seq)
            if replay is not None:
                pushes += [(key, body) for body in replay]
                continue
            resumed = False
            if p.channel == "book":
                snapshot = feed.snapshot(key)
                assert snapshot is not None
                pushes.append((key, snapshot))
        result = {"channel": p.channel, "symbols": p.symbols, "resumed": resumed}
        self._after_answer = pushes
        return result

    def _subscribe_private(self, channel: str) -> dict[str, Any]:
        account = self._require(PRIVATE_CHANNELS[channel])
        accounts = self.gw.hub.accounts
        pushes: list[tuple[Any, bytes]]
        if channel == "executions":
            pushes = [(channel, accounts.executions_snapshot(account))]
        elif channel == "balances":
            pushes = [(channel, accounts.balances_snapshot(account))]
        elif channel == "positions":
            pushes = [(channel, accounts.positions_snapshot(account))]
        else:
            outstanding = self.gw.hub.outstanding.get(account, {})
            pushes = [(channel, provision_push(r)) for _, r in sorted(outstanding.items())]
        self.private.add(channel)
        self._after_answer = pushes
        return {"channel": channel, "symbols": [], "resumed": False}

    def _unsubscribe(self, params: Any) -> dict[str, Any]:
        p = parse_params(params, _Subscribe)
        if p.channel in PRIVATE_CHANNELS:
            self.private.discard(p.channel)
            return {"channel": p.channel, "symbols": []}
        for key in list(self.public):
            if key[0] == p.channel and key[1] in p.symbols:
                self.public.discard(key)
                self.gw.hub.unsubscribe_public(self, key)
        return {"channel": p.channel, "symbols": p.symbols}

    # ------------------------------------------------------------------ account methods

    async def _place(self, account: int, params: Any) -> dict[str, Any]:
        result = await self.gw.desk.place(account, params)
        order = result.get("order")
        if order and order.get("order_id"):
            self.placed.add(int(order["order_id"]))
        return result

    async def _amend(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.amend(account, params)

    async def _cancel(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.cancel(account, params)

    async def _cancel_all(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.cancel_all(account, params)

    async def _status(self, account: int, params: Any) -> dict[str, Any]:
        return self.gw.desk.status(account, params)

    async def _route(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.route(account, params)

    async def _capacity(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.capacity(account, params)

    async def _confirm(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.confirm(account, params)

    async def _fail(self, account: int, params: Any) -> dict[str, Any]:
        return await self.gw.desk.fail(account, params)

    async def _cancel_all_after(self, account: int, params: Any) -> dict[str, Any]:
        """Arm (or disarm with 0) the dead-man timer: cancel everything unless re-armed."""
        p = parse_params(params, _DeadMan)
        if self._dead_man is not None:
            self._dead_man.cancel()
            self._dead_man = None
        if p.timeout_ms == 0:
            return {"armed": False, "deadline_ms": None}
        if not dead_man_timeout_ms_min <= p.timeout_ms <= dead_man_timeout_ms_max:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"timeout_ms: expected 0 or {dead_man_timeout_ms_min}-{dead_man_timeout_ms_max}, "
                f"found {p.timeout_ms}",
            )
        loop = asyncio.get_running_loop()
        self._dead_man = loop.call_later(p.timeout_ms / 1000, self._dead_man_fired, account)
        return {"armed": True, "deadline_ms": str(int(time.time() * 1000) + p.timeout_ms)}

    def _dead_man_fired(self, account: int) -> None:
        self._dead_man = None
        log.info("connection %d: cancel_all_after fired for account %d", self.id, account)
        self.gw.hub.submit_later(c.CancelAll(account=account, ts_init=time.time_ns()))


_ACCOUNT_METHODS = {
    "order.place": ("trade", Connection._place),
    "order.amend": ("trade", Connection._amend),
    "order.cancel": ("trade", Connection._cancel),
    "order.cancel_all": ("trade", Connection._cancel_all),
    "order.status": ("read", Connection._status),
    "order.route": ("trade", Connection._route),
    "cancel_all_after": ("trade", Connection._cancel_all_after),
    "capacity.update": ("provide", Connection._capacity),
    "provision.confirm": ("provide", Connection._confirm),
    "provision.fail": ("provide", Connection._fail),
}


async def serve_socket(gateway: Gateway, scope: Any, receive: Any, send: Any) -> None:
    """Serve one `/ws` socket straight over ASGI (no framework wrappers on the push path)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    client = scope.get("client")
    ip = str(client[0]) if client else "?"
    connection = Connection(gateway, receive, send, ip)
    await connection.frames.accept()
    try:
        gateway.connections.open(ip)
    except WireError as error:
        body = orjson.dumps({"id": None, "status": error.status, "error": error.body()})
        await connection.frames.send([body])
        await connection.frames.close(1008, "too many connections from this address")
        return
    try:
        await connection.serve()
    finally:
        gateway.connections.close(ip)
