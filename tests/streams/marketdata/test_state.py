"""Market data from seeded simulations: the streamed book equals the engine's after every command.

The engine's own arrays are the reference: after each command the book kept by `MarketData` from
the events alone must equal the levels reachable from the engine's best-level links. The deltas,
applied in order to the first snapshot, must rebuild the same book; candles and the index are
compared with slow, obvious recomputations from the trades.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from matching import layout as lay
from matching.engine import Engine
from schemas import events as e
from schemas.commands import ClockTick
from schemas.marketdata import (
    BookDelta,
    BookSnapshot,
    Candle,
    ForwardCurvePoint,
    IndexPrice,
    MarketDataMessage,
    TradePrints,
    decode_message,
    encode_message,
)
from streams.marketdata.state import CANDLE_INTERVALS_NS, MarketData, book_checksum
from tests.conftest import SMALL, T0_NS
from tests.support.simulation import Simulation

BATCHES = 60
MINUTE_NS = 60_000_000_000


def engine_books(engine: Engine) -> dict[str, tuple[dict[int, int], dict[int, int]]]:
    """Every open instrument's non-empty book, walked from the engine's arrays."""
    instrs = engine.state[lay.ST_INSTRS]
    levels = engine.state[lay.ST_LEVELS]
    books = {}
    for symbol in engine.open_symbols():
        slot = engine.symbol_slot(symbol)
        if instrs[slot, lay.I_BEST] == -1 and instrs[slot, lay.I_BEST + 1] == -1:
            continue
        sides: tuple[dict[int, int], dict[int, int]] = ({}, {})
        for side in (lay.BUY, lay.SELL):
            lv = int(instrs[slot, lay.I_BEST + side])
            while lv != -1:
                sides[side][int(levels[lv, lay.L_PRICE])] = int(levels[lv, lay.L_LOTS])
                lv = int(levels[lv, lay.L_NEXT])
        if sides[0] or sides[1]:
            books[symbol] = sides
    return books


def md_books(md: MarketData) -> dict[str, tuple[dict[int, int], dict[int, int]]]:
    books = {}
    for symbol in md.symbols():
        bids, asks = md.levels(symbol)
        if bids or asks:
            books[symbol] = (bids, asks)
    return books


class _Run:
    """An engine driven one command at a time by a simulation, its events fed to MarketData."""

    def __init__(self, catalog, seed: int, index_window_ns: int = 24 * 60 * MINUTE_NS) -> None:
        self.engine = Engine(catalog, SMALL)
        self.md = MarketData(index_window_ns=index_window_ns)
        self.offset = 0
        self.events: list = []
        self.messages: list[MarketDataMessage] = []
        self.apply([ClockTick(ts_ns=T0_NS)])
        symbols = [ev.symbol for ev in self.events if isinstance(ev, e.InstrumentListed)]
        self.sim = Simulation(seed, symbols, T0_NS)
        self.rng = random.Random(seed)
        self.apply(self.sim.opening())

    def apply(self, commands: list, check: bool = False) -> list:
        out = []
        for command in commands:
            events = self.engine.apply([command], [self.offset])
            self.offset += 1
            for ev in events:
                self.messages += self.md.apply(ev)
            self.messages += self.md.flush()  # the command is complete: we just ran it
            if check:
                assert md_books(self.md) == engine_books(self.engine), f"offset {self.offset - 1}"
            out += events
        self.events += out
        return out

    def step(self, check: bool = True) -> list:
        out = self.apply(self.sim.batch(self.rng.randint(1, 40)), check=check)
        self.sim.observe(out)
        return out


def replay_deltas(messages: list[MarketDataMessage]) -> dict[str, tuple[dict, dict]]:
    """A client: start from each symbol's first snapshot, apply deltas checking seq and checksum."""
    books: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
    seqs: dict[str, int] = {}
    for m in messages:
        if isinstance(m, BookSnapshot) and m.symbol not in books:
            books[m.symbol] = (dict(m.bids), dict(m.asks))
            seqs[m.symbol] = m.seq
        elif isinstance(m, BookSnapshot):  # a periodic full book: must match the deltas so far
            assert (m.seq, dict(m.bids), dict(m.asks)) == (seqs[m.symbol], *books[m.symbol])
        elif isinstance(m, BookDelta):
            assert m.prev_seq == seqs[m.symbol] and m.seq == m.prev_seq + 1, m
            seqs[m.symbol] = m.seq
            for side, levels in enumerate((m.bids, m.asks)):
                for price, lots in levels:
                    if lots:
                        books[m.symbol][side][price] = lots
                    else:
                        assert price in books[m.symbol][side], (m, price)
                        del books[m.symbol][side][price]
            bids = sorted(books[m.symbol][0].items(), reverse=True)
            asks = sorted(books[m.symbol][1].items())
            assert m.checksum == book_checksum(asks, bids), m
    return books


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streamed_book_equals_engine_book_after_every_command(catalog, seed):
    run = _Run(catalog, seed)
    for _ in range(BATCHES):
        run.step()
    kinds = {type(m).__name__ for m in run.messages}
    assert kinds >= {"BookSnapshot", "BookDelta", "TradePrints", "Candle", "IndexPrice"}
    assert run.md.stats.unknown_orders == 0
    assert run.md.stats.not_resting == 0
    replayed = replay_deltas(run.messages)
    for symbol in run.md.symbols():
        snap = run.md.snapshot(symbol)
        assert replayed[symbol] == (dict(snap.bids), dict(snap.asks)), symbol


