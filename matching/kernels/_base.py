"""Shared pieces of the kernels: result codes, event rows, cash movements, unmanaged views."""

from __future__ import annotations

from numba import njit

from matching.layout import (
    A_AVAIL,
    A_COLLAT,
    A_ESCROW,
    A_HELD,
    E_CMD,
    E_TYPE,
    EV_CASH,
    EV_REJECTED,
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


@njit(cache=True, _nrt=False)
def _emit(ev, n, typ, ci, a, b, c, d, e, f, g, h, i, j, k, m):
    """Write one event row. `_apply` checked the room before the command began."""
    ev[n, E_TYPE] = typ
    ev[n, E_CMD] = ci
    ev[n, 2] = a
    ev[n, 3] = b
    ev[n, 4] = c
    ev[n, 5] = d
    ev[n, 6] = e
    ev[n, 7] = f
    ev[n, 8] = g
    ev[n, 9] = h
    ev[n, 10] = i
    ev[n, 11] = j
    ev[n, 12] = k
    ev[n, 13] = m
    return n + 1


@njit(cache=True, _nrt=False)
def _reject(instrs, ev, n, ci, account, code, order_id, instr):
    iid = instrs[instr, I_ID] if 0 <= instr < instrs.shape[0] else 0
    return _emit(ev, n, EV_REJECTED, ci, account, code, order_id, iid, 0, 0, 0, 0, 0, 0, 0, 0)


@njit(cache=True, _nrt=False)
def _cash(accts, ev, n, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref):
    """Apply one account's balance deltas and emit the CashChanged row."""
    accts[account, A_AVAIL] += d_avail
    accts[account, A_HELD] += d_held
    accts[account, A_ESCROW] += d_escrow
    accts[account, A_COLLAT] += d_collat
    return _emit(
        ev, n, EV_CASH, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref, 0, 0, 0, 0, 0
    )


ACCOUNT_FIRST_USER = 10


@njit(cache=True, _nrt=False)
def _iid(instrs, instr):
    return instrs[instr, I_ID]
