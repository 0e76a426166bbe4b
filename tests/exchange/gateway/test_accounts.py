"""The gateway's private-feed projection against real engine output.

Seeded simulations are replayed through `Accounts` and compared with the engine's own state after
every chunk of commands (balances, positions, resting orders); hand-built command sequences pin
each push body; the push stream is checked for its sequencing and order-quantity invariants.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange import wire
from exchange.gateway.accounts import CHANNELS, CLOSED_ORDERS_MAX, FILLS_MAX, Accounts, _money
from matching import layout as lay
from matching.engine import Engine
from schemas import commands as c
from schemas import events as e
from schemas.symbols import parse_symbol
from tests.conftest import HOUR_NS, SMALL, T0_NS, capacity_for, first_hourly
from tests.support.simulation import run_simulation

ORDER_KEYS = [
    "order_id",
    "client_order_id",
    "symbol",
    "side",
    "type",
    "tif",
    "price",
    "qty",
    "cum_qty",
    "leaves_qty",
    "status",
    "post_only",
    "stp",
    "expire_ns",
    "ts_ns",
]
EXECUTION_KEYS = [
    "channel",
    "type",
    "account_seq",
    "prev_account_seq",
    "exec_type",
    "order",
    "last_price",
    "last_qty",
    "trade_id",
    "fee",
    "liquidity",
    "reject_code",
    "reason",
    "ts_ns",
]
BALANCE_KEYS = [
    "channel",
    "type",
    "account_seq",
    "prev_account_seq",
    "available",
    "held",
    "escrow",
    "collateral",
    "pending",
    "ts_ns",
]
POSITION_KEYS = [
    "channel",
    "type",
    "account_seq",
    "prev_account_seq",
    "symbol",
    "qty",
    "delta",
    "ts_ns",
]
SEEDS = (1, 2, 3)
PROVIDER, BUYER, OTHER = 20, 10, 11
USD = 1_000_000

Decoded = tuple[int, str, dict[str, Any]]


# ---------------------------------------------------------------------- helpers


def _accounts(catalog, closed_orders_max: int = CLOSED_ORDERS_MAX, fills_max: int = FILLS_MAX):
    return Accounts(wire.Prices(catalog.tick_micros), closed_orders_max, fills_max=fills_max)


def _feed(accounts: Accounts, events: list) -> list[Decoded]:
    out = []
    for ev in events:
        for account, channel, body in accounts.apply(ev):
            out.append((account, channel, orjson.loads(body)))
    return out


class _Market:
    """A fresh engine and projection: commands in, decoded pushes out."""

    def __init__(self, catalog, closed_orders_max=CLOSED_ORDERS_MAX, fills_max=FILLS_MAX) -> None:
        self.engine = Engine(catalog, SMALL)
        self.accounts = _accounts(catalog, closed_orders_max, fills_max)
        self.prices = wire.Prices(catalog.tick_micros)
        self.events: list = []
        self.pushes: list[Decoded] = []
        self.run(c.ClockTick(ts_ns=T0_NS))
        self.symbol = first_hourly(self.engine)

    def run(self, *commands: c.Command) -> list[Decoded]:
        events = self.engine.apply(list(commands))
        self.events += events
        out = _feed(self.accounts, events)
        self.pushes += out
        return out

    def funded(self) -> _Market:
        """Give the provider capacity and cash, and the traders cash."""
        self.run(
            capacity_for(PROVIDER, self.symbol, 10),
            c.Deposit(account=PROVIDER, amount_micros=100 * USD),
            c.Deposit(account=BUYER, amount_micros=100 * USD),
            c.Deposit(account=OTHER, amount_micros=100 * USD),
        )
        return self

    def place(self, account: int, side: str, lots: int, price: int = 2400, **kw) -> list[Decoded]:
        return self.run(
            c.PlaceOrder(
                account=account, symbol=self.symbol, side=side, lots=lots, price_ticks=price, **kw
            )
        )

    def accepted(self, pushes: list[Decoded]) -> int:
        return next(b["order"]["order_id"] for _, ch, b in pushes if ch == "executions")


def _executions(pushes: list[Decoded], account: int) -> list[dict[str, Any]]:
    return [b for a, ch, b in pushes if a == account and ch == "executions"]


def _engine_balances(engine: Engine) -> dict[int, tuple[str, str, str, str]]:
    rows = engine.state[lay.ST_ACCTS]
    cols = [lay.A_AVAIL, lay.A_HELD, lay.A_ESCROW, lay.A_COLLAT]
    return {
        a: tuple(wire.money_to_str(int(rows[a, col])) for col in cols) for a in range(len(rows))
    }


def _our_balances(accounts: Accounts, count: int) -> dict[int, tuple[str, str, str, str]]:
    out = {}
    for a in range(count):
        b = accounts.balances(a)
        assert b["account"] == a
        out[a] = (b["available"], b["held"], b["escrow"], b["collateral"])
    return out


def _engine_positions(engine: Engine) -> dict[tuple[int, str], int]:
    slots = {engine.symbol_slot(s): s for s in engine.open_symbols()}
    hwm = int(engine.state[lay.ST_META][0, lay.M_POS_HWM])
    out = {}
    for p in engine.state[lay.ST_POS][:hwm]:
        if p[lay.P_ACCOUNT] != -1 and p[lay.P_LOTS] != 0:
            out[(int(p[lay.P_ACCOUNT]), slots[int(p[lay.P_INSTR])])] = int(p[lay.P_LOTS])
    return out


def _our_positions(accounts: Accounts, count: int) -> dict[tuple[int, str], int]:
    return {(a, p["symbol"]): int(p["qty"]) for a in range(count) for p in accounts.positions(a)}


def _engine_orders(engine: Engine) -> dict[int, tuple[int, str, int, int]]:
    """Live orders: id -> (account, symbol, remaining lots, price ticks)."""
    slots = {engine.symbol_slot(s): s for s in engine.open_symbols()}
    hwm = int(engine.state[lay.ST_META][0, lay.M_ORDER_HWM])
    out = {}
    for o in engine.state[lay.ST_ORDERS][:hwm]:
        if o[lay.O_ID] != 0:
            assert o[lay.O_LEVEL] != -1, "a live order outside the book between commands"
            out[int(o[lay.O_ID])] = (
                int(o[lay.O_ACCOUNT]),
                slots[int(o[lay.O_INSTR])],
                int(o[lay.O_LOTS]),
                int(o[lay.O_PRICE]),
            )
    return out


def _our_orders(accounts: Accounts, prices: wire.Prices, count: int):
    out = {}
    for a in range(count):
        for o in accounts.open_orders(a):
            assert o["status"] in ("new", "partially_filled")
            assert accounts.owner(o["order_id"]) == a
            out[o["order_id"]] = (a, o["symbol"], int(o["leaves_qty"]), prices.from_str(o["price"]))
    return out


def _replay_in_chunks(catalog, seed: int, batches: int, chunk: int = 25):
    """Replay a simulation's command log through a fresh engine, yielding after every chunk."""
    _, log, _ = run_simulation(catalog, seed, batches)
    engine = Engine(catalog, SMALL)
    accounts = _accounts(catalog)
    pushes: list[Decoded] = []
    for start in range(0, len(log), chunk):
        events = engine.apply(log[start : start + chunk], range(start, start + chunk))
        pushes += _feed(accounts, events)
        yield engine, accounts, pushes