def test_deltas_carry_only_changed_levels_and_never_an_empty_one(catalog):
    run = _Run(catalog, seed=5)
    for _ in range(BATCHES // 2):
        run.step(check=False)
    deltas = [m for m in run.messages if isinstance(m, BookDelta)]
    assert deltas
    for d in deltas:
        assert d.bids or d.asks
        assert [p for p, _ in d.bids] == sorted({p for p, _ in d.bids}, reverse=True)
        assert [p for p, _ in d.asks] == sorted({p for p, _ in d.asks})


def test_boundaries_found_from_the_stream_give_the_same_messages(catalog):
    run = _Run(catalog, seed=6)
    for _ in range(BATCHES // 2):
        run.step(check=False)
    md = MarketData()
    streamed: list[MarketDataMessage] = []
    for ev in run.events:
        streamed += md.apply(ev)
    streamed += md.flush()
    assert [encode_message(m) for m in streamed] == [encode_message(m) for m in run.messages]
    assert [decode_message(encode_message(m)) for m in streamed] == streamed


def test_snapshot_depth_and_order(catalog):
    run = _Run(catalog, seed=2)
    for _ in range(BATCHES // 2):
        run.step(check=False)
    for symbol in run.md.symbols():
        full = run.md.snapshot(symbol)
        top = run.md.snapshot(symbol, depth=2)
        assert top.bids == full.bids[:2] and top.asks == full.asks[:2]
        assert [p for p, _ in full.bids] == sorted((p for p, _ in full.bids), reverse=True)
        assert [p for p, _ in full.asks] == sorted(p for p, _ in full.asks)
        if full.bids and full.asks:
            assert full.bids[0][0] < full.asks[0][0]


def test_candle_volumes_equal_traded_lots(catalog):
    run = _Run(catalog, seed=4)
    for _ in range(BATCHES):
        run.step(check=False)
    trades = [ev for ev in run.events if isinstance(ev, e.TradeExecuted)]
    assert trades
    last: dict[tuple[str, int, int], Candle] = {}
    for m in run.messages:
        if isinstance(m, Candle):
            last[(m.symbol, m.interval_ns, m.start_ns)] = m
    for interval in CANDLE_INTERVALS_NS:
        expected: dict[tuple[str, int], list[int]] = defaultdict(list)
        for t in trades:
            expected[(t.symbol, t.ts_event - t.ts_event % interval)].append(t.price_ticks)
        candles = {(s, start): c for (s, i, start), c in last.items() if i == interval}
        assert sum(c.volume_lots for c in candles.values()) == sum(t.lots for t in trades)
        assert set(candles) == set(expected)
        for key, prices in expected.items():
            c = candles[key]
            assert (c.open_ticks, c.high_ticks, c.low_ticks, c.close_ticks) == (
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
            )
            assert c.trades == len(prices)
    prints = [t for m in run.messages if isinstance(m, TradePrints) for t in m.trades]
    assert [(p.trade_id, p.price_ticks, p.lots) for p in prints] == [
        (t.trade_id, t.price_ticks, t.lots) for t in trades
    ]


def test_index_equals_slow_volume_weighted_formula(catalog):
    window_ns = 20 * MINUTE_NS  # short, so that trades leave the window during the run
    run = _Run(catalog, seed=8, index_window_ns=window_ns)
    hours = {ev.symbol: ev.hours for ev in run.events if isinstance(ev, e.InstrumentListed)}
    gpu = {ev.symbol: ev.gpu for ev in run.events if isinstance(ev, e.InstrumentListed)}
    checked = evicted = 0
    for _ in range(BATCHES):
        run.step(check=False)
        now = run.md.now_ns
        latest: dict[str, IndexPrice] = {}
        for m in run.messages:
            if isinstance(m, IndexPrice):
                latest[m.symbol] = m
        trades = [ev for ev in run.events if isinstance(ev, e.TradeExecuted)]
        for model, streamed in latest.items():
            window = [
                t for t in trades if gpu[t.symbol] == model and now - window_ns < t.ts_event <= now
            ]
            weight = sum(t.lots * hours[t.symbol] for t in window)
            notional = sum(t.price_ticks * t.lots * hours[t.symbol] for t in window)
            assert streamed.volume_gpu_hours == weight
            assert streamed.volume_lots == sum(t.lots for t in window)
            assert streamed.price_ticks == (notional // weight if weight else 0)
            checked += 1
            evicted += len(window) < sum(1 for t in trades if gpu[t.symbol] == model)
    assert checked and evicted


def test_forward_curve_follows_best_prices_and_drops_closed_instruments(catalog):
    run = _Run(catalog, seed=4)
    for _ in range(BATCHES * 3):
        run.step(check=True)
    points: dict[str, ForwardCurvePoint] = {}
    for m in run.messages:
        if isinstance(m, ForwardCurvePoint):
            assert m.symbol == ".".join(m.instrument.split(".")[:3])
            points[m.instrument] = m
    closed = {ev.symbol for ev in run.events if isinstance(ev, e.InstrumentClosed)}
    assert closed
    for symbol, point in points.items():
        if symbol in closed:
            assert not point.active
            continue
        snap = run.md.snapshot(symbol)
        assert point.bid_ticks == (snap.bids[0][0] if snap.bids else 0)
        assert point.ask_ticks == (snap.asks[0][0] if snap.asks else 0)


def test_gx_marketdata_without_a_broker_says_what_to_set(monkeypatch, capsys):
    from exchange.cli.gx import main

    monkeypatch.delenv("GX_KAFKA_BOOTSTRAP", raising=False)
    assert main(["marketdata"]) == 2
    assert "GX_KAFKA_BOOTSTRAP" in capsys.readouterr().err
