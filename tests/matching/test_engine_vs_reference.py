"""The engine equals the reference book: same events, same order, same balances, any commands.

Commands are drawn one at a time while the reference runs alongside, so cancels, amends and
delivery commands name ids the engine really issued. The engine then gets the same commands in
random batches, which must not change a single event.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from matching import layout as lay
from matching.engine import Engine, EngineConfig
from schemas import commands as c
from schemas import events as evt
from schemas.catalog import load_catalog
from schemas.codes import OrderType, SelfTradePrevention, Side, TimeInForce
from schemas.symbols import InstrumentKey, format_symbol
from schemas.units import NS_PER_HOUR, NS_PER_MINUTE
from tests.reference.book import ReferenceExchange

settings.register_profile(
    "engine-vs-reference",
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CATALOG = load_catalog()
CONFIG = EngineConfig(
    gpus=("H100-SXM", "A100-80G"),
    regions=("us-east",),
    orders_max=4096,
    levels_max=1024,
    positions_max=1024,
    capacity_rows_max=8192,
    capacity_rows_per_account_max=130,  # the setup takes up to 120 a provider: 72-hour updates meet it
    obligations_max=1024,
    accounts_max=64,
    instruments_max=2048,
    orders_open_max=5,
    # A tight circuit breaker with a short halt, so drawn trades trip it and ticks end it.
    breaker_move_bps_max=10,  # a tick step of the drawn prices (5 ticks) is 21 bps
    breaker_window_ns=10 * 60 * 10**9,
    breaker_halt_ns=15 * 60 * 10**9,
)
MIDNIGHT = 1_796_083_200 * 10**9  # 2026-12-01T00:00Z
T0 = MIDNIGHT - 3 * NS_PER_HOUR + 10 * NS_PER_MINUTE  # 21:10: the 22:00 gate is 35 min away
HOUR0 = T0 // NS_PER_HOUR * NS_PER_HOUR
USERS = (10, 11, 12, 13, 14, 15)
PROVIDERS = (14, 15)
BAD_ACCOUNTS = (0, 1, 5, 64, 99)
PRICES = (2390, 2395, 2400, 2400, 2405, 2410)
BAD_PRICES = (0, -5, 9, 100_001)


def _symbol(gpu: str, product: str, start_ns: int, region: str = "us-east") -> str:
    return format_symbol(InstrumentKey(gpu=gpu, region=region, product=product, start_ns=start_ns))


# Symbols that are never traded: unparseable, long gone, beyond the horizon, not on this shard.
COLD = (
    _symbol("H100-SXM", "1h", MIDNIGHT - 30 * 24 * NS_PER_HOUR),
    "nope",
    _symbol("H100-SXM", "1h", MIDNIGHT + 400 * NS_PER_HOUR),
    _symbol("B200", "1h", MIDNIGHT - NS_PER_HOUR),
)


def hot_symbols(now_ns: int) -> tuple[str, ...]:
    """The instruments traded most at `now_ns`: the nearest hourly ones (their gates come soon,
    so closure, assignment and delivery happen) and the nearest day block."""
    lead = CATALOG.gate_closure_lead_ns
    first = ((now_ns + lead) // NS_PER_HOUR + 1) * NS_PER_HOUR
    day = ((now_ns + lead) // (24 * NS_PER_HOUR) + 1) * 24 * NS_PER_HOUR
    return (
        _symbol("H100-SXM", "1h", first),
        _symbol("H100-SXM", "1h", first),
        _symbol("H100-SXM", "1h", first),
        _symbol("H100-SXM", "1h", first + NS_PER_HOUR),
        _symbol("A100-80G", "1h", first),
        _symbol("H100-SXM", "1d", day),
    )


# ------------------------------------------------------------------ comparing


def _plain(events: list) -> list[dict]:
    """Events as dicts with their type."""
    rows = []
    for e in events:
        d = msgspec.structs.asdict(e)
        d["type"] = type(e).__name__
        rows.append(d)
    return rows


def assert_same_events(got: list, want: list, causes: list | None = None) -> None:
    """Assert two event lists are equal, showing the first difference with its context.

    `causes[i]` is the command behind want[i], shown when given.
    """
    a, b = _plain(got), _plain(want)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            lo = max(0, i - 6)
            context = "\n".join(f"  [{k}] {a[k]}" for k in range(lo, i))
            diff = {k: (x.get(k), y.get(k)) for k in x.keys() | y.keys() if x.get(k) != y.get(k)}
            raise AssertionError(
                f"event {i} differs (engine, reference): {diff}\n"
                f"engine:    {x}\nreference: {y}\nbefore:\n{context}"
                + (f"\ncommand: {causes[i]}" if causes else "")
            )
    assert len(a) == len(b), f"engine gave {len(a)} events, reference {len(b)}: {a[len(b) :][:3]}"


def _slot_symbol(engine: Engine, slot: int) -> str:
    row = engine.state[lay.ST_INSTRS][slot]
    key = InstrumentKey(
        gpu=CATALOG.gpus[int(row[lay.I_GPU])].model,
        region=CATALOG.regions[int(row[lay.I_REGION])],
        product=CATALOG.products[int(row[lay.I_PRODUCT])].code,
        start_ns=int(row[lay.I_START]),
    )
    return format_symbol(key)


def engine_view(engine: Engine) -> dict:
    """Balances, positions, capacity, live orders and obligations read from the engine arrays."""
    s = engine.state
    meta = s[lay.ST_META][0]
    balances = {}
    for a, row in enumerate(s[lay.ST_ACCTS]):
        buckets = [lay.A_AVAIL, lay.A_HELD, lay.A_ESCROW, lay.A_COLLAT, lay.A_PENDING]
        money = tuple(int(v) for v in row[buckets])
        if money != (0, 0, 0, 0, 0):
            balances[a] = money
    positions = {}
    for row in s[lay.ST_POS][: meta[lay.M_POS_HWM]]:
        if row[lay.P_ACCOUNT] != -1:
            key = (int(row[lay.P_ACCOUNT]), _slot_symbol(engine, int(row[lay.P_INSTR])))
            cols = [lay.P_LOTS, lay.P_RESERVED, lay.P_ESCROW, lay.P_FEES, lay.P_COLLAT]
            positions[key] = tuple(int(v) for v in row[cols])
    capacity = {}
    for row in s[lay.ST_CAP][: meta[lay.M_CAP_HWM]]:
        key = int(row[lay.C_KEY])
        if key == -1:
            continue  # a free row
        account, capkey = key >> lay.CAP_ACCOUNT_SHIFT, (key >> lay.CAP_HOUR_BITS) & 63
        capacity[(account, capkey, key & lay.CAP_HOUR_MASK)] = (
            int(row[lay.C_CAP]),
            int(row[lay.C_USED]),
        )
    orders = {}
    for row in s[lay.ST_ORDERS][: meta[lay.M_ORDER_HWM]]:
        if row[lay.O_ID] != 0:
            cols = [lay.O_ACCOUNT, lay.O_PRICE, lay.O_LOTS, lay.O_UNIT, lay.O_COVERED]
            orders[int(row[lay.O_ID])] = tuple(int(v) for v in row[cols])
    obligations = {}
    for row in s[lay.ST_OBL][: meta[lay.M_OBL_HWM]]:
        if row[lay.B_ID] != 0:
            cols = [
                lay.B_PROVIDER, lay.B_HOLDER, lay.B_GPUS, lay.B_HOURS_LEFT, lay.B_ESCROW_LEFT,
                lay.B_FEES_LEFT, lay.B_COLLAT_LEFT, lay.B_RELEASED,
            ]  # fmt: skip
            state = int(row[lay.B_STATE])
            obligations[int(row[lay.B_ID])] = tuple(int(v) for v in row[cols]) + (
                state in (lay.OBL_CONFIRMED, lay.OBL_DISPUTED),
                state == lay.OBL_DISPUTED,
            )
    withdrawals = {
        int(row[lay.W_ID]): (int(row[lay.W_ACCOUNT]), int(row[lay.W_AMOUNT]))
        for row in s[lay.ST_WDS][: meta[lay.M_WD_HWM]]
        if row[lay.W_ID] != 0
    }
    return {
        "balances": balances,
        "positions": positions,
        "capacity": capacity,
        "orders": orders,
        "obligations": obligations,
        "withdrawals": withdrawals,
    }


def reference_view(ref: ReferenceExchange) -> dict:
    """The same view of the reference."""
    return {
        "balances": ref.balances(),
        "positions": ref.position_rows(),
        "capacity": {k: tuple(v) for k, v in ref.capacity.items()},
        "orders": {
            o.order_id: (o.account, o.price, o.lots, o.unit, o.covered) for o in ref.orders.values()
        },
        "obligations": {
            b.obligation_id: (
                b.provider,
                b.holder,
                b.gpus,
                b.hours_left,
                b.escrow_left,
                b.fees_left,
                b.collateral_left,
                b.released,
                b.confirmed,
                b.disputed,
            )  # fmt: skip
            for b in ref.obligations.values()
        },
        "withdrawals": {w.withdrawal_id: (w.account, w.amount) for w in ref.withdrawals.values()},
    }


def assert_same_state(engine: Engine, ref: ReferenceExchange) -> None:
    got, want = engine_view(engine), reference_view(ref)
    for part in want:
        assert got[part] == want[part], f"{part}: engine {got[part]} != reference {want[part]}"
    # Double entry: every posting has its counter-posting, so all money sums to zero.
    assert sum(sum(v) for v in got["balances"].values()) == 0
    assert sum(sum(v) for v in want["balances"].values()) == 0


def run_both(commands: list, batches: list[int] | None = None) -> tuple[Engine, ReferenceExchange]:
    """Apply commands to a fresh engine (in batches of the given sizes) and to the reference."""
    engine = Engine(CATALOG, CONFIG)
    ref = ReferenceExchange(CATALOG, CONFIG)
    got: list = []
    sizes = batches or [len(commands)]
    start = 0
    for size in sizes:
        got.extend(engine.apply(commands[start : start + size]))
        start += size
    assert start == len(commands)
    want = ref.apply(commands)
    assert_same_events(got, want)
    assert_same_state(engine, ref)
    return engine, ref


# ------------------------------------------------------------------ strategies


def _setup(data: DataObject) -> list:
    commands: list = [c.ClockTick(ts_ns=T0)]
    others = st.lists(st.sampled_from(USERS[:4]), min_size=2, max_size=4, unique=True)
    for account in data.draw(others) + list(PROVIDERS):
        amount = data.draw(st.sampled_from((3 * 10**8, 2 * 10**9, 2 * 10**9, 5 * 10**6)))
        commands.append(c.Deposit(account=account, amount_micros=amount))
    for provider in PROVIDERS:
        for gpu in ("H100-SXM", "A100-80G"):
            commands.append(
                c.CapacityUpdate(
                    account=provider,
                    gpu=gpu,
                    region="us-east",
                    start_ns=HOUR0 - NS_PER_HOUR,
                    end_ns=HOUR0 + 60 * NS_PER_HOUR,
                    gpus=data.draw(st.sampled_from((10, 40, 40, 0))),
                )
            )
    return commands


def _account(data: DataObject) -> int:
    if data.draw(st.integers(0, 24)) == 0:
        return data.draw(st.sampled_from(BAD_ACCOUNTS))
    return data.draw(st.sampled_from(USERS))


def _symbol_of(data: DataObject, ref: ReferenceExchange) -> str:
    choice = data.draw(st.integers(0, 19))
    if choice == 0:
        return data.draw(st.sampled_from(COLD))
    if choice == 1:  # an instrument whose gate may have passed
        return data.draw(st.sampled_from(hot_symbols(ref.now - 2 * NS_PER_HOUR)))
    return data.draw(st.sampled_from(hot_symbols(ref.now)))


def _lots(data: DataObject) -> int:
    if data.draw(st.integers(0, 30)) == 0:
        return data.draw(st.sampled_from((0, -1, 1000, 1001)))
    return data.draw(st.integers(1, 6))


def _price(data: DataObject) -> int:
    if data.draw(st.integers(0, 30)) == 0:
        return data.draw(st.sampled_from(BAD_PRICES))
    return data.draw(st.sampled_from(PRICES))


def _place(data: DataObject, ref: ReferenceExchange) -> c.PlaceOrder:
    market = data.draw(st.integers(0, 7)) == 0
    tif = data.draw(
        st.sampled_from(
            (TimeInForce.GTC,) * 4 + (TimeInForce.GTD, TimeInForce.IOC, TimeInForce.FOK)
        )
    )
    expire = 0
    if tif is TimeInForce.GTD:
        expire = ref.now + data.draw(st.sampled_from((-1, 0, 2, 20, 90))) * NS_PER_MINUTE
    side = data.draw(st.sampled_from((Side.BUY, Side.SELL)))
    account = _account(data)
    symbol = _symbol_of(data, ref)
    if side is Side.SELL:
        # Sellers are mostly providers (capacity) or holders reselling what they bought.
        ins = ref.instruments.get(symbol)
        holders = sorted(
            a
            for (a, i), p in ref.positions.items()
            if ins and i == ins.instrument_id and p.lots > 0
        )
        who = data.draw(st.integers(0, 4))
        if who < 2:
            account = data.draw(st.sampled_from(PROVIDERS))
        elif who < 4 and holders:
            account = data.draw(st.sampled_from(holders))
    return c.PlaceOrder(
        account=account,
        symbol=symbol,
        side=side,
        lots=_lots(data),
        price_ticks=0 if market else _price(data),
        order_type=OrderType.MARKET if market else OrderType.LIMIT,
        tif=tif,
        post_only=data.draw(st.integers(0, 6)) == 0,
        stp=data.draw(st.sampled_from(tuple(SelfTradePrevention))),
        expire_ns=expire,
        client_order_id=data.draw(st.sampled_from(("", "c1"))),
    )


def _order_id(data: DataObject, ref: ReferenceExchange, seen: list[int]) -> int:
    live = sorted(ref.orders)
    choice = data.draw(st.integers(0, 9))
    if live and choice < 7:
        return data.draw(st.sampled_from(live))
    if seen and choice < 9:
        return data.draw(st.sampled_from(seen))
    k, slot = data.draw(st.integers(0, 40)), data.draw(st.integers(0, 12))
    return (k << 24) | slot


def _owner_or_not(data: DataObject, ref: ReferenceExchange, order_id: int) -> int:
    o = ref.orders.get(order_id)
    if o is not None and data.draw(st.integers(0, 5)) > 0:
        return o.account
    return _account(data)


def _command(data: DataObject, ref: ReferenceExchange, seen: list[int], obls: list[int]):
    if ref.obligations and data.draw(st.integers(0, 2)) == 0:
        return _delivery(data, ref, obls)
    kind = data.draw(
        st.sampled_from(
            ("place",) * 9
            + ("cancel", "amend", "amend", "cancel_all", "deposit", "withdraw")
            + ("request_withdrawal", "settle_withdrawal")
            + ("tick", "tick", "capacity", "delivery", "delivery", "control")
        )
    )
    if kind == "place":
        return _place(data, ref)
    if kind == "control":
        return _control(data, ref)
    if kind in ("cancel", "amend"):
        order_id = _order_id(data, ref, seen)
        account = _owner_or_not(data, ref, order_id)
        if kind == "cancel":
            return c.CancelOrder(account=account, order_id=order_id)
        o = ref.orders.get(order_id)
        price = o.price if o is not None and data.draw(st.booleans()) else _price(data)
        lots = data.draw(st.integers(1, o.lots)) if o is not None and o.lots > 1 else _lots(data)
        if data.draw(st.booleans()):
            lots = _lots(data)
        return c.AmendOrder(account=account, order_id=order_id, price_ticks=price, lots=lots)
    if kind == "cancel_all":
        symbol = data.draw(st.one_of(st.none(), st.sampled_from(hot_symbols(ref.now) + COLD[:2])))
        return c.CancelAll(account=_account(data), symbol=symbol)
    if kind in ("deposit", "withdraw"):
        amount = data.draw(st.sampled_from((-1, 0, 10**6, 3 * 10**7, 10**9, 10**16)))
        if kind == "deposit":
            ref_ = data.draw(st.sampled_from(("", "", "TX-1", "TX-2", "x" * 129)))
            return c.Deposit(account=_account(data), amount_micros=amount, ref=ref_)
        return c.Withdraw(account=_account(data), amount_micros=amount)
    if kind == "request_withdrawal":
        amount = data.draw(st.sampled_from((-1, 0, 10**6, 3 * 10**7, 10**9, 2 * 10**12)))
        return c.RequestWithdrawal(account=_account(data), amount_micros=amount, destination="d")
    if kind == "settle_withdrawal":
        pending = sorted(w.withdrawal_id for w in ref.withdrawals.values())
        wid = (
            data.draw(st.sampled_from(pending)) if pending else data.draw(st.integers(-1, 1 << 25))
        )
        operator = 0 if data.draw(st.integers(0, 5)) > 0 else _account(data)
        return c.SettleWithdrawal(
            account=operator, withdrawal_id=wid, approved=data.draw(st.booleans())
        )
    if kind == "tick":
        step = data.draw(st.sampled_from((-5, 0, 1, 5, 10, 10, 15, 20, 30, 45, 60, 120)))
        return c.ClockTick(ts_ns=ref.now + step * NS_PER_MINUTE)
    if kind == "capacity":
        gpu = data.draw(st.sampled_from(("H100-SXM", "A100-80G", "H100-SXM", "TPU")))
        start = HOUR0 + data.draw(st.integers(-1, 3)) * NS_PER_HOUR
        start += data.draw(st.sampled_from((0, 0, 0, NS_PER_MINUTE)))
        return c.CapacityUpdate(
            account=data.draw(st.sampled_from(PROVIDERS + (12, 70))),
            gpu=gpu,
            region="us-east",
            start_ns=start,
            # 72 hours reach past the setup's rows (the per-provider limit), 1600 past the horizon
            end_ns=start + data.draw(st.sampled_from((-1, 0, 1, 2, 30, 72, 1600))) * NS_PER_HOUR,
            gpus=data.draw(st.sampled_from((-1, 0, 2, 10, 40, 2_000_000))),
        )
    return _delivery(data, ref, obls)


def _control(data: DataObject, ref: ReferenceExchange):
    """An operator's market control (now and then from a user account, refused)."""
    operator = 0 if data.draw(st.integers(0, 7)) > 0 else _account(data)
    kind = data.draw(st.sampled_from((c.HaltInstrument, c.ResumeInstrument, c.ResumeInstrument,
                                      c.CancelInstrumentOrders, c.SuspendAccount,
                                      c.ReinstateAccount)))  # fmt: skip
    if kind in (c.SuspendAccount, c.ReinstateAccount):
        return kind(account=operator, target_account=_account(data))
    symbol = data.draw(st.sampled_from(hot_symbols(ref.now) + COLD[:1]))
    return kind(account=operator, symbol=symbol)


