"""The gateway's market feed: book pushes rebuild MarketData's own book at every watched depth.

Messages come from the real `MarketData` fed by a seeded engine simulation, each with an increasing
offset. A client per watched depth applies the snapshot, then every update (absolute qty, "0"
removes) and must hold the top levels of MarketData's book after every delta, with seq +1 each and
the checksum of what it holds. A seeded synthetic book, deeper than the simulation's, drives the
25- and 100-level windows across their bounds. The other channels are checked for their
seq/prev_seq chains and the REST answers against the messages.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest

from exchange.gateway.market_feed import BOOK_DEPTHS, MarketFeed
from exchange.wire import Prices, WireError
from schemas.marketdata import (
    BookDelta,
    BookSnapshot,
    Candle,
    ForwardCurvePoint,
    IndexPrice,
    InstrumentStatus,
    MarketDataMessage,
    Trade,
    TradePrints,
)
from streams.marketdata.state import MarketData, book_checksum
from tests.conftest import SMALL
from tests.support.simulation import run_simulation

PRICES = Prices(1000)  # tick 0.001 USD
BATCHES = 40  # the traded instruments are still open at the end (gate closure after ~3 h)
LONG_BATCHES = 120  # long enough for their gate closures
DEEP = msgspec.structs.replace(SMALL, orders_open_max=64)  # deeper books than SMALL allows
SYM = "H100-SXM.us-east.1h.2026-12-01T14"

Book = tuple[dict[int, int], dict[int, int]]  # (bids, asks): price_ticks -> lots


class Feed:
    """The stream of one seeded simulation: messages, and MarketData's book after each delta."""

    def __init__(self, catalog, seed: int, snapshot_every: int = 0, batches: int = BATCHES) -> None:
        _, _, events = run_simulation(catalog, seed, batches, DEEP)
        md = MarketData(snapshot_every=snapshot_every)
        self.messages: list[MarketDataMessage] = []
        self.after: list[Book | None] = []  # MarketData's book after each BookDelta
        for ev in events:
            self._take(md, md.apply(ev))
        self._take(md, md.flush())
        self.md = md

    def _take(self, md: MarketData, messages: list[MarketDataMessage]) -> None:
        # MarketData returns a command's messages once it is complete: its book is the one after
        # the command, which holds at most one delta per symbol.
        for m in messages:
            book = None
            if isinstance(m, BookDelta):
                try:
                    book = md.levels(m.symbol)
                except KeyError:  # closed by the same command
                    book = None
            self.messages.append(m)
            self.after.append(book)

    def active_symbols(self) -> list[str]:
        """Symbols still open at the end, the one with most deltas first."""
        counts: dict[str, int] = defaultdict(int)
        for m in self.messages:
            if isinstance(m, BookDelta):
                counts[m.symbol] += 1
        open_symbols = set(self.md.symbols())
        return sorted((s for s in counts if s in open_symbols), key=lambda s: -counts[s])


def top(book: Book, depth: int) -> tuple[list[list[str]], list[list[str]]]:
    """The wire levels (bids, asks) of the best `depth` levels per side."""
    bids = sorted(book[0].items(), reverse=True)[:depth]
    asks = sorted(book[1].items())[:depth]
    return (
        [[PRICES.to_str(p), str(q)] for p, q in bids],
        [[PRICES.to_str(p), str(q)] for p, q in asks],
    )


