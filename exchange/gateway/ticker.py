"""The 24-hour ticker of `GET /ticker/{symbol}` and the `ticker` channel: top of book, last
trade, rolling 24 h figures.

`DayStats` keeps each instrument's trades of the last 24 hours in one-minute buckets (at most
`DAY_BUCKETS_MAX` per instrument), so high, low, volume and VWAP are exact over whole minutes
without keeping every trade. The window ends at the market's clock, the latest trade time seen
on any instrument, not at the wall clock: the feed reads no clock, the same records give the
same ticker, and a replayed market shows the figures it showed then. `day_figures` is the one
place the figures are formatted, so the REST ticker and the WebSocket push cannot disagree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from exchange.wire import Prices, qty_to_str
from schemas.marketdata import Trade
from schemas.symbols import parse_symbol
from schemas.units import MICROS_PER_USD, NS_PER_DAY, NS_PER_MINUTE

__all__ = ["DAY_BUCKETS_MAX", "TRADING", "DayStats", "day_figures", "status_fields", "ticker_view"]

DAY_BUCKETS_MAX = NS_PER_DAY // NS_PER_MINUTE + 1  # the minutes a 24 h window can touch
# An instrument trades until an InstrumentStatus says otherwise: (status, reason, until, ts).
TRADING = ("trading", "", 0, 0)
_MICRO = Decimal(1) / MICROS_PER_USD  # VWAP and quote volume are quoted to the micro-dollar


class _Minute:
    """One instrument's trades of one minute: first and last price, extremes and sums."""

    __slots__ = ("start_ns", "open", "high", "low", "close", "lots", "ticks_lots", "trades")

    def __init__(self, start_ns: int, price_ticks: int) -> None:
        self.start_ns = start_ns
        self.open = self.high = self.low = self.close = price_ticks
        self.lots = 0
        self.ticks_lots = 0  # sum of price ticks x lots: the VWAP's numerator
        self.trades = 0

    def add(self, price_ticks: int, lots: int) -> None:
        self.high = max(self.high, price_ticks)
        self.low = min(self.low, price_ticks)
        self.close = price_ticks
        self.lots += lots
        self.ticks_lots += price_ticks * lots
        self.trades += 1


class DayStats:
    """Rolling 24 h trade figures per instrument, in one-minute buckets."""

    def __init__(self) -> None:
        self.now_ns = 0  # the market's clock: the latest trade time seen
        self._minutes: dict[str, deque[_Minute]] = {}
        # Every ticker push carries the figures, and most pushes are book moves that leave them
        # as they were: keep each instrument's formatted figures until its window changes.
        self._figures: dict[str, dict[str, Any]] = {}

    def add(self, symbol: str, trades: Iterable[Trade]) -> None:
        """Count an instrument's new trades (oldest first); drop minutes older than 24 h."""
        minutes = self._minutes.get(symbol)
        if minutes is None:
            minutes = self._minutes[symbol] = deque(maxlen=DAY_BUCKETS_MAX)
        for t in trades:
            self.now_ns = max(self.now_ns, t.ts_ns)
            start = t.ts_ns - t.ts_ns % NS_PER_MINUTE
            if not minutes or start > minutes[-1].start_ns:
                minutes.append(_Minute(start, t.price_ticks))
            minutes[-1].add(t.price_ticks, t.lots)
        self._figures.pop(symbol, None)
        self._prune(symbol, minutes)

    def forget(self, symbol: str) -> None:
        """Drop a closed instrument's figures."""
        self._minutes.pop(symbol, None)
        self._figures.pop(symbol, None)

    def window(self, symbol: str) -> list[_Minute]:
        """The instrument's minutes inside the 24 h ending at the market's clock, oldest first."""
        minutes = self._minutes.get(symbol)
        if not minutes:
            return []
        self._prune(symbol, minutes)
        return list(minutes)

    def figures(self, symbol: str, prices: Prices) -> dict[str, Any]:
        """The instrument's `day_figures` now; the same dict until its window changes (read
        only: callers copy it into their own)."""
        minutes = self._minutes.get(symbol)
        if minutes:
            self._prune(symbol, minutes)
        found = self._figures.get(symbol)
        if found is None:
            found = self._figures[symbol] = day_figures(symbol, list(minutes or ()), prices)
        return found

    def _prune(self, symbol: str, minutes: deque[_Minute]) -> None:
        floor = self.now_ns - NS_PER_DAY
        while minutes and minutes[0].start_ns + NS_PER_MINUTE <= floor:
            minutes.popleft()
            self._figures.pop(symbol, None)


def _usd(value: Decimal) -> str:
    return format(value.quantize(_MICRO, rounding=ROUND_HALF_EVEN), "f")


def day_figures(symbol: str, minutes: list[_Minute], prices: Prices) -> dict[str, Any]:
    """The rolling 24 h fields of a ticker (API.md): open, high, low, volume, quote_volume,
    vwap, trades; null where there is no figure.

    Volume is in lots; quote volume is the USD notional (price x lots x the instrument's hours);
    VWAP is per GPU-hour like every price.
    """
    lots = sum(m.lots for m in minutes)
    ticks_lots = sum(m.ticks_lots for m in minutes)
    hours = parse_symbol(symbol).hours
    tick = prices.tick
    return {
        "open": prices.to_str(minutes[0].open) if minutes else None,
        "high": prices.to_str(max(m.high for m in minutes)) if minutes else None,
        "low": prices.to_str(min(m.low for m in minutes)) if minutes else None,
        "volume": qty_to_str(lots),
        "quote_volume": _usd(Decimal(ticks_lots * hours) * tick),
        "vwap": _usd(Decimal(ticks_lots) / lots * tick) if lots else None,
        "trades": sum(m.trades for m in minutes),
    }


def status_fields(status: tuple[str, str, int, int]) -> dict[str, Any]:
    """The ticker's `status`, `halt_reason` and `halt_until_ns` (null while trading)."""
    state, reason, until_ns, _ = status
    halted = state == "halted"
    return {
        "status": state,
        "halt_reason": (reason or None) if halted else None,
        "halt_until_ns": str(until_ns) if halted and until_ns else None,
    }


def ticker_view(
    symbol: str,
    best: tuple[int, int, int, int],
    last: tuple[int, int],
    ts_ns: int,
    minutes: list[_Minute],
    prices: Prices,
    status: tuple[str, str, int, int] = TRADING,
) -> dict[str, Any]:
    """The `GET /ticker` object of one instrument (API.md); null where there is no figure.

    `best` is (bid ticks, bid lots, ask ticks, ask lots) and `last` (ticks, lots), 0 for none;
    the 24 h fields are `day_figures` of `minutes`.
    """
    bid, bid_lots, ask, ask_lots = best
    last_ticks, last_lots = last
    return {
        "symbol": symbol,
        "bid": prices.to_str(bid) if bid else None,
        "bid_qty": qty_to_str(bid_lots) if bid else None,
        "ask": prices.to_str(ask) if ask else None,
        "ask_qty": qty_to_str(ask_lots) if ask else None,
        "last": prices.to_str(last_ticks) if last_ticks else None,
        "last_qty": qty_to_str(last_lots) if last_ticks else None,
        **day_figures(symbol, minutes, prices),
        **status_fields(status),
        "ts_ns": str(ts_ns),
    }
