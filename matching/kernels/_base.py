"""Shared pieces of the kernels: result codes, event rows, cash movements, unmanaged views."""

from __future__ import annotations

from numba import njit

from matching.layout import (
    A_AVAIL,
    A_COLLAT,
    A_ESCROW,
    A_HELD,
    E_ACCEPTED,
    E_AMENDED,
    E_ASSIGNED,
    E_CANCELLED,
    E_CAPACITY,
    E_CASH,
    E_CLOSED,
    E_CMD,
    E_EXPIRED,
    E_FIRST,
    E_LISTED,
    E_POSITION,
    E_REJECTED,
    E_SETTLED,
    E_STARTED,
    E_TRADE,
    E_TYPE,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_ASSIGNED,
    EV_CANCELLED,
    EV_CAPACITY,
    EV_CASH,
    EV_CLOSED,
    EV_EXPIRED,
    EV_LISTED,
    EV_POSITION,
    EV_REJECTED,
    EV_SETTLED,
    EV_STARTED,
    EV_TRADE,
    EV_WIDTH,
    I_ID,
)

# Reject codes (schemas.codes.Reject), as plain ints so the kernels compile them in.
R_UNKNOWN_INSTRUMENT = 1001


R_INSTRUMENT_NOT_TRADING = 1002


R_PRICE_OUT_OF_BAND = 1003


R_PRICE_INVALID = 1004


R_LOTS_INVALID = 1005


R_LOTS_ABOVE_MAX = 1006


R_UNKNOWN_ACCOUNT = 1007


R_ORDER_TYPE_INVALID = 1008


R_AMOUNT_INVALID = 1009


R_UNKNOWN_ORDER = 1010


R_NOT_ORDER_OWNER = 1011


R_CAPACITY_RANGE_INVALID = 1012


R_EXPIRY_INVALID = 1013


R_INSUFFICIENT_CASH = 2001


R_INSUFFICIENT_COVER = 2002


R_OPEN_ORDERS_LIMIT = 2003


R_CAPACITY_BELOW_COMMITTED = 2004


R_ENGINE_FULL = 2005


R_BALANCE_LIMIT = 2006


R_POST_ONLY_WOULD_TAKE = 3001


R_FOK_NOT_FILLABLE = 3002


R_NO_LIQUIDITY = 3003


R_AMEND_NO_CHANGE = 3004


R_UNKNOWN_OBLIGATION = 4001


R_OBLIGATION_STATE = 4002


R_NOT_OBLIGATION_PROVIDER = 4003


# Cancel, expiry, cash, position and delivery reasons (schemas.codes).
CX_USER, CX_IOC, CX_SELF_TRADE, CX_CANCEL_ALL = 1, 2, 3, 4


XP_GTD, XP_GATE = 1, 2


CR_DEPOSIT, CR_WITHDRAWAL, CR_HOLD, CR_RELEASE, CR_TRADE, CR_FEE = 1, 2, 3, 4, 5, 6


CR_SHORT_COVERED, CR_DELIVERY_RELEASE, CR_DELIVERY_REFUND, CR_DELIVERY_PENALTY = 7, 8, 9, 10


PR_TRADE, PR_ASSIGNED = 1, 2


DO_DELIVERED, DO_FAILED, DO_INTERRUPTED = 1, 2, 3


NS_PER_HOUR = 3_600_000_000_000


BPS = 10_000


EMPTY = -1


# One emitter per event kind, writing the columns layout names for it (E_* indexes). `_apply`
# checked the room before the command began. The event buffer is reused, so each emitter also
# writes 0 past its kind's last column.


@njit(cache=True, _nrt=False)
def _start(ev, n, kind, ci, width):
    """Begin row n: its kind, its command and zeros past its `width` columns."""
    ev[n, E_TYPE] = kind
    ev[n, E_CMD] = ci
    for col in range(E_FIRST + width, EV_WIDTH):
        ev[n, col] = 0


