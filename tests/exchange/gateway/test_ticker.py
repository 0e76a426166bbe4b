"""The 24-hour ticker: rolling figures on the market's clock, exact VWAP, the REST object.

A slow reference (every trade kept, the window filtered by minute) is compared with `DayStats`
over seeded random trade streams.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import orjson

from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.ticker import DAY_BUCKETS_MAX, DayStats, ticker_view
from exchange.wire import Prices
from schemas.marketdata import BookDelta, BookSnapshot, Trade, TradePrints
from schemas.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE

PRICES = Prices(1000)  # tick 0.001 USD
SYM = "H100-SXM.us-east.1h.2026-12-01T14"
DAY_SYM = "H100-SXM.us-east.1d.2026-12-02"
T0 = 1_796_083_200_000_000_000


def _reference(trades: list[Trade], now_ns: int) -> tuple[int, int, int, int, int]:
    """(high, low, lots, ticks x lots, trades) of the minutes that end after now - 24 h."""
    floor = now_ns - NS_PER_DAY
    kept = [t for t in trades if t.ts_ns - t.ts_ns % NS_PER_MINUTE + NS_PER_MINUTE > floor]
    return (
        max(t.price_ticks for t in kept),
        min(t.price_ticks for t in kept),
        sum(t.lots for t in kept),
        sum(t.price_ticks * t.lots for t in kept),
        len(kept),
    )


def test_day_stats_match_the_reference_over_random_streams():
    for seed in range(20):
        rng = random.Random(seed)
        stats, trades, ts = DayStats(), [], T0
        for trade_id in range(1, 400):
            ts += rng.choice((1, 10**9, 5 * NS_PER_MINUTE, NS_PER_HOUR, 3 * NS_PER_HOUR))
            trade = Trade(trade_id, rng.randint(2000, 3000), rng.randint(1, 50), "buy", ts)
            trades.append(trade)
            stats.add(SYM, [trade])
            minutes = stats.window(SYM)
            assert len(minutes) <= DAY_BUCKETS_MAX
            figures = (
                max(m.high for m in minutes),
                min(m.low for m in minutes),
                sum(m.lots for m in minutes),
                sum(m.ticks_lots for m in minutes),
                sum(m.trades for m in minutes),
            )
            assert figures == _reference(trades, ts), (seed, trade_id)


def test_window_follows_the_market_clock_across_instruments():
    stats = DayStats()
    stats.add(SYM, [Trade(1, 2500, 2, "buy", T0)])
    stats.add(DAY_SYM, [Trade(2, 2600, 1, "sell", T0 + NS_PER_DAY + NS_PER_MINUTE)])
    assert stats.window(SYM) == []  # another instrument's trade moved the clock a day on
    assert [m.lots for m in stats.window(DAY_SYM)] == [1]
    stats.forget(DAY_SYM)
    assert stats.window(DAY_SYM) == []


def test_ticker_view_quotes_vwap_per_gpu_hour_and_notional_in_usd():
    stats = DayStats()
    stats.add(
        DAY_SYM,
        [Trade(1, 2500, 1, "buy", T0), Trade(2, 2600, 2, "buy", T0 + 1), Trade(3, 2400, 1, "sell", T0 + NS_PER_MINUTE)],
    )  # fmt: skip
    view = ticker_view(DAY_SYM, (2400, 5, 2410, 3), (2400, 1), T0, stats.window(DAY_SYM), PRICES)
    assert (view["bid"], view["bid_qty"], view["ask"], view["ask_qty"]) == (
        "2.400",
        "5",
        "2.410",
        "3",
    )
    assert (view["open"], view["high"], view["low"], view["last"]) == (
        "2.500",
        "2.600",
        "2.400",
        "2.400",
    )
    assert (view["volume"], view["trades"]) == ("4", 3)
    # (2.5 + 2 x 2.6 + 2.4) / 4 lots = 2.525 a GPU-hour; 10.1 USD a lot-hour x 24 hours
    assert view["vwap"] == "2.525000"
    assert Decimal(view["quote_volume"]) == Decimal("10.1") * 24
    empty = ticker_view(SYM, (0, 0, 0, 0), (0, 0), 0, [], PRICES)
    assert empty["bid"] is None and empty["vwap"] is None and empty["volume"] == "0"
    assert empty["quote_volume"] == "0.000000"


def test_market_feed_ticker_counts_trades_once_and_forgets_unknown_symbols():
    feed = MarketFeed(PRICES)
    assert feed.ticker(SYM) is None
    feed.apply(BookSnapshot(symbol=SYM, seq=1, bids=((2400, 5),), asks=((2405, 2),)), 0, 0)
    burst = TradePrints(symbol=SYM, ts_ns=T0, trades=(Trade(1, 2405, 2, "buy", T0),))
    feed.apply(burst, 0, 1)
    feed.apply(burst, 0, 2)  # a replay after a market-data restart: not counted again
    ticker = feed.ticker(SYM)
    assert ticker is not None
    assert (ticker["last"], ticker["volume"], ticker["vwap"], ticker["bid"]) == (
        "2.405",
        "2",
        "2.405000",
        "2.400",
    )
    assert ticker["ts_ns"] == str(T0)


DAY_FIELDS = ("open", "high", "low", "volume", "quote_volume", "vwap", "trades")


def test_ticker_push_carries_the_rest_tickers_day_figures_at_each_push():
    """Seeded book moves and trades on two instruments, far enough apart in time that each
    one's trades roll the other's window: every ticker push carries exactly the 24 h fields
    that `GET /ticker` gives right after it, next to its own top of book and seq fields."""
    for seed in range(10):
        rng = random.Random(seed)
        feed = MarketFeed(PRICES)
        seqs = {SYM: 1, DAY_SYM: 1}
        for offset, symbol in enumerate((SYM, DAY_SYM)):
            feed.apply(BookSnapshot(symbol=symbol, seq=1, bids=((2000, 1),), asks=()), 0, offset)
        ts, trade_id, pushes_seen = T0, 0, 0
        for offset in range(2, 300):
            symbol = rng.choice((SYM, DAY_SYM))
            ts += rng.choice((1, 10**9, NS_PER_MINUTE, NS_PER_HOUR, 6 * NS_PER_HOUR))
            if rng.random() < 0.5:
                trade_id += 1
                trade = Trade(trade_id, rng.randint(2000, 3000), rng.randint(1, 9), "buy", ts)
                message: Any = TradePrints(symbol=symbol, ts_ns=ts, trades=(trade,))
            else:
                seq = seqs[symbol] = seqs[symbol] + 1
                level = ((rng.randint(1900, 2100), rng.randint(1, 9)),)
                message = BookDelta(symbol=symbol, seq=seq, prev_seq=seq - 1, ts_ns=ts, bids=level)
            for key, body in feed.apply(message, 0, offset):
                if key[0] != "ticker":
                    continue
                pushed, rest = orjson.loads(body), feed.ticker(symbol)
                assert rest is not None
                assert {f: pushed[f] for f in DAY_FIELDS} == {f: rest[f] for f in DAY_FIELDS}
                assert (pushed["channel"], pushed["type"], pushed["symbol"]) == (
                    "ticker",
                    "update",
                    symbol,
                )
                assert pushed["seq"] == offset and pushed["bid"] == rest["bid"]
                pushes_seen += 1
        assert pushes_seen > 100, seed