def _delivery(data: DataObject, ref: ReferenceExchange, obls: list[int]):
    live = sorted(b.obligation_id for b in ref.obligations.values())
    if not live and data.draw(st.integers(0, 3)) > 0:
        return c.ClockTick(ts_ns=ref.now + data.draw(st.sampled_from((5, 20, 60))) * NS_PER_MINUTE)
    pool = live or obls
    oid = data.draw(st.sampled_from(pool)) if pool else data.draw(st.integers(0, 1 << 25))
    b = next((b for b in ref.obligations.values() if b.obligation_id == oid), None)
    account = b.provider if b is not None and data.draw(st.integers(0, 4)) > 0 else 0
    if data.draw(st.integers(0, 9)) == 0:
        account = _account(data)
    choice = data.draw(st.integers(0, 5))
    if choice == 4:  # the holder disputes (or someone else tries)
        holder = b.holder if b is not None and data.draw(st.integers(0, 4)) > 0 else account
        return c.DisputeDelivery(account=holder, obligation_id=oid)
    if choice == 5:
        operator = 0 if data.draw(st.integers(0, 5)) > 0 else _account(data)
        release = data.draw(st.booleans())
        return c.ResolveDispute(account=operator, obligation_id=oid, release=release)
    if choice > 1:
        return c.DeliveryConfirmed(account=account, obligation_id=oid)
    return c.DeliveryFailed(
        account=account, obligation_id=oid, hours_delivered=data.draw(st.integers(-1, 25))
    )