class Client:
    """A subscriber of one book stream: a snapshot, then updates (absolute qty, "0" removes)."""

    def __init__(self, depth: int, snapshot: dict[str, Any]) -> None:
        self.depth = depth
        self.entered = self.left = 0  # levels that crossed the window bound without changing
        self.reset(snapshot)

    def reset(self, snapshot: dict[str, Any]) -> None:
        assert snapshot["type"] == "snapshot" and snapshot["depth"] == self.depth
        self.seq = snapshot["seq"]
        self.sides = (dict(snapshot["bids"]), dict(snapshot["asks"]))
        assert snapshot["checksum"] == book_checksum(*reversed(self.levels()))

    def update(self, body: dict[str, Any], changed: tuple[set[str], set[str]]) -> None:
        assert body["type"] == "update" and body["depth"] == self.depth
        assert body["prev_seq"] == self.seq and body["seq"] == self.seq + 1, body
        self.seq = body["seq"]
        for side, key in enumerate(("bids", "asks")):
            prices = [Decimal(p) for p, _ in body[key]]
            assert prices == sorted(prices, reverse=side == 0), body  # best first
            for price, qty in body[key]:
                if price not in changed[side]:
                    self.left += qty == "0"
                    self.entered += qty != "0"
                if qty == "0":
                    assert price in self.sides[side], (body, price)
                    del self.sides[side][price]
                else:
                    self.sides[side][price] = qty
            assert len(self.sides[side]) <= self.depth
        assert body["checksum"] == book_checksum(*reversed(self.levels()))

    def levels(self) -> tuple[list[list[str]], list[list[str]]]:
        """(bids, asks) best first, as held."""
        bids = sorted(self.sides[0].items(), key=lambda lv: -Decimal(lv[0]))
        asks = sorted(self.sides[1].items(), key=lambda lv: Decimal(lv[0]))
        return [list(lv) for lv in bids], [list(lv) for lv in asks]


def changed_prices(m: BookDelta) -> tuple[set[str], set[str]]:
    return ({PRICES.to_str(p) for p, _ in m.bids}, {PRICES.to_str(p) for p, _ in m.asks})


def run_clients(
    feed: MarketFeed,
    messages: list[MarketDataMessage],
    after: list[Book | None],
    depths: tuple[int, ...] = BOOK_DEPTHS,
) -> dict[tuple[str, int], Client]:
    """Subscribe to every depth of a symbol at its first delta; check every update on the way."""
    clients: dict[tuple[str, int], Client] = {}
    for offset, (m, book) in enumerate(zip(messages, after, strict=True)):
        if isinstance(m, BookDelta) and (m.symbol, depths[0]) not in clients:
            for depth in depths:
                feed.watch(("book", m.symbol, depth))
                snapshot = feed.snapshot(("book", m.symbol, depth))
                assert snapshot is not None
                clients[(m.symbol, depth)] = Client(depth, orjson.loads(snapshot))
        pushes = feed.apply(m, 0, offset)
        book_pushes = [(key, orjson.loads(body)) for key, body in pushes if key[0] == "book"]
        if isinstance(m, BookDelta) and (m.symbol, depths[0]) in clients:
            assert sorted(key for key, _ in book_pushes) == [("book", m.symbol, d) for d in depths]
        for key, body in book_pushes:
            client = clients[(str(key[1]), int(key[2]))]
            if body["type"] == "snapshot":
                client.reset(body)
                continue
            assert isinstance(m, BookDelta) and body["seq"] == m.seq
            client.update(body, changed_prices(m))
            if book is not None:
                assert client.levels() == top(book, client.depth), (m, client.depth)
    return clients


# ---------------------------------------------------------------------- checksum format


def test_checksum_string_is_asks_then_bids_as_sent():
    asks = [["2.401", "3"], ["2.402", "1"]]
    bids = [["2.400", "5"]]
    assert book_checksum(asks, bids) == zlib.crc32(b"2.401:3,2.402:1|2.400:5")
    feed = MarketFeed(PRICES)
    snapshot = BookSnapshot(symbol=SYM, seq=7, bids=((2400, 5),), asks=((2402, 1), (2401, 3)))
    feed.apply(snapshot, 0, 0)
    body = orjson.loads(feed.snapshot(("book", SYM, 10)) or b"null")
    assert (body["asks"], body["bids"], body["seq"]) == (asks, bids, 7)
    assert body["checksum"] == zlib.crc32(b"2.401:3,2.402:1|2.400:5")
    assert list(body)[0] == "channel" and "conn_seq" not in body


# ---------------------------------------------------------------------- books from the simulation