@pytest.fixture(scope="module")
def simulated(catalog):
    """Per seed: the engine after a long simulation, its events, a projection and its pushes."""
    runs = {}
    for seed in SEEDS:
        engine, _, events = run_simulation(catalog, seed, 300)
        accounts = _accounts(catalog)
        runs[seed] = (engine, events, accounts, _feed(accounts, events))
    return runs


# ---------------------------------------------------------------------- replay equals the engine


@pytest.mark.parametrize("seed", SEEDS)
def test_replayed_balances_positions_and_orders_equal_the_engine_after_every_chunk(catalog, seed):
    chunks = traded = 0
    for engine, accounts, _ in _replay_in_chunks(catalog, seed, 120):
        count = len(engine.state[lay.ST_ACCTS])
        assert _our_balances(accounts, count) == _engine_balances(engine)
        assert _our_positions(accounts, count) == _engine_positions(engine)
        prices = wire.Prices(catalog.tick_micros)
        assert _our_orders(accounts, prices, count) == _engine_orders(engine)
        chunks += 1
        traded += bool(_engine_positions(engine))
    assert accounts.stats.unknown_orders == 0 and accounts.stats.gaps == 0
    assert chunks > 10 and traded > 3  # the comparison saw live positions, not only empty books


@pytest.mark.parametrize("seed", SEEDS)
def test_final_balances_after_a_long_simulation_equal_the_engine(simulated, seed):
    engine, events, accounts, _ = simulated[seed]
    count = len(engine.state[lay.ST_ACCTS])
    assert _our_balances(accounts, count) == _engine_balances(engine)
    assert any(isinstance(ev, e.DeliverySettled) for ev in events)  # escrow and penalties moved