def _draw_scenario(data: DataObject) -> tuple[list, list, list, ReferenceExchange]:
    """Draw commands while running the reference.

    Return the commands, the reference's events, the command behind each event, the reference.
    """
    ref = ReferenceExchange(CATALOG, CONFIG)
    commands = _setup(data)
    events: list = []
    causes: list = []
    for command in commands:
        new = ref.apply([command])
        events.extend(new)
        causes.extend([command] * len(new))
    seen: list[int] = []
    obls: list[int] = []
    for _ in range(data.draw(st.integers(10, 90))):
        command = _command(data, ref, seen, obls)
        commands.append(command)
        new = ref.apply([command])
        events.extend(new)
        causes.extend([command] * len(new))
        for e in new:
            if isinstance(e, evt.OrderAccepted):
                seen.append(e.order_id)
            elif isinstance(e, evt.DeliveryAssigned):
                obls.append(e.obligation_id)
    return commands, events, causes, ref


def _draw_batches(data: DataObject, commands: list) -> list[int]:
    """Random batch sizes (batching must not change any event)."""
    sizes = []
    size = 0
    for _ in commands:
        size += 1
        if data.draw(st.integers(0, 3)) == 0:
            sizes.append(size)
            size = 0
    if size:
        sizes.append(size)
    return sizes


