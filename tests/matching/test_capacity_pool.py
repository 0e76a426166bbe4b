"""Provider capacity rows: bounded in time (the listing horizon), per provider and by their hours.

Found in a security review: rows were never freed and any future hour was accepted, so about
625 `capacity.update` calls from one provider filled the 2**20-row pool and every provider's new
hours were refused ENGINE_FULL; the row key kept 20 bits of the hour, so hours 2**20 apart
shared a row.
"""

from __future__ import annotations

import msgspec
import pytest

from matching import layout as lay
from matching.calendar import capacity_horizon_hours
from matching.engine import Engine
from matching.invariants import violations
from matching.kernels.pools import _cap_key
from schemas import commands as c
from schemas import events as e
from schemas.symbols import parse_symbol
from tests.conftest import HOUR_NS, SMALL, T0_NS, first_hourly, started_engine

ATTACKER, VICTIM = 20, 21
GPU, REGION = "H100-SXM", "us-east"
NOW_HOUR = T0_NS // HOUR_NS


def _capacity(account: int, first_hour: int, last_hour: int, gpus: int = 1) -> c.CapacityUpdate:
    return c.CapacityUpdate(
        account=account,
        gpu=GPU,
        region=REGION,
        start_ns=first_hour * HOUR_NS,
        end_ns=last_hour * HOUR_NS,
        gpus=gpus,
    )


def _reasons(events: list) -> list[str]:
    return [x.reason if isinstance(x, e.CommandRejected) else type(x).__name__ for x in events]


def _rows(engine: Engine) -> int:
    return int(engine.state[lay.ST_META][0, lay.M_CAP_LIVE])


def test_far_future_capacity_flood_no_longer_blocks_another_provider(catalog):
    # The attack as found, against the production pool size: 700 updates of the longest range.
    config = msgspec.structs.replace(SMALL, capacity_rows_max=1 << 20)
    engine = started_engine(catalog, config)
    hours = config.capacity_hours_max
    far = NOW_HOUR + 10 * capacity_horizon_hours(catalog)
    flood = [_capacity(ATTACKER, far + k * hours, far + (k + 1) * hours) for k in range(700)]
    refused = engine.apply(flood)
    key = parse_symbol(first_hourly(engine))
    victim = c.CapacityUpdate(
        account=VICTIM, gpu=key.gpu, region=key.region, start_ns=key.start_ns,
        end_ns=key.end_ns, gpus=4,
    )  # fmt: skip
    assert _reasons(engine.apply([victim])) == ["CapacityUpdated"]  # was: ENGINE_FULL
    assert set(_reasons(refused)) == {"CAPACITY_RANGE_INVALID"}
    assert _rows(engine) == 1


@pytest.mark.nojit
def test_capacity_beyond_the_listing_horizon_or_wholly_past_is_refused(catalog):
    engine = started_engine(catalog)
    horizon = capacity_horizon_hours(catalog)
    assert horizon == max(p.listing_horizon_hours + p.hours for p in catalog.products)
    events = engine.apply(
        [
            _capacity(ATTACKER, NOW_HOUR + horizon - 1, NOW_HOUR + horizon + 1),  # one hour past
            _capacity(ATTACKER, NOW_HOUR - 3, NOW_HOUR),  # over before it arrives
            _capacity(ATTACKER, NOW_HOUR + horizon - 1, NOW_HOUR + horizon),  # the last hour
            _capacity(ATTACKER, NOW_HOUR - 2, NOW_HOUR + 2),  # from the past: its future hours
        ]
    )
    assert _reasons(events) == [
        "CAPACITY_RANGE_INVALID",
        "CAPACITY_RANGE_INVALID",
        "CapacityUpdated",
        "CapacityUpdated",
    ]
    assert _rows(engine) == 1 + 2  # the hours before the current one keep no row