# ---------------------------------------------------------------------- push stream invariants


@pytest.mark.parametrize("seed", SEEDS)
def test_account_seq_chains_per_account_and_channel_without_gaps(simulated, seed):
    _, events, _, pushes = simulated[seed]
    last: dict[tuple[int, str], int] = defaultdict(int)
    for account, channel, body in pushes:
        assert body["prev_account_seq"] == last[(account, channel)]
        assert body["account_seq"] >= body["prev_account_seq"]
        last[(account, channel)] = body["account_seq"]
    # Every event that concerns an account reached it: no push is missing from a chain.
    expected: dict[tuple[int, str], int] = defaultdict(int)
    for ev in events:
        if isinstance(ev, e.CashChanged):
            expected[(ev.account, "balances")] += 1
        elif isinstance(ev, e.PositionChanged):
            expected[(ev.account, "positions")] += 1
        elif isinstance(ev, e.TradeExecuted):
            expected[(ev.maker_account, "executions")] += 1
            expected[(ev.taker_account, "executions")] += 1
        elif isinstance(ev, e.OrderAccepted | e.OrderCancelled | e.OrderExpired):
            expected[(ev.account, "executions")] += 1
        elif isinstance(ev, e.OrderAmended | e.OrderRejected):
            expected[(ev.account, "executions")] += 1
    counted: dict[tuple[int, str], int] = defaultdict(int)
    for account, channel, _ in pushes:
        counted[(account, channel)] += 1
    assert counted == expected
    _, _, accounts, _ = simulated[seed]
    for (account, channel), seq in last.items():
        assert accounts.last_seq(account, channel) == seq


@pytest.mark.parametrize("seed", SEEDS)
def test_every_execution_push_keeps_the_order_quantities_consistent(simulated, seed):
    _, _, _, pushes = simulated[seed]
    statuses: dict[str, int] = defaultdict(int)
    filled_by_trades: dict[int, int] = defaultdict(int)
    for _, channel, body in pushes:
        if channel != "executions":
            continue
        assert list(body) == EXECUTION_KEYS
        o = body["order"]
        qty, cum, leaves = int(o["qty"]), int(o["cum_qty"]), int(o["leaves_qty"])
        statuses[o["status"]] += 1
        if o["status"] in ("new", "partially_filled", "filled"):
            assert cum + leaves == qty, body
            assert (cum == 0) == (o["status"] == "new"), body
            assert (leaves == 0) == (o["status"] == "filled"), body
        else:
            assert leaves == 0, body
            assert cum <= qty, body
        if body["exec_type"] == "trade":
            filled_by_trades[o["order_id"]] += int(body["last_qty"])
            assert filled_by_trades[o["order_id"]] == cum, body
            assert o["status"] in ("partially_filled", "filled")
            assert body["liquidity"] in ("maker", "taker")
        else:
            assert body["last_price"] is body["trade_id"] is body["liquidity"] is None
        if body["exec_type"] == "rejected":
            assert o["status"] == "rejected" or o["order_id"] != 0
            assert body["reject_code"] and body["reason"]
    assert statuses["filled"] and statuses["partially_filled"] and statuses["canceled"]
    assert statuses["expired"] and statuses["rejected"]


@pytest.mark.parametrize("seed", SEEDS)
def test_redelivered_events_change_nothing(catalog, simulated, seed):
    engine, events, accounts, _ = simulated[seed]
    before = [accounts.balances(a) for a in range(64)], [accounts.open_orders(a) for a in range(64)]
    assert all(accounts.apply(ev) == [] for ev in events)
    assert accounts.stats.duplicates >= len(events)
    assert (
        [accounts.balances(a) for a in range(64)],
        [accounts.open_orders(a) for a in range(64)],
    ) == before


def test_a_skipped_event_is_counted_as_a_gap(catalog, simulated):
    _, events, _, _ = simulated[1]
    accounts = _accounts(catalog)
    _feed(accounts, events[:10] + events[11:])
    assert accounts.stats.gaps == 1
    assert accounts.event_seq(0) == events[-1].seq


