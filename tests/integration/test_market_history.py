"""Market-data history in PostgreSQL equals what the live feed published for the same trades."""

from __future__ import annotations

import asyncpg

from schemas import events as e
from schemas.catalog import load_catalog
from schemas.marketdata import Candle, IndexPrice
from streams.ledger.schema import migrate
from streams.marketdata.state import MarketData
from tests.support.simulation import run_simulation

from .conftest import run


async def _load_trades(dsn: str, trades: list[e.TradeExecuted]) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.copy_records_to_table(
        "trades",
        records=[
            (
                t.shard,
                t.trade_id,
                0,
                i,
                t.seq,
                t.input_offset,
                t.ts_event,
                t.symbol,
                t.price_ticks,
                t.lots,
                t.aggressor_side.value,
                t.maker_order_id,
                t.taker_order_id,
                t.maker_account,
                t.taker_account,
                t.maker_fee_micros,
                t.taker_fee_micros,
            )  # fmt: skip
            for i, t in enumerate(trades)
        ],
        columns=[
            "shard",
            "trade_id",
            "event_partition",
            "event_offset",
            "seq",
            "input_offset",
            "ts_event",
            "symbol",
            "price_ticks",
            "lots",
            "aggressor_side",
            "maker_order_id",
            "taker_order_id",
            "maker_account",
            "taker_account",
            "maker_fee_micros",
            "taker_fee_micros",
        ],  # fmt: skip
    )
    return conn


def test_sql_candles_and_index_equal_the_live_feed(dsn):
    _, _, events = run_simulation(load_catalog(), seed=8, batches=120)
    trades = [x for x in events if isinstance(x, e.TradeExecuted)]
    assert len(trades) > 20
    feed = MarketData()
    published = []
    for x in events:
        published += feed.apply(x)
    published += feed.flush()
    live = {}
    for m in published:
        if isinstance(m, Candle):
            live[(m.symbol, m.interval_ns, m.start_ns)] = (
                m.open_ticks, m.high_ticks, m.low_ticks, m.close_ticks, m.volume_lots, m.trades
            )  # fmt: skip
    last_index = {m.symbol: m for m in published if isinstance(m, IndexPrice)}
    now = max(t.ts_event for t in trades)

    async def check() -> None:
        conn = await _load_trades(dsn, trades)
        try:
            history = {}
            for view in ("candles_1m", "candles_1h", "candles_1d"):
                for r in await conn.fetch(f"SELECT * FROM {view}"):
                    history[(r["symbol"], r["interval_ns"], r["start_ns"])] = (
                        r["open_ticks"], r["high_ticks"], r["low_ticks"], r["close_ticks"],
                        r["volume_lots"], r["trades"],
                    )  # fmt: skip
            assert history == live
            compared = 0
            for gpu, m in last_index.items():
                if m.ts_ns != now:
                    continue
                compared += 1
                row = await conn.fetchrow("SELECT * FROM price_index($1, $2)", gpu, now)
                assert (row["price_ticks"], row["volume_lots"], row["trades"]) == (
                    m.price_ticks, m.volume_lots, m.trades
                )  # fmt: skip
            assert compared >= 1
        finally:
            await conn.close()

    run(check())
