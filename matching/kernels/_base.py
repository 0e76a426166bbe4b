"""Shared pieces of the kernels: result codes, event rows, cash movements, unmanaged views."""

from __future__ import annotations

from numba import njit

from matching.layout import (
    A_AVAIL,
    A_COLLAT,
    A_ESCROW,
    A_HELD,
    A_PENDING,
    E_ACCEPTED,
    E_AMENDED,
    E_ASSIGNED,
    E_CANCELLED,
    E_CAPACITY,
    E_CASH,
    E_CLOSED,
    E_CMD,
    E_DEPOSITED,
    E_DISPUTED,
    E_EXPIRED,
    E_FIRST,
    E_HALTED,
    E_INSTR_CANCELLED,
    E_LISTED,
    E_POSITION,
    E_REINSTATED,
    E_REJECTED,
    E_RESOLVED,
    E_RESUMED,
    E_SETTLED,
    E_STARTED,
    E_SUSPENDED,
    E_TRADE,
    E_TYPE,
    E_WD_REQUESTED,
    E_WD_SETTLED,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_ASSIGNED,
    EV_CANCELLED,
    EV_CAPACITY,
    EV_CASH,
    EV_CLOSED,
    EV_DEPOSITED,
    EV_DISPUTED,
    EV_EXPIRED,
    EV_HALTED,
    EV_INSTR_CANCELLED,
    EV_LISTED,
    EV_POSITION,
    EV_REINSTATED,
    EV_REJECTED,
    EV_RESOLVED,
    EV_RESUMED,
    EV_SETTLED,
    EV_STARTED,
    EV_SUSPENDED,
    EV_TRADE,
    EV_WD_REQUESTED,
    EV_WD_SETTLED,
    EV_WIDTH,
    I_ID,
)
from schemas import ids, units
from schemas.codes import (
    CancelReason,
    CashReason,
    DeliveryOutcome,
    ExpireReason,
    HaltReason,
    PositionReason,
    Reject,
)

# The codes events carry, as plain ints derived from schemas.codes so the kernels compile them in
# (Numba freezes module globals). tests/matching/test_kernel_codes.py keeps the sets equal.
R_UNKNOWN_INSTRUMENT = int(Reject.UNKNOWN_INSTRUMENT)
R_INSTRUMENT_NOT_TRADING = int(Reject.INSTRUMENT_NOT_TRADING)
R_PRICE_OUT_OF_BAND = int(Reject.PRICE_OUT_OF_BAND)
R_PRICE_INVALID = int(Reject.PRICE_INVALID)
R_LOTS_INVALID = int(Reject.LOTS_INVALID)
R_LOTS_ABOVE_MAX = int(Reject.LOTS_ABOVE_MAX)
R_UNKNOWN_ACCOUNT = int(Reject.UNKNOWN_ACCOUNT)
R_ORDER_TYPE_INVALID = int(Reject.ORDER_TYPE_INVALID)
R_AMOUNT_INVALID = int(Reject.AMOUNT_INVALID)
R_UNKNOWN_ORDER = int(Reject.UNKNOWN_ORDER)
R_NOT_ORDER_OWNER = int(Reject.NOT_ORDER_OWNER)
R_CAPACITY_RANGE_INVALID = int(Reject.CAPACITY_RANGE_INVALID)
R_EXPIRY_INVALID = int(Reject.EXPIRY_INVALID)
R_MALFORMED = int(Reject.MALFORMED)
R_WRONG_SHARD = int(Reject.WRONG_SHARD)
R_DUPLICATE_REFERENCE = int(Reject.DUPLICATE_REFERENCE)
R_UNKNOWN_WITHDRAWAL = int(Reject.UNKNOWN_WITHDRAWAL)
R_NOT_OPERATOR = int(Reject.NOT_OPERATOR)
R_INSTRUMENT_HALTED = int(Reject.INSTRUMENT_HALTED)
R_INSTRUMENT_NOT_HALTED = int(Reject.INSTRUMENT_NOT_HALTED)
R_INSUFFICIENT_CASH = int(Reject.INSUFFICIENT_CASH)
R_INSUFFICIENT_COVER = int(Reject.INSUFFICIENT_COVER)
R_OPEN_ORDERS_LIMIT = int(Reject.OPEN_ORDERS_LIMIT)
R_CAPACITY_BELOW_COMMITTED = int(Reject.CAPACITY_BELOW_COMMITTED)
R_ENGINE_FULL = int(Reject.ENGINE_FULL)
R_BALANCE_LIMIT = int(Reject.BALANCE_LIMIT)
R_WITHDRAWAL_LIMIT = int(Reject.WITHDRAWAL_LIMIT)
R_CAPACITY_LIMIT = int(Reject.CAPACITY_LIMIT)
R_ACCOUNT_SUSPENDED = int(Reject.ACCOUNT_SUSPENDED)
R_ACCOUNT_NOT_SUSPENDED = int(Reject.ACCOUNT_NOT_SUSPENDED)
R_POST_ONLY_WOULD_TAKE = int(Reject.POST_ONLY_WOULD_TAKE)
R_FOK_NOT_FILLABLE = int(Reject.FOK_NOT_FILLABLE)
R_NO_LIQUIDITY = int(Reject.NO_LIQUIDITY)
R_AMEND_NO_CHANGE = int(Reject.AMEND_NO_CHANGE)
R_UNKNOWN_OBLIGATION = int(Reject.UNKNOWN_OBLIGATION)
R_OBLIGATION_STATE = int(Reject.OBLIGATION_STATE)
R_NOT_OBLIGATION_PROVIDER = int(Reject.NOT_OBLIGATION_PROVIDER)
R_NOT_OBLIGATION_HOLDER = int(Reject.NOT_OBLIGATION_HOLDER)
R_DISPUTE_WINDOW = int(Reject.DISPUTE_WINDOW)