# ------------------------------------------------------------------ the property


@pytest.mark.nojit
@settings(settings.get_profile("engine-vs-reference"))
@given(st.data())
def test_engine_equals_reference_for_any_commands(data: DataObject) -> None:
    commands, want, causes, ref = _draw_scenario(data)
    engine = Engine(CATALOG, CONFIG)
    got: list = []
    start = 0
    for size in _draw_batches(data, commands):
        got.extend(engine.apply(commands[start : start + size]))
        start += size
    assert_same_events(got, want, causes)
    assert_same_state(engine, ref)


# A second shard of a 2-shard map owning one of CONFIG's pairs: ids carry the shard's base, and
# the other pair's orders, controls and capacity are refused as WRONG_SHARD.
SHARD_ONE = msgspec.structs.replace(
    CONFIG, shard=1, pairs=(("H100-SXM", "us-east"),), shard_map_digest="two shards"
)


@pytest.mark.nojit
@settings(settings.get_profile("engine-vs-reference"), max_examples=20)
@given(st.data())
def test_a_shard_owning_some_pairs_equals_the_reference(data: DataObject) -> None:
    drawn, _, _, _ = _draw_scenario(data)
    commands = [msgspec.structs.replace(command, shard=1) for command in drawn]
    ref = ReferenceExchange(CATALOG, SHARD_ONE)
    want: list = []
    causes: list = []
    for command in commands:
        new = ref.apply([command])
        want.extend(new)
        causes.extend([command] * len(new))
    engine = Engine(CATALOG, SHARD_ONE)
    got: list = []
    start = 0
    for size in _draw_batches(data, commands):
        got.extend(engine.apply(commands[start : start + size]))
        start += size
    assert_same_events(got, want, causes)
    assert_same_state(engine, ref)


