"""The gateway's public channels: books, trades, ticker, candles, index, curve from gx.marketdata.

`MarketFeed.apply(message, partition, offset)` takes each decoded market-data message
(schemas/marketdata.py) with its record position and returns the pushes to fan out, as
`(stream key, body)` pairs; each body is JSON encoded once for every subscriber of the stream and
has no `conn_seq` (the connection splices it in with `wire.with_conn_seq`). Stream keys:

    ("book", symbol, depth)         depth in BOOK_DEPTHS, computed only while watched
    ("trades", symbol)   ("ticker", symbol)   ("candles", symbol, "1m" | "1h" | "1d")
    ("index", gpu)       ("curve", "GPU.REGION.PRODUCT")

Books follow the per-symbol `seq` of BookSnapshot/BookDelta: a delta whose `prev_seq` is not the
current seq is a gap (the symbol is unsynced until the next snapshot); one with a seq at or below
the current one is a replay after a market-data restart and is ignored. Every other stream's `seq`
is the offset of its source record and `prev_seq` that of the stream's previous push.

A market-data restart republishes the whole log, so the replays of the other channels are dropped
too: trades by trade id, candles by (start, trade count), index and curve points older than the
latest, and anything about an instrument that has closed. A record redelivered at or below the
last offset applied on its partition changes nothing.

No I/O, no asyncio, no clock: the same records give the same pushes.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from typing import Any

import msgspec
import orjson

from exchange.gateway.ticker import TRADING, DayStats, status_fields, ticker_view
from exchange.wire import ErrorCode, Prices, WireError, qty_to_str
from schemas.marketdata import (
    BookDelta,
    BookSnapshot,
    Candle,
    ForwardCurvePoint,
    IndexPrice,
    InstrumentStatus,
    Level,
    MarketDataMessage,
    TradePrints,
)
from schemas.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE
from streams.marketdata.state import CHECKSUM_LEVELS, book_checksum

__all__ = [
    "BOOK_DEPTHS",
    "CANDLE_INTERVAL_NAMES",
    "HISTORY_MAX",
    "RESUME_BUFFER_MAX",
    "CLOSED_SYMBOLS_MAX",
    "FeedStats",
    "MarketFeed",
    "StreamKey",
]

StreamKey = tuple[str | int, ...]
Push = tuple[StreamKey, bytes]

BOOK_DEPTHS = (1, 10, 25, 100)  # depths a book subscription may ask for
BOOK_DEPTH_MAX = max(BOOK_DEPTHS)  # also the deepest REST book
CANDLE_INTERVAL_NAMES: dict[int, str] = {NS_PER_MINUTE: "1m", NS_PER_HOUR: "1h", NS_PER_DAY: "1d"}
HISTORY_MAX = 1000  # trades per symbol, and candles per symbol and interval, kept for REST
RESUME_BUFFER_MAX = 1000  # pushes kept per stream for `subscribe` with `resume_from_seq`
CLOSED_SYMBOLS_MAX = 100_000  # closed instruments remembered so that a replay cannot revive them
PRICE_STRINGS_MAX = 100_000  # cached price strings before the cache starts over

BID, ASK = 0, 1
_SIGN = (-1, 1)  # a level's sort key is sign x price, so that both sides sort best first
_NO_BOUND = 1 << 62  # the window bound of a side with fewer levels than the depth


class FeedStats(msgspec.Struct, kw_only=True):
    """Counters of the feed (since it started)."""

    messages: int = 0  # records applied
    redelivered: int = 0  # records at or below the last offset applied on their partition
    replayed: int = 0  # messages a market-data restart published again, ignored
    gaps: int = 0  # book deltas that did not follow the current seq (the symbol is unsynced)
    resyncs: int = 0  # snapshots that (re)synced a book
    unsynced_deltas: int = 0  # deltas ignored while their symbol waited for a snapshot
    closed: int = 0  # instruments that left the curve (gate closure) and were forgotten
    unknown: int = 0  # messages of an unknown type or candle interval, ignored


class _Stream:
    """One stream's last seq and its last pushes, for `resume_from_seq`."""

    __slots__ = ("seq", "floor", "bodies")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.floor = seq  # the oldest from_seq the buffer can still answer
        self.bodies: deque[tuple[int, bytes]] = deque()

    def push(self, seq: int, body: bytes, buffer_max: int) -> None:
        if len(self.bodies) >= buffer_max:
            self.floor = self.bodies.popleft()[0]
        # orjson's bytes keep their whole output buffer (about 4 KiB): a kept body is copied to
        # its size, or 1,000 kept per stream grow the gateway by megabytes a minute.
        self.bodies.append((seq, bytes(memoryview(body))))
        self.seq = seq

    def restart(self, seq: int) -> None:
        self.seq = self.floor = seq
        self.bodies.clear()

    def after(self, from_seq: int) -> list[bytes] | None:
        if not self.floor <= from_seq <= self.seq:
            return None
        out: list[bytes] = []
        for seq, body in reversed(self.bodies):
            if seq <= from_seq:
                break
            out.append(body)
        out.reverse()
        return out


