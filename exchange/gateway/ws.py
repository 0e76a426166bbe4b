"""The WebSocket endpoint `/ws`: one `Connection` per socket.

A connection reads requests one at a time (so a client's commands reach the engine in the order
it sent them) and writes through one bounded queue, written in the gateway's write passes
(exchange/gateway/fanout.py), every push numbered with `conn_seq` as it goes out.

Every frame counts against the queue's one limit (`Gateway.send_queue_max`): answers, refusals
of requests that were rate limited or not JSON, pushes, snapshots, replays, heartbeats. Pushes,
snapshots and replays stop short of it (`send_queue_pushes_max`), leaving room for answers,
heartbeats and notices: a subscription whose pushes no longer fit is stopped with a
`resync_required` push (a slow client is told, never silently skipped), and a `resume_from_seq`
whose replay does not fit gets snapshots instead. A frame that finds the queue full closes the
connection with `close_code_queue_full`. The public streams a connection and its IP may hold
are limited by the subscriptions (exchange/gateway/subscriptions.py, `TOO_MANY_STREAMS`).

The gateway closes a socket with code 1008 (policy violation) when its key is revoked
(exchange/gateway/sessions.py), after RateLimits.ws_logon_failures_per_conn_max refused logons,
and when its address has too many sockets open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from typing import Any, cast

import msgspec
import orjson

from exchange import wire
from exchange.gateway.accounts import CHANNELS as NUMBERED_CHANNELS
from exchange.gateway.context import Gateway
from exchange.gateway.fanout import Frames, flusher, frame_pushes, text_frame
from exchange.gateway.market_feed import BOOK_DEPTHS, StreamKey
from exchange.gateway.orders import (
    AmendParams,
    CancelAllParams,
    CapacityParams,
    ConfirmParams,
    DisputeParams,
    FailParams,
    OrderRef,
    PlaceParams,
    RouteParams,
    parse_params,
)
from exchange.gateway.subscriptions import StreamSet
from exchange.wire import ErrorCode, WireError, WireInt
from schemas import commands as c

__all__ = [
    "Connection",
    "METHODS",
    "serve_socket",
    "close_code_queue_full",
    "message_bytes_max",
    "heartbeat_interval_s",
    "CLOSE_POLICY_VIOLATION",
]

log = logging.getLogger("gx.gateway.ws")

message_bytes_max = 16_384  # a larger request is refused (PAYLOAD_TOO_LARGE); the socket stays
heartbeat_interval_s = 1.0
symbols_per_subscribe_max = 100  # also per unsubscribe
# The longest a rate-limited connection's reading waits after a refusal (its retry_after_ms
# may be longer: a logon limit refills slowly); a flooding client is read at about its limit.
throttle_ms_max = 1_000
frames_per_write_max = 256  # frames a writer hands to the socket at once
CLOSE_POLICY_VIOLATION = 1008  # WebSocket close code (RFC 6455 7.4.1)
# RFC 6455 "Try Again Later": the client read too slowly and its send queue is full; it may
# reconnect and resume (`resume_from_seq`)
close_code_queue_full = 1013
close_wait_s = 2.0  # a closed slow client that does not take the close frame in time is cut off
send_queue_retry_after_ms = 1_000  # a subscribe whose snapshots do not fit: retry after reading

PUBLIC_CHANNELS = frozenset({"book", "trades", "ticker", "candles", "index", "curve"})
PRIVATE_CHANNELS = {
    "executions": "read",
    "balances": "read",
    "positions": "read",
    "deliveries": "read",
    "provisioning": "provide",
}
CANCEL_ON_DISCONNECT = ("none", "connection", "account")
CANDLE_INTERVALS = ("1m", "1h", "1d")

_ids = itertools.count(1)


class _Logon(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    key: str
    ts_ms: WireInt | str  # bounded like every JSON integer; auth.verify checks the window
    nonce: str
    signature: str
    cancel_on_disconnect: str = "none"
    sig_version: int | None = None  # None: version 1, accepted until auth.SIGN_V1_ACCEPTED_UNTIL_MS


class _Subscribe(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    channel: str
    symbols: list[str] = []
    depth: WireInt = 10
    interval: str = "1m"
    resume_from_seq: WireInt | None = None


class _DeadMan(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    timeout_ms: WireInt


class _NoParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class _SshKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    public_key: str


class _SshKeyRef(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    fingerprint: str


class _DeliveryQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    state: str | None = None
    role: str | None = None


def _check_symbols(symbols: list[str]) -> None:
    if not symbols or len(symbols) > symbols_per_subscribe_max:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"symbols: expected 1-{symbols_per_subscribe_max} symbols, found {len(symbols)}",
        )


def _stream_name(key: Any) -> str:
    return ":".join(str(part) for part in key) if isinstance(key, tuple) else str(key)


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
        self.revoked = False  # the key was revoked: requests are dropped, the socket is closing
        self.closing = False  # a close was sent: requests still arriving are dropped
        self.logon_failures = 0
        self._close_task: asyncio.Task[None] | None = None
        self.cancel_on_disconnect = "none"
        self.public = StreamSet()  # kept by gw.subscriptions as it (un)subscribes this connection
        self.private: set[str] = set()
        self.placed: set[int] = set()  # order ids placed through this connection
        # A push as its body without the `{` (see frame_pushes), an answer as (body,).
        self.queue: deque[bytes | tuple[bytes]] = deque()
        self._answers = 0  # answers in the queue
        self._wakeup = asyncio.Event()
        self._resume_task: asyncio.Task[None] | None = None
        self._shut_task: asyncio.Task[None] | None = None
        self._over_message_limit: WireError | None = None  # the refusal `_handle` is answering
        self._flusher = flusher()
        self.closed = False
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
                if self.closed:
                    continue  # closed for reading too slowly: nothing more is done for it
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                throttle_ms = await self._handle(data)
                # One socket read can queue hundreds of frames, which `receive` hands over
                # without yielding: without this, a flooding client's whole read is handled
                # before any other client's next request. A client over its connection's message
                # limit is read no sooner than the limit lets it send again (what it sends
                # meanwhile waits in its socket: TCP's flow control, not the gateway's memory or
                # time).
                await asyncio.sleep(min(throttle_ms, throttle_ms_max) / 1000)
        finally:
            self.closed = True
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._resume_task is not None:
                self._resume_task.cancel()
            if self._close_task is not None:
                with contextlib.suppress(Exception):
                    await self._close_task
            self._detach()

    def revoke(self) -> None:
        """Close the session at once: its key was revoked (sessions.Sessions calls this)."""
        if self.revoked:
            return
        self.revoked = True
        # Nothing more reaches the client, not even what was queued before the revocation.
        self.queue.clear()
        self._answers = 0
        self.closed = True
        log.info("connection %d: key %s revoked, closing", self.id, self.key_id)
        self._close_task = asyncio.create_task(
            self._close(CLOSE_POLICY_VIOLATION, "API key revoked", drain=False)
        )

    async def _close(self, code: int, reason: str, *, drain: bool) -> None:
        """Send a close frame, after what is queued when `drain` (the answer that closes)."""
        if self.closing:
            return
        self.closing = True
        try:
            if drain and self.frames.batched:
                self.flush()
            elif drain:
                while self.queue:
                    await self.frames.send(self._batch())
            self.closed = True
            await self.frames.close(code, reason)
        except Exception as error:  # the client went first: nothing left to close
            log.debug("connection %d: close %d not sent (%s)", self.id, code, error)

    def _batch(self) -> list[bytes]:
        """Take up to frames_per_write_max queued bodies, pushes numbered with conn_seq."""
        queue = self.queue
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
        queue = self.queue
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
            parts.append(text_frame(item[0]))
        if pushes:
            self.conn_seq = frame_pushes(pushes, self.conn_seq, parts)
        return parts

    def flush(self) -> None:
        """Write what is queued, now, if the socket takes it (the flusher calls this)."""
        queue = self.queue
        if self.closed or not queue:
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
            while self.queue:
                await self.frames.send(self._batch())

    def _enqueue(self, item: bytes | tuple[bytes]) -> bool:
        """Queue a frame; a queue already full closes the connection instead (False)."""
        if self.closed:
            return False
        queue = self.queue
        if len(queue) >= self.gw.send_queue_max:
            self._close_queue_full()
            return False
        queue.append(item)
        if len(queue) == 1:  # else the flusher has it already, or the resume task will
            self._flusher.mark(self)
        return True

    def _enqueue_push(self, body: bytes) -> None:
        """Queue a push body (encoded once for every subscriber; conn_seq is spliced in later)."""
        self._enqueue(self._flusher.tail_of(body))

    def _enqueue_answer(self, body: bytes) -> None:
        if self._enqueue((body,)):
            self._answers += 1

    def _push_room(self) -> int:
        """Frames that pushes, snapshots and replays may still add to the queue."""
        return self.gw.send_queue_pushes_max - len(self.queue)

    async def _close_for_policy(self, why: str) -> None:
        """Close with 1008 after `ws_policy_close_delay_ms`, reading nothing meanwhile: what is
        queued (the refusal that closes) goes first, unless the client does not read it within
        close_wait_s, and then it is cut off (it would hold its socket for good)."""
        log.info("connection %d (%s): %s, closing", self.id, self.ip, why)
        await asyncio.sleep(self.gw.limits.ws_policy_close_delay_ms / 1000)
        try:
            async with asyncio.timeout(close_wait_s):
                await self._close(CLOSE_POLICY_VIOLATION, why, drain=True)
        except TimeoutError:
            self.closed = True
            self.queue.clear()
            self._answers = 0
            await self.frames.shut(CLOSE_POLICY_VIOLATION, why, close_wait_s)

    def _close_queue_full(self) -> None:
        """Close a client whose send queue is full: drop what waits, stop every push to it."""
        log.info("connection %d (%s): %d frames waited, closing", self.id, self.ip, len(self.queue))
        self.closed = True
        self.queue.clear()
        self._answers = 0
        reason = f"send queue full: {self.gw.send_queue_max} frames waited"
        self._shut_task = asyncio.create_task(
            self.frames.shut(close_code_queue_full, reason, close_wait_s)
        )

    def push(self, key: Any, body: bytes) -> None:
        """Queue a push from the hub; stop the subscription if the client cannot keep up."""
        if self.closed:
            return
        if isinstance(key, str) and key not in self.private:
            return  # a private channel of this account this connection did not subscribe to
        if len(self.queue) >= self.gw.send_queue_pushes_max:
            self.overflow(key)
            return
        self._enqueue_push(body)

    def overflow(self, key: Any) -> None:
        """Stop the subscription `key` with a `resync_required` push (the client reads too slowly)."""
        if isinstance(key, tuple):
            if key not in self.public:
                return
            self.gw.subscriptions.unsubscribe_public(self, key)
            channel, symbol = key[0], key[1]
        else:
            if key not in self.private:
                return
            self.private.discard(key)
            channel, symbol = key, None
        log.info("connection %d: %s too slow, resync required", self.id, _stream_name(key))
        body = {"channel": channel, "type": "resync_required", "symbol": symbol}
        body["reason"] = (
            f"the client read too slowly: {self.gw.send_queue_pushes_max} frames waited"
        )
        self._enqueue_push(orjson.dumps(body))

    async def _heartbeat(self) -> None:
        while not self.closed:
            await asyncio.sleep(heartbeat_interval_s)
            seqs: dict[str, int] = {}
            for key in self.public:
                seqs[_stream_name(key)] = self.gw.feed.last_seq(key)
            if self.account is not None:
                for channel in self.private:
                    if channel in NUMBERED_CHANNELS:  # provisioning requests carry no seq
                        seqs[channel] = self.gw.accounts.last_seq(self.account, channel)
            body = {"channel": "heartbeat", "ts_ns": str(time.time_ns()), "seqs": seqs}
            self._enqueue_push(orjson.dumps(body))

    def _detach(self) -> None:
        hub, subscriptions = self.gw.hub, self.gw.subscriptions
        for key in list(self.public):
            subscriptions.unsubscribe_public(self, key)
        # The account's dead-man switch keeps counting: a dropped socket is what it is for.
        self.gw.connections_closed(self)
        if self.account is None:
            return
        subscriptions.detach_account(self, self.account)
        self.gw.sessions.remove(self.key_id, self)
        if self.cancel_on_disconnect == "account":
            hub.submit_later(c.CancelAll(account=self.account, ts_init=time.time_ns()))
        elif self.cancel_on_disconnect == "connection":
            for order_id in sorted(self.placed):
                order = self.gw.accounts.order(self.account, order_id)
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

    async def _handle(self, data: str | bytes) -> int:
        """Answer one request; return how long to wait before reading the next (ms): the
        `retry_after_ms` of a RATE_LIMITED refusal, else 0."""
        if self.closing or self.revoked:
            return 0  # the close is sent; the client reads nothing more
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
                self._check_message_rate()
                raise WireError(ErrorCode.BAD_REQUEST, f"request: not JSON ({error})") from None
            if isinstance(request, dict):
                request_id = request.get("id")
            if not isinstance(request_id, int | str) or isinstance(request_id, bool):
                request_id = None
            # after reading the id, so that a refusal names the request it refuses
            self._check_message_rate()
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
            why = ""
            if self.logon_failures >= self.gw.limits.ws_logon_failures_per_conn_max:
                why = "too many failed logons"
            elif error.code == ErrorCode.RATE_LIMITED and not self._may_be_refused_again():
                why = "rate limits exceeded repeatedly"
            if why:
                await self._close_for_policy(why)
                return 0
            if error is self._over_message_limit:
                return error.retry_after_ms
        except Exception:
            # A bug, not the client's doing: answer it and keep the socket (closing it would
            # fire cancel-on-disconnect for every order of the connection or account).
            log.exception(
                "connection %d: request %.80r failed (a bug; the client got INTERNAL): "
                "report it with this traceback",
                self.id,
                request_id,
            )
            self._error(request_id, WireError.internal())
        finally:
            self._after_answer = []
            self._over_message_limit = None
        return 0

    def _may_be_refused_again(self) -> bool:
        """Count a RATE_LIMITED answer against the account's refusals (the IP's before logon);
        False once they are spent: the connection refused then is closed.

        Per account, not per connection: one key flooding over 200 connections spends one
        budget, and then each of its connections is closed at its next refusal."""
        who = f"account:{self.account}" if self.account is not None else f"ip:{self.ip}"
        try:
            self.gw.check_rate(who, "ws_refusal")
        except WireError:
            return False
        return True

    def _check_message_rate(self) -> None:
        try:
            self.gw.check_rate(f"conn:{self.id}", "ws_message")
            self.gw.check_rate(f"ip:{self.ip}", "ws_ip_message")
            if self.account is not None:
                self.gw.check_rate(f"account:{self.account}", "ws_account_message")
        except WireError as error:
            self._over_message_limit = error  # the connection's own limit: its reading waits
            raise

    async def _dispatch(self, method: str, params: Any) -> Any:
        if method == "ping":
            return {"ts_ns": str(time.time_ns())}
        if method == "session.logon":
            # Not a failed logon (the client did nothing wrong): refused before it is counted.
            self.gw.require_ready()
            try:
                return await self._logon(params)
            except WireError:
                self.logon_failures += 1
                raise
        if method == "subscribe":
            return self._subscribe(params)
        if method == "unsubscribe":
            return self._unsubscribe(params)
        entry = _ACCOUNT_METHODS.get(method)
        if entry is None:
            raise WireError(ErrorCode.UNKNOWN_METHOD, f"method: {method!r} is not a method")
        scope, kind, handler = entry
        account = self._require(scope)
        if (
            method.startswith("order.") and method != "order.status"
        ) or method in _ORDER_LIMITED_METHODS:
            self.gw.check_orders(account)
        return await handler(self, account, parse_params(params, kind))

    def _require(self, scope: str) -> int:
        if self.account is None:
            raise WireError(ErrorCode.NOT_LOGGED_ON, "log on first (session.logon)")
        if scope not in self.scopes:
            raise WireError(ErrorCode.FORBIDDEN, f"this key lacks the {scope!r} scope")
        return self.account

    async def _logon(self, params: Any) -> dict[str, Any]:
        self.gw.check_logon(self)  # before anything can reach the database
        p = parse_params(params, _Logon)
        if self.account is not None:
            raise WireError(ErrorCode.BAD_REQUEST, "session.logon: already logged on")
        if p.cancel_on_disconnect not in CANCEL_ON_DISCONNECT:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"cancel_on_disconnect: expected one of {CANCEL_ON_DISCONNECT}, "
                f"found {p.cancel_on_disconnect!r}",
            )
        key = await self.gw.verify(
            p.key,
            p.ts_ms,
            p.nonce,
            p.signature,
            wire.WS_LOGON_METHOD,
            wire.WS_LOGON_PATH,
            b"",
            sig_version=p.sig_version,
        )
        self.account = key.account
        self.scopes = frozenset(key.scopes)
        self.key_id = key.key_id
        self.cancel_on_disconnect = p.cancel_on_disconnect
        self.gw.subscriptions.attach_account(self, key.account)
        self.gw.sessions.add(key.key_id, self)
        return {"account": key.account, "scopes": sorted(self.scopes)}

    # ------------------------------------------------------------------ subscriptions

    def _public_key(self, p: _Subscribe, symbol: str) -> StreamKey:
        feed = self.gw.feed
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
        if not self.gw.known_symbol(p.channel, symbol) and not feed.has_book(symbol):
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"{p.channel}: unknown symbol {symbol!r}")
        return key

    def _subscribe(self, params: Any) -> dict[str, Any]:
        p = parse_params(params, _Subscribe)
        if p.channel in PRIVATE_CHANNELS:
            return self._subscribe_private(p.channel, p.resume_from_seq)
        if p.channel not in PUBLIC_CHANNELS:
            raise WireError(ErrorCode.UNKNOWN_CHANNEL, f"channel: {p.channel!r} is not a channel")
        _check_symbols(p.symbols)
        # all valid, or none; a symbol named twice is one stream
        keys = list(dict.fromkeys(self._public_key(p, symbol) for symbol in p.symbols))
        self.gw.subscriptions.check_room(self, sum(1 for key in keys if key not in self.public))
        feed = self.gw.feed
        if p.channel == "book":
            for key in keys:
                if feed.snapshot(key) is None:
                    raise WireError(
                        ErrorCode.UNAVAILABLE, f"book {key[1]}: not synchronised yet; retry"
                    )
        replays: dict[StreamKey, list[bytes]] = {}
        if p.resume_from_seq is not None:
            for key in keys:
                replay = feed.resume(key, p.resume_from_seq)
                if replay is not None:
                    replays[key] = replay
        room = self._push_room() - 1  # the answer goes first
        snapshots = sum(1 for key in keys if key[0] == "book" and key not in replays)
        if sum(map(len, replays.values())) + snapshots > room:
            replays = {}  # the missed pushes do not all fit the send queue: snapshots instead
        self._check_room(sum(1 for key in keys if key[0] == "book" and key not in replays))
        pushes: list[tuple[StreamKey, bytes]] = []
        for key in keys:
            if key in self.public:
                self.gw.subscriptions.unsubscribe_public(self, key)
            self.gw.subscriptions.subscribe_public(self, key)
            replay = replays.get(key)
            if replay is not None:
                pushes += [(key, body) for body in replay]
            elif p.channel == "book":
                snapshot = feed.snapshot(key)
                assert snapshot is not None
                pushes.append((key, snapshot))
        result = {"channel": p.channel, "symbols": p.symbols, "resumed": len(replays) == len(keys)}
        self._after_answer = pushes
        return result

    def _check_room(self, frames: int) -> None:
        """Refuse a subscribe whose snapshots do not fit the send queue after its answer."""
        room = self._push_room() - 1
        if frames > room:
            raise WireError(
                ErrorCode.RATE_LIMITED,
                f"send queue: expected room for {frames} snapshots, found {max(room, 0)} "
                f"({len(self.queue)} frames wait for this connection); read them, then "
                "subscribe again",
                retry_after_ms=send_queue_retry_after_ms,
            )

    def _subscribe_private(self, channel: str, resume_from_seq: int | None) -> dict[str, Any]:
        account = self._require(PRIVATE_CHANNELS[channel])
        accounts = self.gw.accounts
        pushes: list[tuple[Any, bytes]]
        replay = None
        if resume_from_seq is not None and channel != "provisioning":
            replay = accounts.resume(account, channel, resume_from_seq)
        if replay is not None and len(replay) > self._push_room() - 1:
            replay = None  # the missed pushes do not fit the send queue: the snapshot instead
        if replay is not None:
            pushes = [(channel, body) for body in replay]
        elif channel == "executions":
            pushes = [(channel, accounts.executions_snapshot(account))]
        elif channel == "balances":
            pushes = [(channel, accounts.balances_snapshot(account))]
        elif channel == "positions":
            pushes = [(channel, accounts.positions_snapshot(account))]
        elif channel == "deliveries":
            pushes = [(channel, self.gw.deliveries.snapshot(account))]
        else:
            pushes = [(channel, body) for body in self.gw.provisioning.snapshot(account)]
        if replay is None:
            self._check_room(len(pushes))
        self.private.add(channel)
        self._after_answer = pushes
        return {"channel": channel, "symbols": [], "resumed": replay is not None}

    def _unsubscribe(self, params: Any) -> dict[str, Any]:
        p = parse_params(params, _Subscribe)
        if p.channel in PRIVATE_CHANNELS:
            self.private.discard(p.channel)
            return {"channel": p.channel, "symbols": []}
        _check_symbols(p.symbols)
        for key in self.public.of(p.channel, p.symbols):
            self.gw.subscriptions.unsubscribe_public(self, key)
        return {"channel": p.channel, "symbols": p.symbols}

    # ------------------------------------------------------------------ account methods

    async def _place(self, account: int, p: PlaceParams) -> dict[str, Any]:
        result = await self.gw.place(account, p)
        order = result.get("order")
        if order and order.get("order_id"):
            self.placed.add(int(order["order_id"]))
        return result

    async def _amend(self, account: int, p: AmendParams) -> dict[str, Any]:
        return await self.gw.desk.amend(account, p)

    async def _cancel(self, account: int, p: OrderRef) -> dict[str, Any]:
        return await self.gw.desk.cancel(account, p)

    async def _cancel_all(self, account: int, p: CancelAllParams) -> dict[str, Any]:
        return await self.gw.desk.cancel_all(account, p)

    async def _status(self, account: int, p: OrderRef) -> dict[str, Any]:
        return self.gw.desk.status(account, p)

    async def _route(self, account: int, p: RouteParams) -> dict[str, Any]:
        return await self.gw.route(account, self.key_id, p)

    async def _capacity(self, account: int, p: CapacityParams) -> dict[str, Any]:
        return await self.gw.desk.capacity(account, p)

    async def _confirm(self, account: int, p: ConfirmParams) -> dict[str, Any]:
        return await self.gw.desk.confirm(account, p)

    async def _fail(self, account: int, p: FailParams) -> dict[str, Any]:
        return await self.gw.desk.fail(account, p)

    async def _ssh_keys(self, account: int, p: _NoParams) -> dict[str, Any]:
        return await self.gw.list_ssh_keys(account)

    async def _add_ssh_key(self, account: int, p: _SshKey) -> dict[str, Any]:
        return await self.gw.add_ssh_key(account, p.public_key)

    async def _remove_ssh_key(self, account: int, p: _SshKeyRef) -> dict[str, Any]:
        return await self.gw.remove_ssh_key(account, p.fingerprint)

    async def _deliveries(self, account: int, p: _DeliveryQuery) -> dict[str, Any]:
        return self.gw.list_deliveries(account, p.state, p.role)

    async def _dispute(self, account: int, p: DisputeParams) -> dict[str, Any]:
        return await self.gw.desk.dispute(account, p)

    async def _cancel_all_after(self, account: int, p: _DeadMan) -> dict[str, Any]:
        """Arm or re-arm (0 disarms) the account's dead-man switch (exchange/gateway/dead_man.py)."""
        if p.timeout_ms == 0:
            self.gw.dead_man.disarm(account)
            return {"armed": False, "deadline_ms": None}
        deadline_ms = self.gw.dead_man.arm(account, p.timeout_ms)
        return {"armed": True, "deadline_ms": str(deadline_ms)}