# ------------------------------------------------------------------ hand-written cases

H1 = _symbol("H100-SXM", "1h", MIDNIGHT - 2 * NS_PER_HOUR)  # 22:00, gate 21:45
DAY = _symbol("H100-SXM", "1d", MIDNIGHT)  # gate 23:45


def _funded(*extra: c.Command) -> list:
    """Start the clock, fund every user, give both providers capacity, then `extra`."""
    commands: list = [c.ClockTick(ts_ns=T0)]
    commands += [c.Deposit(account=a, amount_micros=10**10) for a in USERS]
    commands += [
        c.CapacityUpdate(
            account=p,
            gpu="H100-SXM",
            region="us-east",
            start_ns=HOUR0,
            end_ns=HOUR0 + 48 * NS_PER_HOUR,
            gpus=20,
        )  # fmt: skip
        for p in PROVIDERS
    ]
    return commands + list(extra)


def _order(account: int, side: Side, lots: int, price: int, symbol: str = H1, **kw):
    return c.PlaceOrder(
        account=account, symbol=symbol, side=side, lots=lots, price_ticks=price, **kw
    )


def _of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


@pytest.mark.nojit
def test_stp_decrement_cancels_both_sides_then_keeps_matching() -> None:
    commands = _funded(
        _order(14, Side.SELL, 3, 2400),
        _order(15, Side.SELL, 1, 2400),
        _order(14, Side.BUY, 5, 2400, stp=SelfTradePrevention.DECREMENT),
    )
    engine, _ = run_both(commands, [1, 5, 3, len(commands) - 9])
    tail = engine.apply([c.CancelAll(account=14)])
    cancels = [(e.lots_cancelled, e.lots_remaining) for e in _of(tail, evt.OrderCancelled)]
    assert cancels == [(1, 0)]  # 3 decremented on each side, 1 traded with 15, 1 rested