def test_push_bodies_are_encoded_once_with_channel_first_and_no_conn_seq(simulated):
    engine, events, _, _ = simulated[1]
    accounts = Accounts(wire.Prices(engine.catalog.tick_micros))
    seen = set()
    for ev in events:
        for _, channel, body in accounts.apply(ev):
            assert isinstance(body, bytes)
            assert body.startswith(b'{"channel":"' + channel.encode() + b'"')
            assert b"conn_seq" not in body
            spliced = orjson.loads(wire.with_conn_seq(body, 7))
            assert spliced == {"conn_seq": 7, **orjson.loads(body)}
            seen.add(channel)
    assert seen == set(CHANNELS) - {"deliveries"}  # made by exchange/gateway/deliveries.py


def test_balances_and_positions_updates_have_the_api_fields(simulated):
    _, _, _, pushes = simulated[1]
    balances = [body for _, channel, body in pushes if channel == "balances"]
    positions = [body for _, channel, body in pushes if channel == "positions"]
    assert balances and positions  # the check below proves nothing over no pushes
    for body in balances:
        assert list(body) == BALANCE_KEYS and body["type"] == "update"
    for body in positions:
        assert list(body) == POSITION_KEYS and body["type"] == "update"
        assert int(body["qty"]) != 0 or int(body["delta"]) != 0


# ---------------------------------------------------------------------- executions, by hand


def test_partial_fill_then_the_completing_fill_says_filled(catalog):
    m = _Market(catalog).funded()
    ask = m.accepted(m.place(PROVIDER, "sell", 3, client_order_id="ask-1"))
    first = m.place(BUYER, "buy", 1)
    second = m.place(OTHER, "buy", 2)
    maker = [b for b in _executions(first + second, PROVIDER)]
    assert [b["exec_type"] for b in maker] == ["trade", "trade"]
    assert [b["order"]["status"] for b in maker] == ["partially_filled", "filled"]
    assert [(b["order"]["cum_qty"], b["order"]["leaves_qty"]) for b in maker] == [
        ("1", "2"),
        ("3", "0"),
    ]
    assert [b["fee"] for b in maker] == ["0.000480", "0.000960"]
    assert maker[1]["last_price"] == "2.400" and maker[1]["last_qty"] == "2"
    assert maker[1]["liquidity"] == "maker" and maker[1]["trade_id"] == 2
    taker = _executions(second, OTHER)
    assert [b["exec_type"] for b in taker] == ["new", "trade"]
    assert taker[1]["order"]["status"] == "filled" and taker[1]["liquidity"] == "taker"
    assert taker[1]["fee"] == "0.002400"
    assert m.accounts.open_orders(PROVIDER) == []
    closed = m.accounts.closed_orders(PROVIDER)
    assert [o["order_id"] for o in closed] == [ask] and closed[0]["status"] == "filled"
    assert m.accounts.order_by_client_id(PROVIDER, "ask-1") == closed[0]
    fills = m.accounts.fills(PROVIDER)
    assert [(f["trade_id"], f["qty"], f["side"]) for f in fills] == [
        (2, "2", "sell"),
        (1, "1", "sell"),
    ]


def test_new_order_push_carries_the_whole_order(catalog):
    m = _Market(catalog).funded()
    expire = T0_NS + HOUR_NS // 4
    pushes = m.place(BUYER, "buy", 2, 2300, tif="gtd", expire_ns=expire, client_order_id="b1")
    (body,) = _executions(pushes, BUYER)
    assert body["exec_type"] == "new" and body["account_seq"] == m.events[-2].seq
    assert list(body["order"]) == ORDER_KEYS
    assert body["order"] == {
        "order_id": body["order"]["order_id"],
        "client_order_id": "b1",
        "symbol": m.symbol,
        "side": "buy",
        "type": "limit",
        "tif": "gtd",
        "price": "2.300",
        "qty": "2",
        "cum_qty": "0",
        "leaves_qty": "2",
        "status": "new",
        "post_only": False,
        "stp": "cancel_taker",
        "expire_ns": str(expire),
        "ts_ns": str(T0_NS),
    }
    assert m.accounts.order(BUYER, body["order"]["order_id"]) == body["order"]
    assert m.accounts.order(OTHER, body["order"]["order_id"]) is None
    assert m.accounts.owner(body["order"]["order_id"]) == BUYER


def test_ioc_remainder_cancel_reports_zero_leaves_and_the_ordered_qty(catalog):
    m = _Market(catalog).funded()
    m.place(PROVIDER, "sell", 1)
    pushes = _executions(m.place(BUYER, "buy", 3, tif="ioc"), BUYER)
    assert [b["exec_type"] for b in pushes] == ["new", "trade", "canceled"]
    last = pushes[-1]["order"]
    assert (last["status"], last["qty"], last["cum_qty"], last["leaves_qty"]) == (
        "canceled",
        "3",
        "1",
        "0",
    )
    assert pushes[-1]["reason"] == "IOC_REMAINDER" and pushes[-1]["reject_code"] is None
    assert m.accounts.open_orders(BUYER) == []


