"""Market data as a pure state machine over engine events: L2 books, trades, candles, index, curve.

`MarketData.apply(event)` takes the engine's events in log order and returns the market-data
messages (schemas/marketdata.py) of every command that is complete. A command is complete
when the next event of its shard carries another `input_offset` (or on `flush`): within one command
the taker's fills and its IOC remainder cancel happen together, so books are only published at
command boundaries, where the engine's invariant holds: an order with lots left rests in the book.

The L2 book is kept from each live order's (symbol, side, price, remaining lots). At the end of a
command the orders it touched move their old contribution out of the levels and their new one in;
every level whose total differs from before the command goes into one `BookDelta` per symbol.

No I/O, no clock: time is the events' `ts_event`. The same events give the same messages.
"""

from __future__ import annotations

import bisect
import zlib
from collections import deque
from collections.abc import Sequence

import msgspec

from schemas import events as e
from schemas.codes import HaltReason, OrderType, Side, TimeInForce
from schemas.marketdata import (
    BookDelta,
    BookSnapshot,
    Candle,
    ForwardCurvePoint,
    IndexPrice,
    InstrumentStatus,
    Level,
    MarketDataMessage,
    Trade,
    TradePrints,
)
from schemas.symbols import SymbolError, parse_symbol
from schemas.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE

__all__ = [
    "CANDLE_INTERVALS_NS",
    "INDEX_WINDOW_NS",
    "CHECKSUM_LEVELS",
    "MarketData",
    "MarketDataStats",
    "book_checksum",
    "curve_name",
]

CANDLE_INTERVALS_NS = (NS_PER_MINUTE, NS_PER_HOUR, NS_PER_DAY)
INDEX_WINDOW_NS = NS_PER_DAY
CHECKSUM_LEVELS = 10  # levels per side covered by a book checksum
BUY, SELL = 0, 1


def book_checksum(asks: Sequence[Sequence[object]], bids: Sequence[Sequence[object]]) -> int:
    """CRC-32 (unsigned) of a book's top CHECKSUM_LEVELS levels per side: asks, then bids.

    Pass each side best first (asks ascending, bids descending). Each level is written
    `price:qty`, levels are joined by `,`, and the asks part and the bids part by `|`. The
    gateway's books pass the strings they send (`["2.400", "5"]`: the checksum of
    exchange/wire.py and API.md, which clients recompute); gx.marketdata's books pass their
    integer (price_ticks, lots) levels.
    """
    text = (
        ",".join(f"{p}:{q}" for p, q in asks[:CHECKSUM_LEVELS])
        + "|"
        + ",".join(f"{p}:{q}" for p, q in bids[:CHECKSUM_LEVELS])
    )
    return zlib.crc32(text.encode())


def curve_name(gpu: str, region: str, product: str) -> str:
    """The forward curve's key: `GPU.REGION.PRODUCT`."""
    return f"{gpu}.{region}.{product}"


class MarketDataStats(msgspec.Struct, kw_only=True):
    """Counters of the state machine."""

    events: int = 0
    commands: int = 0  # commands completed (that had at least one market-data event)
    messages: int = 0
    unknown_orders: int = 0  # order events for an order never accepted in the log seen
    not_resting: int = 0  # an order left with lots that cannot rest (should never happen)


class _Order:
    __slots__ = ("symbol", "side", "price", "lots", "can_rest")

    def __init__(self, symbol: str, side: int, price: int, lots: int, can_rest: bool) -> None:
        self.symbol, self.side, self.price, self.lots = symbol, side, price, lots
        self.can_rest = can_rest

    def key(self) -> tuple[str, int, int, int]:
        return (self.symbol, self.side, self.price, self.lots)