@pytest.mark.nojit
def test_amend_down_keeps_priority_and_amend_up_loses_it() -> None:
    commands = _funded(
        _order(10, Side.BUY, 3, 2400),
        _order(11, Side.BUY, 3, 2400),
        c.AmendOrder(account=10, order_id=(1 << 24) | 0, price_ticks=2400, lots=2),
        _order(14, Side.SELL, 1, 2400),
        c.AmendOrder(account=10, order_id=(1 << 24) | 0, price_ticks=2400, lots=4),
        _order(14, Side.SELL, 1, 2400),
    )
    run_both(commands)
    events = ReferenceExchange(CATALOG, CONFIG).apply(commands)
    assert [a.priority_kept for a in _of(events, evt.OrderAmended)] == [True, False]
    assert [t.maker_account for t in _of(events, evt.TradeExecuted)] == [10, 11]


@pytest.mark.nojit
def test_fok_stops_at_own_order_unless_stp_cancels_the_maker() -> None:
    commands = _funded(
        _order(14, Side.SELL, 2, 2400),
        _order(15, Side.SELL, 3, 2405),
        _order(14, Side.BUY, 3, 2405, tif=TimeInForce.FOK),  # cancel_taker: stops at own order
        _order(14, Side.BUY, 3, 2405, tif=TimeInForce.FOK, stp=SelfTradePrevention.CANCEL_MAKER),
    )
    run_both(commands, [len(commands) - 2, 1, 1])
    fresh = ReferenceExchange(CATALOG, CONFIG)
    events = fresh.apply(commands)
    rejected = _of(events, evt.OrderRejected)
    assert [r.reason for r in rejected] == ["FOK_NOT_FILLABLE"]
    assert [(t.maker_account, t.lots) for t in _of(events, evt.TradeExecuted)] == [(15, 3)]


