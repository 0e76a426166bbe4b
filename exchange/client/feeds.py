"""Subscriptions over the WebSocket session: sequence checks, resyncs, resumes, fan-out.

One subscription per (channel, symbol, interval), shared by every watcher of it and kept until
`unwatch` or close (ccxt-pro style: awaiting a watch in a loop does not resubscribe each time).
Each subscription turns pushes into typed items through a view, and hands them to its listeners.

Sequence rules, per subscription:
- `book`: the `LocalBook` checks `seq`/`prev_seq` and the checksum; a failure (or a heartbeat
  whose `seqs` showed a seq the book still lacks one heartbeat later) unsubscribes and subscribes
  again for a fresh snapshot.
- `trades`, `ticker`, `candles`, `index`, `curve`: `prev_seq` must be the last `seq` received; a
  gap unsubscribes and subscribes again with `resume_from_seq` = the last seq; pushes at or
  below it are dropped (replays).
- `executions`, `balances`, `positions`, `deliveries`: the same with `account_seq`/`prev_account_seq` (two
  pushes may share an `account_seq`: both sides of a self-trade), but a gap unsubscribes and
  subscribes again for a fresh snapshot (private channels are not resumed).
- `resync_required` (the gateway already stopped the subscription) subscribes again for a fresh
  snapshot.
After a reconnect every subscription is renewed: books and public channels with
`resume_from_seq` (the gateway falls back to a snapshot when it cannot resume), private channels
with a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator
from typing import Any, Generic, Protocol, TypeVar

from exchange.client.book import BookOutOfSync, LocalBook
from exchange.client.errors import AuthError, GatewayError, NetworkError
from exchange.client.models import (
    Balance,
    Candle,
    Delivery,
    DeliveryUpdate,
    Execution,
    Order,
    Position,
    ProvisionRequest,
    Ticker,
    Trade,
    to_model,
)
from exchange.client.ws import WsSession

__all__ = [
    "Feeds",
    "Watch",
    "FeedClosed",
    "SlowConsumer",
    "Key",
    "BOOK_DEPTHS",
    "LISTENER_ITEMS_MAX",
    "ACCOUNT_CHANNELS",
    "SEQ_CHANNELS",
]

log = logging.getLogger("gx.client.feeds")

T = TypeVar("T")
Key = tuple[str, str, str]  # channel, symbol ("" for account channels), interval ("" if none)

BOOK_DEPTHS = (1, 10, 25, 100)
LISTENER_ITEMS_MAX = 10_000  # items a watcher may fall behind before it fails with SlowConsumer
SUBSCRIBE_ATTEMPTS_MAX = 10  # per (re)subscribe, on retryable refusals (429, 5xx)
SUBSCRIBE_DELAY_S_MAX = 10.0
ACCOUNT_CHANNELS = frozenset({"executions", "balances", "positions", "deliveries", "provisioning"})
SEQ_CHANNELS = frozenset({"trades", "ticker", "candles", "index", "curve"})
_ACCOUNT_SEQ_CHANNELS = frozenset({"executions", "balances", "positions", "deliveries"})
_ACCOUNT_SEQ = ("account_seq", "prev_account_seq")
_PUBLIC_SEQ = ("seq", "prev_seq")


class FeedClosed(Exception):
    """The subscription ended: `unwatch` or `Client.close` was called."""


class SlowConsumer(Exception):
    """A watcher fell more than LISTENER_ITEMS_MAX items behind; its items were dropped."""


# ---------------------------------------------------------------------- listeners


class _Listener(Generic[T]):
    """One watcher's queue of items (or only the latest, for a book)."""

    def __init__(self, latest_only: bool) -> None:
        self.latest_only = latest_only
        self.items: deque[T] = deque()
        self.error: BaseException | None = None
        self.wakeup = asyncio.Event()

    def put(self, item: T) -> None:
        if self.error is not None:
            return
        if self.latest_only:
            self.items.clear()
        elif len(self.items) >= LISTENER_ITEMS_MAX:
            self.items.clear()
            self.fail(SlowConsumer(f"a watcher fell {LISTENER_ITEMS_MAX} items behind"))
            return
        self.items.append(item)
        self.wakeup.set()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.wakeup.set()

    async def get(self) -> T:
        while not self.items:
            if self.error is not None:
                raise self.error
            self.wakeup.clear()
            await self.wakeup.wait()
        return self.items.popleft()

    def take_all(self) -> list[T]:
        """Return and remove every item queued now (none if there are none)."""
        out = list(self.items)
        self.items.clear()
        return out