def test_self_trade_decrement_keeps_the_resting_order_with_fewer_lots(catalog):
    m = _Market(catalog).funded()
    ask = m.accepted(m.place(PROVIDER, "sell", 3))
    pushes = _executions(m.place(PROVIDER, "buy", 1, stp="decrement"), PROVIDER)
    assert [b["exec_type"] for b in pushes] == ["new", "canceled", "canceled"]
    rested, taker = pushes[1]["order"], pushes[2]["order"]
    assert rested["order_id"] == ask
    assert (rested["status"], rested["qty"], rested["leaves_qty"]) == ("new", "2", "2")
    assert pushes[1]["reason"] == "SELF_TRADE"
    assert (taker["status"], taker["qty"], taker["leaves_qty"]) == ("canceled", "1", "0")
    assert [o["order_id"] for o in m.accounts.open_orders(PROVIDER)] == [ask]
    assert m.accounts.open_orders(PROVIDER)[0]["leaves_qty"] == "2"


def test_amend_after_a_partial_fill_sets_qty_to_cum_plus_the_new_lots(catalog):
    m = _Market(catalog).funded()
    ask = m.accepted(m.place(PROVIDER, "sell", 5))
    m.place(BUYER, "buy", 2)
    (cut,) = _executions(
        m.run(c.AmendOrder(account=PROVIDER, order_id=ask, price_ticks=2400, lots=1)), PROVIDER
    )
    o = cut["order"]
    assert cut["exec_type"] == "amended"
    assert (o["status"], o["qty"], o["cum_qty"], o["leaves_qty"]) == (
        "partially_filled",
        "3",
        "2",
        "1",
    )
    (moved,) = _executions(
        m.run(c.AmendOrder(account=PROVIDER, order_id=ask, price_ticks=2450, lots=4)), PROVIDER
    )
    assert moved["order"]["price"] == "2.450" and moved["order"]["qty"] == "6"
    assert m.accounts.order(PROVIDER, ask) == moved["order"]


def test_market_order_reports_market_type_and_its_protection_price(catalog):
    m = _Market(catalog).funded()
    m.place(PROVIDER, "sell", 1)
    pushes = _executions(m.place(BUYER, "buy", 1, 0, order_type="market", tif="ioc"), BUYER)
    new = pushes[0]["order"]
    accepted = next(
        ev for ev in m.events if isinstance(ev, e.OrderAccepted) and ev.account == BUYER
    )
    assert new["type"] == "market" and accepted.price_ticks > 2400
    assert new["price"] == m.prices.to_str(accepted.price_ticks)
    assert pushes[-1]["order"]["status"] == "filled"


def test_gate_closure_expiry_is_pushed_as_expired(catalog):
    m = _Market(catalog).funded()
    bid = m.accepted(m.place(BUYER, "buy", 2, 2300))
    key = parse_symbol(m.symbol)
    pushes = _executions(m.run(c.ClockTick(ts_ns=key.start_ns)), BUYER)
    assert [b["exec_type"] for b in pushes] == ["expired"]
    o = pushes[0]["order"]
    assert (o["order_id"], o["status"], o["qty"], o["leaves_qty"]) == (bid, "expired", "2", "0")
    assert pushes[0]["reason"] == "GATE_CLOSURE"
    assert not m.accounts.is_listed(m.symbol)
    assert m.symbol not in {i["symbol"] for i in m.accounts.instruments()}


def test_self_trade_without_prevention_gives_the_account_two_pushes_of_one_event(catalog):
    m = _Market(catalog).funded()
    m.place(PROVIDER, "sell", 1)
    pushes = _executions(m.place(PROVIDER, "buy", 1, stp="none"), PROVIDER)
    maker, taker = [b for b in pushes if b["exec_type"] == "trade"]
    assert (maker["liquidity"], taker["liquidity"]) == ("maker", "taker")
    assert maker["account_seq"] == taker["account_seq"] == taker["prev_account_seq"]
    assert [f["side"] for f in m.accounts.fills(PROVIDER)] == ["buy", "sell"]


# ---------------------------------------------------------------------- rejections