@pytest.mark.nojit
def test_gate_closure_pairs_a_partly_bought_back_short() -> None:
    commands = _funded(
        _order(14, Side.SELL, 4, 2400),
        _order(10, Side.BUY, 4, 2400),
        _order(15, Side.SELL, 1, 2390),
        _order(14, Side.BUY, 1, 2390),  # 14 buys back one lot of its short from 15
        _order(11, Side.BUY, 2, 2380),  # rests, expires at the gate
        c.ClockTick(ts_ns=MIDNIGHT - 2 * NS_PER_HOUR - 15 * NS_PER_MINUTE),
    )
    engine, ref = run_both(commands, [3, len(commands) - 4, 1])
    events = ReferenceExchange(CATALOG, CONFIG).apply(commands)
    assigned = [(a.provider, a.holder, a.gpus) for a in _of(events, evt.DeliveryAssigned)]
    assert assigned == [(14, 10, 3), (15, 10, 1)]
    later = [
        c.DeliveryConfirmed(account=14, obligation_id=_of(events, evt.DeliveryAssigned)[0]
                            .obligation_id),
        c.ClockTick(ts_ns=MIDNIGHT - NS_PER_HOUR),  # 15 never confirmed: failed at the deadline
    ]  # fmt: skip
    assert_same_events(engine.apply(later), ref.apply(later))
    assert_same_state(engine, ref)


