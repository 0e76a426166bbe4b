"""Engine bugs found by comparing with the reference book, pinned as regressions.

New findings go here first as xfail(strict=True) reproductions; a fix turns them into ordinary
passing tests.
"""

from __future__ import annotations

import msgspec
import pytest

from matching.engine import Engine, EngineConfig
from schemas import commands as c
from schemas import events as evt
from schemas.catalog import load_catalog
from schemas.codes import Side
from schemas.symbols import InstrumentKey, format_symbol
from schemas.units import NS_PER_HOUR, NS_PER_MINUTE

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