def test_rejected_placement_is_found_by_client_order_id(catalog):
    m = _Market(catalog)
    pushes = _executions(m.place(BUYER, "buy", 1, client_order_id="lost-1"), BUYER)
    (body,) = pushes
    assert body["exec_type"] == "rejected" and body["reject_code"] == "INSUFFICIENT_CASH"
    found = m.accounts.order_by_client_id(BUYER, "lost-1")
    assert found == body["order"]
    assert found["order_id"] == 0 and found["status"] == "rejected"
    assert found["reject_code"] == "INSUFFICIENT_CASH" and found["reason"]
    assert (found["qty"], found["cum_qty"], found["leaves_qty"]) == ("0", "0", "0")
    assert found["symbol"] == m.symbol
    assert m.accounts.closed_orders(BUYER) == [found]
    assert m.accounts.order(BUYER, 0) is None and m.accounts.owner(0) is None
    assert m.accounts.order_by_client_id(OTHER, "lost-1") is None
    assert not m.accounts.client_order_live(BUYER, "lost-1")  # its reservation may be forgotten


def test_refused_placement_does_not_hide_a_working_order_with_the_same_client_id(catalog):
    m = _Market(catalog).funded()
    bid = m.accepted(m.place(BUYER, "buy", 1, 2300, client_order_id="dup"))
    assert (
        _executions(m.place(BUYER, "buy", 1, 10**7, client_order_id="dup"), BUYER)[0]["exec_type"]
        == "rejected"
    )
    assert m.accounts.order_by_client_id(BUYER, "dup")["order_id"] == bid
    assert m.accounts.client_order_live(BUYER, "dup")  # a working order keeps its id reserved
    assert not m.accounts.client_order_live(OTHER, "dup")


def test_refused_amend_of_an_own_order_pushes_it_unchanged(catalog):
    m = _Market(catalog).funded()
    bid = m.accepted(m.place(BUYER, "buy", 2, 2300))
    (body,) = _executions(
        m.run(c.AmendOrder(account=BUYER, order_id=bid, price_ticks=2300, lots=2)), BUYER
    )
    assert body["exec_type"] == "rejected" and body["reject_code"] == "AMEND_NO_CHANGE"
    assert body["order"] == m.accounts.order(BUYER, bid)
    assert body["order"]["status"] == "new" and body["order"]["leaves_qty"] == "2"


def test_refused_cancel_of_another_accounts_order_tells_nothing_about_it(catalog):
    m = _Market(catalog).funded()
    ask = m.accepted(m.place(PROVIDER, "sell", 2))
    (body,) = _executions(m.run(c.CancelOrder(account=OTHER, order_id=ask)), OTHER)
    assert body["reject_code"] == "NOT_ORDER_OWNER"
    o = body["order"]
    assert (o["order_id"], o["status"], o["qty"], o["price"], o["side"]) == (
        ask,
        "rejected",
        "0",
        None,
        None,
    )
    assert m.accounts.owner(ask) == PROVIDER and m.accounts.order(OTHER, ask) is None
    assert m.accounts.closed_orders(OTHER) == []


def test_unknown_reject_code_is_reported_as_its_number(catalog):
    accounts = _accounts(catalog)
    ev = e.OrderRejected(seq=1, account=5, code=9999, reason="future", client_order_id="x")
    ((account, channel, body),) = accounts.apply(ev)
    decoded = orjson.loads(body)
    assert (account, channel, decoded["reject_code"]) == (5, "executions", "9999")
    assert accounts.order_by_client_id(5, "x")["reject_code"] == "9999"


# ---------------------------------------------------------------------- retention


def test_closed_order_retention_is_bounded_per_account(catalog):
    m = _Market(catalog, closed_orders_max=3).funded()
    ids = []
    for i in range(5):
        ids.append(m.accepted(m.place(BUYER, "buy", 1, 2300 + i, client_order_id=f"c{i}")))
        m.run(c.CancelOrder(account=BUYER, order_id=ids[-1]))
    m.place(OTHER, "buy", 1, 2300, client_order_id="o")  # another account keeps its own
    m.run(
        c.CancelOrder(account=OTHER, order_id=m.accounts.order_by_client_id(OTHER, "o")["order_id"])
    )
    closed = m.accounts.closed_orders(BUYER)
    assert [o["order_id"] for o in closed] == ids[:1:-1]
    assert all(o["status"] == "canceled" for o in closed)
    assert m.accounts.order(BUYER, ids[0]) is None and m.accounts.owner(ids[0]) is None
    assert m.accounts.order_by_client_id(BUYER, "c0") is None
    assert m.accounts.order_by_client_id(BUYER, "c4")["order_id"] == ids[4]
    assert m.accounts.owner(ids[4]) == BUYER
    assert len(m.accounts.closed_orders(OTHER)) == 1
    m.place(BUYER, "buy", 1, 10**7, client_order_id="rej")  # a rejection takes a place too
    assert [o["client_order_id"] for o in m.accounts.closed_orders(BUYER)] == ["rej", "c4", "c3"]
    assert m.accounts.closed_orders(BUYER, symbol="no-such") == []