@pytest.mark.parametrize("seed", [1, 2])
def test_watched_depths_rebuild_marketdata_book_after_every_delta(catalog, seed):
    run = Feed(catalog, seed, batches=LONG_BATCHES)
    assert run.md.stats.messages and len(run.active_symbols()) < len(
        {m.symbol for m in run.messages if isinstance(m, BookDelta)}
    )  # some traded instruments closed on the way
    feed = MarketFeed(PRICES)
    clients = run_clients(feed, run.messages, run.after)
    assert clients
    for (symbol, depth), client in clients.items():
        if symbol not in run.md.symbols():
            continue
        bids, asks = run.md.levels(symbol)
        assert client.levels() == top((bids, asks), depth)
        assert client.seq == run.md.snapshot(symbol).seq == feed.last_seq(("book", symbol, depth))
        assert orjson.loads(feed.snapshot(("book", symbol, depth)) or b"null")["seq"] == client.seq
        rest = feed.book(symbol, depth)
        assert rest is not None and (rest["bids"], rest["asks"]) == client.levels()
    # the simulation's books are deep enough to push levels across the 1- and 10-level bounds
    for depth in (1, 10):
        assert sum(c.left for (_, d), c in clients.items() if d == depth) > 0
        assert sum(c.entered for (_, d), c in clients.items() if d == depth) > 0


def test_deep_windows_follow_a_seeded_book_across_their_bounds():
    rng = random.Random(11)
    book: Book = ({}, {})
    messages: list[MarketDataMessage] = [BookSnapshot(symbol=SYM, seq=0)]
    after: list[Book | None] = [None]
    for seq in range(1, 1500):
        sides: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        for _ in range(rng.randint(1, 6)):
            side = rng.randint(0, 1)
            # bids 1000..2399 and asks 2401..3800, wide enough for books deeper than 100 levels
            price = rng.randint(1000, 2399) if side == 0 else rng.randint(2401, 3800)
            if any(p == price for p, _ in sides[side]):
                continue
            grow = len(book[side]) < 150
            lots = rng.randint(1, 9) if grow or rng.random() < 0.3 else 0
            if lots == 0 and book[side] and rng.random() < 0.6:
                price = rng.choice(sorted(book[side]))  # remove an existing level
            sides[side].append((price, lots))
            if lots:
                book[side][price] = lots
            else:
                book[side].pop(price, None)
        messages.append(
            BookDelta(
                symbol=SYM,
                seq=seq,
                prev_seq=seq - 1,
                bids=tuple(sorted(sides[0], reverse=True)),
                asks=tuple(sorted(sides[1])),
            )
        )
        after.append(({**book[0]}, {**book[1]}))
    feed = MarketFeed(PRICES)
    clients = run_clients(feed, messages, after)
    for depth in BOOK_DEPTHS:
        assert clients[(SYM, depth)].left > 0 and clients[(SYM, depth)].entered > 0, depth
    assert feed.ask_levels(SYM) == sorted(book[1].items())
    best_bid = max(book[0])
    assert feed.best(SYM) == (best_bid, book[0][best_bid], min(book[1]), book[1][min(book[1])])