class _Book:
    """One symbol's levels: price -> lots per side, and each side's prices kept sorted ascending.

    The sorted lists make the best price, the checksum's top levels and a snapshot's order a
    slice instead of a sort or heap pass per command (bisect on a few hundred ints is a memmove).
    """

    __slots__ = ("levels", "prices", "seq", "last_ticks", "curve")

    def __init__(self) -> None:
        self.levels: tuple[dict[int, int], dict[int, int]] = ({}, {})  # price -> lots per side
        self.prices: tuple[list[int], list[int]] = ([], [])  # each side's prices, ascending
        self.seq = 0
        self.last_ticks = 0
        self.curve = (0, 0, 0)  # (last, bid, ask) last published

    def set_level(self, side: int, price: int, lots: int) -> None:
        """Set a level's total lots (0 removes it)."""
        levels, prices = self.levels[side], self.prices[side]
        if lots:
            if price not in levels:
                bisect.insort(prices, price)
            levels[price] = lots
        elif levels.pop(price, None) is not None:
            del prices[bisect.bisect_left(prices, price)]

    def best(self, side: int) -> int:
        prices = self.prices[side]
        if not prices:
            return 0
        return prices[-1] if side == BUY else prices[0]

    def sorted_levels(self, side: int, depth: int | None = None) -> tuple[Level, ...]:
        """The side's levels best first, `depth` of them (None: all)."""
        levels, prices = self.levels[side], self.prices[side]
        if side == BUY:
            order = prices[::-1] if depth is None else prices[: -depth - 1 : -1]
        else:
            order = prices if depth is None else prices[:depth]
        return tuple((p, levels[p]) for p in order)

    def checksum(self) -> int:
        return book_checksum(
            self.sorted_levels(SELL, CHECKSUM_LEVELS), self.sorted_levels(BUY, CHECKSUM_LEVELS)
        )


class _Instrument(msgspec.Struct, frozen=True):
    gpu: str
    region: str
    product: str
    start_ns: int
    hours: int


class _Index:
    __slots__ = ("trades", "notional", "gpu_hours", "lots")

    def __init__(self) -> None:
        self.trades: deque[tuple[int, int, int, int]] = deque()  # (ts, notional, gpu_hours, lots)
        self.notional = self.gpu_hours = self.lots = 0


class _Command:
    """What one group of events (a command, or a record of whole commands) did, until complete."""

    __slots__ = ("offset", "ts_ns", "touched", "trades", "listed", "closed", "statuses")

    def __init__(self, offset: int) -> None:
        self.offset = offset  # the group key: input offset or gx.events record offset
        self.ts_ns = 0
        self.touched: dict[int, tuple[str, int, int, int] | None] = {}  # order id -> state before
        self.trades: list[e.TradeExecuted] = []
        self.listed: list[str] = []
        self.closed: list[str] = []
        self.statuses: list[e.InstrumentHalted | e.InstrumentResumed] = []


_MARKET_EVENTS = (
    e.OrderAccepted,
    e.OrderCancelled,
    e.OrderExpired,
    e.OrderAmended,
    e.TradeExecuted,
    e.InstrumentListed,
    e.InstrumentClosed,
    e.InstrumentHalted,
    e.InstrumentResumed,
)