def test_fills_are_newest_first_bounded_and_filtered(catalog):
    m = _Market(catalog, fills_max=2).funded()
    for _ in range(3):
        m.place(PROVIDER, "sell", 1)
        m.place(BUYER, "buy", 1)
    fills = m.accounts.fills(BUYER)
    assert [f["trade_id"] for f in fills] == [3, 2]
    assert list(fills[0]) == [
        "trade_id",
        "order_id",
        "symbol",
        "side",
        "price",
        "qty",
        "fee",
        "liquidity",
        "ts_ns",
    ]
    assert [f["trade_id"] for f in m.accounts.fills(BUYER, limit=1)] == [3]
    assert m.accounts.fills(BUYER, symbol=m.symbol, limit=0) == []
    assert m.accounts.fills(BUYER, symbol="no-such") == []


# ---------------------------------------------------------------------- snapshots and queries


def test_snapshots_have_the_api_shapes_and_the_last_seqs(catalog):
    m = _Market(catalog).funded()
    m.place(PROVIDER, "sell", 3)
    m.place(BUYER, "buy", 1)
    m.place(BUYER, "buy", 1, 2300)
    acc = m.accounts
    execs = orjson.loads(acc.executions_snapshot(BUYER))
    assert list(execs) == ["channel", "type", "account_seq", "orders"]
    assert (execs["channel"], execs["type"]) == ("executions", "snapshot")
    assert execs["account_seq"] == acc.last_seq(BUYER, "executions") > 0
    assert execs["orders"] == acc.open_orders(BUYER) and len(execs["orders"]) == 1
    balances = orjson.loads(acc.balances_snapshot(BUYER))
    assert list(balances) == BALANCE_KEYS and balances["type"] == "snapshot"
    last_update = [b for a, ch, b in m.pushes if a == BUYER and ch == "balances"][-1]
    assert balances == {**last_update, "type": "snapshot"}
    assert {k: balances[k] for k in ("available", "held", "escrow", "collateral", "pending")} == {
        k: v for k, v in acc.balances(BUYER).items() if k != "account"
    }
    positions = orjson.loads(acc.positions_snapshot(BUYER))
    assert positions == {
        "channel": "positions",
        "type": "snapshot",
        "account_seq": acc.last_seq(BUYER, "positions"),
        "positions": [{"symbol": m.symbol, "qty": "1"}],
    }
    assert acc.positions(PROVIDER) == [{"symbol": m.symbol, "qty": "-1"}]
    with pytest.raises(ValueError, match="channel"):
        acc.last_seq(BUYER, "book")


def test_an_account_never_seen_has_empty_answers(catalog):
    acc = _accounts(catalog)
    assert acc.balances(42) == {
        "account": 42,
        "available": "0.000000",
        "held": "0.000000",
        "escrow": "0.000000",
        "collateral": "0.000000",
        "pending": "0.000000",
    }
    assert acc.positions(42) == acc.open_orders(42) == acc.closed_orders(42) == acc.fills(42) == []
    assert acc.capacity(42) == []
    assert orjson.loads(acc.executions_snapshot(42)) == {
        "channel": "executions",
        "type": "snapshot",
        "account_seq": 0,
        "orders": [],
    }
    assert orjson.loads(acc.balances_snapshot(42))["prev_account_seq"] == 0
    assert acc.last_seq(42, "positions") == 0


def test_instruments_follow_listing_and_closure(simulated, catalog):
    engine, events, accounts, _ = simulated[1]
    listed = accounts.instruments()
    assert sorted(i["symbol"] for i in listed) == sorted(engine.open_symbols())
    first = next(
        ev
        for ev in events
        if isinstance(ev, e.InstrumentListed) and ev.symbol == listed[0]["symbol"]
    )
    prices = wire.Prices(catalog.tick_micros)
    assert listed[0] == {
        "symbol": first.symbol,
        "gpu": first.gpu,
        "region": first.region,
        "product": first.product,
        "start_ns": str(first.start_ns),
        "hours": first.hours,
        "gate_close_ns": str(first.gate_close_ns),
        "status": "trading",
        "lots_max": str(first.lots_max),
        "price_band_min": prices.to_str(first.price_band_min_ticks),
        "price_band_max": prices.to_str(first.price_band_max_ticks),
    }
    closed = next(ev.symbol for ev in events if isinstance(ev, e.InstrumentClosed))
    assert accounts.is_listed(listed[-1]["symbol"]) and not accounts.is_listed(closed)