class _View:
    """A watched depth of one book: its subscribers' count and its update stream."""

    __slots__ = ("depth", "watchers", "stream")

    def __init__(self, depth: int, seq: int) -> None:
        self.depth = depth
        self.watchers = 0
        self.stream = _Stream(seq)


class _Book:
    """One symbol's full L2 book and what its ticker last said."""

    __slots__ = (
        "symbol",
        "lots",
        "keys",
        "seq",
        "synced",
        "known",
        "ts_ns",
        "views",
        "snapshots",
        "best",
        "last",
        "last_trade_id",
        "status",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.lots: tuple[dict[int, int], dict[int, int]] = ({}, {})  # sort key -> lots, per side
        self.keys: tuple[list[int], list[int]] = ([], [])  # sort keys ascending = best first
        self.seq = 0
        self.synced = False
        self.known = False  # a book message arrived (a watch alone does not make a symbol)
        self.ts_ns = 0
        self.views: dict[int, _View] = {}
        self.snapshots: dict[int, bytes] = {}  # depth -> snapshot body at the current seq
        self.best = (0, 0, 0, 0)  # bid ticks, bid lots, ask ticks, ask lots, as last pushed
        self.last = (0, 0)  # last trade ticks, lots
        self.last_trade_id = 0
        self.status = TRADING  # the latest InstrumentStatus, as (status, reason, until, ts)

    def top(self) -> tuple[int, int, int, int]:
        if not self.synced:
            return (0, 0, 0, 0)
        bids, asks = self.keys
        bid = -bids[0] if bids else 0
        ask = asks[0] if asks else 0
        return (bid, self.lots[BID][-bid] if bid else 0, ask, self.lots[ASK][ask] if ask else 0)


class _Candles:
    """One symbol's candles of one interval, oldest first, and the latest (start, trades) seen."""

    __slots__ = ("rows", "mark")

    def __init__(self, history_max: int) -> None:
        self.rows: deque[dict[str, Any]] = deque(maxlen=history_max)
        self.mark = (-1, -1)


class _Curve:
    __slots__ = ("points", "ts_ns")

    def __init__(self) -> None:
        self.points: dict[str, tuple[int, dict[str, Any]]] = {}  # instrument -> (start, point)
        self.ts_ns = 0


def _bound(keys: list[int], depth: int) -> int:
    """The sort key of the depth-th level: levels at or below it are inside the window."""
    return keys[depth - 1] if len(keys) >= depth else _NO_BOUND


class MarketFeed:
    """Keep what the public channels and market REST queries serve; turn records into pushes."""

    def __init__(
        self,
        prices: Prices,
        history_max: int = HISTORY_MAX,
        resume_buffer_max: int = RESUME_BUFFER_MAX,
    ) -> None:
        if history_max <= 0:
            raise ValueError(f"history_max: expected > 0, found {history_max}")
        if resume_buffer_max <= 0:
            raise ValueError(f"resume_buffer_max: expected > 0, found {resume_buffer_max}")
        self.prices = prices
        self.history_max = history_max
        self.resume_buffer_max = resume_buffer_max
        self.stats = FeedStats()
        self._positions: dict[int, int] = {}  # partition -> last offset applied
        self._books: dict[str, _Book] = {}
        self._streams: dict[StreamKey, _Stream] = {}  # every stream but the books
        self._trades: dict[str, deque[dict[str, Any]]] = {}
        self._candles: dict[tuple[str, str], _Candles] = {}
        self._index: dict[str, dict[str, Any]] = {}
        self._index_ts: dict[str, int] = {}
        self._curves: dict[str, _Curve] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._price_strs: dict[int, str] = {}
        self.day = DayStats()  # the tickers' rolling 24 h figures

    # ------------------------------------------------------------------ records in, pushes out

    def apply(self, message: MarketDataMessage, partition: int, offset: int) -> list[Push]:
        """Apply one record of gx.marketdata; return the pushes to fan out, in order."""
        if offset <= self._positions.get(partition, -1):
            self.stats.redelivered += 1
            return []
        self._positions[partition] = offset
        self.stats.messages += 1
        if isinstance(message, BookDelta):
            return self._on_delta(message, offset)
        if isinstance(message, TradePrints):
            return self._on_trades(message, offset)
        if isinstance(message, BookSnapshot):
            return self._on_snapshot(message, offset)
        if isinstance(message, Candle):
            return self._on_candle(message, offset)
        if isinstance(message, IndexPrice):
            return self._on_index(message, offset)
        if isinstance(message, ForwardCurvePoint):
            return self._on_curve(message, offset)
        if isinstance(message, InstrumentStatus):
            return self._on_status(message, offset)
        self.stats.unknown += 1
        return []

    # ------------------------------------------------------------------ subscriptions

    def watch(self, key: StreamKey) -> None:
        """Count one more subscriber of a book depth; its updates are computed from now on.

        Keys of other channels are accepted and ignored: those streams are always produced.
        """
        if key[0] != "book":
            return
        symbol, depth = self._book_key(key)
        book = self._books.get(symbol)
        if book is None:  # subscribed before the symbol's first snapshot: it arrives as one
            book = self._books[symbol] = _Book(symbol)
        view = book.views.get(depth)
        if view is None:
            view = book.views[depth] = _View(depth, book.seq)
        view.watchers += 1

    def unwatch(self, key: StreamKey) -> None:
        """Count one subscriber of a book depth less; stop computing it at zero."""
        if key[0] != "book":
            return
        symbol, depth = self._book_key(key)
        book = self._books.get(symbol)
        view = book.views.get(depth) if book is not None else None
        if book is None or view is None:
            return  # the instrument closed meanwhile
        view.watchers -= 1
        if view.watchers <= 0:
            del book.views[depth]
            if not book.known and not book.views:
                del self._books[symbol]

    def snapshot(self, key: StreamKey) -> bytes | None:
        """The `"type": "snapshot"` body of a book stream at the current seq; None if unsynced."""
        symbol, depth = self._book_key(key)
        book = self._books.get(symbol)
        if book is None or not book.synced:
            return None
        body = book.snapshots.get(depth)
        if body is None:
            body = book.snapshots[depth] = self._snapshot_body(book, depth)
        return body

    def resume(self, key: StreamKey, from_seq: int) -> list[bytes] | None:
        """The bodies pushed on a stream after `from_seq`; None when they are no longer all held.

        Book depths are buffered only while watched (from the watch on) and synced.
        """
        if key[0] == "book":
            symbol, depth = self._book_key(key)
            book = self._books.get(symbol)
            view = book.views.get(depth) if book is not None and book.synced else None
            return None if view is None else view.stream.after(from_seq)
        stream = self._streams.get(key)
        return None if stream is None else stream.after(from_seq)

    def last_seq(self, key: StreamKey) -> int:
        """The seq of a stream's latest push (of a book: its current seq); 0 when none."""
        if key[0] == "book":
            book = self._books.get(str(key[1]))
            return book.seq if book is not None else 0
        stream = self._streams.get(key)
        return stream.seq if stream is not None else 0

    # ------------------------------------------------------------------ REST and the router

    def symbols(self) -> list[str]:
        """Symbols with a book (listed and not closed), synced or not."""
        return sorted(s for s, book in self._books.items() if book.known)

    def has_book(self, symbol: str) -> bool:
        """Whether `symbol` is one of `symbols()` (without listing them all)."""
        book = self._books.get(symbol)
        return book is not None and book.known

    def book(self, symbol: str, depth: int) -> dict[str, Any] | None:
        """`GET /book`: the top `depth` levels per side; None when unknown or unsynced."""
        if not 1 <= depth <= BOOK_DEPTH_MAX:
            raise WireError(
                ErrorCode.BAD_REQUEST, f"depth: expected 1 to {BOOK_DEPTH_MAX}, found {depth}"
            )
        book = self._books.get(symbol)
        if book is None or not book.synced:
            return None
        bids, asks = self._top(book, BID, depth), self._top(book, ASK, depth)
        return {
            "symbol": symbol,
            "seq": book.seq,
            "bids": bids,
            "asks": asks,
            "checksum": book_checksum(asks, bids),
            "ts_ns": str(book.ts_ns),
        }

    def trades(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        """`GET /trades`: up to `limit` of the last trades, newest first (at most history_max)."""
        _check_limit(limit)
        rows = self._trades.get(symbol)
        if not rows:
            return []
        out: list[dict[str, Any]] = []
        for row in reversed(rows):
            if len(out) >= limit:
                break
            out.append(dict(row))
        return out

    def candles(self, symbol: str, interval: str, limit: int) -> list[dict[str, Any]]:
        """`GET /candles`: up to `limit` of the last candles of an interval, oldest first."""
        _check_limit(limit)
        if interval not in CANDLE_INTERVAL_NAMES.values():
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"interval: expected one of {', '.join(CANDLE_INTERVAL_NAMES.values())}, "
                f"found {interval!r}",
            )
        found = self._candles.get((symbol, interval))
        if found is None:
            return []
        rows = list(found.rows)
        return [dict(row) for row in rows[-limit:]]

    def index(self, gpu: str) -> dict[str, Any] | None:
        """`GET /index`: the latest index price of a GPU model; None before its first."""
        found = self._index.get(gpu)
        return None if found is None else dict(found)

    def curve(self, name: str) -> list[dict[str, Any]]:
        """`GET /curve`: the active points of a curve (`GPU.REGION.PRODUCT`) by delivery start."""
        found = self._curves.get(name)
        if found is None:
            return []
        ordered = sorted(found.points.items(), key=lambda item: (item[1][0], item[0]))
        return [dict(point) for _, (_, point) in ordered]

    def ticker(self, symbol: str) -> dict[str, Any] | None:
        """`GET /ticker`: top of book, last trade and rolling 24 h figures; None when unknown."""
        book = self._books.get(symbol)
        if book is None or not book.known:
            return None
        rows = self._trades.get(symbol)
        ts_ns = max(book.ts_ns, int(rows[-1]["ts_ns"]) if rows else 0)
        minutes = self.day.window(symbol)
        return ticker_view(symbol, book.top(), book.last, ts_ns, minutes, self.prices, book.status)

    def best(self, symbol: str) -> tuple[int, int, int, int]:
        """Best bid ticks, bid lots, ask ticks, ask lots; 0 where none or the book is unsynced."""
        book = self._books.get(symbol)
        return (0, 0, 0, 0) if book is None else book.top()

    def ask_levels(self, symbol: str) -> list[tuple[int, int]]:
        """Every ask level (ticks, lots), best first; empty when unknown or unsynced."""
        book = self._books.get(symbol)
        if book is None or not book.synced:
            return []
        lots = book.lots[ASK]
        return [(k, lots[k]) for k in book.keys[ASK]]

    # ------------------------------------------------------------------ books

    def _on_snapshot(self, m: BookSnapshot, offset: int) -> list[Push]:
        if m.symbol in self._closed:
            self.stats.replayed += 1
            return []
        book = self._books.get(m.symbol)
        if book is None:
            book = self._books[m.symbol] = _Book(m.symbol)
        book.known = True
        if book.synced and m.seq <= book.seq:
            if m.seq < book.seq:
                self.stats.replayed += 1
            return []  # the periodic full book at our seq: nothing new
        self.stats.resyncs += 1
        for side, levels in ((BID, m.bids), (ASK, m.asks)):
            sign = _SIGN[side]
            book.lots[side].clear()
            book.lots[side].update((sign * price, lots) for price, lots in levels if lots > 0)
            book.keys[side][:] = sorted(book.lots[side])
        book.seq, book.ts_ns, book.synced = m.seq, m.ts_ns, True
        book.snapshots.clear()
        out: list[Push] = []
        for depth, view in book.views.items():
            body = book.snapshots[depth] = self._snapshot_body(book, depth)
            view.stream.restart(book.seq)  # a client older than this snapshot must start over
            out.append((("book", book.symbol, depth), body))
        self._ticker_if_changed(book, offset, m.ts_ns, out)
        return out

    def _on_delta(self, m: BookDelta, offset: int) -> list[Push]:
        book = self._books.get(m.symbol)
        if book is None:
            if m.symbol in self._closed:
                self.stats.replayed += 1
                return []
            book = self._books[m.symbol] = _Book(m.symbol)
        book.known = True
        if not book.synced:
            self.stats.unsynced_deltas += 1
            return []
        if m.seq <= book.seq:
            self.stats.replayed += 1
            return []
        if m.prev_seq != book.seq:
            self.stats.gaps += 1
            book.synced = False
            book.snapshots.clear()
            return []
        views = list(book.views.values())
        bounds = [(_bound(book.keys[BID], v.depth), _bound(book.keys[ASK], v.depth)) for v in views]
        old_bids = _apply_side(book.lots[BID], book.keys[BID], -1, m.bids)
        old_asks = _apply_side(book.lots[ASK], book.keys[ASK], 1, m.asks)
        book.seq, book.ts_ns = m.seq, m.ts_ns
        if book.snapshots:
            book.snapshots.clear()
        out: list[Push] = []
        checksums: dict[int, int] = {}  # levels covered -> checksum, shared by deep views
        for view, (bid_bound, ask_bound) in zip(views, bounds, strict=True):
            depth = view.depth
            covered = min(depth, CHECKSUM_LEVELS)
            checksum = checksums.get(covered)
            if checksum is None:
                checksum = checksums[covered] = book_checksum(
                    self._top(book, ASK, covered), self._top(book, BID, covered)
                )
            body = orjson.dumps(
                {
                    "channel": "book",
                    "type": "update",
                    "symbol": book.symbol,
                    "depth": depth,
                    "seq": m.seq,
                    "prev_seq": m.seq - 1,
                    "bids": self._window_changes(book, BID, old_bids, bid_bound, depth),
                    "asks": self._window_changes(book, ASK, old_asks, ask_bound, depth),
                    "checksum": checksum,
                    "ts_ns": str(m.ts_ns),
                }
            )
            view.stream.push(m.seq, body, self.resume_buffer_max)
            out.append((("book", book.symbol, depth), body))
        self._ticker_if_changed(book, offset, m.ts_ns, out)
        return out

    def _window_changes(
        self, book: _Book, side: int, old: dict[int, int], old_bound: int, depth: int
    ) -> list[list[str]]:
        """The levels of a top-`depth` window that a delta changed, entered or left, best first.

        `old` maps each sort key the delta named to its lots before; `old_bound` is the window's
        bound before. Levels that only moved across the bound number at most the levels changed,
        so the work stays proportional to the delta, not to the depth.
        """
        keys, lots = book.keys[side], book.lots[side]
        new_bound = _bound(keys, depth)
        send: dict[int, int] = {}
        for k, before in old.items():
            now = lots.get(k, 0)
            was_in = before > 0 and k <= old_bound
            if now > 0 and k <= new_bound:
                if not was_in or now != before:
                    send[k] = now
            elif was_in:
                send[k] = 0
        if new_bound < old_bound:  # levels inserted above pushed untouched ones out
            for k in keys[depth : bisect.bisect_right(keys, old_bound)]:
                if k not in old:
                    send[k] = 0
        elif new_bound > old_bound:  # levels removed above pulled untouched ones in
            for k in keys[bisect.bisect_right(keys, old_bound) : depth]:
                if k not in old:
                    send[k] = lots[k]
        if not send:
            return []
        sign, price_str = _SIGN[side], self._price_str
        return [[price_str(sign * k), qty_to_str(send[k])] for k in sorted(send)]

    def _top(self, book: _Book, side: int, depth: int) -> list[list[str]]:
        """The best `depth` levels of a side as wire strings."""
        sign, lots, price_str = _SIGN[side], book.lots[side], self._price_str
        return [[price_str(sign * k), qty_to_str(lots[k])] for k in book.keys[side][:depth]]

    def _snapshot_body(self, book: _Book, depth: int) -> bytes:
        bids, asks = self._top(book, BID, depth), self._top(book, ASK, depth)
        return orjson.dumps(
            {
                "channel": "book",
                "type": "snapshot",
                "symbol": book.symbol,
                "depth": depth,
                "seq": book.seq,
                "bids": bids,
                "asks": asks,
                "checksum": book_checksum(asks, bids),
                "ts_ns": str(book.ts_ns),
            }
        )

    def _book_key(self, key: StreamKey) -> tuple[str, int]:
        if len(key) != 3 or key[0] != "book" or not isinstance(key[1], str):
            raise WireError(
                ErrorCode.BAD_REQUEST, f"key: expected ('book', symbol, depth), found {key!r}"
            )
        depth = key[2]
        if not isinstance(depth, int) or depth not in BOOK_DEPTHS:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"depth: expected one of {', '.join(map(str, BOOK_DEPTHS))}, found {depth!r}",
            )
        return key[1], depth

    # ------------------------------------------------------------------ trades and ticker

    def _on_trades(self, m: TradePrints, offset: int) -> list[Push]:
        """A symbol's trades of one gx.events record: one `trades` push and one ticker push."""
        if m.symbol in self._closed:
            self.stats.replayed += 1
            return []
        book = self._books.get(m.symbol)
        if book is None:
            book = self._books[m.symbol] = _Book(m.symbol)
        book.known = True
        fresh = [t for t in m.trades if t.trade_id > book.last_trade_id]
        if not fresh:
            self.stats.replayed += 1
            return []
        last = fresh[-1]
        book.last_trade_id, book.last = last.trade_id, (last.price_ticks, last.lots)
        rows = self._trades.get(m.symbol)
        if rows is None:
            rows = self._trades[m.symbol] = deque(maxlen=self.history_max)
        price_str = self._price_str
        batch = [
            {
                "trade_id": t.trade_id,
                "price": price_str(t.price_ticks),
                "qty": qty_to_str(t.lots),
                "side": t.aggressor_side,
                "ts_ns": str(t.ts_ns),
            }
            for t in fresh
        ]
        rows.extend(batch)
        self.day.add(m.symbol, fresh)
        key: StreamKey = ("trades", m.symbol)
        body = self._publish(
            key, offset, {"trades": [{**row} for row in batch], "ts_ns": str(m.ts_ns)}
        )
        out: list[Push] = [(key, body)]
        book.best = book.top()  # unsynced since the last book push: the ticker says so (null)
        self._ticker(book, offset, m.ts_ns, out)
        return out

    def _on_status(self, m: InstrumentStatus, offset: int) -> list[Push]:
        """A halt or a resumption: one ticker push that carries the instrument's new status."""
        book = self._books.get(m.symbol)
        if m.symbol in self._closed or book is None or not book.known:
            self.stats.replayed += 1  # a status always follows the instrument's first book
            return []
        status = (m.status, m.reason, m.until_ns, m.ts_ns)
        # A market-data restart republishes the statuses in order: older or equal ones are replays.
        if m.ts_ns < book.status[3] or (m.ts_ns == book.status[3] and status == book.status):
            self.stats.replayed += 1
            return []
        book.status = status
        out: list[Push] = []
        self._ticker(book, offset, m.ts_ns, out)
        return out

    def _publish(self, key: StreamKey, offset: int, fields: dict[str, Any]) -> bytes:
        """Encode an update of a record-offset stream (`seq` = offset), keep it for resume."""
        stream = self._stream(key)
        body = orjson.dumps(
            {
                "channel": key[0],
                "type": "update",
                "symbol": key[1],
                "seq": offset,
                "prev_seq": stream.seq,
                **fields,
            }
        )
        stream.push(offset, body, self.resume_buffer_max)
        return body

    def _ticker_if_changed(self, book: _Book, offset: int, ts_ns: int, out: list[Push]) -> None:
        best = book.top()
        if best != book.best:
            book.best = best
            self._ticker(book, offset, ts_ns, out)

    def _ticker(self, book: _Book, offset: int, ts_ns: int, out: list[Push]) -> None:
        """Push the ticker of `book.best` and `book.last` with the rolling 24 h figures."""
        bid, bid_lots, ask, ask_lots = book.best
        last, last_lots = book.last
        price_str = self._price_str
        key: StreamKey = ("ticker", book.symbol)
        body = self._publish(
            key,
            offset,
            {
                "bid": price_str(bid) if bid else None,
                "bid_qty": qty_to_str(bid_lots) if bid else None,
                "ask": price_str(ask) if ask else None,
                "ask_qty": qty_to_str(ask_lots) if ask else None,
                "last": price_str(last) if last else None,
                "last_qty": qty_to_str(last_lots) if last else None,
                **self.day.figures(book.symbol, self.prices),
                **status_fields(book.status),
                "ts_ns": str(ts_ns),
            },
        )
        out.append((key, body))

    # ------------------------------------------------------------------ candles, index, curve

    def _on_candle(self, m: Candle, offset: int) -> list[Push]:
        interval = CANDLE_INTERVAL_NAMES.get(m.interval_ns)
        if interval is None:
            self.stats.unknown += 1
            return []
        if m.symbol in self._closed:
            self.stats.replayed += 1
            return []
        candles = self._candles.get((m.symbol, interval))
        if candles is None:
            candles = self._candles[(m.symbol, interval)] = _Candles(self.history_max)
        # A bucket only grows and buckets only move forward: anything else is a replay.
        mark = (m.start_ns, m.trades)
        if mark <= candles.mark:
            self.stats.replayed += 1
            return []
        price_str = self._price_str
        row = {
            "start_ns": str(m.start_ns),
            "open": price_str(m.open_ticks),
            "high": price_str(m.high_ticks),
            "low": price_str(m.low_ticks),
            "close": price_str(m.close_ticks),
            "volume": qty_to_str(m.volume_lots),
            "trades": m.trades,
        }
        if candles.rows and m.start_ns == candles.mark[0]:
            candles.rows[-1] = row
        else:
            candles.rows.append(row)
        candles.mark = mark
        key: StreamKey = ("candles", m.symbol, interval)
        body = self._publish(key, offset, {"interval": interval, **row, "ts_ns": str(m.ts_ns)})
        return [(key, body)]

    def _on_index(self, m: IndexPrice, offset: int) -> list[Push]:
        if m.ts_ns < self._index_ts.get(m.symbol, 0):
            self.stats.replayed += 1
            return []
        self._index_ts[m.symbol] = m.ts_ns
        price = self._price_str(m.price_ticks) if m.price_ticks else None
        volume = qty_to_str(m.volume_gpu_hours)
        self._index[m.symbol] = {
            "gpu": m.symbol,
            "price": price,
            "volume_gpu_hours": volume,
            "trades": m.trades,
            "ts_ns": str(m.ts_ns),
        }
        key: StreamKey = ("index", m.symbol)
        body = self._publish(
            key,
            offset,
            {"price": price, "volume_gpu_hours": volume, "trades": m.trades, "ts_ns": str(m.ts_ns)},
        )
        return [(key, body)]

    def _on_curve(self, m: ForwardCurvePoint, offset: int) -> list[Push]:
        curve = self._curves.get(m.symbol)
        if curve is None:
            curve = self._curves[m.symbol] = _Curve()
        if m.instrument in self._closed or m.ts_ns < curve.ts_ns:
            self.stats.replayed += 1
            return []
        curve.ts_ns = m.ts_ns
        price_str = self._price_str
        point = {
            "symbol": m.instrument,
            "start_ns": str(m.start_ns),
            "hours": m.hours,
            "last": price_str(m.last_ticks) if m.last_ticks else None,
            "bid": price_str(m.bid_ticks) if m.bid_ticks else None,
            "ask": price_str(m.ask_ticks) if m.ask_ticks else None,
        }
        if m.active:
            curve.points[m.instrument] = (m.start_ns, point)
        else:
            curve.points.pop(m.instrument, None)
        key: StreamKey = ("curve", m.symbol)
        body = self._publish(
            key,
            offset,
            {
                "instrument": m.instrument,
                "start_ns": point["start_ns"],
                "hours": m.hours,
                "last": point["last"],
                "bid": point["bid"],
                "ask": point["ask"],
                "active": m.active,
                "ts_ns": str(m.ts_ns),
            },
        )
        if not m.active:
            self._close(m.instrument)
        return [(("curve", m.symbol), body)]

    def _close(self, symbol: str) -> None:
        """Forget a closed instrument (gate closure) so that memory follows the listed ones."""
        self.stats.closed += 1
        self._closed[symbol] = None
        if len(self._closed) > CLOSED_SYMBOLS_MAX:
            self._closed.popitem(last=False)
        self._books.pop(symbol, None)
        self._trades.pop(symbol, None)
        self.day.forget(symbol)
        self._streams.pop(("trades", symbol), None)
        self._streams.pop(("ticker", symbol), None)
        for interval in CANDLE_INTERVAL_NAMES.values():
            self._candles.pop((symbol, interval), None)
            self._streams.pop(("candles", symbol, interval), None)

    # ------------------------------------------------------------------ helpers

    def _stream(self, key: StreamKey) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(0)
        return stream

    def _price_str(self, ticks: int) -> str:
        # Prices.to_str goes through Decimal; a book reuses a few hundred prices all day.
        text = self._price_strs.get(ticks)
        if text is None:
            if len(self._price_strs) >= PRICE_STRINGS_MAX:
                self._price_strs.clear()
            text = self._price_strs[ticks] = self.prices.to_str(ticks)
        return text


def _apply_side(
    lots: dict[int, int], keys: list[int], sign: int, levels: tuple[Level, ...]
) -> dict[int, int]:
    """Apply a delta's levels (absolute lots, 0 = gone) to one side; return key -> lots before."""
    before: dict[int, int] = {}
    for price, now in levels:
        k = sign * price
        had = lots.get(k, 0)
        before.setdefault(k, had)
        if now > 0:
            if not had:
                bisect.insort(keys, k)
            lots[k] = now
        elif had:
            del lots[k]
            del keys[bisect.bisect_left(keys, k)]
    return before


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise WireError(ErrorCode.BAD_REQUEST, f"limit: expected >= 1, found {limit}")
