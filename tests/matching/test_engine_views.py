"""Engine.balances() and Engine.positions(): the state's non-zero balances and positions."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas import commands as c
from schemas import events as e
from schemas.ids import ACCOUNT_EXTERNAL
from streams.ledger.schema import BUCKET_AVAILABLE, BUCKET_COLLATERAL, BUCKET_ESCROW, BUCKET_HELD
from tests.conftest import capacity_for, first_hourly, started_engine

pytestmark = pytest.mark.nojit

BUYER, SELLER = 10, 11


def test_views_after_a_deposit_and_a_trade_equal_the_sums_of_their_events(catalog):
    engine = started_engine(catalog)
    symbol = first_hourly(engine)
    deposited = engine.apply([c.Deposit(account=BUYER, amount_micros=10**9)])
    assert engine.balances() == {
        (BUYER, BUCKET_AVAILABLE): 10**9,
        (ACCOUNT_EXTERNAL, BUCKET_AVAILABLE): -(10**9),
    }
    assert engine.positions() == {}
    events = deposited + engine.apply(
        [
            c.Deposit(account=SELLER, amount_micros=10**9),
            capacity_for(SELLER, symbol, 1),
            c.PlaceOrder(account=SELLER, symbol=symbol, side="sell", lots=1, price_ticks=2000),
            c.PlaceOrder(account=BUYER, symbol=symbol, side="buy", lots=1, price_ticks=2000),
        ]
    )
    assert any(isinstance(x, e.TradeExecuted) for x in events)
    sums: Counter[tuple[int, int]] = Counter()
    positions = {}
    for x in events:
        if isinstance(x, e.CashChanged):
            sums[x.account, BUCKET_AVAILABLE] += x.available_delta
            sums[x.account, BUCKET_HELD] += x.held_delta
            sums[x.account, BUCKET_ESCROW] += x.escrow_delta
            sums[x.account, BUCKET_COLLATERAL] += x.collateral_delta
        elif isinstance(x, e.PositionChanged):
            positions[x.account, x.symbol] = x.position_lots
    assert engine.balances() == {k: v for k, v in sums.items() if v != 0}
    assert sum(engine.balances().values()) == 0  # money moves, it is never made
    assert engine.positions() == positions == {(BUYER, symbol): 1, (SELLER, symbol): -1}