CX_USER = int(CancelReason.USER)
CX_IOC = int(CancelReason.IOC_REMAINDER)
CX_SELF_TRADE = int(CancelReason.SELF_TRADE)
CX_CANCEL_ALL = int(CancelReason.CANCEL_ALL)
CX_OPERATOR = int(CancelReason.OPERATOR)

HR_OPERATOR = int(HaltReason.OPERATOR)
HR_BREAKER = int(HaltReason.CIRCUIT_BREAKER)

XP_GTD = int(ExpireReason.GTD)
XP_GATE = int(ExpireReason.GATE_CLOSURE)

CR_DEPOSIT = int(CashReason.DEPOSIT)
CR_WITHDRAWAL = int(CashReason.WITHDRAWAL)
CR_HOLD = int(CashReason.ORDER_HOLD)
CR_RELEASE = int(CashReason.ORDER_RELEASE)
CR_TRADE = int(CashReason.TRADE)
CR_FEE = int(CashReason.FEE)
CR_SHORT_COVERED = int(CashReason.SHORT_COVERED)
CR_DELIVERY_RELEASE = int(CashReason.DELIVERY_RELEASE)
CR_DELIVERY_REFUND = int(CashReason.DELIVERY_REFUND)
CR_DELIVERY_PENALTY = int(CashReason.DELIVERY_PENALTY)
CR_WITHDRAWAL_REQUESTED = int(CashReason.WITHDRAWAL_REQUESTED)
CR_WITHDRAWAL_REJECTED = int(CashReason.WITHDRAWAL_REJECTED)

PR_TRADE = int(PositionReason.TRADE)
PR_ASSIGNED = int(PositionReason.DELIVERY_ASSIGNED)

DO_DELIVERED = int(DeliveryOutcome.DELIVERED)
DO_FAILED = int(DeliveryOutcome.FAILED)
DO_INTERRUPTED = int(DeliveryOutcome.INTERRUPTED)

NS_PER_HOUR = int(units.NS_PER_HOUR)
BPS = int(units.BPS_PER_UNIT)
ACCOUNT_FIRST_USER = int(ids.ACCOUNT_FIRST_USER)

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
    ev,
    n,
    ci,
    account,
    available_delta,
    held_delta,
    escrow_delta,
    collateral_delta,
    reason,
    ref_id,
    pending_delta,
):
    _start(ev, n, EV_CASH, ci, len(E_CASH))
    ev[n, E_CASH.account] = account
    ev[n, E_CASH.available_delta] = available_delta
    ev[n, E_CASH.held_delta] = held_delta
    ev[n, E_CASH.escrow_delta] = escrow_delta
    ev[n, E_CASH.collateral_delta] = collateral_delta
    ev[n, E_CASH.reason] = reason
    ev[n, E_CASH.ref_id] = ref_id
    ev[n, E_CASH.pending_delta] = pending_delta
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
    return _emit_cash(ev, n, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref, 0)