# ---------------------------------------------------------------------- views


class _View(Protocol):
    def items(self, msg: dict[str, Any]) -> list[Any]: ...

    def reset(self) -> None: ...


class _BookView:
    def __init__(self, symbol: str, depth: int) -> None:
        self.book = LocalBook(symbol, depth)

    def items(self, msg: dict[str, Any]) -> list[Any]:
        return [self.book] if self.book.apply(msg) else []

    def reset(self) -> None:
        self.book.invalidate()


class _ConvertView:
    """A stateless view: each push of `type` update becomes one item."""

    def __init__(self, convert: Callable[[dict[str, Any]], Any], types: tuple[str, ...]) -> None:
        self.convert = convert
        self.types = types

    def items(self, msg: dict[str, Any]) -> list[Any]:
        return [self.convert(msg)] if msg.get("type", "update") in self.types else []

    def reset(self) -> None:
        pass


class _TradesView:
    """A `trades` push carries the trades of one engine step: each becomes one Trade."""

    def items(self, msg: dict[str, Any]) -> list[Any]:
        if msg.get("type", "update") != "update":
            return []
        common = {"symbol": msg.get("symbol", ""), "seq": msg.get("seq", 0)}
        return [to_model({**common, **row}, Trade) for row in msg.get("trades") or []]

    def reset(self) -> None:
        pass


class _ExecutionsView:
    def items(self, msg: dict[str, Any]) -> list[Any]:
        if msg.get("type") == "snapshot":
            seq = msg.get("account_seq", 0)
            return [
                Execution(exec_type="snapshot", order=to_model(o, Order), account_seq=int(seq))
                for o in msg.get("orders") or []
            ]
        return [to_model(msg, Execution)]

    def reset(self) -> None:
        pass


class _DeliveriesView:
    """A snapshot becomes one `snapshot` item per current delivery; an update one item."""

    def items(self, msg: dict[str, Any]) -> list[Any]:
        if msg.get("type") == "snapshot":
            seq = int(msg.get("account_seq", 0))
            return [
                DeliveryUpdate(type="snapshot", delivery=to_model(d, Delivery), account_seq=seq)
                for d in msg.get("deliveries") or []
            ]
        return [to_model(msg, DeliveryUpdate)]

    def reset(self) -> None:
        pass


class _PositionsView:
    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}

    def items(self, msg: dict[str, Any]) -> list[Any]:
        if msg.get("type") == "snapshot":
            self.positions = {}
            for row in msg.get("positions") or []:
                position = to_model(row, Position)
                self.positions[position.symbol] = position
        else:
            position = to_model(msg, Position)
            if position.qty == 0:
                self.positions.pop(position.symbol, None)
            else:
                self.positions[position.symbol] = position
        return [list(self.positions.values())]

    def reset(self) -> None:
        self.positions = {}


def _view_for(channel: str, symbol: str, depth: int) -> _View:
    if channel == "book":
        return _BookView(symbol, depth)
    if channel == "trades":
        return _TradesView()
    if channel == "ticker":
        return _ConvertView(lambda m: to_model(m, Ticker), ("update", "snapshot"))
    if channel == "candles":
        return _ConvertView(lambda m: to_model(m, Candle), ("update", "snapshot"))
    if channel == "executions":
        return _ExecutionsView()
    if channel == "balances":
        return _ConvertView(lambda m: to_model(m, Balance), ("update", "snapshot"))
    if channel == "positions":
        return _PositionsView()
    if channel == "deliveries":
        return _DeliveriesView()
    if channel == "provisioning":
        return _ConvertView(lambda m: to_model(m, ProvisionRequest), ("request",))
    return _ConvertView(dict, ("update", "snapshot", "request"))


# ---------------------------------------------------------------------- subscriptions


def _stale(channel: str, seq: int, last_seq: int) -> bool:
    """Return whether a push was delivered before.

    Two executions may share an `account_seq` (both sides of a self-trade: the taker's
    `prev_account_seq` is then its own `account_seq`), so only an older account seq is stale.
    """
    return seq < last_seq if channel in _ACCOUNT_SEQ_CHANNELS else seq <= last_seq