def test_only_watched_depths_are_pushed_and_watches_are_counted(catalog):
    run = Feed(catalog, seed=3)
    symbol = run.active_symbols()[0]
    feed = MarketFeed(PRICES)
    key = ("book", symbol, 10)
    feed.watch(key)
    feed.watch(key)
    deltas = [i for i, m in enumerate(run.messages) if isinstance(m, BookDelta)]
    half = deltas[len(deltas) // 2]
    pushed: list[tuple] = []
    types: list[str] = []
    for offset, m in enumerate(run.messages):
        if offset == half:
            feed.unwatch(key)
        for k, body in feed.apply(m, 0, offset):
            if k[0] == "book":
                pushed.append(k)
                types.append(orjson.loads(body)["type"])
    assert set(pushed) == {key}
    # watched before the listing: its snapshot is the first push, then one update per delta
    deltas_of_symbol = [m for m in run.messages if isinstance(m, BookDelta) and m.symbol == symbol]
    assert types == ["snapshot"] + ["update"] * len(deltas_of_symbol)
    feed.unwatch(key)
    more = BookDelta(symbol=symbol, seq=feed.last_seq(key) + 1, prev_seq=feed.last_seq(key))
    assert [k for k, _ in feed.apply(more, 0, len(run.messages)) if k[0] == "book"] == []
    assert feed.resume(key, feed.last_seq(key)) is None  # no longer buffered
    with pytest.raises(WireError, match="depth"):
        feed.watch(("book", symbol, 5))


def test_an_update_that_misses_the_window_is_pushed_empty_with_the_next_seq():
    feed = MarketFeed(PRICES)
    feed.apply(
        BookSnapshot(symbol=SYM, seq=3, bids=((2400, 5), (2399, 2)), asks=((2401, 1),)), 0, 0
    )
    feed.watch(("book", SYM, 1))
    pushes = feed.apply(BookDelta(symbol=SYM, seq=4, prev_seq=3, bids=((2398, 7),)), 0, 1)
    assert [k for k, _ in pushes] == [("book", SYM, 1)]  # the best did not move: no ticker
    body = orjson.loads(pushes[0][1])
    assert (body["seq"], body["prev_seq"], body["bids"], body["asks"]) == (4, 3, [], [])
    assert body["checksum"] == zlib.crc32(b"2.401:1|2.400:5")
    # a better bid enters the 1-level window and pushes the old best out explicitly
    pushes = feed.apply(BookDelta(symbol=SYM, seq=5, prev_seq=4, bids=((2400, 0),)), 0, 2)
    body = orjson.loads(pushes[0][1])
    assert body["bids"] == [["2.400", "0"], ["2.399", "2"]]
    ticker = orjson.loads(pushes[1][1])
    assert pushes[1][0] == ("ticker", SYM)
    # a delta that names a level at its old qty while it moves into the window still sends it
    pushes = feed.apply(BookDelta(symbol=SYM, seq=6, prev_seq=5, bids=((2399, 0), (2398, 7))), 0, 3)
    assert orjson.loads(pushes[0][1])["bids"] == [["2.399", "0"], ["2.398", "7"]]
    assert (ticker["bid"], ticker["bid_qty"], ticker["ask"], ticker["last"]) == (
        "2.399",
        "2",
        "2.401",
        None,
    )


# ---------------------------------------------------------------------- gaps, replays, resume


def test_a_gap_unsyncs_the_symbol_until_the_next_snapshot(catalog):
    run = Feed(catalog, seed=1, snapshot_every=4)
    symbol = run.active_symbols()[0]
    deltas = [
        i for i, m in enumerate(run.messages) if isinstance(m, BookDelta) and m.symbol == symbol
    ]
    dropped = deltas[5]
    dropped_seq = run.messages[dropped].seq  # type: ignore[union-attr]
    resync = next(
        i
        for i, m in enumerate(run.messages)
        if i > dropped and isinstance(m, BookSnapshot) and m.symbol == symbol
    )
    assert run.messages[resync].seq > dropped_seq  # type: ignore[union-attr]
    feed = MarketFeed(PRICES)
    messages = run.messages[:dropped] + run.messages[dropped + 1 :]
    after = run.after[:dropped] + run.after[dropped + 1 :]
    resync -= 1
    depth_keys = [("book", symbol, d) for d in BOOK_DEPTHS]
    clients: dict[tuple[str, int], Client] = {}
    for offset, (m, book) in enumerate(zip(messages, after, strict=True)):
        if offset == deltas[0]:
            for key in depth_keys:
                feed.watch(key)
                clients[(symbol, int(key[2]))] = Client(
                    int(key[2]), orjson.loads(feed.snapshot(key) or b"null")
                )
        synced_seq = feed.last_seq(depth_keys[0])
        pushes = [(k, orjson.loads(b)) for k, b in feed.apply(m, 0, offset) if k in depth_keys]
        if isinstance(m, BookSnapshot) and m.symbol == symbol and offset != resync:
            assert m.seq == synced_seq and pushes == []  # periodic, at our seq: nothing new
        if dropped <= offset < resync and m.symbol == symbol:
            assert pushes == [] and feed.snapshot(depth_keys[1]) is None
            assert feed.book(symbol, 10) is None and feed.best(symbol) == (0, 0, 0, 0)
            assert feed.resume(depth_keys[1], synced_seq) is None
        if offset == resync:
            assert [b["type"] for _, b in pushes] == ["snapshot"] * len(BOOK_DEPTHS)
            assert feed.stats.gaps == 1
            assert feed.resume(depth_keys[1], dropped_seq - 1) is None  # older than the resync
            assert feed.resume(depth_keys[1], m.seq) == []  # type: ignore[union-attr]
        for key, body in pushes:
            client = clients[(symbol, int(key[2]))]
            if body["type"] == "snapshot":
                client.reset(body)
            else:
                client.update(body, changed_prices(m))  # type: ignore[arg-type]
                if book is not None:
                    assert client.levels() == top(book, client.depth)
    bids, asks = run.md.levels(symbol)
    for depth in BOOK_DEPTHS:
        assert clients[(symbol, depth)].levels() == top((bids, asks), depth)


def test_a_market_data_restart_republishing_everything_changes_nothing(catalog):
    run = Feed(catalog, seed=2)
    symbol = run.active_symbols()[0]
    feed = MarketFeed(PRICES)
    for depth in BOOK_DEPTHS:
        feed.watch(("book", symbol, depth))
    n = len(run.messages)
    for offset, m in enumerate(run.messages):
        feed.apply(m, 0, offset)
    state = (
        feed.book(symbol, 100),
        feed.trades(symbol, 100),
        feed.candles(symbol, "1m", 100),
        feed.best(symbol),
    )
    assert state[1] and state[2]
    assert feed.apply(run.messages[-1], 0, n - 1) == []  # redelivered: same partition and offset
    assert feed.stats.redelivered == 1
    replayed = 0
    for offset, m in enumerate(run.messages, start=n):
        pushed = {k[0] for k, _ in feed.apply(m, 0, offset)}
        assert not pushed & {"book", "trades", "ticker", "candles"}, m
        replayed += isinstance(m, BookDelta | TradePrints | Candle)
    assert feed.stats.replayed >= replayed > 0
    later = (
        feed.book(symbol, 100),
        feed.trades(symbol, 100),
        feed.candles(symbol, "1m", 100),
        feed.best(symbol),
    )
    assert later == state
    seq = feed.last_seq(("book", symbol, 10))
    pushes = feed.apply(BookDelta(symbol=symbol, seq=seq + 1, prev_seq=seq), 0, 2 * n)
    assert len([k for k, _ in pushes if k[0] == "book"]) == len(BOOK_DEPTHS)  # still in sync


def test_resume_returns_exactly_the_bodies_after_from_seq_or_none_when_too_old(catalog):
    run = Feed(catalog, seed=1)
    symbol = run.active_symbols()[0]
    feed = MarketFeed(PRICES, resume_buffer_max=5)
    book_key = ("book", symbol, 10)
    pushed: dict[tuple, list[tuple[int, bytes]]] = defaultdict(list)
    for offset, m in enumerate(run.messages):
        if isinstance(m, BookDelta) and m.symbol == symbol and book_key not in pushed:
            feed.watch(book_key)
            pushed[book_key] = []
        for key, body in feed.apply(m, 0, offset):
            pushed[key].append((orjson.loads(body)["seq"], body))
    skipped = 0
    for key in (book_key, ("trades", symbol), ("ticker", symbol), ("candles", symbol, "1m")):
        bodies = pushed[key]
        assert len(bodies) > 6, key
        seqs = [s for s, _ in bodies]
        for back in range(5):
            from_seq = seqs[-1 - back]
            assert feed.resume(key, from_seq) == [b for _, b in bodies[len(bodies) - back :]]
        if key[0] != "book":  # offsets are not contiguous: a seq between two pushes is fine
            between = [i for i in range(-6, -1) if seqs[i + 1] - seqs[i] > 1]
            for i in between:
                assert feed.resume(key, seqs[i] + 1) == [b for _, b in bodies[i + 1 :]]
            skipped += len(between)
        assert feed.resume(key, seqs[-6]) == [b for _, b in bodies[-5:]]
        assert feed.resume(key, seqs[-7]) is None  # the buffer no longer holds seqs[-6]
        assert feed.resume(key, seqs[-1] + 1) is None  # ahead of the stream
        assert feed.last_seq(key) == seqs[-1]
    assert skipped > 0
    assert feed.resume(("book", symbol, 25), 0) is None  # never watched
    assert feed.resume(("trades", "NOPE"), 0) is None


# ---------------------------------------------------------------------- the other channels


def test_other_channels_chain_seq_to_record_offsets(catalog):
    run = Feed(catalog, seed=4)
    feed = MarketFeed(PRICES)
    offsets = [3 * i + 10 for i in range(len(run.messages))]  # rising, not contiguous
    last: dict[tuple, int] = {}
    seen: dict[str, int] = defaultdict(int)
    for m, offset in zip(run.messages, offsets, strict=True):
        for key, raw in feed.apply(m, 0, offset):
            body = orjson.loads(raw)
            assert list(body)[0] == "channel" and body["channel"] == key[0]
            if key[0] == "book":
                continue
            seen[str(key[0])] += 1
            assert body["type"] == "update" and body["symbol"] == key[1]
            assert body["seq"] == offset and body["prev_seq"] == last.get(key, 0), (key, body)
            last[key] = offset
            if key[0] == "trades":
                assert isinstance(m, TradePrints)
                assert [t["trade_id"] for t in body["trades"]] == [t.trade_id for t in m.trades]
                assert [(t["price"], t["qty"]) for t in body["trades"]] == [
                    (PRICES.to_str(t.price_ticks), str(t.lots)) for t in m.trades
                ]
            elif key[0] == "candles":
                assert isinstance(m, Candle) and body["interval"] == key[2]
                assert body["volume"] == str(m.volume_lots) and body["start_ns"] == str(m.start_ns)
            elif key[0] == "index":
                assert isinstance(m, IndexPrice) and body["trades"] == m.trades
            elif key[0] == "curve":
                assert isinstance(m, ForwardCurvePoint) and body["instrument"] == m.instrument
            elif key[0] == "ticker":
                assert set(body) >= {"bid", "bid_qty", "ask", "ask_qty", "last", "last_qty"}
    assert set(seen) == {"trades", "ticker", "candles", "index", "curve"}
    open_symbols = set(feed.symbols())
    closed = 0
    for key, seq in last.items():
        if key[0] in ("index", "curve") or key[1] in open_symbols:
            assert feed.last_seq(key) == seq
        else:  # gate closure: the instrument's streams are forgotten
            assert feed.last_seq(key) == 0
            closed += 1
    assert closed


def test_ticker_follows_best_and_last_trade():
    feed = MarketFeed(PRICES)
    pushes = feed.apply(BookSnapshot(symbol=SYM, seq=1, bids=((2400, 5),), asks=((2405, 2),)), 0, 0)
    assert [k for k, _ in pushes] == [("ticker", SYM)]
    assert orjson.loads(pushes[0][1])["bid_qty"] == "5"
    pushes = feed.apply(BookDelta(symbol=SYM, seq=2, prev_seq=1, asks=((2406, 4),)), 0, 1)
    assert pushes == []  # no book watched, best unchanged
    pushes = feed.apply(BookDelta(symbol=SYM, seq=3, prev_seq=2, asks=((2405, 1),)), 0, 2)
    ticker = orjson.loads(pushes[0][1])
    assert (ticker["ask"], ticker["ask_qty"], ticker["prev_seq"], ticker["seq"]) == (
        "2.405",
        "1",
        0,
        2,
    )
    first = TradePrints(symbol=SYM, trades=(Trade(9, 2405, 1, "buy", 4),))
    pushes = feed.apply(first, 0, 3)
    assert [k for k, _ in pushes] == [("trades", SYM), ("ticker", SYM)]
    assert [t["trade_id"] for t in orjson.loads(pushes[0][1])["trades"]] == [9]
    ticker = orjson.loads(pushes[1][1])
    assert (ticker["last"], ticker["last_qty"], ticker["prev_seq"]) == ("2.405", "1", 2)
    assert feed.best(SYM) == (2400, 5, 2405, 1)
    burst = TradePrints(
        symbol=SYM,
        trades=(
            Trade(9, 2405, 1, "buy", 5),
            Trade(10, 2406, 2, "buy", 5),
            Trade(11, 2407, 3, "buy", 6),
        ),
    )
    pushes = feed.apply(burst, 0, 4)  # trade 9 was printed already
    assert [k for k, _ in pushes] == [("trades", SYM), ("ticker", SYM)]
    body = orjson.loads(pushes[0][1])
    assert [(t["trade_id"], t["qty"]) for t in body["trades"]] == [(10, "2"), (11, "3")]
    ticker = orjson.loads(pushes[1][1])
    assert (ticker["last"], ticker["last_qty"]) == ("2.407", "3")
    assert (ticker["open"], ticker["high"], ticker["volume"], ticker["trades"]) == (
        "2.405",
        "2.407",
        "6",
        3,
    )  # trade 9 counted once


def test_a_halt_and_its_end_are_pushed_on_the_ticker_and_replays_change_nothing():
    feed = MarketFeed(PRICES)
    halt = InstrumentStatus(
        symbol=SYM, ts_ns=50, status="halted", reason="circuit_breaker", until_ns=90
    )
    assert feed.apply(halt, 0, 0) == []  # before the instrument's first book: nothing to say
    feed.apply(BookSnapshot(symbol=SYM, seq=1, bids=((2400, 5),), asks=((2405, 2),)), 0, 1)
    assert feed.ticker(SYM)["status"] == "trading"
    pushes = feed.apply(halt, 0, 2)
    assert [k for k, _ in pushes] == [("ticker", SYM)]
    ticker = orjson.loads(pushes[0][1])
    assert (ticker["status"], ticker["halt_reason"], ticker["halt_until_ns"]) == (
        "halted",
        "circuit_breaker",
        "90",
    )
    assert (ticker["bid"], ticker["prev_seq"], ticker["seq"]) == ("2.400", 1, 2)
    rest = feed.ticker(SYM)
    assert rest is not None and (rest["status"], rest["halt_until_ns"]) == ("halted", "90")
    resumed = InstrumentStatus(symbol=SYM, ts_ns=95, status="trading")
    ticker = orjson.loads(feed.apply(resumed, 0, 3)[0][1])
    assert (ticker["status"], ticker["halt_reason"], ticker["halt_until_ns"]) == (
        "trading",
        None,
        None,
    )
    # A market-data restart republishes both at new offsets: neither is pushed again.
    assert feed.apply(halt, 0, 10) == [] and feed.apply(resumed, 0, 11) == []
    assert feed.ticker(SYM)["status"] == "trading"
    operator = InstrumentStatus(symbol=SYM, ts_ns=120, status="halted", reason="operator")
    ticker = orjson.loads(feed.apply(operator, 0, 12)[0][1])
    assert (ticker["halt_reason"], ticker["halt_until_ns"]) == ("operator", None)


def test_rest_queries_answer_from_the_messages(catalog):
    run = Feed(catalog, seed=4)
    feed = MarketFeed(PRICES, history_max=5)
    for offset, m in enumerate(run.messages):
        feed.apply(m, 0, offset)
    assert feed.symbols() == run.md.symbols()
    symbol = run.active_symbols()[0]
    bids, asks = run.md.levels(symbol)
    book = feed.book(symbol, 10)
    assert book is not None and list(book) == ["symbol", "seq", "bids", "asks", "checksum", "ts_ns"]
    assert (book["bids"], book["asks"]) == top((bids, asks), 10)
    assert book["checksum"] == book_checksum(book["asks"], book["bids"])
    assert feed.book("NOPE", 10) is None
    with pytest.raises(WireError, match="depth"):
        feed.book(symbol, 0)
    best_bid, best_ask = max(bids, default=0), min(asks, default=0)
    assert feed.best(symbol) == (best_bid, bids.get(best_bid, 0), best_ask, asks.get(best_ask, 0))
    assert feed.ask_levels(symbol) == sorted(asks.items())

    prints = [
        t
        for m in run.messages
        if isinstance(m, TradePrints) and m.symbol == symbol
        for t in m.trades
    ]
    assert len(prints) > 5
    assert feed.trades(symbol, 100) == [
        {
            "trade_id": t.trade_id,
            "price": PRICES.to_str(t.price_ticks),
            "qty": str(t.lots),
            "side": t.aggressor_side,
            "ts_ns": str(t.ts_ns),
        }
        for t in reversed(prints[-5:])
    ]
    assert [t["trade_id"] for t in feed.trades(symbol, 2)] == [p.trade_id for p in prints[:-3:-1]]

    latest: dict[int, Candle] = {}  # start -> last message: a later one replaces the bucket
    for m in run.messages:
        if isinstance(m, Candle) and m.symbol == symbol and m.interval_ns == 60_000_000_000:
            latest[m.start_ns] = m
    expected = [latest[start] for start in sorted(latest)][-5:]
    got = feed.candles(symbol, "1m", 100)
    assert [c["start_ns"] for c in got] == [str(c.start_ns) for c in expected]
    assert got[-1] == {
        "start_ns": str(expected[-1].start_ns),
        "open": PRICES.to_str(expected[-1].open_ticks),
        "high": PRICES.to_str(expected[-1].high_ticks),
        "low": PRICES.to_str(expected[-1].low_ticks),
        "close": PRICES.to_str(expected[-1].close_ticks),
        "volume": str(expected[-1].volume_lots),
        "trades": expected[-1].trades,
    }
    assert feed.candles(symbol, "1m", 2) == got[-2:]
    with pytest.raises(WireError, match="interval"):
        feed.candles(symbol, "5m", 10)

    index = [m for m in run.messages if isinstance(m, IndexPrice)][-1]
    assert feed.index(index.symbol) == {
        "gpu": index.symbol,
        "price": PRICES.to_str(index.price_ticks) if index.price_ticks else None,
        "volume_gpu_hours": str(index.volume_gpu_hours),
        "trades": index.trades,
        "ts_ns": str(index.ts_ns),
    }
    assert feed.index("NOPE") is None

    points: dict[str, dict[str, ForwardCurvePoint]] = defaultdict(dict)
    for m in run.messages:
        if isinstance(m, ForwardCurvePoint):
            points[m.symbol][m.instrument] = m
    assert points
    for name, by_instrument in points.items():
        active = sorted((p for p in by_instrument.values() if p.active), key=lambda p: p.start_ns)
        assert [(p["symbol"], p["start_ns"], p["bid"], p["ask"]) for p in feed.curve(name)] == [
            (
                p.instrument,
                str(p.start_ns),
                PRICES.to_str(p.bid_ticks) if p.bid_ticks else None,
                PRICES.to_str(p.ask_ticks) if p.ask_ticks else None,
            )
            for p in active
        ]


def test_a_closed_instrument_leaves_the_curve_and_its_replays_are_ignored():
    feed = MarketFeed(PRICES)
    curve = "H100-SXM.us-east.1h"
    snapshot = BookSnapshot(symbol=SYM, seq=0, ts_ns=5, bids=((2400, 1),))
    point = ForwardCurvePoint(
        symbol=curve, ts_ns=5, instrument=SYM, start_ns=100, hours=1, last_ticks=0, bid_ticks=2400,
        ask_ticks=0,
    )  # fmt: skip
    feed.apply(snapshot, 0, 0)
    feed.apply(point, 0, 1)
    assert [p["symbol"] for p in feed.curve(curve)] == [SYM]
    closed = msgspec.structs.replace(point, ts_ns=6, bid_ticks=0, active=False)
    pushes = feed.apply(closed, 0, 2)
    assert [k for k, _ in pushes] == [("curve", curve)]
    assert orjson.loads(pushes[0][1])["active"] is False
    assert feed.curve(curve) == [] and feed.symbols() == [] and feed.book(SYM, 10) is None
    assert feed.apply(snapshot, 0, 3) == [] and feed.apply(point, 0, 4) == []  # a replay
    assert feed.symbols() == [] and feed.stats.closed == 1