# Beside order entry, the methods that send a command on the client's word (to the engine, or a
# provider's report to provisioning): they take from the per-account order limit too (a capacity
# update can be 1680 hours of engine work).
_ORDER_LIMITED_METHODS = frozenset(
    {"delivery.dispute", "capacity.update", "provision.confirm", "provision.fail"}
)
# method -> (scope, params Struct, handler): the params are decoded before the handler runs
_ACCOUNT_METHODS: dict[str, tuple[str, type[Any], Any]] = {
    "order.place": ("trade", PlaceParams, Connection._place),
    "order.amend": ("trade", AmendParams, Connection._amend),
    "order.cancel": ("trade", OrderRef, Connection._cancel),
    "order.cancel_all": ("trade", CancelAllParams, Connection._cancel_all),
    "order.status": ("read", OrderRef, Connection._status),
    "order.route": ("trade", RouteParams, Connection._route),
    "cancel_all_after": ("trade", _DeadMan, Connection._cancel_all_after),
    "capacity.update": ("provide", CapacityParams, Connection._capacity),
    "provision.confirm": ("provide", ConfirmParams, Connection._confirm),
    "provision.fail": ("provide", FailParams, Connection._fail),
    "ssh_key.list": ("read", _NoParams, Connection._ssh_keys),
    "ssh_key.add": ("trade", _SshKey, Connection._add_ssh_key),
    "ssh_key.remove": ("trade", _SshKeyRef, Connection._remove_ssh_key),
    "delivery.list": ("read", _DeliveryQuery, Connection._deliveries),
    "delivery.dispute": ("trade", DisputeParams, Connection._dispute),
}


# method -> (scope or None, params Struct): every method `/ws` answers (the AsyncAPI document's list)
METHODS: dict[str, tuple[str | None, type[msgspec.Struct]]] = {
    "ping": (None, _NoParams),
    "session.logon": (None, _Logon),
    "subscribe": (None, _Subscribe),
    "unsubscribe": (None, _Subscribe),
    **{method: (scope, kind) for method, (scope, kind, _) in _ACCOUNT_METHODS.items()},
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
        await connection.frames.close(
            CLOSE_POLICY_VIOLATION, "too many connections from this address"
        )
        return
    gateway.live_connections.add(connection)
    try:
        await connection.serve()
    finally:
        gateway.live_connections.discard(connection)
        gateway.connections.close(ip)
