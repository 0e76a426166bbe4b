"""Regressions: each test names a bug once found and pins the fixed behaviour.

New findings go here first as xfail(strict=True) reproductions; a fix makes them ordinary tests.
"""

from __future__ import annotations

import msgspec
import pytest

from matching.engine import Engine, EngineConfig
from matching.invariants import violations
from schemas import commands as c
from schemas import events as e
from schemas import events as evt
from schemas.catalog import load_catalog
from schemas.codes import Side
from schemas.symbols import InstrumentKey, format_symbol
from schemas.units import NS_PER_HOUR, NS_PER_MINUTE
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


# Found by comparing with the reference exchange (tests/reference/).
CATALOG = load_catalog()
MIDNIGHT = 1_796_083_200 * 10**9  # 2026-12-01T00:00Z
T0 = MIDNIGHT - 3 * NS_PER_HOUR + 10 * NS_PER_MINUTE
START = MIDNIGHT - 2 * NS_PER_HOUR  # the first hourly instrument listed at T0
SYMBOL = format_symbol(
    InstrumentKey(gpu="H100-SXM", region="us-east", product="1h", start_ns=START)
)


def _engine(obligations_max: int) -> Engine:
    engine = Engine(
        CATALOG,
        EngineConfig(
            gpus=("H100-SXM",),
            regions=("us-east",),
            orders_max=64,
            levels_max=64,
            positions_max=64,
            capacity_rows_max=64,
            obligations_max=obligations_max,
            accounts_max=16,
            instruments_max=256,
        ),  # fmt: skip
    )
    engine.apply([c.ClockTick(ts_ns=T0)])
    return engine


def _trade_two_lots(engine: Engine) -> list:
    setup = [c.Deposit(account=a, amount_micros=10**9) for a in (10, 11, 14)]
    setup.append(
        c.CapacityUpdate(
            account=14,
            gpu="H100-SXM",
            region="us-east",
            start_ns=START,
            end_ns=START + NS_PER_HOUR,
            gpus=10,
        )  # fmt: skip
    )
    setup += [
        c.PlaceOrder(account=14, symbol=SYMBOL, side=Side.SELL, lots=2, price_ticks=2400),
        c.PlaceOrder(account=10, symbol=SYMBOL, side=Side.BUY, lots=1, price_ticks=2400),
        c.PlaceOrder(account=11, symbol=SYMBOL, side=Side.BUY, lots=1, price_ticks=2400),
    ]
    return engine.apply(setup)


@pytest.mark.nojit
def test_orders_are_refused_before_gate_closure_could_run_out_of_obligations() -> None:
    # Was: gate closure wrote obligations past a full pool, corrupting a live obligation.
    engine = _engine(obligations_max=1)
    refused = [e for e in _trade_two_lots(engine) if isinstance(e, evt.OrderRejected)]
    assert [e.reason for e in refused] == ["ENGINE_FULL"] * 3
    closed = engine.apply([c.ClockTick(ts_ns=START - 15 * NS_PER_MINUTE)])
    assert not [e for e in closed if isinstance(e, evt.DeliveryAssigned)]


@pytest.mark.nojit
def test_gate_closure_with_room_keeps_every_obligation() -> None:
    engine = _engine(obligations_max=8)
    _trade_two_lots(engine)
    # Gate closure: provider 14 is short 2, holders 10 and 11 are long 1 each: two obligations.
    closed = engine.apply([c.ClockTick(ts_ns=START - 15 * NS_PER_MINUTE)])
    assigned = [e for e in closed if isinstance(e, evt.DeliveryAssigned)]
    ids = [a.obligation_id for a in assigned]
    assert len(ids) == 2
    # Either both obligations exist with distinct positive ids and can be confirmed, or the
    # engine refused the trade that would have overfilled the pool; never a corrupt row.
    assert all(i > 0 for i in ids) and len(set(ids)) == 2, f"obligation ids {ids}"
    confirmed = engine.apply([c.DeliveryConfirmed(account=14, obligation_id=i) for i in ids])
    started = [e for e in confirmed if isinstance(e, evt.DeliveryStarted)]
    assert len(started) == 2, [msgspec.structs.asdict(e) for e in confirmed]


@pytest.mark.nojit
def test_a_command_the_encoder_did_not_foresee_is_refused_not_raised(catalog):
    """A command whose fields break the encoder in a way it has no check for (a string where an
    hour goes: msgspec does not check types when a Struct is built in process) is refused as
    MALFORMED, with every other command of its batch applied; raising would stop the runner on
    this command at every replay."""
    engine = Engine(catalog, SMALL)
    gpu, region = catalog.gpus[0].model, catalog.regions[0]
    poison = c.CapacityUpdate(
        account=10,
        gpu=gpu,
        region=region,
        start_ns="1",
        end_ns=HOUR_NS,
        gpus=1,  # type: ignore[arg-type]
    )
    events = engine.apply(
        [c.Deposit(account=10, amount_micros=5), poison, c.Deposit(account=10, amount_micros=7)]
    )
    rejected = [x for x in events if isinstance(x, e.CommandRejected)]
    assert [x.reason for x in rejected] == ["MALFORMED"]
    assert (
        sum(x.available_delta for x in events if isinstance(x, e.CashChanged) and x.account == 10)
        == 12
    )