class _Subscription:
    def __init__(self, key: Key, params: dict[str, Any], view: _View) -> None:
        self.key = key
        self.params = params  # subscribe params without resume_from_seq
        self.view = view
        self.listeners: set[_Listener[Any]] = set()
        self.generation = 0  # the connection this subscription was last sent on
        self.last_seq: int | None = None  # seq or account_seq of the last push accepted
        self.baseline = False  # whether prev_seq is checked (not right after a subscribe)
        self.resyncing = False
        self.heartbeat_seq: int | None = None  # a book's seq in the last heartbeat

    @property
    def channel(self) -> str:
        return self.key[0]

    def resume_seq(self) -> int | None:
        if isinstance(self.view, _BookView):
            return self.view.book.seq if self.view.book.synced else None
        if self.channel in SEQ_CHANNELS:
            return self.last_seq
        return None

    def publish(self, items: list[Any]) -> None:
        for item in items:
            for listener in self.listeners:
                listener.put(item)

    def fail(self, error: BaseException) -> None:
        for listener in self.listeners:
            listener.fail(error)


class Feeds:
    """Every subscription of one client, kept in step with the session's connections."""

    def __init__(self) -> None:
        self.session: WsSession | None = None
        self._subs: dict[Key, _Subscription] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def bind(self, session: WsSession) -> None:
        """Use `session` for subscribing (the session calls back into `on_*`)."""
        self.session = session

    def book(self, symbol: str) -> LocalBook | None:
        """Return the local book of a watched symbol, if any."""
        sub = self._subs.get(("book", symbol, ""))
        return sub.view.book if sub is not None and isinstance(sub.view, _BookView) else None

    # ------------------------------------------------------------------ watchers

    def watch(
        self, channel: str, symbol: str = "", *, depth: int = 0, interval: str = ""
    ) -> Watch[Any]:
        """Return a Watch over one channel (and symbol); it subscribes on first use."""
        if channel == "book" and depth not in BOOK_DEPTHS:
            raise ValueError(f"depth: expected one of {BOOK_DEPTHS}, found {depth}")
        if channel not in ACCOUNT_CHANNELS and not symbol:
            raise ValueError(f"symbol: channel {channel!r} needs a symbol")
        key: Key = (channel, "" if channel in ACCOUNT_CHANNELS else symbol, interval)
        params: dict[str, Any] = {"channel": channel}
        if key[1]:
            params["symbols"] = [symbol]
        if channel == "book":
            params["depth"] = depth
        if interval:
            params["interval"] = interval
        return Watch(self, key, params, depth)

    async def attach(self, key: Key, params: dict[str, Any], depth: int) -> _Listener[Any]:
        """Add a listener to a subscription, subscribing first if it is new."""
        session = self._session()
        if key[0] in ACCOUNT_CHANNELS and session.credentials is None:
            raise AuthError("NOT_LOGGED_ON", f"channel {key[0]!r} needs an API key", 401)
        sub = self._subs.get(key)
        listener: _Listener[Any] = _Listener(latest_only=key[0] == "book")
        if sub is not None:
            sub.listeners.add(listener)
            return listener
        sub = _Subscription(key, params, _view_for(key[0], key[1], depth))
        sub.listeners.add(listener)
        self._subs[key] = sub
        try:
            await session.wait_ready()
            if sub.generation != session.generation:
                await self._subscribe(sub, resume=False)
        except BaseException as error:
            if self._subs.get(key) is sub:
                del self._subs[key]
            sub.listeners.discard(listener)
            # Watchers that joined meanwhile share the failure instead of waiting forever.
            sub.fail(error if isinstance(error, Exception) else FeedClosed("subscribe cancelled"))
            raise
        return listener

    def detach(self, key: Key, listener: _Listener[Any]) -> None:
        """Remove a listener; the subscription itself stays until `unwatch`."""
        sub = self._subs.get(key)
        if sub is not None:
            sub.listeners.discard(listener)

    async def unwatch(self, key: Key) -> None:
        """End a subscription: unsubscribe and end its watchers with FeedClosed."""
        sub = self._subs.pop(key, None)
        if sub is None:
            return
        sub.fail(FeedClosed(f"{key[0]} {key[1]}: unwatched"))
        session = self._session()
        if session.connected:
            params = {k: v for k, v in sub.params.items() if k in ("channel", "symbols")}
            try:
                await session.request("unsubscribe", params)
            except GatewayError as error:
                log.info("unsubscribe %s: %s", key, error)

    async def close(self) -> None:
        """End every subscription's watchers and stop background resyncs."""
        for task in list(self._tasks):
            task.cancel()
        for sub in self._subs.values():
            sub.fail(FeedClosed("the client was closed"))
        self._subs.clear()

    # ------------------------------------------------------------------ session callbacks

    def on_connected(self, generation: int) -> None:
        """Renew every subscription on a new connection."""
        for sub in list(self._subs.values()):
            self._spawn(self._renew(sub, generation))

    def on_stopped(self, error: GatewayError) -> None:
        """Fail every watcher: the session stopped for good."""
        for sub in self._subs.values():
            sub.fail(error)
        self._subs.clear()

    def on_push(self, msg: dict[str, Any]) -> None:
        """Route one push to its subscription."""
        channel = str(msg.get("channel"))
        if channel == "heartbeat":
            self._on_heartbeat(msg)
            return
        if msg.get("type") == "resync_required":
            self._on_resync_required(channel, msg)
            return
        symbol = "" if channel in ACCOUNT_CHANNELS else str(msg.get("symbol") or "")
        sub = self._subs.get((channel, symbol, str(msg.get("interval") or "")))
        if sub is None:
            return  # unwatched, or a push of a subscription just ended
        if isinstance(sub.view, _BookView):
            self._on_book(sub, msg)
        elif self._in_sequence(sub, msg):
            sub.publish(sub.view.items(msg))

    # ------------------------------------------------------------------ internals

    def _session(self) -> WsSession:
        if self.session is None:
            raise RuntimeError("Feeds.bind(session) was not called")
        return self.session

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except NetworkError:
            pass  # the connection died: the next one renews every subscription
        except GatewayError as error:
            log.warning("resubscribe failed: %s", error)

    def _on_book(self, sub: _Subscription, msg: dict[str, Any]) -> None:
        try:
            sub.publish(sub.view.items(msg))
        except BookOutOfSync as error:
            if not sub.resyncing:
                log.warning("%s", error)
                self._spawn(self._resync(sub, unsubscribe=True))

    def _in_sequence(self, sub: _Subscription, msg: dict[str, Any]) -> bool:
        """Return whether to deliver a push; start a resync on a gap."""
        if sub.channel not in SEQ_CHANNELS and sub.channel not in _ACCOUNT_SEQ_CHANNELS:
            return True  # provisioning and unknown channels carry no sequence
        seq_field, prev_field = _ACCOUNT_SEQ if sub.channel in ACCOUNT_CHANNELS else _PUBLIC_SEQ
        seq, prev = msg.get(seq_field), msg.get(prev_field)
        if not isinstance(seq, int):
            return True
        if msg.get("type") == "snapshot":
            sub.last_seq, sub.baseline = seq, True
            return True
        if sub.last_seq is not None and _stale(sub.channel, seq, sub.last_seq):
            return False  # already delivered (a replay after a resume or resubscribe)
        if sub.baseline and isinstance(prev, int) and prev != sub.last_seq:
            if not sub.resyncing:
                log.warning(
                    "%s %s: %s gap: expected %s %s, found %s",
                    sub.channel,
                    sub.key[1],
                    seq_field,
                    prev_field,
                    sub.last_seq,
                    prev,
                )
                self._spawn(self._resync(sub, unsubscribe=True))
            return False
        sub.last_seq, sub.baseline = seq, True
        return True

    def _on_heartbeat(self, msg: dict[str, Any]) -> None:
        seqs = msg.get("seqs")
        if not isinstance(seqs, dict):
            return
        for name, seq in seqs.items():
            parts = str(name).split(":")  # "book:SYM", or "book:SYM:depth"
            if parts[0] != "book" or len(parts) < 2:
                continue
            symbol = parts[1]
            sub = self._subs.get(("book", symbol, ""))
            if sub is None or not isinstance(sub.view, _BookView) or not isinstance(seq, int):
                continue
            book, previous = sub.view.book, sub.heartbeat_seq
            sub.heartbeat_seq = seq
            # A whole heartbeat interval later the book must hold what the previous one showed.
            if previous is not None and book.synced and book.seq < previous and not sub.resyncing:
                log.warning(
                    "book %s: seq %d < heartbeat's %d; resyncing", symbol, book.seq, previous
                )
                self._spawn(self._resync(sub, unsubscribe=True))

    def _on_resync_required(self, channel: str, msg: dict[str, Any]) -> None:
        symbol = "" if channel in ACCOUNT_CHANNELS else str(msg.get("symbol") or "")
        for key, sub in list(self._subs.items()):
            if key[0] == channel and key[1] == symbol and not sub.resyncing:
                log.info("%s %s: resync required (%s)", channel, symbol, msg.get("reason"))
                self._spawn(self._resync(sub, unsubscribe=False, resume=False))

    async def _resync(self, sub: _Subscription, *, unsubscribe: bool, resume: bool = True) -> None:
        """Subscribe again: for a fresh snapshot (books, private channels) or resuming."""
        if sub.resyncing or self._subs.get(sub.key) is not sub:
            return
        sub.resyncing = True
        session = self._session()
        try:
            if unsubscribe:
                params = {k: v for k, v in sub.params.items() if k in ("channel", "symbols")}
                try:
                    await session.request("unsubscribe", params, wait=False)
                except NetworkError:
                    return  # the next connection subscribes again
                except GatewayError as error:
                    log.info("unsubscribe %s: %s", sub.key, error)
            renew = resume and (sub.channel in SEQ_CHANNELS)
            await self._subscribe(sub, resume=renew)
        finally:
            sub.resyncing = False

    async def _renew(self, sub: _Subscription, generation: int) -> None:
        """Subscribe again on connection `generation`, resuming where the channel allows."""
        session = self._session()
        if sub.generation == generation or session.generation != generation:
            return
        await self._subscribe(sub, resume=True)

    async def _subscribe(self, sub: _Subscription, *, resume: bool) -> None:
        """Send `subscribe`; on a lasting refusal end the subscription's watchers with it."""
        session = self._session()
        params = dict(sub.params)
        seq = sub.resume_seq() if resume else None
        if seq is not None:
            params["resume_from_seq"] = seq
        else:
            sub.view.reset()
            if sub.channel not in SEQ_CHANNELS:
                sub.last_seq = None
        sub.generation = session.generation
        sub.baseline = False
        for attempt in range(1, SUBSCRIBE_ATTEMPTS_MAX + 1):
            if sub.generation != session.generation:
                return  # the connection was replaced meanwhile: it renews the subscription
            try:
                result = await session.request("subscribe", params, wait=False)
            except NetworkError:
                if self._subs.get(sub.key) is not sub:
                    return
                raise
            except GatewayError as error:
                retry = error.retryable and attempt < SUBSCRIBE_ATTEMPTS_MAX
                if retry and self._subs.get(sub.key) is sub:
                    delay = max(error.retry_after_ms / 1000, 0.1 * 2.0**attempt)
                    await asyncio.sleep(min(delay, SUBSCRIBE_DELAY_S_MAX))
                    continue
                log.warning("subscribe %s refused: %s", sub.key, error)
                if self._subs.get(sub.key) is sub:
                    del self._subs[sub.key]
                sub.fail(error)
                raise
            if seq is not None and not result.get("resumed", False):
                log.info("%s %s: not resumed from %d; a snapshot follows", *sub.key[:2], seq)
            return


