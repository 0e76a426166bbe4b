"""Regressions: each test names a bug once found and pins the fixed behaviour."""

from __future__ import annotations

import msgspec
import pytest

from matching.invariants import violations
from schemas import commands as c
from schemas import events as e
from tests.conftest import HOUR_NS, SMALL, T0_NS, capacity_for, first_hourly, started_engine

pytestmark = pytest.mark.nojit


def _types(events) -> list[str]:
    return [type(x).__name__ for x in events]


def _tiny(catalog, **sizes):
    return started_engine(catalog, msgspec.structs.replace(SMALL, **sizes))


def test_cancelled_gtd_orders_do_not_fill_the_expiry_heap(catalog):
    engine = _tiny(catalog, orders_max=2)
    symbol = first_hourly(engine)
    engine.apply([c.Deposit(account=10, amount_micros=10**9)])
    for _ in range(3):
        placed = engine.apply(
            [
                c.PlaceOrder(
                    account=10,
                    symbol=symbol,
                    side="buy",
                    lots=1,
                    price_ticks=2000,
                    tif="gtd",
                    expire_ns=T0_NS + HOUR_NS // 2,
                )
            ]
        )
        assert _types(placed) == ["OrderAccepted", "CashChanged"]
        engine.apply([c.CancelOrder(account=10, order_id=placed[0].order_id)])
    gtc = engine.apply(
        [c.PlaceOrder(account=10, symbol=symbol, side="buy", lots=1, price_ticks=2000)]
    )
    assert _types(gtc) == ["OrderAccepted", "CashChanged"]
    assert violations(engine.state) == []


def test_live_gtd_orders_filling_the_heap_refuse_only_gtd_orders(catalog):
    engine = _tiny(catalog, orders_max=2)
    symbol = first_hourly(engine)
    engine.apply([c.Deposit(account=10, amount_micros=10**9)])
    gtd = dict(tif="gtd", expire_ns=T0_NS + HOUR_NS // 2)
    for price in (2000, 2001):
        engine.apply(
            [c.PlaceOrder(account=10, symbol=symbol, side="buy", lots=1, price_ticks=price, **gtd)]
        )
    third = engine.apply(
        [c.PlaceOrder(account=10, symbol=symbol, side="buy", lots=1, price_ticks=2002, **gtd)]
    )
    assert third[0].reason == "ENGINE_FULL"


def test_amend_needs_no_free_order_row(catalog):
    engine = _tiny(catalog, orders_max=2)
    symbol = first_hourly(engine)
    engine.apply([c.Deposit(account=10, amount_micros=10**9)])
    first = engine.apply(
        [c.PlaceOrder(account=10, symbol=symbol, side="buy", lots=1, price_ticks=2000)]
    )
    engine.apply([c.PlaceOrder(account=10, symbol=symbol, side="buy", lots=1, price_ticks=2001)])
    amended = engine.apply(
        [c.AmendOrder(account=10, order_id=first[0].order_id, price_ticks=1990, lots=1)]
    )
    assert isinstance(amended[0], e.OrderAmended) and not amended[0].priority_kept


def test_self_trade_releases_the_capacity_it_committed(catalog):
    engine = started_engine(catalog)
    symbol = first_hourly(engine)
    engine.apply([c.Deposit(account=20, amount_micros=10**9), capacity_for(20, symbol, 1)])
    sell = c.PlaceOrder(account=20, symbol=symbol, side="sell", lots=1, price_ticks=2400)
    engine.apply([sell])
    buy = c.PlaceOrder(account=20, symbol=symbol, side="buy", lots=1, price_ticks=2400, stp="none")
    assert "TradeExecuted" in _types(engine.apply([buy]))
    again = engine.apply([sell])
    assert _types(again)[0] == "OrderAccepted"
    assert violations(engine.state) == []