@njit(cache=True, _nrt=False)
def _emit_accepted(
    ev, n, ci, order_id, account, instrument_id, side, price_ticks, lots, flags, expire_ns
):
    _start(ev, n, EV_ACCEPTED, ci, len(E_ACCEPTED))
    ev[n, E_ACCEPTED.order_id] = order_id
    ev[n, E_ACCEPTED.account] = account
    ev[n, E_ACCEPTED.instrument_id] = instrument_id
    ev[n, E_ACCEPTED.side] = side
    ev[n, E_ACCEPTED.price_ticks] = price_ticks
    ev[n, E_ACCEPTED.lots] = lots
    ev[n, E_ACCEPTED.flags] = flags
    ev[n, E_ACCEPTED.expire_ns] = expire_ns
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_rejected(ev, n, ci, account, code, order_id, instrument_id):
    _start(ev, n, EV_REJECTED, ci, len(E_REJECTED))
    ev[n, E_REJECTED.account] = account
    ev[n, E_REJECTED.code] = code
    ev[n, E_REJECTED.order_id] = order_id
    ev[n, E_REJECTED.instrument_id] = instrument_id
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_cancelled(ev, n, ci, order_id, account, instrument_id, lots, lots_remaining, reason):
    _start(ev, n, EV_CANCELLED, ci, len(E_CANCELLED))
    ev[n, E_CANCELLED.order_id] = order_id
    ev[n, E_CANCELLED.account] = account
    ev[n, E_CANCELLED.instrument_id] = instrument_id
    ev[n, E_CANCELLED.lots] = lots
    ev[n, E_CANCELLED.lots_remaining] = lots_remaining
    ev[n, E_CANCELLED.reason] = reason
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_expired(ev, n, ci, order_id, account, instrument_id, lots, lots_remaining, reason):
    _start(ev, n, EV_EXPIRED, ci, len(E_EXPIRED))
    ev[n, E_EXPIRED.order_id] = order_id
    ev[n, E_EXPIRED.account] = account
    ev[n, E_EXPIRED.instrument_id] = instrument_id
    ev[n, E_EXPIRED.lots] = lots
    ev[n, E_EXPIRED.lots_remaining] = lots_remaining
    ev[n, E_EXPIRED.reason] = reason
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_amended(ev, n, ci, order_id, account, instrument_id, price_ticks, lots, priority_kept):
    _start(ev, n, EV_AMENDED, ci, len(E_AMENDED))
    ev[n, E_AMENDED.order_id] = order_id
    ev[n, E_AMENDED.account] = account
    ev[n, E_AMENDED.instrument_id] = instrument_id
    ev[n, E_AMENDED.price_ticks] = price_ticks
    ev[n, E_AMENDED.lots] = lots
    ev[n, E_AMENDED.priority_kept] = priority_kept
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_trade(
    ev,
    n,
    ci,
    trade_id,
    instrument_id,
    price_ticks,
    lots,
    aggressor_side,
    maker_order_id,
    taker_order_id,
    maker_account,
    taker_account,
    maker_fee_micros,
    taker_fee_micros,
):
    _start(ev, n, EV_TRADE, ci, len(E_TRADE))
    ev[n, E_TRADE.trade_id] = trade_id
    ev[n, E_TRADE.instrument_id] = instrument_id
    ev[n, E_TRADE.price_ticks] = price_ticks
    ev[n, E_TRADE.lots] = lots
    ev[n, E_TRADE.aggressor_side] = aggressor_side
    ev[n, E_TRADE.maker_order_id] = maker_order_id
    ev[n, E_TRADE.taker_order_id] = taker_order_id
    ev[n, E_TRADE.maker_account] = maker_account
    ev[n, E_TRADE.taker_account] = taker_account
    ev[n, E_TRADE.maker_fee_micros] = maker_fee_micros
    ev[n, E_TRADE.taker_fee_micros] = taker_fee_micros
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_cash(
    ev, n, ci, account, available_delta, held_delta, escrow_delta, collateral_delta, reason, ref_id
):
    _start(ev, n, EV_CASH, ci, len(E_CASH))
    ev[n, E_CASH.account] = account
    ev[n, E_CASH.available_delta] = available_delta
    ev[n, E_CASH.held_delta] = held_delta
    ev[n, E_CASH.escrow_delta] = escrow_delta
    ev[n, E_CASH.collateral_delta] = collateral_delta
    ev[n, E_CASH.reason] = reason
    ev[n, E_CASH.ref_id] = ref_id
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_position(ev, n, ci, account, instrument_id, delta_lots, position_lots, reason, ref_id):
    _start(ev, n, EV_POSITION, ci, len(E_POSITION))
    ev[n, E_POSITION.account] = account
    ev[n, E_POSITION.instrument_id] = instrument_id
    ev[n, E_POSITION.delta_lots] = delta_lots
    ev[n, E_POSITION.position_lots] = position_lots
    ev[n, E_POSITION.reason] = reason
    ev[n, E_POSITION.ref_id] = ref_id
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_capacity(ev, n, ci, account, capkey, start_hour, end_hour, gpus):
    _start(ev, n, EV_CAPACITY, ci, len(E_CAPACITY))
    ev[n, E_CAPACITY.account] = account
    ev[n, E_CAPACITY.capkey] = capkey
    ev[n, E_CAPACITY.start_hour] = start_hour
    ev[n, E_CAPACITY.end_hour] = end_hour
    ev[n, E_CAPACITY.gpus] = gpus
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_closed(ev, n, ci, instrument_id, slot, open_interest_lots):
    _start(ev, n, EV_CLOSED, ci, len(E_CLOSED))
    ev[n, E_CLOSED.instrument_id] = instrument_id
    ev[n, E_CLOSED.slot] = slot
    ev[n, E_CLOSED.open_interest_lots] = open_interest_lots
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_assigned(
    ev, n, ci, obligation_id, provider, holder, gpus, start_ns, hours, escrow_micros, instrument_id
):
    _start(ev, n, EV_ASSIGNED, ci, len(E_ASSIGNED))
    ev[n, E_ASSIGNED.obligation_id] = obligation_id
    ev[n, E_ASSIGNED.provider] = provider
    ev[n, E_ASSIGNED.holder] = holder
    ev[n, E_ASSIGNED.gpus] = gpus
    ev[n, E_ASSIGNED.start_ns] = start_ns
    ev[n, E_ASSIGNED.hours] = hours
    ev[n, E_ASSIGNED.escrow_micros] = escrow_micros
    ev[n, E_ASSIGNED.instrument_id] = instrument_id
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_started(ev, n, ci, obligation_id, provider, holder):
    _start(ev, n, EV_STARTED, ci, len(E_STARTED))
    ev[n, E_STARTED.obligation_id] = obligation_id
    ev[n, E_STARTED.provider] = provider
    ev[n, E_STARTED.holder] = holder
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_settled(
    ev,
    n,
    ci,
    obligation_id,
    provider,
    holder,
    outcome,
    hours_delivered,
    hours_failed,
    released_micros,
    refund_micros,
    penalty_micros,
):
    _start(ev, n, EV_SETTLED, ci, len(E_SETTLED))
    ev[n, E_SETTLED.obligation_id] = obligation_id
    ev[n, E_SETTLED.provider] = provider
    ev[n, E_SETTLED.holder] = holder
    ev[n, E_SETTLED.outcome] = outcome
    ev[n, E_SETTLED.hours_delivered] = hours_delivered
    ev[n, E_SETTLED.hours_failed] = hours_failed
    ev[n, E_SETTLED.released_micros] = released_micros
    ev[n, E_SETTLED.refund_micros] = refund_micros
    ev[n, E_SETTLED.penalty_micros] = penalty_micros
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_listed(ev, n, ci, instrument_id, slot):
    _start(ev, n, EV_LISTED, ci, len(E_LISTED))
    ev[n, E_LISTED.instrument_id] = instrument_id
    ev[n, E_LISTED.slot] = slot
    return n + 1


@njit(cache=True, _nrt=False)
def _reject(instrs, ev, n, ci, account, code, order_id, instr):
    iid = instrs[instr, I_ID] if 0 <= instr < instrs.shape[0] else 0
    return _emit_rejected(ev, n, ci, account, code, order_id, iid)


@njit(cache=True, _nrt=False)
def _cash(accts, ev, n, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref):
    """Apply one account's balance deltas and emit the CashChanged row."""
    accts[account, A_AVAIL] += d_avail
    accts[account, A_HELD] += d_held
    accts[account, A_ESCROW] += d_escrow
    accts[account, A_COLLAT] += d_collat
    return _emit_cash(ev, n, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref)


ACCOUNT_FIRST_USER = 10


@njit(cache=True, _nrt=False)
def _iid(instrs, instr):
    return instrs[instr, I_ID]
