"""A slow, obviously-correct reference of the matching engine's state machine.

Plain Python over dicts, deques and dataclasses, written from the rules rather than from the
kernel's arrays, linked lists and hash tables, so that agreeing with `matching.engine.Engine`
event for event is evidence that both are right. It models only what is observable: events,
balances, positions, capacity and obligations. Pool slots are modelled where they leak into ids
(orders and obligations carry their slot in the low 24 bits) or into event order (instruments
close, and obligations settle, in slot order).

A symbol is judged at the command's own engine time, after the account check: unknown account
first, then unknown instrument or not trading. Deposit/Withdraw CashChanged.ref_id is the
command's index in this `apply` call, as in the kernel; that id depends on batching (an engine
bug, tests/test_engine_bugs.py), so the property test masks it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from matching.calendar import due_listings
from matching.engine import DEPOSIT_REFERENCE_CHARS_MAX
from matching.state import EngineConfig, _table_size
from schemas import commands as cmd
from schemas import events as evt
from schemas.catalog import Catalog
from schemas.codes import (
    CancelReason,
    CashReason,
    DeliveryOutcome,
    ExpireReason,
    HaltReason,
    OrderType,
    PositionReason,
    Reject,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from schemas.ids import ACCOUNT_EXTERNAL, ACCOUNT_FEES, ACCOUNT_FIRST_USER, ID_SHARD_STRIDE
from schemas.symbols import InstrumentKey, SymbolError, format_symbol, parse_symbol
from schemas.units import NS_PER_HOUR

__all__ = ["ReferenceExchange"]

BPS = 10_000
SLOT_BITS = 24
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ORDER_COMMANDS = (cmd.PlaceOrder, cmd.AmendOrder, cmd.CancelOrder, cmd.CancelAll)
STP = SelfTradePrevention


class _Refused(Exception):
    """A command refused before it reaches the state machine (the engine's facade)."""

    def __init__(self, code: Reject) -> None:
        self.code = code


class _Pool:
    """The kernel's row allocator: reuse the last freed slot first, else bump the high-water mark."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: list[int] = []
        self.hwm = 0

    def alloc(self) -> int:
        if self.free:
            return self.free.pop()
        if self.hwm >= self.size:
            raise AssertionError("pool exhausted: the engine would have refused earlier")
        self.hwm += 1
        return self.hwm - 1

    def release(self, slot: int) -> None:
        self.free.append(slot)


@dataclass
class Account:
    available: int = 0
    held: int = 0
    escrow: int = 0
    collateral: int = 0
    pending: int = 0  # withdrawals requested, not yet settled
    withdrawal_day: int = 0
    withdrawn_today: int = 0  # requested on `withdrawal_day`
    open_orders: dict[int, None] = field(default_factory=dict)  # order ids in placement order
    suspended: bool = False


@dataclass
class Instrument:
    instrument_id: int
    slot: int
    key: InstrumentKey
    symbol: str
    hours: int
    gate_ns: int
    capkey: int
    hour0: int
    notional_unit: int  # micros per lot per tick
    collateral_unit: int  # micros per uncovered lot
    open: bool = True
    halt: int = 0  # 0 trading, else the HaltReason
    halt_until: int = 0
    ref_price: int = 0  # the circuit breaker's reference (0: none yet)
    ref_window: int = 0
    last_price: int = 0
    volume: int = 0
    # price -> FIFO of order ids, one dict per side
    book: dict[Side, dict[int, deque[int]]] = field(
        default_factory=lambda: {Side.BUY: {}, Side.SELL: {}}
    )

    def prices(self, side: Side) -> list[int]:
        """Prices of one side, best first."""
        return sorted(self.book[side], reverse=side is Side.BUY)


@dataclass
class Order:
    order_id: int
    slot: int
    account: int
    instrument: Instrument
    side: Side
    price: int
    lots: int  # remaining
    tif: TimeInForce
    market: bool
    post_only: bool
    stp: SelfTradePrevention
    expire_ns: int
    unit: int = 0  # cash held per lot (bids) or per uncovered lot (asks)
    covered: int = 0  # lots backed by a long position (asks)
    resting: bool = False


@dataclass
class Position:
    lots: int = 0
    reserved: int = 0  # long lots promised to open asks
    escrow: int = 0
    fees: int = 0
    collateral: int = 0


@dataclass
class Obligation:
    obligation_id: int
    slot: int
    provider: int
    holder: int
    gpus: int
    start_ns: int
    hours: int
    hours_left: int
    escrow_left: int
    fees_left: int
    collateral_left: int
    confirmed: bool = False
    disputed: bool = False
    released: int = 0


@dataclass
class Withdrawal:
    withdrawal_id: int
    slot: int
    account: int
    amount: int


# The int fields the facade checks before anything else.
_INT_FIELDS: dict[type, tuple[str, ...]] = {
    cmd.PlaceOrder: ("account", "price_ticks", "lots", "expire_ns"),
    cmd.CancelOrder: ("account", "order_id"),
    cmd.AmendOrder: ("account", "order_id", "price_ticks", "lots"),
    cmd.CancelAll: ("account",),
    cmd.Deposit: ("account", "amount_micros"),
    cmd.Withdraw: ("account", "amount_micros"),
    cmd.RequestWithdrawal: ("account", "amount_micros"),
    cmd.SettleWithdrawal: ("account", "withdrawal_id"),
    cmd.DisputeDelivery: ("account", "obligation_id"),
    cmd.ResolveDispute: ("account", "obligation_id"),
    cmd.CapacityUpdate: (),  # checked in _capacity, after the GPU and region
    cmd.ClockTick: ("ts_ns",),
    cmd.DeliveryConfirmed: ("account", "obligation_id"),
    cmd.DeliveryFailed: ("account", "obligation_id", "hours_delivered"),
    cmd.HaltInstrument: ("account",),
    cmd.ResumeInstrument: ("account",),
    cmd.CancelInstrumentOrders: ("account",),
    cmd.SuspendAccount: ("account", "target_account"),
    cmd.ReinstateAccount: ("account", "target_account"),
}


def _check_int(value: object) -> None:
    if not isinstance(value, int) or not _INT64_MIN < value < _INT64_MAX:
        raise _Refused(Reject.MALFORMED)


def _check_ints(c: cmd.Command) -> None:
    """Refuse MALFORMED where an int field does not fit the kernel's int64 rows."""
    fields = _INT_FIELDS.get(type(c))
    if fields is None:
        raise _Refused(Reject.MALFORMED)
    for name in fields:
        _check_int(getattr(c, name))


def _crosses(side: Side, level_price: int, limit: int) -> bool:
    return level_price <= limit if side is Side.BUY else level_price >= limit


def _other(side: Side) -> Side:
    return Side.SELL if side is Side.BUY else Side.BUY


class ReferenceExchange:
    """The exchange's state machine in plain Python: `apply(commands)` returns the same events as
    `Engine.apply(commands)` (no input offsets)."""

    def __init__(
        self, catalog: Catalog, config: EngineConfig | None = None, **overrides: object
    ) -> None:
        self.catalog = catalog
        self.config = msgspec.structs.replace(config or EngineConfig(), **overrides)
        self.now = 0
        self.seq = 0
        self.accounts: dict[int, Account] = {}
        self.instruments: dict[str, Instrument] = {}  # open ones, by symbol
        self.orders: dict[int, Order] = {}
        self.positions: dict[tuple[int, int], Position] = {}  # (account, instrument_id)
        self.capacity: dict[tuple[int, int, int], list[int]] = {}  # (acct, capkey, hour): cap, used
        # The last hour a listed instrument can deliver in, counted from the current one.
        self._horizon_hours = max(p.listing_horizon_hours + p.hours for p in catalog.products)
        self.obligations: dict[int, Obligation] = {}
        self.gtd_heap: list[tuple[int, int]] = []  # (expire_ns, order_id), stale entries kept
        self.order_pool = _Pool(self.config.orders_max)
        self.obligation_pool = _Pool(self.config.obligations_max)
        self.order_seq = self.trade_seq = self.instrument_seq = self.obligation_seq = 0
        self.transfer_seq = 0  # deposits and withdrawals, in order: their CashChanged ref_id
        # Every id carries the shard: its shard's base plus the id an engine without shards gives.
        self.id_base = self.config.shard * ID_SHARD_STRIDE
        self.references: set[str] = set()  # payment references of the deposits credited
        self.withdrawals: dict[int, Withdrawal] = {}  # pending, by slot
        self.withdrawal_pool = _Pool(self.config.withdrawals_max)
        self.withdrawal_seq = 0
        self.listing_hour = -1
        # Listing takes the lowest free instrument slot; a closure frees its slot at once.
        self.free_instrument_slots = list(range(self.config.instruments_max))

    # ------------------------------------------------------------------ public API

    def apply(self, commands: list[cmd.Command]) -> list[evt.Event]:
        """Apply commands in order and return their events, numbered and timed like the engine's."""
        events: list[evt.Event] = []
        for index, command in enumerate(commands):
            out: list = []
            listed: list = []
            self._dispatch(index, command, out, listed)
            for e in out + listed:
                self.seq += 1
                events.append(
                    msgspec.structs.replace(
                        e, seq=self.seq, shard=self.config.shard, input_offset=-1, ts_event=self.now
                    )
                )
        return events

    def balances(self) -> dict[int, tuple[int, int, int, int, int]]:
        """(available, held, escrow, collateral, pending) of every account not all zero."""
        money = {
            a: (x.available, x.held, x.escrow, x.collateral, x.pending)
            for a, x in self.accounts.items()
        }
        return {a: m for a, m in money.items() if m != (0, 0, 0, 0, 0)}

    def position_rows(self) -> dict[tuple[int, str], tuple[int, int, int, int, int]]:
        """(lots, reserved, escrow, fees, collateral) by (account, symbol), open instruments only."""
        symbols = {ins.instrument_id: ins.symbol for ins in self.instruments.values()}
        return {
            (a, symbols[i]): (p.lots, p.reserved, p.escrow, p.fees, p.collateral)
            for (a, i), p in self.positions.items()
        }

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, index: int, c: cmd.Command, out: list, listed: list) -> None:
        try:
            if getattr(c, "shard", self.config.shard) != self.config.shard:
                raise _Refused(Reject.WRONG_SHARD)
            _check_ints(c)
            self._check_owned(getattr(c, "symbol", None))
            if isinstance(c, cmd.ClockTick):
                self._clock(c, out, listed)
            elif isinstance(c, cmd.PlaceOrder):
                self._place(c, out)
            elif isinstance(c, cmd.CancelOrder):
                self._cancel(c, out)
            elif isinstance(c, cmd.AmendOrder):
                self._amend(c, out)
            elif isinstance(c, cmd.CancelAll):
                self._cancel_all(c, out)
            elif isinstance(c, cmd.Deposit):
                self._deposit(index, c, out)
            elif isinstance(c, cmd.Withdraw):
                self._withdraw(index, c, out)
            elif isinstance(c, cmd.CapacityUpdate):
                self._capacity(c, out)
            elif isinstance(c, cmd.DeliveryConfirmed):
                self._confirm(c, out)
            elif isinstance(c, cmd.DeliveryFailed):
                self._fail(c, out)
            elif isinstance(c, cmd.RequestWithdrawal):
                self._request_withdrawal(c, out)
            elif isinstance(c, cmd.SettleWithdrawal):
                self._settle_withdrawal(c, out)
            elif isinstance(c, cmd.DisputeDelivery):
                self._dispute(c, out)
            elif isinstance(c, cmd.ResolveDispute):
                self._resolve_dispute(c, out)
            elif isinstance(c, _CONTROL_COMMANDS):
                self._control(c, out)
            else:
                raise _Refused(Reject.MALFORMED)
        except _Refused as refused:
            account = getattr(c, "account", 0)
            if not isinstance(account, int) or not _INT64_MIN < account < _INT64_MAX:
                account = 0
            self._reject(c, out, account, refused.code)

    def _reject(
        self, c: cmd.Command, out: list, account: int, code: Reject, order_id: int = 0, symbol=""
    ) -> None:
        code = Reject(code)
        if isinstance(c, _ORDER_COMMANDS):
            out.append(
                evt.OrderRejected(
                    account=account,
                    code=int(code),
                    reason=code.name,
                    symbol=getattr(c, "symbol", None) or symbol,
                    order_id=order_id,
                    client_order_id=getattr(c, "client_order_id", ""),
                )
            )
        else:
            out.append(
                evt.CommandRejected(
                    command=type(c).__name__, code=int(code), reason=code.name, account=account
                )
            )

    def _user_account(self, account: int) -> bool:
        return ACCOUNT_FIRST_USER <= account < self.config.accounts_max

    def _account(self, account: int) -> Account:
        return self.accounts.setdefault(account, Account())

    def _check_owned(self, symbol: object) -> None:
        """Refuse a command naming an instrument of a pair the shard does not own."""
        if self.config.pairs is None or not isinstance(symbol, str) or symbol in self.instruments:
            return
        try:
            key = parse_symbol(symbol)
        except SymbolError:
            return
        if (key.gpu, key.region) not in self.config.pairs:
            raise _Refused(Reject.WRONG_SHARD)

    def _resolve(self, symbol: str) -> Instrument:
        ins = self.instruments.get(symbol)
        if ins is not None:
            return ins
        try:
            key = parse_symbol(symbol)
        except SymbolError:
            raise _Refused(Reject.UNKNOWN_INSTRUMENT) from None
        if key.start_ns - self.catalog.gate_closure_lead_ns <= self.now:
            raise _Refused(Reject.INSTRUMENT_NOT_TRADING)
        raise _Refused(Reject.UNKNOWN_INSTRUMENT)

    # ------------------------------------------------------------------ money and positions

    def _cash(
        self,
        out: list,
        account: int,
        available: int,
        held: int,
        escrow: int,
        collateral: int,
        reason: CashReason,
        ref: int,
        pending: int = 0,
    ) -> None:
        a = self._account(account)
        a.available += available
        a.held += held
        a.escrow += escrow
        a.collateral += collateral
        a.pending += pending
        out.append(
            evt.CashChanged(
                account=account,
                available_delta=available,
                held_delta=held,
                escrow_delta=escrow,
                collateral_delta=collateral,
                reason=int(reason),
                ref_id=ref,
                pending_delta=pending,
            )
        )

    def _position(self, account: int, ins: Instrument) -> Position:
        return self.positions.setdefault((account, ins.instrument_id), Position())

    def _long_free(self, account: int, ins: Instrument) -> int:
        p = self.positions.get((account, ins.instrument_id))
        return 0 if p is None else max(p.lots - p.reserved, 0)

    def _cap_free(self, account: int, ins: Instrument) -> int:
        """Smallest unused capacity over the delivery hours; 0 if any hour has none streamed."""
        free = []
        for h in range(ins.hours):
            row = self.capacity.get((account, ins.capkey, ins.hour0 + h))
            if row is None:
                return 0
            free.append(row[0] - row[1])
        return max(min(free), 0)

    def _cap_use(self, account: int, ins: Instrument, delta: int) -> None:
        for h in range(ins.hours):
            row = self.capacity.get((account, ins.capkey, ins.hour0 + h))
            if row is not None:
                row[1] = max(row[1] + delta, 0)

    def _unit_hold(self, ins: Instrument, price: int) -> int:
        notional = ins.notional_unit * price
        return notional + -(-notional * self.catalog.taker_fee_bps // BPS)

    # ------------------------------------------------------------------ orders and the book

    def _levels_live(self) -> int:
        return sum(len(ins.book[s]) for ins in self.instruments.values() for s in Side)

    def _pool_room(self, lots: int) -> bool:
        cfg = self.config
        return (
            len(self.orders) < cfg.orders_max
            and self._levels_live() < cfg.levels_max
            and cfg.positions_max - len(self.positions) >= lots + 1
            and len(self.gtd_heap) < cfg.orders_max
        )

    def _new_order(self, c: cmd.PlaceOrder, ins: Instrument, price: int, expire: int) -> Order:
        slot = self.order_pool.alloc()
        self.order_seq += 1
        o = Order(
            order_id=self.id_base + ((self.order_seq << SLOT_BITS) | slot),
            slot=slot,
            account=c.account,
            instrument=ins,
            side=Side(c.side),
            price=price,
            lots=c.lots,
            tif=TimeInForce(c.tif),
            market=c.order_type is OrderType.MARKET,
            post_only=c.post_only,
            stp=SelfTradePrevention(c.stp),
            expire_ns=expire,
        )
        self.orders[o.order_id] = o
        self._account(c.account).open_orders[o.order_id] = None
        return o

    def _free_order(self, o: Order) -> None:
        assert not o.resting
        del self.orders[o.order_id]
        del self.accounts[o.account].open_orders[o.order_id]
        self.order_pool.release(o.slot)

    def _book_append(self, o: Order) -> None:
        o.instrument.book[o.side].setdefault(o.price, deque()).append(o.order_id)
        o.resting = True

    def _book_unlink(self, o: Order) -> None:
        if not o.resting:
            return
        levels = o.instrument.book[o.side]
        levels[o.price].remove(o.order_id)
        if not levels[o.price]:
            del levels[o.price]
        o.resting = False

    def _release(self, o: Order, lots: int, out: list) -> None:
        """Give back what `lots` unfilled lots hold; an ask's uncovered lots go first."""
        if o.side is Side.BUY:
            amount = o.unit * lots
        else:
            uncovered = min(lots, o.lots - o.covered)
            covered = lots - uncovered
            if covered > 0:
                self.positions[(o.account, o.instrument.instrument_id)].reserved -= covered
                o.covered -= covered
            if uncovered > 0:
                self._cap_use(o.account, o.instrument, -uncovered)
            amount = o.unit * uncovered
        if amount != 0:
            self._cash(out, o.account, amount, -amount, 0, 0, CashReason.ORDER_RELEASE, o.order_id)

    def _reduce(self, o: Order, lots: int, expire: ExpireReason | None, reason: int, out) -> None:
        """Cancel (or expire, when `expire` is set) `lots` of an order; all of them removes it."""
        remaining = o.lots - lots
        symbol = o.instrument.symbol
        if expire is None:
            out.append(
                evt.OrderCancelled(
                    order_id=o.order_id,
                    account=o.account,
                    symbol=symbol,
                    lots_cancelled=lots,
                    lots_remaining=remaining,
                    reason=int(reason),
                )
            )
        else:
            out.append(
                evt.OrderExpired(
                    order_id=o.order_id,
                    account=o.account,
                    symbol=symbol,
                    lots=lots,
                    reason=int(expire),
                )
            )
        self._release(o, lots, out)
        o.lots = remaining
        if remaining == 0:
            self._book_unlink(o)
            self._free_order(o)

    def _cancel_lots(self, o: Order, lots: int, reason: CancelReason, out: list) -> None:
        self._reduce(o, lots, None, reason, out)

    # ------------------------------------------------------------------ matching

    def _fok_fillable(self, ins: Instrument, o_side: Side, limit: int, account: int, stp, lots):
        total = 0
        book = ins.book[_other(o_side)]
        for price in ins.prices(_other(o_side)):
            if total >= lots or not _crosses(o_side, price, limit):
                break
            for oid in book[price]:
                if total >= lots:
                    break
                maker = self.orders[oid]
                if maker.account == account and stp is not STP.NONE:
                    if stp is not STP.CANCEL_MAKER:
                        return total
                else:
                    total += maker.lots
        return total

    def _match(self, taker: Order, limit: int, out: list) -> bool:
        """Trade the taker against the opposite side up to `limit`; return whether it lives on."""
        ins = taker.instrument
        opposite = _other(taker.side)
        while taker.lots > 0:
            prices = ins.prices(opposite)
            if not prices or not _crosses(taker.side, prices[0], limit):
                break
            price = prices[0]
            for oid in list(ins.book[opposite][price]):
                if taker.lots == 0:
                    break
                maker = self.orders[oid]
                if maker.account == taker.account and taker.stp is not STP.NONE:
                    if taker.stp is STP.CANCEL_MAKER:
                        self._cancel_lots(maker, maker.lots, CancelReason.SELF_TRADE, out)
                    elif taker.stp is STP.DECREMENT:
                        d = min(maker.lots, taker.lots)
                        self._cancel_lots(maker, d, CancelReason.SELF_TRADE, out)
                        self._cancel_lots(taker, d, CancelReason.SELF_TRADE, out)
                        if taker.order_id not in self.orders:
                            return False
                    else:
                        if taker.stp is STP.CANCEL_BOTH:
                            self._cancel_lots(maker, maker.lots, CancelReason.SELF_TRADE, out)
                        self._cancel_lots(taker, taker.lots, CancelReason.SELF_TRADE, out)
                        return False
                else:
                    self._fill(maker, taker, price, min(taker.lots, maker.lots), out)
                    if maker.lots == 0:
                        self._book_unlink(maker)
                        self._free_order(maker)
        return taker.order_id in self.orders

    def _cover_short(self, account: int, ins: Instrument, p: Position, q: int) -> tuple[int, int]:
        """A short buying back q lots gets their share of its escrow and collateral back."""
        short = -p.lots
        if short <= 0:
            return 0, 0
        c = min(q, short)
        escrow = p.escrow * c // short
        collateral = p.collateral * c // short
        fees = p.fees * c // short
        p.escrow -= escrow
        p.collateral -= collateral
        p.fees -= fees
        self._cap_use(account, ins, -c)
        return escrow, collateral

    def _fill(self, maker: Order, taker: Order, price: int, q: int, out: list) -> None:
        ins = taker.instrument
        maker_bps, taker_bps = self.catalog.maker_fee_bps, self.catalog.taker_fee_bps
        if taker.side is Side.BUY:
            buy, sell, bps_buy, bps_sell = taker, maker, taker_bps, maker_bps
        else:
            buy, sell, bps_buy, bps_sell = maker, taker, maker_bps, taker_bps
        unit = ins.notional_unit * price
        notional = unit * q
        fee_buy = notional * bps_buy // BPS
        q_cov = min(q, sell.covered)
        q_unc = q - q_cov
        fee_cov = unit * q_cov * bps_sell // BPS
        fee_unc = unit * q_unc * bps_sell // BPS
        fee_sell = fee_cov + fee_unc
        self.trade_seq += 1
        trade_id = self.id_base + self.trade_seq
        out.append(
            evt.TradeExecuted(
                trade_id=trade_id,
                symbol=ins.symbol,
                price_ticks=price,
                lots=q,
                aggressor_side=taker.side,
                maker_order_id=maker.order_id,
                taker_order_id=taker.order_id,
                maker_account=maker.account,
                taker_account=taker.account,
                maker_fee_micros=fee_sell if taker.side is Side.BUY else fee_buy,
                taker_fee_micros=fee_buy if taker.side is Side.BUY else fee_sell,
            )
        )
        # The seller moves first, so a self-trade (STP "none") covers the short it just opened.
        spos = self._position(sell.account, ins)
        spos.lots -= q
        spos.reserved -= q_cov
        sell.covered -= q_cov
        to_escrow = unit * q_unc - fee_unc
        collateral_moved = sell.unit * q_unc
        spos.escrow += to_escrow
        spos.fees += fee_unc
        spos.collateral += collateral_moved
        bpos = self._position(buy.account, ins)
        hold = buy.unit * q
        escrow, collateral = self._cover_short(buy.account, ins, bpos, q)
        bpos.lots += q
        self._cash(
            out, buy.account, hold - notional - fee_buy + escrow + collateral, -hold, -escrow,
            -collateral, CashReason.TRADE, trade_id,
        )  # fmt: skip
        self._cash(
            out, sell.account, unit * q_cov - fee_cov, -collateral_moved, to_escrow,
            collateral_moved, CashReason.TRADE, trade_id,
        )  # fmt: skip
        if fee_buy + fee_sell != 0:
            self._cash(out, ACCOUNT_FEES, fee_buy + fee_sell, 0, 0, 0, CashReason.FEE, trade_id)
        for account, delta, lots in ((buy.account, q, bpos.lots), (sell.account, -q, spos.lots)):
            out.append(
                evt.PositionChanged(
                    account=account,
                    symbol=ins.symbol,
                    delta_lots=delta,
                    position_lots=lots,
                    reason=int(PositionReason.TRADE),
                    ref_id=trade_id,
                )
            )
        maker.lots -= q
        taker.lots -= q
        ins.last_price = price
        ins.volume += q

    def _rest_or_finish(self, o: Order, new_order: bool, out: list) -> None:
        if o.lots == 0:
            self._free_order(o)
            return
        if o.tif in (TimeInForce.IOC, TimeInForce.FOK) or o.market:
            self._cancel_lots(o, o.lots, CancelReason.IOC_REMAINDER, out)
            return
        if not o.resting:
            self._book_append(o)
            if o.tif is TimeInForce.GTD and new_order:
                heapq.heappush(self.gtd_heap, (o.expire_ns, o.order_id))

    def _would_take(self, ins: Instrument, side: Side, price: int) -> bool:
        prices = ins.prices(_other(side))
        return bool(prices) and _crosses(side, prices[0], price)

    def _check_price(self, price: int) -> Reject | None:
        if price <= 0:
            return Reject.PRICE_INVALID
        if not self.catalog.price_band_min_ticks <= price <= self.catalog.price_band_max_ticks:
            return Reject.PRICE_OUT_OF_BAND
        return None

    def _check_lots(self, lots: int) -> Reject | None:
        if lots <= 0:
            return Reject.LOTS_INVALID
        if lots > self.catalog.lots_max:
            return Reject.LOTS_ABOVE_MAX
        return None

    def _sell_cover(
        self, account: int, ins: Instrument, lots: int, covered_now: int, uncovered_now: int
    ) -> tuple[int, bool]:
        """Split an ask into (covered lots, whether the uncovered rest fits the capacity)."""
        covered = min(lots, self._long_free(account, ins) + covered_now)
        uncovered = lots - covered
        extra = uncovered - uncovered_now
        return covered, not (extra > 0 and self._cap_free(account, ins) < extra)

    # ------------------------------------------------------------------ order commands

    def _place(self, c: cmd.PlaceOrder, out: list) -> None:
        account = c.account

        def reject(code: Reject) -> None:
            self._reject(c, out, account, code)

        if not self._user_account(account):
            return reject(Reject.UNKNOWN_ACCOUNT)
        ins = self._resolve(c.symbol)
        code = self._control_refusal(account, ins) or self._check_lots(c.lots)
        if code is not None:
            return reject(code)
        side = Side(c.side)
        tif = TimeInForce(c.tif)
        price = c.price_ticks
        if c.order_type is OrderType.MARKET:
            if c.post_only or tif is TimeInForce.GTD:
                return reject(Reject.ORDER_TYPE_INVALID)
            prices = ins.prices(_other(side))
            if not prices:
                return reject(Reject.NO_LIQUIDITY)
            ref, bps = prices[0], self.catalog.market_protection_bps
            if side is Side.BUY:
                price = min(ref * (BPS + bps) // BPS, self.catalog.price_band_max_ticks)
            else:
                price = max(-(-ref * (BPS - bps) // BPS), self.catalog.price_band_min_ticks)
        else:
            code = self._check_price(price)
            if code is not None:
                return reject(code)
            if c.post_only and tif in (TimeInForce.IOC, TimeInForce.FOK):
                return reject(Reject.ORDER_TYPE_INVALID)
        if tif is TimeInForce.GTD and c.expire_ns <= self.now:
            return reject(Reject.EXPIRY_INVALID)
        if c.post_only and self._would_take(ins, side, price):
            return reject(Reject.POST_ONLY_WOULD_TAKE)
        acct = self._account(account)
        if len(acct.open_orders) >= self.config.orders_open_max:
            return reject(Reject.OPEN_ORDERS_LIMIT)
        if not self._pool_room(c.lots):
            return reject(Reject.ENGINE_FULL)
        stp = SelfTradePrevention(c.stp)
        if tif is TimeInForce.FOK and self._fok_fillable(ins, side, price, account, stp, c.lots) < (
            c.lots
        ):
            return reject(Reject.FOK_NOT_FILLABLE)
        covered = 0
        if side is Side.BUY:
            unit = self._unit_hold(ins, price)
            hold = unit * c.lots
        else:
            covered, fits = self._sell_cover(account, ins, c.lots, 0, 0)
            if not fits:
                return reject(Reject.INSUFFICIENT_COVER)
            unit = ins.collateral_unit
            hold = unit * (c.lots - covered)
        if hold > acct.available:
            return reject(Reject.INSUFFICIENT_CASH)
        # accepted: nothing refuses from here on
        expire = c.expire_ns if tif is TimeInForce.GTD else 0
        o = self._new_order(c, ins, price, expire)
        o.unit = unit
        o.covered = covered
        out.append(
            evt.OrderAccepted(
                order_id=o.order_id,
                account=account,
                symbol=ins.symbol,
                side=side,
                order_type=c.order_type,
                tif=tif,
                price_ticks=price,
                lots=c.lots,
                post_only=c.post_only,
                stp=stp,
                expire_ns=expire,
                client_order_id=c.client_order_id,
            )
        )
        if hold != 0:
            self._cash(out, account, -hold, hold, 0, 0, CashReason.ORDER_HOLD, o.order_id)
        if side is Side.SELL:
            if covered > 0:
                self._position(account, ins).reserved += covered
            if c.lots > covered:
                self._cap_use(account, ins, c.lots - covered)
        volume = ins.volume
        if self._match(o, price, out):
            self._rest_or_finish(o, True, out)
        self._breaker_after(ins, volume, out)
        return None

    def _owned(self, c: cmd.CancelOrder | cmd.AmendOrder, out: list) -> Order | None:
        o = self.orders.get(c.order_id)
        if o is None:
            self._reject(c, out, c.account, Reject.UNKNOWN_ORDER, c.order_id)
            return None
        if o.account != c.account:
            self._reject(c, out, c.account, Reject.NOT_ORDER_OWNER, c.order_id)
            return None
        return o

    def _cancel(self, c: cmd.CancelOrder, out: list) -> None:
        o = self._owned(c, out)
        if o is not None:
            self._cancel_lots(o, o.lots, CancelReason.USER, out)

    def _cancel_all(self, c: cmd.CancelAll, out: list) -> None:
        if not self._user_account(c.account):
            self._reject(c, out, c.account, Reject.UNKNOWN_ACCOUNT)
            return
        ins = None if c.symbol is None else self._resolve(c.symbol)
        for oid in list(self._account(c.account).open_orders):
            o = self.orders[oid]
            if ins is None or o.instrument is ins:
                self._cancel_lots(o, o.lots, CancelReason.CANCEL_ALL, out)

    def _amend(self, c: cmd.AmendOrder, out: list) -> None:
        o = self._owned(c, out)
        if o is None:
            return
        ins = o.instrument
        price, lots = c.price_ticks, c.lots
        code = (
            self._control_refusal(c.account, ins)
            or self._check_lots(lots)
            or self._check_price(price)
        )
        if code is None and price == o.price and lots == o.lots:
            code = Reject.AMEND_NO_CHANGE

        def reject(code: Reject) -> None:
            self._reject(c, out, c.account, code, c.order_id, ins.symbol)

        if code is not None:
            return reject(code)
        if price == o.price and lots < o.lots:
            # a pure decrease keeps time priority
            out.append(self._amended(o, price, lots, True))
            self._release(o, o.lots - lots, out)
            o.lots = lots
            return None
        if o.post_only and self._would_take(ins, o.side, price):
            return reject(Reject.POST_ONLY_WOULD_TAKE)
        if not self._pool_room(lots):
            return reject(Reject.ENGINE_FULL)
        old_lots = o.lots
        covered = 0
        if o.side is Side.BUY:
            unit = self._unit_hold(ins, price)
            delta_hold = unit * lots - o.unit * old_lots
        else:
            old_uncovered = old_lots - o.covered
            covered, fits = self._sell_cover(o.account, ins, lots, o.covered, old_uncovered)
            if not fits:
                return reject(Reject.INSUFFICIENT_COVER)
            unit = o.unit
            delta_hold = unit * ((lots - covered) - old_uncovered)
        if delta_hold > self.accounts[o.account].available:
            return reject(Reject.INSUFFICIENT_CASH)
        # accepted: a re-price or increase loses time priority and may trade
        self._book_unlink(o)
        out.append(self._amended(o, price, lots, False))
        if delta_hold != 0:
            self._cash(
                out, o.account, -delta_hold, delta_hold, 0, 0, CashReason.ORDER_HOLD, o.order_id
            )
        if o.side is Side.SELL:
            if covered != o.covered:
                self._position(o.account, ins).reserved += covered - o.covered
            self._cap_use(o.account, ins, (lots - covered) - (old_lots - o.covered))
            o.covered = covered
        o.unit, o.price, o.lots = unit, price, lots
        volume = ins.volume
        if self._match(o, price, out):
            self._rest_or_finish(o, False, out)
        self._breaker_after(ins, volume, out)
        return None

    @staticmethod
    def _amended(o: Order, price: int, lots: int, kept: bool) -> evt.OrderAmended:
        return evt.OrderAmended(
            order_id=o.order_id,
            account=o.account,
            symbol=o.instrument.symbol,
            price_ticks=price,
            lots=lots,
            priority_kept=kept,
        )

    # ------------------------------------------------------------------ cash and capacity

    def _deposit(self, index: int, c: cmd.Deposit, out: list) -> None:
        amount = c.amount_micros
        if not isinstance(c.ref, str) or len(c.ref) > DEPOSIT_REFERENCE_CHARS_MAX:
            raise _Refused(Reject.MALFORMED)
        if not self._user_account(c.account):
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        if amount <= 0 or amount > self.config.deposit_max_micros:
            raise _Refused(Reject.AMOUNT_INVALID)
        if self._account(c.account).available + amount > self.config.balance_max_micros:
            raise _Refused(Reject.BALANCE_LIMIT)
        if c.ref:
            if c.ref in self.references:
                raise _Refused(Reject.DUPLICATE_REFERENCE)
            if len(self.references) >= _table_size(self.config.deposit_refs_max) // 2:
                raise _Refused(Reject.ENGINE_FULL)
            self.references.add(c.ref)
        self.transfer_seq += 1
        ref = self.id_base + self.transfer_seq
        out.append(
            evt.DepositCredited(
                deposit_id=ref, account=c.account, amount_micros=amount, reference=c.ref
            )
        )
        self._cash(out, c.account, amount, 0, 0, 0, CashReason.DEPOSIT, ref)
        self._cash(out, ACCOUNT_EXTERNAL, -amount, 0, 0, 0, CashReason.DEPOSIT, ref)

    def _withdraw(self, index: int, c: cmd.Withdraw, out: list) -> None:
        amount = c.amount_micros
        if not self._user_account(c.account):
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        if amount <= 0:
            raise _Refused(Reject.AMOUNT_INVALID)
        if amount > self._account(c.account).available:
            raise _Refused(Reject.INSUFFICIENT_CASH)
        self.transfer_seq += 1
        ref = self.id_base + self.transfer_seq
        self._cash(out, c.account, -amount, 0, 0, 0, CashReason.WITHDRAWAL, ref)
        self._cash(out, ACCOUNT_EXTERNAL, amount, 0, 0, 0, CashReason.WITHDRAWAL, ref)

    def _request_withdrawal(self, c: cmd.RequestWithdrawal, out: list) -> None:
        amount = c.amount_micros
        if not self._user_account(c.account):
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        if amount <= 0:
            raise _Refused(Reject.AMOUNT_INVALID)
        a = self._account(c.account)
        day = self.now // (24 * NS_PER_HOUR)
        today = a.withdrawn_today if a.withdrawal_day == day else 0
        cfg = self.config
        if amount > cfg.withdrawal_max_micros or today + amount > cfg.withdrawal_day_max_micros:
            raise _Refused(Reject.WITHDRAWAL_LIMIT)
        if amount > a.available:
            raise _Refused(Reject.INSUFFICIENT_CASH)
        if len(self.withdrawals) >= cfg.withdrawals_max:
            raise _Refused(Reject.ENGINE_FULL)
        slot = self.withdrawal_pool.alloc()
        self.withdrawal_seq += 1
        wid = self.id_base + ((self.withdrawal_seq << SLOT_BITS) | slot)
        w = Withdrawal(wid, slot, c.account, amount)
        self.withdrawals[slot] = w
        a.withdrawal_day, a.withdrawn_today = day, today + amount
        out.append(
            evt.WithdrawalRequested(
                withdrawal_id=w.withdrawal_id,
                account=c.account,
                amount_micros=amount,
                destination=c.destination,
            )
        )
        reason = CashReason.WITHDRAWAL_REQUESTED
        self._cash(out, c.account, -amount, 0, 0, 0, reason, w.withdrawal_id, pending=amount)

    def _settle_withdrawal(self, c: cmd.SettleWithdrawal, out: list) -> None:
        if c.account != ACCOUNT_EXTERNAL:
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        wid = c.withdrawal_id
        w = self.withdrawals.get(wid & ((1 << SLOT_BITS) - 1)) if wid > 0 else None
        if w is None or w.withdrawal_id != wid:
            self._reject(c, out, ACCOUNT_EXTERNAL, Reject.UNKNOWN_WITHDRAWAL)
            return
        approved = c.approved is True
        out.append(
            evt.WithdrawalSettled(
                withdrawal_id=wid, account=w.account, amount_micros=w.amount, approved=approved
            )
        )
        if approved:
            self._cash(out, w.account, 0, 0, 0, 0, CashReason.WITHDRAWAL, wid, pending=-w.amount)
            self._cash(out, ACCOUNT_EXTERNAL, w.amount, 0, 0, 0, CashReason.WITHDRAWAL, wid)
        else:
            reason = CashReason.WITHDRAWAL_REJECTED
            self._cash(out, w.account, w.amount, 0, 0, 0, reason, wid, pending=-w.amount)
        del self.withdrawals[w.slot]
        self.withdrawal_pool.release(w.slot)

    def _capacity(self, c: cmd.CapacityUpdate, out: list) -> None:
        cat, cfg = self.catalog, self.config
        try:
            capkey = cat.gpu_index(c.gpu) * len(cat.regions) + cat.region_index(c.region)
        except (KeyError, ValueError):
            raise _Refused(Reject.CAPACITY_RANGE_INVALID) from None
        if self.config.pairs is not None and (c.gpu, c.region) not in self.config.pairs:
            raise _Refused(Reject.WRONG_SHARD)
        if c.start_ns % NS_PER_HOUR or c.end_ns % NS_PER_HOUR:
            raise _Refused(Reject.CAPACITY_RANGE_INVALID)
        for value in (c.account, c.gpus, c.start_ns, c.end_ns):
            _check_int(value)
        start, end = c.start_ns // NS_PER_HOUR, c.end_ns // NS_PER_HOUR
        if not self._user_account(c.account):
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        # Hours an instrument can deliver in: from the current one to the listing horizon.
        now_hour = self.now // NS_PER_HOUR
        if (
            end <= start
            or start < 0
            or end - start > cfg.capacity_hours_max
            or not now_hour < end <= now_hour + self._horizon_hours
            or not 0 <= c.gpus <= cfg.capacity_gpus_max
        ):
            raise _Refused(Reject.CAPACITY_RANGE_INVALID)
        start = max(start, now_hour)  # the hours already over are not set
        hours = [(c.account, capkey, h) for h in range(start, end)]
        for key in hours:
            row = self.capacity.get(key)
            if row is not None and row[1] > c.gpus:
                raise _Refused(Reject.CAPACITY_BELOW_COMMITTED)
        # No GPUs is no row: it is what a missing hour means.
        missing = 0 if c.gpus == 0 else sum(key not in self.capacity for key in hours)
        held = sum(key[0] == c.account for key in self.capacity)
        if held + missing > cfg.capacity_rows_per_account_max:
            raise _Refused(Reject.CAPACITY_LIMIT)
        if cfg.capacity_rows_max - len(self.capacity) < missing:
            raise _Refused(Reject.ENGINE_FULL)
        for key in hours:
            if c.gpus == 0:
                self.capacity.pop(key, None)
            else:
                self.capacity.setdefault(key, [0, 0])[0] = c.gpus
        out.append(
            evt.CapacityUpdated(
                account=c.account,
                gpu=c.gpu,
                region=c.region,
                start_ns=start * NS_PER_HOUR,
                end_ns=end * NS_PER_HOUR,
                gpus=c.gpus,
            )
        )

    # ------------------------------------------------------------------ clock and listing

    def _clock(self, c: cmd.ClockTick, out: list, listed: list) -> None:
        self.now = max(self.now, c.ts_ns)
        # Capacity of the hours already over backs nothing more.
        hour = self.now // NS_PER_HOUR
        self.capacity = {k: v for k, v in self.capacity.items() if k[2] >= hour}
        closing = sorted(
            (ins for ins in self.instruments.values() if ins.gate_ns <= self.now),
            key=lambda ins: ins.slot,
        )
        for ins in closing:  # their slots can take this tick's listings
            heapq.heappush(self.free_instrument_slots, ins.slot)
        listed.extend(self._list_due(closing))
        while self.gtd_heap and self.gtd_heap[0][0] <= self.now:
            _, order_id = heapq.heappop(self.gtd_heap)
            o = self.orders.get(order_id)
            if o is not None:
                self._reduce(o, o.lots, ExpireReason.GTD, 0, out)
        for ins in closing:
            self._close(ins, out)
        self._breaker_tick(out)
        deadline = self.catalog.provisioning_deadline_ns
        for slot in sorted(self.obligations):
            b = self.obligations[slot]
            if b.disputed:
                continue  # nothing is released or failed until an operator resolves it
            if not b.confirmed and self.now >= b.start_ns + deadline:
                self._settle(b, DeliveryOutcome.FAILED, out)
            elif b.confirmed:
                self._deliver_to(b, self._elapsed_hours(b), out)
                if b.hours_left == 0:
                    self._settle(b, DeliveryOutcome.DELIVERED, out)

    # ------------------------------------------------------------------ market controls

    def _control_refusal(self, account: int, ins: Instrument) -> Reject | None:
        if self._account(account).suspended:
            return Reject.ACCOUNT_SUSPENDED
        if ins.halt:
            return Reject.INSTRUMENT_HALTED
        return None

    def _resample(self, ins: Instrument) -> None:
        ins.ref_price = ins.last_price
        ins.ref_window = self.now // self.config.breaker_window_ns

    def _breaker_after(self, ins: Instrument, volume_before: int, out: list) -> None:
        """A trade too far from the reference price halts the instrument (the trade stands)."""
        if ins.volume == volume_before:
            return
        if ins.ref_price == 0:
            self._resample(ins)
            return
        move = self.config.breaker_move_bps_max
        if move == 0 or abs(ins.last_price - ins.ref_price) * BPS <= move * ins.ref_price:
            return
        ins.halt = int(HaltReason.CIRCUIT_BREAKER)
        ins.halt_until = self.now + self.config.breaker_halt_ns
        out.append(
            evt.InstrumentHalted(
                instrument_id=ins.instrument_id, symbol=ins.symbol, reason=ins.halt,
                until_ns=ins.halt_until, reference_price_ticks=ins.ref_price,
                trade_price_ticks=ins.last_price,
            )
        )  # fmt: skip

    def _breaker_tick(self, out: list) -> None:
        window = self.now // self.config.breaker_window_ns
        for ins in sorted(self.instruments.values(), key=lambda i: i.slot):
            if ins.halt == HaltReason.CIRCUIT_BREAKER and self.now >= ins.halt_until:
                ins.halt = ins.halt_until = 0
                self._resample(ins)
                out.append(
                    evt.InstrumentResumed(
                        instrument_id=ins.instrument_id,
                        symbol=ins.symbol,
                        reason=int(HaltReason.CIRCUIT_BREAKER),
                    )
                )
            elif ins.ref_window < window and ins.last_price != 0:
                self._resample(ins)

    def _control(self, c: Any, out: list) -> None:
        if c.account != 0:
            raise _Refused(Reject.NOT_OPERATOR)
        if isinstance(c, cmd.SuspendAccount | cmd.ReinstateAccount):
            self._account_status(c, out)
            return
        ins = self._resolve(c.symbol)
        if isinstance(c, cmd.HaltInstrument):
            if ins.halt == HaltReason.OPERATOR:
                raise _Refused(Reject.INSTRUMENT_HALTED)
            ins.halt, ins.halt_until = int(HaltReason.OPERATOR), 0
            out.append(
                evt.InstrumentHalted(
                    instrument_id=ins.instrument_id, symbol=ins.symbol, reason=ins.halt
                )
            )
        elif isinstance(c, cmd.ResumeInstrument):
            if not ins.halt:
                raise _Refused(Reject.INSTRUMENT_NOT_HALTED)
            reason, ins.halt, ins.halt_until = ins.halt, 0, 0
            self._resample(ins)
            out.append(
                evt.InstrumentResumed(
                    instrument_id=ins.instrument_id, symbol=ins.symbol, reason=reason
                )
            )
        else:
            count = 0
            for side in (Side.BUY, Side.SELL):
                while ins.book[side]:
                    o = self.orders[ins.book[side][ins.prices(side)[0]][0]]
                    self._cancel_lots(o, o.lots, CancelReason.OPERATOR, out)
                    count += 1
            out.append(
                evt.InstrumentOrdersCancelled(
                    instrument_id=ins.instrument_id, symbol=ins.symbol, orders=count
                )
            )

    def _account_status(self, c: cmd.SuspendAccount | cmd.ReinstateAccount, out: list) -> None:
        target = c.target_account
        if not self._user_account(target):
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        acct = self._account(target)
        if isinstance(c, cmd.SuspendAccount):
            if acct.suspended:
                raise _Refused(Reject.ACCOUNT_SUSPENDED)
            for oid in list(acct.open_orders):
                o = self.orders[oid]
                self._cancel_lots(o, o.lots, CancelReason.OPERATOR, out)
            acct.suspended = True
            out.append(evt.AccountSuspended(account=target))
        else:
            if not acct.suspended:
                raise _Refused(Reject.ACCOUNT_NOT_SUSPENDED)
            acct.suspended = False
            out.append(evt.AccountReinstated(account=target))

    def _list_due(self, closing: list[Instrument]) -> list[evt.InstrumentListed]:
        hour = self.now // NS_PER_HOUR
        if hour == self.listing_hour:
            return []
        self.listing_hour = hour
        have = {ins.key for ins in self.instruments.values()} - {ins.key for ins in closing}
        out = []
        cfg = self.config
        for key in due_listings(self.catalog, self.now, have, cfg.gpus, cfg.regions, cfg.pairs):
            if not self.free_instrument_slots:
                break
            out.append(self._list(key, heapq.heappop(self.free_instrument_slots)))
        return out

    def _list(self, key: InstrumentKey, slot: int) -> evt.InstrumentListed:
        cat = self.catalog
        self.instrument_seq += 1
        ins = Instrument(
            instrument_id=self.id_base + self.instrument_seq,
            slot=slot,
            key=key,
            symbol=format_symbol(key),
            hours=key.hours,
            gate_ns=key.start_ns - cat.gate_closure_lead_ns,
            capkey=cat.gpu_index(key.gpu) * len(cat.regions) + cat.region_index(key.region),
            hour0=key.start_ns // NS_PER_HOUR,
            notional_unit=cat.tick_micros * key.hours,
            collateral_unit=cat.penalty_per_gpu_hour_micros * key.hours,
        )
        self.instruments[ins.symbol] = ins
        return evt.InstrumentListed(
            instrument_id=ins.instrument_id,
            symbol=ins.symbol,
            gpu=key.gpu,
            region=key.region,
            product=key.product,
            start_ns=key.start_ns,
            hours=ins.hours,
            gate_close_ns=ins.gate_ns,
            price_band_min_ticks=cat.price_band_min_ticks,
            price_band_max_ticks=cat.price_band_max_ticks,
            lots_max=cat.lots_max,
        )

    # ------------------------------------------------------------------ gate closure

    def _close(self, ins: Instrument, out: list) -> None:
        """Expire the book (bids then asks, best level first, FIFO), then assign delivery."""
        for side in (Side.BUY, Side.SELL):
            while ins.book[side]:
                o = self.orders[ins.book[side][ins.prices(side)[0]][0]]
                self._reduce(o, o.lots, ExpireReason.GATE_CLOSURE, 0, out)
        ins.open = False
        del self.instruments[ins.symbol]
        held = sorted(
            (a, p) for (a, i), p in self.positions.items() if i == ins.instrument_id
        )  # by account: assignment depends on the positions alone
        out.append(
            evt.InstrumentClosed(
                instrument_id=ins.instrument_id,
                symbol=ins.symbol,
                open_interest_lots=sum(p.lots for _, p in held if p.lots > 0),
            )
        )
        for account, p in held:
            if p.lots != 0:
                out.append(
                    evt.PositionChanged(
                        account=account,
                        symbol=ins.symbol,
                        delta_lots=-p.lots,
                        position_lots=0,
                        reason=int(PositionReason.DELIVERY_ASSIGNED),
                        ref_id=0,
                    )
                )
        longs = deque([account, p.lots] for account, p in held if p.lots > 0)
        for provider, p in held:
            short_left = -p.lots
            while short_left > 0:
                holder = longs[0]
                gpus = min(short_left, holder[1])
                if gpus == short_left:  # the last piece takes the remainder
                    escrow, fees, collateral = p.escrow, p.fees, p.collateral
                else:
                    escrow = p.escrow * gpus // short_left
                    fees = p.fees * gpus // short_left
                    collateral = p.collateral * gpus // short_left
                p.escrow -= escrow
                p.fees -= fees
                p.collateral -= collateral
                short_left -= gpus
                holder[1] -= gpus
                self._assign(ins, provider, holder[0], gpus, escrow, fees, collateral, out)
                if holder[1] == 0:
                    longs.popleft()
        for account, p in held:
            # what a position holds beyond its obligations (a short bought back) goes home
            if p.escrow != 0 or p.collateral != 0:
                self._cash(
                    out, account, p.escrow + p.collateral, 0, -p.escrow, -p.collateral,
                    CashReason.SHORT_COVERED, ins.instrument_id,
                )  # fmt: skip
            del self.positions[(account, ins.instrument_id)]

    def _assign(self, ins, provider, holder, gpus, escrow, fees, collateral, out) -> None:
        slot = self.obligation_pool.alloc()
        self.obligation_seq += 1
        b = Obligation(
            obligation_id=self.id_base + ((self.obligation_seq << SLOT_BITS) | slot),
            slot=slot,
            provider=provider,
            holder=holder,
            gpus=gpus,
            start_ns=ins.key.start_ns,
            hours=ins.hours,
            hours_left=ins.hours,
            escrow_left=escrow,
            fees_left=fees,
            collateral_left=collateral,
        )
        self.obligations[slot] = b
        out.append(
            evt.DeliveryAssigned(
                obligation_id=b.obligation_id,
                symbol=ins.symbol,
                provider=provider,
                holder=holder,
                gpus=gpus,
                start_ns=b.start_ns,
                end_ns=b.start_ns + b.hours * NS_PER_HOUR,
                escrow_micros=escrow,
            )
        )

    # ------------------------------------------------------------------ delivery

    def _elapsed_hours(self, b: Obligation) -> int:
        return min(max((self.now - b.start_ns) // NS_PER_HOUR, 0), b.hours)

    def _deliver_to(self, b: Obligation, hours_done: int, out: list) -> None:
        """Pay the provider each delivered hour's share of escrow and collateral."""
        while b.hours - b.hours_left < hours_done and b.hours_left > 0:
            left = b.hours_left
            escrow, collateral = b.escrow_left // left, b.collateral_left // left
            b.escrow_left -= escrow
            b.collateral_left -= collateral
            b.fees_left -= b.fees_left // left
            b.hours_left -= 1
            b.released += escrow
            if escrow != 0 or collateral != 0:
                self._cash(
                    out, b.provider, escrow + collateral, 0, -escrow, -collateral,
                    CashReason.DELIVERY_RELEASE, b.obligation_id,
                )  # fmt: skip

    def _settle(self, b: Obligation, outcome: DeliveryOutcome, out: list) -> None:
        """Close an obligation: undelivered hours refund the holder, plus the penalty."""
        refund, fees, penalty = b.escrow_left, b.fees_left, b.collateral_left
        oid = b.obligation_id
        if refund != 0:
            self._cash(out, b.provider, 0, 0, -refund, 0, CashReason.DELIVERY_REFUND, oid)
        if fees != 0:
            self._cash(out, ACCOUNT_FEES, -fees, 0, 0, 0, CashReason.DELIVERY_REFUND, oid)
        if refund + fees != 0:
            self._cash(out, b.holder, refund + fees, 0, 0, 0, CashReason.DELIVERY_REFUND, oid)
        if penalty != 0:
            self._cash(out, b.provider, 0, 0, 0, -penalty, CashReason.DELIVERY_PENALTY, oid)
            self._cash(out, b.holder, penalty, 0, 0, 0, CashReason.DELIVERY_PENALTY, oid)
        out.append(
            evt.DeliverySettled(
                obligation_id=oid,
                provider=b.provider,
                holder=b.holder,
                outcome=int(outcome),
                hours_delivered=b.hours - b.hours_left,
                hours_failed=b.hours_left,
                released_micros=b.released,
                refund_micros=refund + fees,
                penalty_micros=penalty,
            )
        )
        del self.obligations[b.slot]
        self.obligation_pool.release(b.slot)

    def _obligation(
        self, c: cmd.DeliveryConfirmed | cmd.DeliveryFailed | cmd.ResolveDispute
    ) -> Obligation:
        oid = c.obligation_id
        b = self.obligations.get(oid & ((1 << SLOT_BITS) - 1)) if oid > 0 else None
        if b is None or b.obligation_id != oid:
            raise _Refused(Reject.UNKNOWN_OBLIGATION)
        if c.account != ACCOUNT_EXTERNAL and c.account != b.provider:
            raise _Refused(Reject.NOT_OBLIGATION_PROVIDER)
        return b

    def _confirm(self, c: cmd.DeliveryConfirmed, out: list) -> None:
        b = self._obligation(c)
        if b.confirmed:
            raise _Refused(Reject.OBLIGATION_STATE)
        b.confirmed = True
        out.append(
            evt.DeliveryStarted(obligation_id=b.obligation_id, provider=b.provider, holder=b.holder)
        )
        # a late confirmation still pays the hours already elapsed
        self._deliver_to(b, self._elapsed_hours(b), out)
        if b.hours_left == 0:
            self._settle(b, DeliveryOutcome.DELIVERED, out)

    def _fail(self, c: cmd.DeliveryFailed, out: list) -> None:
        b = self._obligation(c)
        if not 0 <= c.hours_delivered <= b.hours:
            raise _Refused(Reject.AMOUNT_INVALID)
        if b.confirmed and not b.disputed:
            self._deliver_to(b, min(c.hours_delivered, self._elapsed_hours(b)), out)
        delivered = b.hours - b.hours_left
        outcome = DeliveryOutcome.INTERRUPTED if delivered > 0 else DeliveryOutcome.FAILED
        self._settle(b, outcome, out)

    def _dispute(self, c: cmd.DisputeDelivery, out: list) -> None:
        oid = c.obligation_id
        b = self.obligations.get(oid & ((1 << SLOT_BITS) - 1)) if oid > 0 else None
        if b is None or b.obligation_id != oid:
            raise _Refused(Reject.UNKNOWN_OBLIGATION)
        if c.account != b.holder:
            raise _Refused(Reject.NOT_OBLIGATION_HOLDER)
        if not b.confirmed or b.disputed:
            raise _Refused(Reject.OBLIGATION_STATE)
        if not b.start_ns <= self.now < b.start_ns + NS_PER_HOUR:
            raise _Refused(Reject.DISPUTE_WINDOW)
        b.disputed = True
        out.append(evt.DeliveryDisputed(obligation_id=oid, provider=b.provider, holder=b.holder))

    def _resolve_dispute(self, c: cmd.ResolveDispute, out: list) -> None:
        if c.account != ACCOUNT_EXTERNAL:
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        b = self._obligation(c)
        if not b.disputed:
            raise _Refused(Reject.OBLIGATION_STATE)
        release = c.release is True
        out.append(
            evt.DisputeResolved(
                obligation_id=b.obligation_id,
                provider=b.provider,
                holder=b.holder,
                released=release,
            )
        )
        b.disputed = False
        if not release:
            delivered = b.hours - b.hours_left
            outcome = DeliveryOutcome.INTERRUPTED if delivered > 0 else DeliveryOutcome.FAILED
            self._settle(b, outcome, out)
            return
        self._deliver_to(b, self._elapsed_hours(b), out)
        if b.hours_left == 0:
            self._settle(b, DeliveryOutcome.DELIVERED, out)


_CONTROL_COMMANDS = (
    cmd.HaltInstrument,
    cmd.ResumeInstrument,
    cmd.CancelInstrumentOrders,
    cmd.SuspendAccount,
    cmd.ReinstateAccount,
)