@pytest.mark.nojit
def test_capacity_rows_are_bounded_per_provider(catalog):
    config = msgspec.structs.replace(SMALL, capacity_rows_per_account_max=100)
    engine = started_engine(catalog, config)
    events = engine.apply(
        [
            _capacity(ATTACKER, NOW_HOUR + 1, NOW_HOUR + 101),  # 100 rows: the limit
            _capacity(ATTACKER, NOW_HOUR + 101, NOW_HOUR + 102),  # one more: refused
            _capacity(ATTACKER, NOW_HOUR + 1, NOW_HOUR + 101, gpus=7),  # the same hours again
            _capacity(VICTIM, NOW_HOUR + 1, NOW_HOUR + 101),  # another provider has its own
            _capacity(ATTACKER, NOW_HOUR + 1, NOW_HOUR + 11, gpus=0),  # 0 GPUs frees the rows
            _capacity(ATTACKER, NOW_HOUR + 101, NOW_HOUR + 111),  # so ten new hours fit
        ]
    )
    assert _reasons(events) == [
        "CapacityUpdated",
        "CAPACITY_LIMIT",
        "CapacityUpdated",
        "CapacityUpdated",
        "CapacityUpdated",
        "CapacityUpdated",
    ]
    assert _rows(engine) == 200
    assert violations(engine.state) == []


@pytest.mark.nojit
def test_capacity_rows_of_past_hours_are_freed_at_the_tick(catalog):
    engine = started_engine(catalog)
    engine.apply([_capacity(ATTACKER, NOW_HOUR, NOW_HOUR + 5)])
    assert _rows(engine) == 5
    engine.apply([c.ClockTick(ts_ns=T0_NS + HOUR_NS - 1)])  # the current hour is not over
    assert _rows(engine) == 5
    engine.apply([c.ClockTick(ts_ns=T0_NS + 3 * HOUR_NS + 60 * 10**9)])
    assert _rows(engine) == 2  # the hour now and the one after it stay
    assert violations(engine.state) == []
    # A restored engine indexes only the live rows: it agrees with this one, row for row.
    restored = Engine.restore(engine.snapshot(), catalog)
    assert restored.state_hash() == engine.state_hash()
    more = [_capacity(ATTACKER, NOW_HOUR + 3, NOW_HOUR + 9, gpus=2)]
    assert _reasons(restored.apply(more)) == _reasons(engine.apply(more)) == ["CapacityUpdated"]
    assert restored.state_hash() == engine.state_hash()
    assert _rows(engine) == 6


@pytest.mark.nojit
def test_a_provider_at_its_limit_gets_room_back_as_its_hours_pass(catalog):
    config = msgspec.structs.replace(SMALL, capacity_rows_per_account_max=5)
    engine = started_engine(catalog, config)
    engine.apply([_capacity(ATTACKER, NOW_HOUR, NOW_HOUR + 5)])
    later = _capacity(ATTACKER, NOW_HOUR + 5, NOW_HOUR + 8)
    assert _reasons(engine.apply([later])) == ["CAPACITY_LIMIT"]
    engine.apply([c.ClockTick(ts_ns=T0_NS + 3 * HOUR_NS)])
    assert _reasons(engine.apply([later])) == ["CapacityUpdated"]
    assert violations(engine.state) == []


@pytest.mark.nojit
def test_capacity_keys_of_hours_2_20_apart_differ():
    hour = 1_796_083_200 // 3600
    assert _cap_key(10, 3, hour) != _cap_key(10, 3, hour + (1 << 20))
    assert _cap_key(10, 3, hour) != _cap_key(10, 3, hour + (1 << 21))
    # The largest hour an int64 of nanoseconds can name keeps its own key too.
    last = (2**63 - 1) // HOUR_NS
    assert _cap_key(10, 3, last) != _cap_key(10, 3, last & ((1 << 20) - 1))


@pytest.mark.nojit
def test_capacity_2_20_hours_ahead_does_not_back_an_ask_now(catalog):
    engine = started_engine(catalog)
    symbol = first_hourly(engine)
    hour = parse_symbol(symbol).start_ns // HOUR_NS
    engine.apply(
        [c.Deposit(account=ATTACKER, amount_micros=10**9), _capacity(ATTACKER, hour, hour + 1, 0)]
    )
    aliased = _capacity(ATTACKER, hour + (1 << 20), hour + (1 << 20) + 1, gpus=3)
    updated = engine.apply([aliased])
    ask = c.PlaceOrder(account=ATTACKER, symbol=symbol, side="sell", lots=3, price_ticks=2400)
    placed = engine.apply([ask])
    # Was: the far hour's row was the near hour's, so its 3 GPUs backed a short now.
    assert isinstance(placed[0], e.OrderRejected) and placed[0].reason == "INSUFFICIENT_COVER"
    assert _reasons(updated) == ["CAPACITY_RANGE_INVALID"]