# ---------------------------------------------------------------------- the watch handle


class Watch(Generic[T]):
    """A watched channel: `async for item in watch` yields every item from now on, and
    `await watch` returns the next one (ccxt-pro style; the subscription stays open between
    awaits, so a loop of awaits does not resubscribe). `async for items in watch.batches()`
    yields lists: every item that arrived while the loop's body ran.
    """

    def __init__(self, feeds: Feeds, key: Key, params: dict[str, Any], depth: int) -> None:
        self._feeds = feeds
        self._key = key
        self._params = params
        self._depth = depth

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    def __await__(self) -> Generator[Any, None, T]:
        return self.next().__await__()

    async def next(self) -> T:
        """Return the next item; raise FeedClosed if the subscription ends first."""
        listener = await self._feeds.attach(self._key, self._params, self._depth)
        try:
            item: T = await listener.get()
            return item
        finally:
            self._feeds.detach(self._key, listener)

    async def batches(self) -> AsyncGenerator[list[T], None]:
        """Yield every item that arrived since the previous yield (at least one), oldest first;
        end when the subscription does. The watcher stays attached between yields, so a slow
        loop body loses nothing (up to LISTENER_ITEMS_MAX items, then SlowConsumer)."""
        listener = await self._feeds.attach(self._key, self._params, self._depth)
        try:
            while True:
                try:
                    first: T = await listener.get()
                except FeedClosed:
                    return
                yield [first, *listener.take_all()]
        finally:
            self._feeds.detach(self._key, listener)

    async def _iterate(self) -> AsyncIterator[T]:
        listener = await self._feeds.attach(self._key, self._params, self._depth)
        try:
            while True:
                try:
                    item: T = await listener.get()
                except FeedClosed:
                    return
                yield item
        finally:
            self._feeds.detach(self._key, listener)
