"""The WebSocket session: one connection, kept open, with requests matched to answers by `id`.

The session opens lazily on the first request, logs on with a signed `session.logon` when a key
is configured, and then reads frames: answers complete their request, pushes go to `on_push`.
A connection counts as dead, and is replaced, when
- it closes or fails,
- a push's `conn_seq` is not the previous one + 1 (a push was lost), or
- no frame arrives for `heartbeat_timeout_s` (the gateway sends a heartbeat every second).
Reconnects back off exponentially with jitter. After each logon `on_connected` is called so the
owner can subscribe again. A logon the gateway refuses for good (bad key, signature, clock) stops
the session: every waiting and later request raises that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from exchange.client.errors import (
    CLIENT_TIMEOUT_CODE,
    GatewayError,
    NetworkError,
    error_from_answer,
)
from exchange.client.signing import Credentials, logon_params

__all__ = [
    "WsSession",
    "HEARTBEAT_TIMEOUT_S",
    "BACKOFF_S_MIN",
    "BACKOFF_S_MAX",
    "FRAME_BYTES_MAX",
    "CANCEL_ON_DISCONNECT",
]

log = logging.getLogger("gx.client.ws")

HEARTBEAT_TIMEOUT_S = 3.0  # three missed one-second heartbeats: the connection is dead
BACKOFF_S_MIN = 0.1  # first reconnect delay; doubles per failed attempt
BACKOFF_S_MAX = 10.0
OPEN_TIMEOUT_S = 10.0
FRAME_BYTES_MAX = 16 * 1024 * 1024  # a positions snapshot of a large account fits
CANCEL_ON_DISCONNECT = ("none", "connection", "account")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _is_fatal(error: GatewayError) -> bool:
    """Return whether a logon refusal will not change by reconnecting."""
    return not isinstance(error, NetworkError) and not error.retryable


class WsSession:
    """One WebSocket connection to the gateway's `/ws`, reopened whenever it dies."""

    def __init__(
        self,
        url: str,
        credentials: Credentials | None,
        *,
        on_push: Callable[[dict[str, Any]], None],
        on_connected: Callable[[int], None],
        on_stopped: Callable[[GatewayError], None],
        cancel_on_disconnect: str = "none",
        request_timeout_s: float = 10.0,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        if cancel_on_disconnect not in CANCEL_ON_DISCONNECT:
            raise ValueError(
                f"cancel_on_disconnect: expected one of {CANCEL_ON_DISCONNECT}, "
                f"found {cancel_on_disconnect!r}"
            )
        self.url = url
        self.credentials = credentials
        self.cancel_on_disconnect = cancel_on_disconnect
        self.request_timeout_s = request_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._on_push = on_push
        self._on_connected = on_connected
        self._on_stopped = on_stopped
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopped: GatewayError | None = None
        self._conn_seq = 0
        self.generation = 0  # counts connections that logged on
        self.logon: dict[str, Any] = {}  # the last `session.logon` result: account, scopes

    @property
    def connected(self) -> bool:
        """Return whether a connection is open and logged on."""
        return self._ready.is_set() and self._ws is not None

    def start(self) -> None:
        """Start connecting in the background, if not already."""
        if self._stopped is not None:
            raise self._stopped
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="gx-client-ws")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until a connection is logged on; raise NetworkError after `timeout_s`."""
        self.start()
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise NetworkError(
                f"{self.url}: not connected within {timeout} s; is the gateway running?",
                CLIENT_TIMEOUT_CODE,
            ) from None
        if self._stopped is not None:
            raise self._stopped

    async def request(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Send a request once the session is ready; return its `result` or raise its error.

        With `wait=False` raise NetworkError at once when no connection is ready (subscriptions
        use it: a new connection renews them itself).
        """
        if wait:
            await self.wait_ready(timeout_s)
        elif self._stopped is not None:
            raise self._stopped
        ws = self._ws
        if ws is None:
            raise NetworkError(f"{method}: the connection closed before the request was sent")
        return await self._call(ws, method, params, timeout_s)

    async def close(self) -> None:
        """Close the connection and stop reconnecting; waiting requests raise NetworkError."""
        if self._stopped is None:
            self._stopped = NetworkError("the client was closed")
        self._ready.set()  # wake waiters: they see `_stopped`
        if self._ws is not None:
            with contextlib.suppress(WebSocketException, OSError):
                await self._ws.close()  # a normal close (1000), not the 1011 of a cancelled task
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._fail_pending(self._stopped)

    async def _call(
        self, ws: ClientConnection, method: str, params: Mapping[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        try:
            frame = _encoder.encode({"id": request_id, "method": method, "params": dict(params)})
            try:
                await ws.send(frame.decode())
            except ConnectionClosed as error:
                raise NetworkError(f"{method}: the connection closed ({error})") from None
            try:
                answer = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise NetworkError(
                    f"{method} (id {request_id}): no answer within {timeout} s", CLIENT_TIMEOUT_CODE
                ) from None
        finally:
            self._pending.pop(request_id, None)
        status = answer.get("status", 200)
        if not isinstance(status, int) or status >= 300:
            raise error_from_answer(status if isinstance(status, int) else 0, answer.get("error"))
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    def _fail_pending(self, error: GatewayError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved here: a request that timed out never reads it
        self._pending.clear()

    async def _run(self) -> None:
        failures = 0
        while self._stopped is None:
            try:
                logged_on = await self._connect_once()
            except GatewayError as error:
                if _is_fatal(error):
                    log.error("gateway refused the logon: %s; stopping the session", error)
                    self._stop(error)
                    return
                log.warning("gateway logon failed: %s; reconnecting", error)
                logged_on = False
            except (OSError, TimeoutError, WebSocketException) as error:
                log.warning("cannot connect to %s: %r; retrying", self.url, error)
                logged_on = False
            failures = 0 if logged_on else failures + 1
            delay = min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2 ** min(failures, 16))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _stop(self, error: GatewayError) -> None:
        self._stopped = error
        self._ready.set()
        self._fail_pending(error)
        self._on_stopped(error)

    async def _connect_once(self) -> bool:
        """Connect, log on and read until the connection dies; return whether it logged on."""
        logged_on = False
        async with connect(self.url, open_timeout=OPEN_TIMEOUT_S, max_size=FRAME_BYTES_MAX) as ws:
            self._conn_seq = 0
            reader = asyncio.create_task(self._read(ws), name="gx-client-ws-read")
            try:
                if self.credentials is not None:
                    params = logon_params(self.credentials, self.cancel_on_disconnect)
                    self.logon = await self._call(ws, "session.logon", params, None)
                self._ws = ws
                self.generation += 1
                self._ready.set()
                logged_on = True
                log.info("connected to %s (connection %d)", self.url, self.generation)
                self._on_connected(self.generation)
                await reader
            finally:
                self._ws = None
                if self._stopped is None:
                    self._ready.clear()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                self._fail_pending(NetworkError("the connection to the gateway was lost"))
        return logged_on

    async def _read(self, ws: ClientConnection) -> None:
        """Read frames until the connection is dead; then fail the requests still waiting."""
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(ws.recv(), self.heartbeat_timeout_s)
                except TimeoutError:
                    log.warning("no frame for %.1f s: connection dead", self.heartbeat_timeout_s)
                    return
                except ConnectionClosed as error:
                    if self._stopped is None:
                        log.warning("connection closed: %s", error)
                    return
                try:
                    message = _decoder.decode(frame)
                except msgspec.DecodeError:
                    log.warning("ignored a frame that is not JSON: %.80r", frame)
                    continue
                if isinstance(message, dict) and not self._dispatch(message):
                    return
        finally:
            self._fail_pending(NetworkError("the connection to the gateway was lost"))

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Route one message; return False when the connection must be replaced."""
        if "channel" not in message:
            future = self._pending.get(message.get("id", -1))
            if future is not None and not future.done():
                future.set_result(message)
            return True
        conn_seq = message.get("conn_seq")
        if isinstance(conn_seq, int):
            if conn_seq != self._conn_seq + 1:
                log.warning(
                    "conn_seq gap: expected %d, found %d; reconnecting",
                    self._conn_seq + 1,
                    conn_seq,
                )
                return False
            self._conn_seq = conn_seq
        try:
            self._on_push(message)
        except Exception:  # a bug in a handler must not kill the connection
            log.exception("push handler failed on %.200r", message)
        return True
