"""Two shards: each lists and trades only its own pairs, and their ids never collide."""

from __future__ import annotations

import msgspec
import pytest

from matching.engine import Engine
from matching.invariants import violations
from schemas import commands as c
from schemas import events as e
from schemas.catalog import Catalog
from schemas.codes import Reject
from schemas.ids import ID_SHARD_STRIDE, shard_of_id
from schemas.shards import build_shard_map
from schemas.symbols import parse_symbol
from streams.engine_runner import shard_engine_config
from tests.conftest import SMALL, T0_NS, capacity_for, first_hourly

pytestmark = pytest.mark.nojit

BUYER, PROVIDER = 10, 11


def _started(catalog: Catalog) -> list[tuple[Engine, list]]:
    """The engines of a 2-shard map after their first tick, with the tick's events."""
    shards = build_shard_map(catalog, 2)
    started = []
    for shard in range(2):
        config = shard_engine_config(msgspec.structs.replace(SMALL, shard=shard), shards)
        engine = Engine(catalog, config)
        started.append((engine, engine.apply([c.ClockTick(shard=shard, ts_ns=T0_NS)])))
    return started


def _engines(catalog: Catalog) -> list[Engine]:
    return [engine for engine, _ in _started(catalog)]


def _pairs_listed(engine: Engine) -> set[tuple[str, str]]:
    return {(k.gpu, k.region) for k in map(parse_symbol, engine.open_symbols())}


def test_each_shard_lists_only_its_pairs(catalog):
    shards = build_shard_map(catalog, 2)
    engines = _engines(catalog)
    for shard, engine in enumerate(engines):
        assert _pairs_listed(engine) == set(shards.pairs_of(shard))
    assert not set(engines[0].open_symbols()) & set(engines[1].open_symbols())


def test_one_shard_map_lists_what_an_engine_without_a_map_lists(catalog):
    config = shard_engine_config(SMALL, build_shard_map(catalog, 1))
    mapped, plain = Engine(catalog, config), Engine(catalog, SMALL)
    tick = [c.ClockTick(ts_ns=T0_NS)]
    assert mapped.apply(tick) == plain.apply(tick)
    assert mapped.state_hash() == plain.state_hash()


def _trade_and_deliver(engine: Engine, shard: int, gpu: str, region: str) -> list:
    """Deposit, provider capacity and ask, a crossing bid, then gate closure: every id kind."""
    symbol = first_hourly(engine, gpu, region)
    key = parse_symbol(symbol)
    cap = msgspec.structs.replace(capacity_for(PROVIDER, symbol, 4), shard=shard)
    out = engine.apply(
        [
            c.Deposit(shard=shard, account=BUYER, amount_micros=10**9, ref=f"pay-{shard}"),
            c.Deposit(shard=shard, account=PROVIDER, amount_micros=10**9),
            cap,
            c.PlaceOrder(
                shard=shard, account=PROVIDER, symbol=symbol, side="sell", lots=2, price_ticks=2000
            ),
            c.PlaceOrder(
                shard=shard, account=BUYER, symbol=symbol, side="buy", lots=2, price_ticks=2000
            ),
            c.ClockTick(shard=shard, ts_ns=key.start_ns - catalog_lead(engine)),
        ]
    )
    # Checked before the withdrawal request: the invariants' money sum leaves out the pending
    # bucket, so a pending withdrawal reads as missing money there.
    assert violations(engine.state) == []
    return out + engine.apply([c.RequestWithdrawal(shard=shard, account=BUYER, amount_micros=1000)])


def catalog_lead(engine: Engine) -> int:
    """The gate closure lead: a tick at start - lead closes the instrument and assigns delivery."""
    return engine.catalog.gate_closure_lead_ns


def _ids(events: list) -> dict[str, list[int]]:
    fields = {
        e.OrderAccepted: "order_id",
        e.TradeExecuted: "trade_id",
        e.DeliveryAssigned: "obligation_id",
        e.InstrumentListed: "instrument_id",
        e.DepositCredited: "deposit_id",
        e.WithdrawalRequested: "withdrawal_id",
    }
    ids: dict[str, list[int]] = {name: [] for name in fields.values()}
    for event in events:
        name = fields.get(type(event))
        if name is not None:
            ids[name].append(getattr(event, name))
    return ids


def test_ids_of_shard_one_carry_the_stride_and_never_meet_shard_zeros(catalog):
    shards = build_shard_map(catalog, 2)
    seen: list[dict[str, list[int]]] = []
    for shard, (engine, listed) in enumerate(_started(catalog)):
        gpu, region = shards.pairs_of(shard)[0]
        events = listed + _trade_and_deliver(engine, shard, gpu, region)
        ids = _ids(events)
        assert all(ids.values()), f"shard {shard}: every id kind appears: {ids}"
        seen.append(ids)
    for name, ids in seen[0].items():
        assert all(0 < i < ID_SHARD_STRIDE for i in ids), name
        assert all(shard_of_id(i) == 1 for i in seen[1][name]), name
        assert not set(ids) & set(seen[1][name]), name
    # Shard 1's ids are shard 0's moved up by one stride: same slots, same counters.
    for name in ("order_id", "trade_id", "obligation_id", "withdrawal_id", "deposit_id"):
        assert seen[1][name] == [i + ID_SHARD_STRIDE for i in seen[0][name]], name


def test_shard_one_keeps_its_id_counters_through_a_snapshot(catalog):
    engine = _engines(catalog)[1]
    gpu, region = build_shard_map(catalog, 2).pairs_of(1)[0]
    _trade_and_deliver(engine, 1, gpu, region)
    restored = Engine.restore(engine.snapshot(), catalog)
    assert restored.state_hash() == engine.state_hash()
    assert restored.config == engine.config
    symbol = first_hourly(restored, gpu, region)
    restored.apply([c.Deposit(shard=1, account=12, amount_micros=10**9)])
    placed = restored.apply(
        [c.PlaceOrder(shard=1, account=12, symbol=symbol, side="buy", lots=1, price_ticks=1000)]
    )
    assert shard_of_id(placed[0].order_id) == 1


def test_commands_for_another_shards_pairs_are_refused_as_wrong_shard(catalog):
    shards = build_shard_map(catalog, 2)
    zero, one = _engines(catalog)
    theirs = first_hourly(one, *shards.pairs_of(1)[0])
    zero.apply([c.Deposit(account=BUYER, amount_micros=10**9)])
    out = zero.apply(
        [
            c.PlaceOrder(account=BUYER, symbol=theirs, side="buy", lots=1, price_ticks=2000),
            c.CancelAll(account=BUYER, symbol=theirs),
            c.HaltInstrument(account=0, symbol=theirs),
            capacity_for(PROVIDER, theirs, 1),
        ]
    )
    assert [x.code for x in out] == [int(Reject.WRONG_SHARD)] * 4
    assert isinstance(out[0], e.OrderRejected) and out[0].symbol == theirs
    # A command carrying the other shard's number is refused as before.
    ours = first_hourly(zero, *shards.pairs_of(0)[0])
    wrong = zero.apply(
        [c.PlaceOrder(shard=1, account=BUYER, symbol=ours, side="buy", lots=1, price_ticks=1)]
    )
    assert wrong[0].code == int(Reject.WRONG_SHARD)