class MarketData:
    """Turn engine events into market-data messages; feed events in log order per shard."""

    def __init__(self, index_window_ns: int = INDEX_WINDOW_NS, snapshot_every: int = 0) -> None:
        """`snapshot_every` N > 0: follow every N-th delta of a symbol with a full snapshot."""
        if index_window_ns <= 0:
            raise ValueError(f"index_window_ns: expected > 0, found {index_window_ns}")
        if snapshot_every < 0:
            raise ValueError(f"snapshot_every: expected >= 0, found {snapshot_every}")
        self.index_window_ns = index_window_ns
        self.snapshot_every = snapshot_every
        self.stats = MarketDataStats()
        self.now_ns = 0  # the latest ts_event of a completed command
        self._orders: dict[int, _Order] = {}
        self._books: dict[str, _Book] = {}
        self._instruments: dict[str, _Instrument] = {}
        self._candles: dict[tuple[str, int], list[int]] = {}  # [start, o, h, l, c, volume, n]
        self._index: dict[str, _Index] = {}
        self._pending: dict[int, _Command] = {}  # shard -> its incomplete command

    # ------------------------------------------------------------------ public API

    def apply(self, event: e.Event, group: int | None = None) -> list[MarketDataMessage]:
        """Take the next event; return the messages of the group(s) it shows to be complete.

        Events are published in groups: by default a group is one command (its `input_offset`);
        a caller that knows better passes `group` (the process passes the gx.events record,
        which holds whole commands) and calls `flush` when the group ends.
        """
        self.stats.events += 1
        out: list[MarketDataMessage] = []
        key = event.input_offset if group is None else group
        pending = self._pending.get(event.shard)
        if pending is not None and pending.offset != key:
            out += self.flush(event.shard)
            pending = None
        if not isinstance(event, _MARKET_EVENTS):
            return out
        if pending is None:
            pending = self._pending[event.shard] = _Command(key)
        pending.ts_ns = max(pending.ts_ns, event.ts_event)
        self._record(pending, event)
        return out

    def flush(self, shard: int | None = None) -> list[MarketDataMessage]:
        """Complete the pending command of `shard` (of every shard if None); return its messages."""
        shards = sorted(self._pending) if shard is None else [shard]
        out: list[MarketDataMessage] = []
        for s in shards:
            command = self._pending.pop(s, None)
            if command is not None:
                out += self._finish(command)
        self.stats.messages += len(out)
        return out

    def pending_shards(self) -> list[int]:
        """Shards with an incomplete command."""
        return sorted(self._pending)

    def symbols(self) -> list[str]:
        """Symbols with a book (listed and not closed)."""
        return sorted(self._books)

    def levels(self, symbol: str) -> tuple[dict[int, int], dict[int, int]]:
        """Copies of the book of `symbol`: (bids, asks) as price_ticks -> lots, unordered."""
        book = self._books.get(symbol)
        if book is None:
            raise KeyError(f"symbol: no book for {symbol!r}")
        return dict(book.levels[BUY]), dict(book.levels[SELL])

    def snapshot(self, symbol: str, depth: int | None = None) -> BookSnapshot:
        """The book of `symbol` after its last delta, `depth` levels per side (None: all)."""
        book = self._books.get(symbol)
        if book is None:
            raise KeyError(f"symbol: no book for {symbol!r}")
        return BookSnapshot(
            symbol=symbol,
            ts_ns=self.now_ns,
            seq=book.seq,
            bids=book.sorted_levels(BUY, depth),
            asks=book.sorted_levels(SELL, depth),
            checksum=book.checksum(),
        )

    # ------------------------------------------------------------------ collecting a command

    def _record(self, command: _Command, event: e.Event) -> None:
        if isinstance(event, e.OrderAccepted):
            can_rest = event.order_type == OrderType.LIMIT and event.tif in (
                TimeInForce.GTC,
                TimeInForce.GTD,
            )
            side = BUY if event.side == Side.BUY else SELL
            order = _Order(event.symbol, side, event.price_ticks, event.lots, can_rest)
            command.touched.setdefault(event.order_id, None)
            self._orders[event.order_id] = order
        elif isinstance(event, e.TradeExecuted):
            for order_id in (event.maker_order_id, event.taker_order_id):
                touched = self._touch(command, order_id)
                if touched is not None:
                    touched.lots -= event.lots
            command.trades.append(event)
        elif isinstance(event, e.OrderCancelled):
            touched = self._touch(command, event.order_id)
            if touched is not None:
                touched.lots = event.lots_remaining
        elif isinstance(event, e.OrderExpired):
            touched = self._touch(command, event.order_id)
            if touched is not None:
                touched.lots -= event.lots
        elif isinstance(event, e.OrderAmended):
            touched = self._touch(command, event.order_id)
            if touched is not None:
                touched.price, touched.lots = event.price_ticks, event.lots
        elif isinstance(event, e.InstrumentListed):
            self._instruments[event.symbol] = _Instrument(
                event.gpu, event.region, event.product, event.start_ns, event.hours
            )
            self._books.setdefault(event.symbol, _Book())
            command.listed.append(event.symbol)
        elif isinstance(event, e.InstrumentClosed):
            command.closed.append(event.symbol)
        elif isinstance(event, e.InstrumentHalted | e.InstrumentResumed):
            command.statuses.append(event)

    def _touch(self, command: _Command, order_id: int) -> _Order | None:
        order = self._orders.get(order_id)
        if order is None:
            self.stats.unknown_orders += 1
            return None
        if order_id not in command.touched:
            command.touched[order_id] = order.key()
        return order

    # ------------------------------------------------------------------ completing a command

    def _finish(self, command: _Command) -> list[MarketDataMessage]:
        self.stats.commands += 1
        self.now_ns = max(self.now_ns, command.ts_ns)
        ts = self.now_ns
        out: list[MarketDataMessage] = []
        for symbol in command.listed:
            out.append(self.snapshot(symbol))
        prints: dict[str, list[Trade]] = {}
        for trade in command.trades:
            book = self._books.get(trade.symbol)
            if book is not None:
                book.last_ticks = trade.price_ticks
            prints.setdefault(trade.symbol, []).append(
                Trade(
                    trade.trade_id, trade.price_ticks, trade.lots, str(trade.aggressor_side),
                    trade.ts_event,
                )
            )  # fmt: skip
        for symbol, trades in prints.items():
            out.append(TradePrints(symbol=symbol, ts_ns=trades[-1].ts_ns, trades=tuple(trades)))
        changed = self._move_orders(command)
        for symbol, levels in changed.items():
            delta = self._delta(symbol, levels, ts)
            if delta is not None:
                out.append(delta)
                if self.snapshot_every and delta.seq % self.snapshot_every == 0:
                    out.append(self.snapshot(symbol))
        out += self._candles_of(command.trades)
        out += self._index_of(command.trades)
        touched_symbols = dict.fromkeys([*changed, *(t.symbol for t in command.trades)])
        for symbol in touched_symbols:
            point = self._curve_point(symbol, ts)
            if point is not None:
                out.append(point)
        out += [_status(event, ts) for event in command.statuses]
        for symbol in command.closed:
            out += self._close(symbol, ts)
        return out

    def _move_orders(self, command: _Command) -> dict[str, dict[tuple[int, int], int]]:
        """Apply the touched orders to the levels; return symbol -> {(side, price): lots before}."""
        before: dict[str, dict[tuple[int, int], int]] = {}
        for order_id, old in command.touched.items():
            if old is not None and old[3] > 0:
                self._add(before, old[0], old[1], old[2], -old[3])
            order = self._orders[order_id]
            if order.lots > 0 and not order.can_rest:
                self.stats.not_resting += 1  # the engine cancels such remainders; trust it
                order.lots = 0
            if order.lots > 0:
                self._add(before, order.symbol, order.side, order.price, order.lots)
            else:
                del self._orders[order_id]
        return before

    def _add(
        self,
        before: dict[str, dict[tuple[int, int], int]],
        symbol: str,
        side: int,
        price: int,
        lots: int,
    ) -> None:
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = _Book()
        total = book.levels[side].get(price, 0)
        before.setdefault(symbol, {}).setdefault((side, price), total)
        book.set_level(side, price, total + lots)

    def _delta(self, symbol: str, before: dict[tuple[int, int], int], ts: int) -> BookDelta | None:
        book = self._books[symbol]
        sides: tuple[list[Level], list[Level]] = ([], [])
        for (side, price), old in before.items():
            now = book.levels[side].get(price, 0)
            if now != old:
                sides[side].append((price, now))
        if not sides[BUY] and not sides[SELL]:
            return None
        sides[BUY].sort(reverse=True)
        sides[SELL].sort()
        book.seq += 1
        return BookDelta(
            symbol=symbol,
            ts_ns=ts,
            seq=book.seq,
            prev_seq=book.seq - 1,
            bids=tuple(sides[BUY]),
            asks=tuple(sides[SELL]),
            checksum=book.checksum(),
        )

    def _instrument(self, symbol: str) -> _Instrument:
        found = self._instruments.get(symbol)
        if found is not None:
            return found
        try:  # listed before the log we saw starts (retention): the symbol says enough
            key = parse_symbol(symbol)
            found = _Instrument(key.gpu, key.region, key.product, key.start_ns, key.hours)
        except SymbolError:
            found = _Instrument(symbol.split(".")[0], "", "", 0, 1)
        self._instruments[symbol] = found
        return found

    def _candles_of(self, trades: list[e.TradeExecuted]) -> list[MarketDataMessage]:
        dirty: dict[tuple[str, int], None] = {}
        for t in trades:
            for interval in CANDLE_INTERVALS_NS:
                start = t.ts_event - t.ts_event % interval
                key = (t.symbol, interval)
                c = self._candles.get(key)
                if c is None or c[0] != start:
                    c = self._candles[key] = [start, t.price_ticks, t.price_ticks, t.price_ticks]
                    c += [t.price_ticks, 0, 0]
                c[2] = max(c[2], t.price_ticks)
                c[3] = min(c[3], t.price_ticks)
                c[4] = t.price_ticks
                c[5] += t.lots
                c[6] += 1
                dirty[key] = None
        out: list[MarketDataMessage] = []
        for symbol, interval in dirty:
            c = self._candles[(symbol, interval)]
            out.append(
                Candle(
                    symbol=symbol,
                    ts_ns=self.now_ns,
                    interval_ns=interval,
                    start_ns=c[0],
                    open_ticks=c[1],
                    high_ticks=c[2],
                    low_ticks=c[3],
                    close_ticks=c[4],
                    volume_lots=c[5],
                    trades=c[6],
                )
            )
        return out

    def _index_of(self, trades: list[e.TradeExecuted]) -> list[MarketDataMessage]:
        dirty: dict[str, None] = {}
        for t in trades:
            instrument = self._instrument(t.symbol)
            index = self._index.get(instrument.gpu)
            if index is None:
                index = self._index[instrument.gpu] = _Index()
            gpu_hours = t.lots * instrument.hours
            index.trades.append((t.ts_event, t.price_ticks * gpu_hours, gpu_hours, t.lots))
            index.notional += t.price_ticks * gpu_hours
            index.gpu_hours += gpu_hours
            index.lots += t.lots
            dirty[instrument.gpu] = None
        horizon = self.now_ns - self.index_window_ns
        for gpu, index in self._index.items():
            while index.trades and index.trades[0][0] <= horizon:
                _, notional, gpu_hours, lots = index.trades.popleft()
                index.notional -= notional
                index.gpu_hours -= gpu_hours
                index.lots -= lots
                dirty[gpu] = None
        out: list[MarketDataMessage] = []
        for gpu in dirty:
            index = self._index[gpu]
            out.append(
                IndexPrice(
                    symbol=gpu,
                    ts_ns=self.now_ns,
                    price_ticks=index.notional // index.gpu_hours if index.gpu_hours else 0,
                    volume_gpu_hours=index.gpu_hours,
                    volume_lots=index.lots,
                    trades=len(index.trades),
                    window_ns=self.index_window_ns,
                )
            )
        return out

    def _curve_point(self, symbol: str, ts: int, active: bool = True) -> ForwardCurvePoint | None:
        book = self._books.get(symbol)
        if book is None:
            return None
        point = (book.last_ticks, book.best(BUY), book.best(SELL))
        if point == book.curve and active:
            return None
        book.curve = point
        instrument = self._instrument(symbol)
        return ForwardCurvePoint(
            symbol=curve_name(instrument.gpu, instrument.region, instrument.product),
            ts_ns=ts,
            instrument=symbol,
            start_ns=instrument.start_ns,
            hours=instrument.hours,
            last_ticks=point[0],
            bid_ticks=point[1],
            ask_ticks=point[2],
            active=active,
        )

    def _close(self, symbol: str, ts: int) -> list[MarketDataMessage]:
        """Gate closure: the curve drops the point; the book (already emptied) is forgotten."""
        out: list[MarketDataMessage] = []
        point = self._curve_point(symbol, ts, active=False)
        if point is not None:
            out.append(point)
        self._books.pop(symbol, None)
        self._instruments.pop(symbol, None)
        for interval in CANDLE_INTERVALS_NS:
            self._candles.pop((symbol, interval), None)
        return out


def _status(event: e.InstrumentHalted | e.InstrumentResumed, ts: int) -> InstrumentStatus:
    """The market-data form of a halt or a resumption (after the command's trades and book)."""
    if isinstance(event, e.InstrumentResumed):
        return InstrumentStatus(symbol=event.symbol, ts_ns=ts, status="trading")
    reason = HaltReason(event.reason).name.lower() if event.reason in _HALT_REASONS else ""
    return InstrumentStatus(
        symbol=event.symbol, ts_ns=ts, status="halted", reason=reason, until_ns=event.until_ns
    )


_HALT_REASONS = frozenset(int(r) for r in HaltReason)