def test_capacity_ranges_follow_updates(catalog):
    m = _Market(catalog)
    key = parse_symbol(m.symbol)
    start = key.start_ns
    gpu, region = key.gpu, key.region

    def update(first: int, last: int, gpus: int) -> None:
        m.run(
            c.CapacityUpdate(
                account=PROVIDER,
                gpu=gpu,
                region=region,
                start_ns=start + first * HOUR_NS,
                end_ns=start + last * HOUR_NS,
                gpus=gpus,
            )
        )

    update(0, 6, 10)
    update(2, 4, 5)
    update(4, 5, 10)  # merges with the range after it
    ranges = [(r["start_ns"], r["end_ns"], r["gpus"]) for r in m.accounts.capacity(PROVIDER)]
    hours = [(int(s) - start) // HOUR_NS for s, _, _ in ranges]
    assert hours == [0, 2, 4]
    assert [(int(t) - start) // HOUR_NS for _, t, _ in ranges] == [2, 4, 6]
    assert [g for _, _, g in ranges] == [10, 5, 10]
    assert m.accounts.capacity(PROVIDER)[0]["gpu"] == gpu
    update(0, 6, 0)
    assert m.accounts.capacity(PROVIDER) == []


def test_capacity_whose_hours_are_over_is_dropped_at_the_next_update(catalog):
    accounts = _accounts(catalog)

    def update(seq: int, now: int, first: int, last: int) -> None:
        ev = e.CapacityUpdated(
            seq=seq,
            ts_event=now * HOUR_NS,
            account=7,
            gpu="H100-SXM",
            region="us-east",
            start_ns=first * HOUR_NS,
            end_ns=last * HOUR_NS,
            gpus=3,
        )
        assert accounts.apply(ev) == []

    update(1, 0, 0, 2)
    update(2, 2, 3, 4)
    assert [(r["start_ns"], r["end_ns"]) for r in accounts.capacity(7)] == [
        (str(3 * HOUR_NS), str(4 * HOUR_NS))
    ]


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_money_strings_equal_the_wire_format(micros):
    assert _money(micros) == wire.money_to_str(micros)


# ---------------------------------------------------------------------- resume_from_seq


def _channel_pushes(m: _Market, account: int, channel: str) -> list[dict[str, Any]]:
    return [b for a, ch, b in m.pushes if a == account and ch == channel]


def _traded(catalog) -> _Market:
    m = _Market(catalog).funded()
    for i in range(6):
        m.place(PROVIDER, "sell", 2, price=2400 + i)
        m.place(BUYER, "buy", 1, price=2400 + i)
    return m


@pytest.mark.parametrize("channel", ["executions", "balances", "positions"])
def test_private_resume_replays_exactly_what_followed_any_push(catalog, channel):
    m = _traded(catalog)
    seen = _channel_pushes(m, BUYER, channel)
    assert len(seen) >= 4
    for k, push in enumerate(seen):
        replay = m.accounts.resume(BUYER, channel, push["account_seq"])
        assert replay is not None
        assert [orjson.loads(body) for body in replay] == seen[k + 1 :], k
    from_start = m.accounts.resume(BUYER, channel, 0)  # everything is still kept
    assert from_start is not None and [orjson.loads(b) for b in from_start] == seen
    # Ahead of the gateway: no replay (the client starts over from the snapshot).
    assert m.accounts.resume(BUYER, channel, seen[-1]["account_seq"] + 1) is None
    assert m.accounts.resume(OTHER + 1000, channel, 0) == []  # an account with no pushes


def test_private_resume_past_what_is_kept_says_so(catalog, monkeypatch):
    from exchange.gateway import accounts as accounts_module

    monkeypatch.setattr(accounts_module, "PRIVATE_RESUME_MAX", 3)
    m = _traded(catalog)
    seen = _channel_pushes(m, BUYER, "executions")
    assert len(seen) > 4
    assert m.accounts.resume(BUYER, "executions", seen[0]["account_seq"]) is None
    replay = m.accounts.resume(BUYER, "executions", seen[-4]["account_seq"])
    assert [orjson.loads(b) for b in replay or []] == seen[-3:]