@pytest.mark.nojit
def test_day_block_delivery_releases_hourly_and_refunds_an_interruption() -> None:
    commands = _funded(
        _order(15, Side.SELL, 2, 2400, symbol=DAY),
        _order(12, Side.BUY, 2, 2410, symbol=DAY),
        c.ClockTick(ts_ns=MIDNIGHT - 10 * NS_PER_MINUTE),
    )
    engine, ref = run_both(commands)
    (assigned,) = _of(ReferenceExchange(CATALOG, CONFIG).apply(commands), evt.DeliveryAssigned)
    later = [
        c.DeliveryConfirmed(account=15, obligation_id=assigned.obligation_id),
        c.ClockTick(ts_ns=MIDNIGHT + 3 * NS_PER_HOUR + 1),
        c.DeliveryFailed(account=15, obligation_id=assigned.obligation_id, hours_delivered=5),
    ]
    got = engine.apply(later)
    assert_same_events(got, ref.apply(later))
    assert_same_state(engine, ref)
    (settled,) = _of(got, evt.DeliverySettled)
    assert (settled.hours_delivered, settled.hours_failed) == (3, 21)


@pytest.mark.nojit
def test_batching_does_not_change_events_around_a_closure() -> None:
    gate = MIDNIGHT - 2 * NS_PER_HOUR - 15 * NS_PER_MINUTE
    commands = _funded(
        _order(10, Side.BUY, 1, 2400),
        c.ClockTick(ts_ns=gate),
        c.CancelAll(account=10, symbol=H1),
        _order(99, Side.BUY, 1, 2400),
        _order(10, Side.BUY, 1, 2400, symbol=_symbol("H100-SXM", "1h", MIDNIGHT - 5 * NS_PER_HOUR)),
    )
    whole = Engine(CATALOG, CONFIG).apply(commands)
    split = Engine(CATALOG, CONFIG)
    pieces = split.apply(commands[:1]) + split.apply(commands[1:])
    assert_same_events(pieces, whole)
    run_both(commands)