@njit(cache=True, _nrt=False)
def _cash_pending(accts, ev, n, ci, account, d_avail, d_pending, reason, ref):
    """Move one account's cash between available and pending withdrawals (off the order path,
    so `_cash` keeps its arguments); emit the CashChanged row."""
    accts[account, A_AVAIL] += d_avail
    accts[account, A_PENDING] += d_pending
    return _emit_cash(ev, n, ci, account, d_avail, 0, 0, 0, reason, ref, d_pending)


@njit(cache=True, _nrt=False)
def _emit_disputed(ev, n, ci, obligation_id, provider, holder):
    _start(ev, n, EV_DISPUTED, ci, len(E_DISPUTED))
    ev[n, E_DISPUTED.obligation_id] = obligation_id
    ev[n, E_DISPUTED.provider] = provider
    ev[n, E_DISPUTED.holder] = holder
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_resolved(ev, n, ci, obligation_id, provider, holder, released):
    _start(ev, n, EV_RESOLVED, ci, len(E_RESOLVED))
    ev[n, E_RESOLVED.obligation_id] = obligation_id
    ev[n, E_RESOLVED.provider] = provider
    ev[n, E_RESOLVED.holder] = holder
    ev[n, E_RESOLVED.released] = released
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_deposited(ev, n, ci, deposit_id, account, amount_micros):
    _start(ev, n, EV_DEPOSITED, ci, len(E_DEPOSITED))
    ev[n, E_DEPOSITED.deposit_id] = deposit_id
    ev[n, E_DEPOSITED.account] = account
    ev[n, E_DEPOSITED.amount_micros] = amount_micros
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_wd_requested(ev, n, ci, withdrawal_id, account, amount_micros, approved):
    return _withdrawal_row(
        ev, n, ci, EV_WD_REQUESTED, withdrawal_id, account, amount_micros, approved
    )


@njit(cache=True, _nrt=False)
def _emit_wd_settled(ev, n, ci, withdrawal_id, account, amount_micros, approved):
    return _withdrawal_row(
        ev, n, ci, EV_WD_SETTLED, withdrawal_id, account, amount_micros, approved
    )


@njit(cache=True, _nrt=False)
def _withdrawal_row(ev, n, ci, kind, withdrawal_id, account, amount_micros, approved):
    """A withdrawal requested or settled: the two kinds share one row shape."""
    _start(ev, n, kind, ci, len(E_WD_REQUESTED))
    ev[n, E_WD_SETTLED.withdrawal_id] = withdrawal_id
    ev[n, E_WD_SETTLED.account] = account
    ev[n, E_WD_SETTLED.amount_micros] = amount_micros
    ev[n, E_WD_SETTLED.approved] = approved
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_halted(
    ev, n, ci, instrument_id, reason, until_ns, reference_price_ticks, trade_price_ticks
):
    _start(ev, n, EV_HALTED, ci, len(E_HALTED))
    ev[n, E_HALTED.instrument_id] = instrument_id
    ev[n, E_HALTED.reason] = reason
    ev[n, E_HALTED.until_ns] = until_ns
    ev[n, E_HALTED.reference_price_ticks] = reference_price_ticks
    ev[n, E_HALTED.trade_price_ticks] = trade_price_ticks
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_resumed(ev, n, ci, instrument_id, reason):
    _start(ev, n, EV_RESUMED, ci, len(E_RESUMED))
    ev[n, E_RESUMED.instrument_id] = instrument_id
    ev[n, E_RESUMED.reason] = reason
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_instr_cancelled(ev, n, ci, instrument_id, orders):
    _start(ev, n, EV_INSTR_CANCELLED, ci, len(E_INSTR_CANCELLED))
    ev[n, E_INSTR_CANCELLED.instrument_id] = instrument_id
    ev[n, E_INSTR_CANCELLED.orders] = orders
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_suspended(ev, n, ci, account):
    _start(ev, n, EV_SUSPENDED, ci, len(E_SUSPENDED))
    ev[n, E_SUSPENDED.account] = account
    return n + 1


@njit(cache=True, _nrt=False)
def _emit_reinstated(ev, n, ci, account):
    _start(ev, n, EV_REINSTATED, ci, len(E_REINSTATED))
    ev[n, E_REINSTATED.account] = account
    return n + 1


@njit(cache=True, _nrt=False)
def _iid(instrs, instr):
    return instrs[instr, I_ID]
