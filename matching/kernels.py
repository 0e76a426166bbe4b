"""Numba kernels: the whole single-writer state machine over preallocated int64 arrays.

Private by convention (`_name`): only `matching.engine` calls them, after validating input.
`_apply` takes the state tuple (see `matching.layout`) and hands its arrays down as plain
arguments: no tuple lookups and no row views below it, so the hot path does no reference counting.
Kernels write event rows into `ev` and return the new count; `_apply` checks the room a command
can need before running it. They never raise on
bad input (refusals are events) and never reads a clock or a random source.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit
from numba.extending import intrinsic

from matching.layout import (
    A_AVAIL,
    A_COLLAT,
    A_ESCROW,
    A_HEAD,
    A_HELD,
    A_OPEN,
    A_TAIL,
    ACCT_EXTERNAL,
    ACCT_FEES,
    B_COLLAT_LEFT,
    B_ESCROW_LEFT,
    B_FEES_LEFT,
    B_GPU,
    B_GPUS,
    B_HOLDER,
    B_HOURS,
    B_HOURS_LEFT,
    B_ID,
    B_INSTR_ID,
    B_NEXT,
    B_PRODUCT,
    B_PROVIDER,
    B_REGION,
    B_RELEASED,
    B_START,
    B_STATE,
    BUY,
    C0_ACCOUNT,
    C0_AUX,
    C0_AUX2,
    C0_AUX3,
    C0_EXPIRE,
    C0_FLAGS,
    C0_INSTR,
    C0_LOTS,
    C0_OP,
    C0_ORDER,
    C0_PRICE,
    C0_SIDE,
    C_CAP,
    C_KEY,
    C_NEXT,
    C_USED,
    CFG_BALANCE_MAX,
    CFG_CAPACITY_GPUS_MAX,
    CFG_CAPACITY_HOURS_MAX,
    CFG_DEADLINE_NS,
    CFG_DEPOSIT_MAX,
    CFG_LOTS_MAX,
    CFG_MAKER_BPS,
    CFG_ORDERS_OPEN_MAX,
    CFG_PENALTY_MICROS,
    CFG_PROTECTION_BPS,
    CFG_REGIONS,
    CFG_TAKER_BPS,
    CFG_TICK_MICROS,
    E_CMD,
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
    F_MARKET,
    F_POST_ONLY,
    F_STP_SHIFT,
    I_BAND_HI,
    I_BAND_LO,
    I_BEST,
    I_CAPKEY,
    I_COLLAT_UNIT,
    I_GATE,
    I_GPU,
    I_HOUR0,
    I_HOURS,
    I_ID,
    I_LAST_PRICE,
    I_LOTS_MAX,
    I_NOTIONAL_UNIT,
    I_ORDERS,
    I_POSITIONS,
    I_PRODUCT,
    I_REGION,
    I_START,
    I_STATE,
    I_VOLUME,
    I_WORST,
    INSTR_ALL,
    INSTR_CLOSED,
    INSTR_NOT_TRADING,
    INSTR_OPEN,
    L_BOOK,
    L_COUNT,
    L_HEAD,
    L_LOTS,
    L_NEXT,
    L_PREV,
    L_PRICE,
    L_TAIL,
    M_CAP_FREE,
    M_CAP_HWM,
    M_CAP_LIVE,
    M_GTD_SIZE,
    M_INSTR_SEQ,
    M_LEVEL_FREE,
    M_LEVEL_HWM,
    M_LEVELS_LIVE,
    M_NOW,
    M_OBL_FREE,
    M_OBL_HWM,
    M_OBL_LIVE,
    M_OBL_SEQ,
    M_ORDER_FREE,
    M_ORDER_HWM,
    M_ORDER_SEQ,
    M_ORDERS_LIVE,
    M_POS_FREE,
    M_POS_HWM,
    M_POS_LIVE,
    M_TRADE_SEQ,
    M_TRANSFER_SEQ,
    O_ACCOUNT,
    O_ANEXT,
    O_APREV,
    O_COVERED,
    O_EXPIRE,
    O_FILLED,
    O_FLAGS,
    O_ID,
    O_INSTR,
    O_LEVEL,
    O_LOTS,
    O_NEXT,
    O_PREV,
    O_PRICE,
    O_SIDE,
    O_UNIT,
    OBL_ASSIGNED,
    OBL_CONFIRMED,
    OBL_FREE,
    OP_AMEND,
    OP_CANCEL,
    OP_CANCEL_ALL,
    OP_CAPACITY,
    OP_CLOCK,
    OP_CONFIRM,
    OP_DEPOSIT,
    OP_FAIL,
    OP_LIST,
    OP_PLACE,
    OP_WITHDRAW,
    ORDER_SLOT_BITS,
    ORDER_SLOT_MASK,
    P_ACCOUNT,
    P_COLLAT,
    P_ESCROW,
    P_FEES,
    P_INSTR,
    P_LOTS,
    P_NEXT,
    P_RESERVED,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_MAKER,
    STP_DECREMENT,
    STP_NONE,
    TIF_FOK,
    TIF_GTD,
    TIF_IOC,
)  # fmt: skip

if config.DISABLE_JIT:

    def _unmanaged(array):
        return array

else:

    @intrinsic
    def _unmanaged(typingctx, array):
        """The same array without its memory-manager handle, so passing it costs no refcounts.

        Numba counts references with atomic instructions on every array argument and view; on
        the engine's hot path that was most of the time. The state tuple held by `Engine` keeps
        the buffers alive for the whole kernel call, so nothing below `_apply` needs to count.
        """

        def codegen(context, builder, signature, args):
            source = context.make_array(signature.args[0])(context, builder, value=args[0])
            target = context.make_array(signature.return_type)(context, builder)
            context.populate_array(
                target,
                data=source.data,
                shape=source.shape,
                strides=source.strides,
                itemsize=source.itemsize,
                meminfo=None,
                parent=None,
            )
            return target._getvalue()

        return array(array), codegen


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


# ============================================================================ events


@njit(cache=True)
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


@njit(cache=True)
def _reject(instrs, ev, n, ci, account, code, order_id, instr):
    iid = instrs[instr, I_ID] if 0 <= instr < instrs.shape[0] else 0
    return _emit(ev, n, EV_REJECTED, ci, account, code, order_id, iid, 0, 0, 0, 0, 0, 0, 0, 0)


@njit(cache=True)
def _cash(accts, ev, n, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref):
    """Apply one account's balance deltas and emit the CashChanged row."""
    accts[account, A_AVAIL] += d_avail
    accts[account, A_HELD] += d_held
    accts[account, A_ESCROW] += d_escrow
    accts[account, A_COLLAT] += d_collat
    return _emit(
        ev, n, EV_CASH, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref, 0, 0, 0, 0, 0
    )


# ============================================================================ hash tables
# Open addressing with linear probing and backward-shift deletion over an (H, 2) array of
# (key, value); key -1 is empty. Keys are non-negative and below 2**62. The mixing stays inside
# int64 without overflow, so compiled and pure-Python runs place keys identically.


@njit(cache=True)
def _ht_home(key, mask):
    s = (key & 0x7FFFFFFF) * 0x7FEB352D + (key >> 31) * 0x68E31DA5
    s ^= s >> 29
    return s & mask


@njit(cache=True)
def _ht_get(ht, key):
    mask = ht.shape[0] - 1
    i = _ht_home(key, mask)
    while True:
        k = ht[i, 0]
        if k == key:
            return ht[i, 1]
        if k == EMPTY:
            return EMPTY
        i = (i + 1) & mask


@njit(cache=True)
def _ht_put(ht, key, value):
    mask = ht.shape[0] - 1
    i = _ht_home(key, mask)
    while ht[i, 0] != EMPTY:
        i = (i + 1) & mask
    ht[i, 0] = key
    ht[i, 1] = value


@njit(cache=True)
def _ht_del(ht, key):
    mask = ht.shape[0] - 1
    i = _ht_home(key, mask)
    while ht[i, 0] != key:
        if ht[i, 0] == EMPTY:
            return
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        kj = ht[j, 0]
        if kj == EMPTY:
            break
        home = _ht_home(kj, mask)
        # The entry at j may move back to i unless its home lies cyclically in (i, j].
        if i <= j:
            stays = i < home <= j
        else:
            stays = home > i or home <= j
        if not stays:
            ht[i, 0] = kj
            ht[i, 1] = ht[j, 1]
            i = j
    ht[i, 0] = EMPTY
    ht[i, 1] = EMPTY


# ============================================================================ allocators
# Each pool hands out rows below a high-water mark, reusing freed rows first (LIFO through a
# link column), so a snapshot only needs rows [0, hwm).


@njit(cache=True)
def _alloc(meta, rows, free_col, hwm_col, link_col):
    head = meta[0, free_col]
    if head != EMPTY:
        meta[0, free_col] = rows[head, link_col]
        return head
    slot = meta[0, hwm_col]
    if slot >= rows.shape[0]:
        return EMPTY
    meta[0, hwm_col] = slot + 1
    return slot


@njit(cache=True)
def _pos_key(account, instr):
    return (account << 20) | instr


@njit(cache=True)
def _pos_find(pht, account, instr):
    return _ht_get(pht, _pos_key(account, instr))


@njit(cache=True)
def _pos_get(meta, instrs, pos, pht, account, instr):
    """Return the position row, creating it (caller checked room first)."""
    row = _ht_get(pht, _pos_key(account, instr))
    if row != EMPTY:
        return row
    row = _alloc(meta, pos, M_POS_FREE, M_POS_HWM, P_NEXT)
    pos[row, :] = 0
    pos[row, P_ACCOUNT] = account
    pos[row, P_INSTR] = instr
    pos[row, P_NEXT] = EMPTY
    meta[0, M_POS_LIVE] += 1
    instrs[instr, I_POSITIONS] += 1
    _ht_put(pht, _pos_key(account, instr), row)
    return row


@njit(cache=True)
def _pos_free(meta, instrs, pos, pht, row):
    instrs[pos[row, P_INSTR], I_POSITIONS] -= 1
    _ht_del(pht, _pos_key(pos[row, P_ACCOUNT], pos[row, P_INSTR]))
    pos[row, :] = 0
    pos[row, P_ACCOUNT] = EMPTY
    pos[row, P_NEXT] = meta[0, M_POS_FREE]
    meta[0, M_POS_FREE] = row
    meta[0, M_POS_LIVE] -= 1


# ============================================================================ capacity


@njit(cache=True)
def _cap_key(account, capkey, hour):
    return (((account << 6) | capkey) << 20) | (hour & 0xFFFFF)


@njit(cache=True)
def _cap_free_for(instrs, cap, cht, account, instr):
    """Smallest unused capacity over the instrument's delivery hours (0 if any hour is missing)."""
    ht = cht
    best = -1
    for h in range(instrs[instr, I_HOURS]):
        row = _ht_get(ht, _cap_key(account, instrs[instr, I_CAPKEY], instrs[instr, I_HOUR0] + h))
        if row == EMPTY:
            return 0
        free = cap[row, C_CAP] - cap[row, C_USED]
        if best < 0 or free < best:
            best = free
    return max(best, 0)


@njit(cache=True)
def _cap_use(instrs, cap, cht, account, instr, delta):
    """Add `delta` GPUs to the committed capacity of every delivery hour of the instrument."""
    ht = cht
    for h in range(instrs[instr, I_HOURS]):
        row = _ht_get(ht, _cap_key(account, instrs[instr, I_CAPKEY], instrs[instr, I_HOUR0] + h))
        if row != EMPTY:
            cap[row, C_USED] = max(cap[row, C_USED] + delta, 0)


# ============================================================================ price levels


@njit(cache=True)
def _better(a, b, side):
    """Whether price a has priority over price b on this side of the book."""
    return a > b if side == BUY else a < b


@njit(cache=True)
def _level_key(instr, side, price):
    return ((instr * 2 + side) << 31) | price


@njit(cache=True)
def _level_get_or_add(meta, instrs, levels, lht, instr, side, price):
    key = _level_key(instr, side, price)
    lv = _ht_get(lht, key)
    if lv != EMPTY:
        return lv
    lv = _alloc(meta, levels, M_LEVEL_FREE, M_LEVEL_HWM, L_NEXT)
    meta[0, M_LEVELS_LIVE] += 1
    levels[lv, L_PRICE] = price
    levels[lv, L_HEAD] = EMPTY
    levels[lv, L_TAIL] = EMPTY
    levels[lv, L_LOTS] = 0
    levels[lv, L_COUNT] = 0
    levels[lv, L_BOOK] = instr * 2 + side
    _ht_put(lht, key, lv)
    best = instrs[instr, I_BEST + side]
    worst = instrs[instr, I_WORST + side]
    if best == EMPTY:
        levels[lv, L_PREV] = EMPTY
        levels[lv, L_NEXT] = EMPTY
        instrs[instr, I_BEST + side] = lv
        instrs[instr, I_WORST + side] = lv
    elif _better(price, levels[best, L_PRICE], side):
        levels[lv, L_PREV] = EMPTY
        levels[lv, L_NEXT] = best
        levels[best, L_PREV] = lv
        instrs[instr, I_BEST + side] = lv
    elif not _better(price, levels[worst, L_PRICE], side):
        levels[lv, L_PREV] = worst
        levels[lv, L_NEXT] = EMPTY
        levels[worst, L_NEXT] = lv
        instrs[instr, I_WORST + side] = lv
    else:
        cur = levels[best, L_NEXT]
        while _better(levels[cur, L_PRICE], price, side):
            cur = levels[cur, L_NEXT]
        prev = levels[cur, L_PREV]
        levels[lv, L_PREV] = prev
        levels[lv, L_NEXT] = cur
        levels[prev, L_NEXT] = lv
        levels[cur, L_PREV] = lv
    return lv


@njit(cache=True)
def _level_remove(meta, instrs, levels, lht, lv):
    book = levels[lv, L_BOOK]
    instr = book >> 1
    side = book & 1
    prev = levels[lv, L_PREV]
    nxt = levels[lv, L_NEXT]
    if prev == EMPTY:
        instrs[instr, I_BEST + side] = nxt
    else:
        levels[prev, L_NEXT] = nxt
    if nxt == EMPTY:
        instrs[instr, I_WORST + side] = prev
    else:
        levels[nxt, L_PREV] = prev
    _ht_del(lht, _level_key(instr, side, levels[lv, L_PRICE]))
    levels[lv, L_BOOK] = EMPTY
    levels[lv, L_NEXT] = meta[0, M_LEVEL_FREE]
    meta[0, M_LEVEL_FREE] = lv
    meta[0, M_LEVELS_LIVE] -= 1


# ============================================================================ orders


@njit(cache=True)
def _order_slot(orders, order_id):
    """Slot of a live order id, or EMPTY."""
    if order_id <= 0:
        return EMPTY
    slot = order_id & ORDER_SLOT_MASK
    if slot >= orders.shape[0] or orders[slot, O_ID] != order_id:
        return EMPTY
    return slot


@njit(cache=True)
def _order_new(meta, accts, orders, account, instr, side, price, lots, flags, expire):
    slot = _alloc(meta, orders, M_ORDER_FREE, M_ORDER_HWM, O_NEXT)
    meta[0, M_ORDER_SEQ] += 1
    meta[0, M_ORDERS_LIVE] += 1
    orders[slot, O_ID] = (meta[0, M_ORDER_SEQ] << ORDER_SLOT_BITS) | slot
    orders[slot, O_ACCOUNT] = account
    orders[slot, O_INSTR] = instr
    orders[slot, O_SIDE] = side
    orders[slot, O_PRICE] = price
    orders[slot, O_LOTS] = lots
    orders[slot, O_FILLED] = 0
    orders[slot, O_FLAGS] = flags
    orders[slot, O_EXPIRE] = expire
    orders[slot, O_PREV] = EMPTY
    orders[slot, O_NEXT] = EMPTY
    orders[slot, O_LEVEL] = EMPTY
    orders[slot, O_UNIT] = 0
    orders[slot, O_COVERED] = 0
    # Append to the account's list of open orders (cancel-all walks it in placement order).
    tail = accts[account, A_TAIL]
    orders[slot, O_APREV] = tail
    orders[slot, O_ANEXT] = EMPTY
    if tail == EMPTY:
        accts[account, A_HEAD] = slot
    else:
        orders[tail, O_ANEXT] = slot
    accts[account, A_TAIL] = slot
    accts[account, A_OPEN] += 1
    return slot


@njit(cache=True)
def _order_free(meta, accts, orders, slot):
    account = orders[slot, O_ACCOUNT]
    prev = orders[slot, O_APREV]
    nxt = orders[slot, O_ANEXT]
    if prev == EMPTY:
        accts[account, A_HEAD] = nxt
    else:
        orders[prev, O_ANEXT] = nxt
    if nxt == EMPTY:
        accts[account, A_TAIL] = prev
    else:
        orders[nxt, O_APREV] = prev
    accts[account, A_OPEN] -= 1
    orders[slot, O_ID] = 0
    orders[slot, O_LOTS] = 0
    orders[slot, O_NEXT] = meta[0, M_ORDER_FREE]
    meta[0, M_ORDER_FREE] = slot
    meta[0, M_ORDERS_LIVE] -= 1


@njit(cache=True)
def _book_append(meta, instrs, orders, levels, lht, slot):
    """Rest an order at the back of its price level."""
    lv = _level_get_or_add(
        meta,
        instrs,
        levels,
        lht,
        orders[slot, O_INSTR],
        orders[slot, O_SIDE],
        orders[slot, O_PRICE],
    )
    tail = levels[lv, L_TAIL]
    orders[slot, O_PREV] = tail
    orders[slot, O_NEXT] = EMPTY
    orders[slot, O_LEVEL] = lv
    if tail == EMPTY:
        levels[lv, L_HEAD] = slot
    else:
        orders[tail, O_NEXT] = slot
    levels[lv, L_TAIL] = slot
    levels[lv, L_LOTS] += orders[slot, O_LOTS]
    levels[lv, L_COUNT] += 1
    instrs[orders[slot, O_INSTR], I_ORDERS] += 1


@njit(cache=True)
def _book_unlink(meta, instrs, orders, levels, lht, slot):
    """Take a resting order out of its level, removing the level when it empties."""
    lv = orders[slot, O_LEVEL]
    if lv == EMPTY:
        return
    instrs[orders[slot, O_INSTR], I_ORDERS] -= 1
    prev = orders[slot, O_PREV]
    nxt = orders[slot, O_NEXT]
    if prev == EMPTY:
        levels[lv, L_HEAD] = nxt
    else:
        orders[prev, O_NEXT] = nxt
    if nxt == EMPTY:
        levels[lv, L_TAIL] = prev
    else:
        orders[nxt, O_PREV] = prev
    levels[lv, L_LOTS] -= orders[slot, O_LOTS]
    levels[lv, L_COUNT] -= 1
    orders[slot, O_LEVEL] = EMPTY
    orders[slot, O_PREV] = EMPTY
    orders[slot, O_NEXT] = EMPTY
    if levels[lv, L_COUNT] == 0:
        _level_remove(meta, instrs, levels, lht, lv)


@njit(cache=True)
def _release(accts, instrs, orders, pos, pht, cap, cht, ev, n, ci, slot, lots):
    """Release the holds and reservations behind `lots` unfilled lots of an order."""
    account = orders[slot, O_ACCOUNT]
    if orders[slot, O_SIDE] == BUY:
        amount = orders[slot, O_UNIT] * lots
    else:
        # Uncovered lots are released first: they tie up capacity and collateral.
        uncovered_total = orders[slot, O_LOTS] - orders[slot, O_COVERED]
        unc = min(lots, uncovered_total)
        cov = lots - unc
        if cov > 0:
            prow = _pos_find(pht, account, orders[slot, O_INSTR])
            pos[prow, P_RESERVED] -= cov
            orders[slot, O_COVERED] -= cov
        if unc > 0:
            _cap_use(instrs, cap, cht, account, orders[slot, O_INSTR], -unc)
        amount = orders[slot, O_UNIT] * unc
    if amount != 0:
        n = _cash(accts, ev, n, ci, account, amount, -amount, 0, 0, CR_RELEASE, orders[slot, O_ID])
    return n


@njit(cache=True)
def _reduce(
    meta,
    accts,
    instrs,
    orders,
    levels,
    lht,
    pos,
    pht,
    cap,
    cht,
    ev,
    n,
    ci,
    slot,
    lots,
    event_type,
    reason,
):
    """Cancel or expire `lots` of an order (all of them removes it), releasing what they held."""
    remaining = orders[slot, O_LOTS] - lots
    n = _emit(
        ev, n, event_type, ci, orders[slot, O_ID], orders[slot, O_ACCOUNT], _iid(instrs, orders[slot, O_INSTR]), lots, remaining, reason,
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    n = _release(accts, instrs, orders, pos, pht, cap, cht, ev, n, ci, slot, lots)
    if orders[slot, O_LEVEL] != EMPTY:
        levels[orders[slot, O_LEVEL], L_LOTS] -= lots
    orders[slot, O_LOTS] = remaining
    if remaining == 0:
        _book_unlink(meta, instrs, orders, levels, lht, slot)
        _order_free(meta, accts, orders, slot)
    return n


# ============================================================================ trades


@njit(cache=True)
def _cover_short(instrs, pos, cap, cht, account, instr, prow, q):
    """A buy of q lots by a short account: release escrow and collateral pro rata."""
    short = -pos[prow, P_LOTS]
    if short <= 0:
        return 0, 0
    c = min(q, short)
    escrow = pos[prow, P_ESCROW] * c // short
    collat = pos[prow, P_COLLAT] * c // short
    fees = pos[prow, P_FEES] * c // short
    pos[prow, P_ESCROW] -= escrow
    pos[prow, P_COLLAT] -= collat
    pos[prow, P_FEES] -= fees
    _cap_use(instrs, cap, cht, account, instr, -c)
    return escrow, collat


@njit(cache=True)
def _fill(
    meta,
    cfg,
    accts,
    instrs,
    orders,
    levels,
    pos,
    pht,
    cap,
    cht,
    ev,
    n,
    ci,
    instr,
    maker,
    taker,
    price,
    q,
):
    """Execute q lots between a resting maker and the taker at the maker's price."""
    taker_side = orders[taker, O_SIDE]
    if taker_side == BUY:
        buy, sell = taker, maker
        bps_buy, bps_sell = cfg[0, CFG_TAKER_BPS], cfg[0, CFG_MAKER_BPS]
    else:
        buy, sell = maker, taker
        bps_buy, bps_sell = cfg[0, CFG_MAKER_BPS], cfg[0, CFG_TAKER_BPS]
    unit = instrs[instr, I_NOTIONAL_UNIT] * price
    notional = unit * q
    fee_buy = notional * bps_buy // BPS
    q_cov = min(q, orders[sell, O_COVERED])
    q_unc = q - q_cov
    n_cov = unit * q_cov
    n_unc = unit * q_unc
    fee_cov = n_cov * bps_sell // BPS
    fee_unc = n_unc * bps_sell // BPS
    fee_sell = fee_cov + fee_unc
    meta[0, M_TRADE_SEQ] += 1
    trade_id = meta[0, M_TRADE_SEQ]
    if taker_side == BUY:
        maker_fee, taker_fee = fee_sell, fee_buy
    else:
        maker_fee, taker_fee = fee_buy, fee_sell
    n = _emit(
        ev, n, EV_TRADE, ci, trade_id, instrs[instr, I_ID], price, q, taker_side, orders[maker, O_ID], orders[taker, O_ID],
        orders[maker, O_ACCOUNT], orders[taker, O_ACCOUNT], maker_fee, taker_fee, 0,
    )  # fmt: skip
    # The seller's side moves first, so a buyer who is also the seller (a self-trade allowed by
    # STP "none") sees the short it just opened and covers it, releasing escrow and capacity.
    # seller: covered lots close a long and are paid now; uncovered lots open a short into escrow
    sa = orders[sell, O_ACCOUNT]
    srow = _pos_get(meta, instrs, pos, pht, sa, instr)
    pos[srow, P_LOTS] -= q
    pos[srow, P_RESERVED] -= q_cov
    orders[sell, O_COVERED] -= q_cov
    to_escrow = n_unc - fee_unc
    collat_moved = orders[sell, O_UNIT] * q_unc
    pos[srow, P_ESCROW] += to_escrow
    pos[srow, P_FEES] += fee_unc
    pos[srow, P_COLLAT] += collat_moved
    # buyer: pay from the hold, cover any short first
    ba = orders[buy, O_ACCOUNT]
    brow = _pos_get(meta, instrs, pos, pht, ba, instr)
    hold = orders[buy, O_UNIT] * q
    escrow, collat = _cover_short(instrs, pos, cap, cht, ba, instr, brow, q)
    pos[brow, P_LOTS] += q
    buyer_lots = pos[brow, P_LOTS]
    seller_lots = pos[srow, P_LOTS]
    n = _cash(accts, ev, n, ci, ba, hold - notional - fee_buy + escrow + collat, -hold, -escrow, -collat,
        CR_TRADE, trade_id,
    )  # fmt: skip
    n = _cash(accts, ev, n, ci, sa, n_cov - fee_cov, -collat_moved, to_escrow, collat_moved,
        CR_TRADE, trade_id,
    )  # fmt: skip
    if fee_buy + fee_sell != 0:
        n = _cash(accts, ev, n, ci, ACCT_FEES, fee_buy + fee_sell, 0, 0, 0, CR_FEE, trade_id)
    n = _emit(
        ev, n, EV_POSITION, ci, ba, instrs[instr, I_ID], q, buyer_lots, PR_TRADE, trade_id,
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    n = _emit(
        ev,
        n,
        EV_POSITION,
        ci,
        sa,
        instrs[instr, I_ID],
        -q,
        seller_lots,
        PR_TRADE,
        trade_id,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    orders[maker, O_LOTS] -= q
    orders[maker, O_FILLED] += q
    orders[taker, O_LOTS] -= q
    orders[taker, O_FILLED] += q
    levels[orders[maker, O_LEVEL], L_LOTS] -= q
    instrs[instr, I_LAST_PRICE] = price
    instrs[instr, I_VOLUME] += q
    return n


@njit(cache=True)
def _crosses(side, level_price, limit):
    return level_price <= limit if side == BUY else level_price >= limit


@njit(cache=True)
def _fok_fillable(instrs, orders, levels, instr, side, limit, account, stp, lots):
    """Lots an FOK order would fill before matching stops (self-trade rules included)."""
    lv = instrs[instr, I_BEST + (1 - side)]
    total = 0
    while lv != EMPTY and total < lots and _crosses(side, levels[lv, L_PRICE], limit):
        o = levels[lv, L_HEAD]
        while o != EMPTY and total < lots:
            if orders[o, O_ACCOUNT] == account and stp != STP_NONE:
                if stp != STP_CANCEL_MAKER:
                    return total
            else:
                total += orders[o, O_LOTS]
            o = orders[o, O_NEXT]
        lv = levels[lv, L_NEXT]
    return total


@njit(cache=True)
def _match(
    meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, taker, limit
):
    """Match the taker against the opposite book up to its limit price. Return (ev, n, alive)."""
    instr = orders[taker, O_INSTR]
    side = orders[taker, O_SIDE]
    account = orders[taker, O_ACCOUNT]
    stp = (orders[taker, O_FLAGS] >> F_STP_SHIFT) & 7
    lv = instrs[instr, I_BEST + (1 - side)]
    while lv != EMPTY and orders[taker, O_LOTS] > 0:
        price = levels[lv, L_PRICE]
        if not _crosses(side, price, limit):
            break
        o = levels[lv, L_HEAD]
        next_lv = levels[lv, L_NEXT]
        while o != EMPTY and orders[taker, O_LOTS] > 0:
            next_o = orders[o, O_NEXT]
            if orders[o, O_ACCOUNT] == account and stp != STP_NONE:
                if stp == STP_CANCEL_MAKER:
                    n = _reduce(
                        meta,
                        accts,
                        instrs,
                        orders,
                        levels,
                        lht,
                        pos,
                        pht,
                        cap,
                        cht,
                        ev,
                        n,
                        ci,
                        o,
                        orders[o, O_LOTS],
                        EV_CANCELLED,
                        CX_SELF_TRADE,
                    )
                elif stp == STP_DECREMENT:
                    d = min(orders[o, O_LOTS], orders[taker, O_LOTS])
                    n = _reduce(
                        meta,
                        accts,
                        instrs,
                        orders,
                        levels,
                        lht,
                        pos,
                        pht,
                        cap,
                        cht,
                        ev,
                        n,
                        ci,
                        o,
                        d,
                        EV_CANCELLED,
                        CX_SELF_TRADE,
                    )
                    n = _reduce(
                        meta,
                        accts,
                        instrs,
                        orders,
                        levels,
                        lht,
                        pos,
                        pht,
                        cap,
                        cht,
                        ev,
                        n,
                        ci,
                        taker,
                        d,
                        EV_CANCELLED,
                        CX_SELF_TRADE,
                    )
                    if orders[taker, O_ID] == 0:
                        return n, False
                else:
                    if stp == STP_CANCEL_BOTH:
                        n = _reduce(
                            meta,
                            accts,
                            instrs,
                            orders,
                            levels,
                            lht,
                            pos,
                            pht,
                            cap,
                            cht,
                            ev,
                            n,
                            ci,
                            o,
                            orders[o, O_LOTS],
                            EV_CANCELLED,
                            CX_SELF_TRADE,
                        )
                    n = _reduce(
                        meta,
                        accts,
                        instrs,
                        orders,
                        levels,
                        lht,
                        pos,
                        pht,
                        cap,
                        cht,
                        ev,
                        n,
                        ci,
                        taker,
                        orders[taker, O_LOTS],
                        EV_CANCELLED,
                        CX_SELF_TRADE,
                    )
                    return n, False
            else:
                q = min(orders[taker, O_LOTS], orders[o, O_LOTS])
                n = _fill(
                    meta,
                    cfg,
                    accts,
                    instrs,
                    orders,
                    levels,
                    pos,
                    pht,
                    cap,
                    cht,
                    ev,
                    n,
                    ci,
                    instr,
                    o,
                    taker,
                    price,
                    q,
                )
                if orders[o, O_LOTS] == 0:
                    _book_unlink(meta, instrs, orders, levels, lht, o)
                    _order_free(meta, accts, orders, o)
            o = next_o
        # Every order of the level was filled or cancelled (so the level is gone) or the taker
        # is done; only this level's orders were touched, so the saved neighbour is still valid.
        lv = next_lv
    if orders[taker, O_ID] == 0:
        return n, False
    return n, True


@njit(cache=True)
def _rest_or_finish(
    meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, gtd, ev, n, ci, slot, new_order
):
    """After matching: rest a GTC/GTD remainder, cancel an IOC/FOK/market remainder."""
    if orders[slot, O_LOTS] == 0:
        _order_free(meta, accts, orders, slot)
        return n
    tif = orders[slot, O_FLAGS] & 3
    if tif == TIF_IOC or tif == TIF_FOK or (orders[slot, O_FLAGS] & F_MARKET) != 0:
        return _reduce(
            meta,
            accts,
            instrs,
            orders,
            levels,
            lht,
            pos,
            pht,
            cap,
            cht,
            ev,
            n,
            ci,
            slot,
            orders[slot, O_LOTS],
            EV_CANCELLED,
            CX_IOC,
        )
    if orders[slot, O_LEVEL] == EMPTY:
        _book_append(meta, instrs, orders, levels, lht, slot)
        if tif == TIF_GTD and new_order:
            if meta[0, M_GTD_SIZE] >= gtd.shape[0]:
                _gtd_compact(meta, orders, gtd)  # room was checked before the order was accepted
            _gtd_push(meta, gtd, orders[slot, O_EXPIRE], orders[slot, O_ID])
    return n


# ============================================================================ GTD expiry heap


@njit(cache=True)
def _heap_less(heap, a, b):
    return heap[a, 0] < heap[b, 0] or (heap[a, 0] == heap[b, 0] and heap[a, 1] < heap[b, 1])


@njit(cache=True)
def _heap_swap(heap, a, b):
    t0 = heap[a, 0]
    t1 = heap[a, 1]
    heap[a, 0] = heap[b, 0]
    heap[a, 1] = heap[b, 1]
    heap[b, 0] = t0
    heap[b, 1] = t1


@njit(cache=True)
def _gtd_push(meta, gtd, expire, order_id):
    heap = gtd
    i = meta[0, M_GTD_SIZE]
    meta[0, M_GTD_SIZE] = i + 1
    heap[i, 0] = expire
    heap[i, 1] = order_id
    while i > 0:
        parent = (i - 1) // 2
        if not _heap_less(heap, i, parent):
            break
        _heap_swap(heap, i, parent)
        i = parent


@njit(cache=True)
def _gtd_pop(meta, gtd):
    heap = gtd
    size = meta[0, M_GTD_SIZE] - 1
    meta[0, M_GTD_SIZE] = size
    order_id = heap[0, 1]
    heap[0, 0] = heap[size, 0]
    heap[0, 1] = heap[size, 1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and _heap_less(heap, left + 1, left):
            child = left + 1
        if not _heap_less(heap, child, i):
            break
        _heap_swap(heap, i, child)
        i = child
    return order_id


# ============================================================================ order commands

ACCOUNT_FIRST_USER = 10


@njit(cache=True)
def _unit_hold(instrs, instr, price, taker_bps):
    """Cash held per lot of a bid: notional at its limit plus the taker fee, rounded up."""
    notional = instrs[instr, I_NOTIONAL_UNIT] * price
    return notional + (notional * taker_bps + BPS - 1) // BPS


@njit(cache=True)
def _user_account(accts, account):
    return ACCOUNT_FIRST_USER <= account < accts.shape[0]


@njit(cache=True)
def _long_free(pos, pht, account, instr):
    """Long lots not yet promised to open asks (what can be resold)."""
    prow = _pos_find(pht, account, instr)
    if prow == EMPTY:
        return 0
    return max(pos[prow, P_LOTS] - pos[prow, P_RESERVED], 0)


@njit(cache=True)
def _pool_room(meta, orders, levels, pos, obl, gtd, lots, new_order, gtd_order):
    """Reject code if the pools cannot take an order (new, or amended when `new_order` is
    False) that may rest on a new level and trade with up to `lots` makers."""
    if new_order and meta[0, M_ORDERS_LIVE] >= orders.shape[0]:
        return R_ENGINE_FULL
    if meta[0, M_LEVELS_LIVE] >= levels.shape[0]:
        return R_ENGINE_FULL
    if pos.shape[0] - meta[0, M_POS_LIVE] < lots + 1:
        return R_ENGINE_FULL
    # Gate closure cannot refuse: every position it may turn into an obligation needs a free row.
    if obl.shape[0] - meta[0, M_OBL_LIVE] < meta[0, M_POS_LIVE] + lots + 1:
        return R_ENGINE_FULL
    if gtd_order and meta[0, M_GTD_SIZE] >= gtd.shape[0]:
        # Entries of cancelled orders wait in the heap until their time; count the live ones.
        if _gtd_live(orders, gtd, meta[0, M_GTD_SIZE]) >= gtd.shape[0]:
            return R_ENGINE_FULL
    return 0


@njit(cache=True)
def _gtd_live(orders, gtd, size):
    live = 0
    for i in range(size):
        if _order_slot(orders, gtd[i, 1]) != EMPTY:
            live += 1
    return live


@njit(cache=True)
def _gtd_compact(meta, orders, gtd):
    """Drop the entries of orders no longer live and restore the heap order."""
    size = 0
    for i in range(meta[0, M_GTD_SIZE]):
        if _order_slot(orders, gtd[i, 1]) != EMPTY:
            gtd[size, 0] = gtd[i, 0]
            gtd[size, 1] = gtd[i, 1]
            size += 1
    meta[0, M_GTD_SIZE] = size
    for start in range(size // 2 - 1, -1, -1):
        i = start
        while True:
            left = 2 * i + 1
            if left >= size:
                break
            child = left
            if left + 1 < size and _heap_less(gtd, left + 1, left):
                child = left + 1
            if not _heap_less(gtd, child, i):
                break
            _heap_swap(gtd, i, child)
            i = child


@njit(cache=True)
def _iid(instrs, instr):
    return instrs[instr, I_ID]


@njit(cache=True)
def _list(meta, cfg, instrs, ev, n, ci, cmds):
    """List an instrument in the slot the facade chose (it mirrors closures in command order)."""
    row = instrs[cmds[ci, C0_INSTR]]
    row[:] = 0
    hours = cmds[ci, C0_AUX]
    row[I_ID] = cmds[ci, C0_ORDER]
    row[I_STATE] = INSTR_OPEN
    row[I_GPU] = cmds[ci, C0_ACCOUNT]
    row[I_REGION] = cmds[ci, C0_SIDE]
    row[I_PRODUCT] = cmds[ci, C0_FLAGS]
    row[I_START] = cmds[ci, C0_EXPIRE]
    row[I_HOURS] = hours
    row[I_GATE] = cmds[ci, C0_AUX2]
    row[I_BAND_LO] = cmds[ci, C0_PRICE]
    row[I_BAND_HI] = cmds[ci, C0_AUX3]
    row[I_LOTS_MAX] = cmds[ci, C0_LOTS]
    row[I_BEST] = EMPTY
    row[I_BEST + 1] = EMPTY
    row[I_WORST] = EMPTY
    row[I_WORST + 1] = EMPTY
    row[I_CAPKEY] = cmds[ci, C0_ACCOUNT] * cfg[0, CFG_REGIONS] + cmds[ci, C0_SIDE]
    row[I_HOUR0] = cmds[ci, C0_EXPIRE] // NS_PER_HOUR
    row[I_NOTIONAL_UNIT] = cfg[0, CFG_TICK_MICROS] * hours
    row[I_COLLAT_UNIT] = cfg[0, CFG_PENALTY_MICROS] * hours
    meta[0, M_INSTR_SEQ] = max(meta[0, M_INSTR_SEQ], cmds[ci, C0_ORDER])
    return _emit(ev, n, EV_LISTED, ci, row[I_ID], cmds[ci, C0_INSTR], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


@njit(cache=True)
def _check_instrument(instrs, instr):
    if instr == INSTR_NOT_TRADING:
        return R_INSTRUMENT_NOT_TRADING
    if instr < 0 or instr >= instrs.shape[0] or instrs[instr, I_STATE] == 0:
        return R_UNKNOWN_INSTRUMENT
    if instrs[instr, I_STATE] != INSTR_OPEN:
        return R_INSTRUMENT_NOT_TRADING
    return 0


@njit(cache=True)
def _check_price(instrs, instr, price):
    if price <= 0:
        return R_PRICE_INVALID
    if price < instrs[instr, I_BAND_LO] or price > instrs[instr, I_BAND_HI]:
        return R_PRICE_OUT_OF_BAND
    return 0


@njit(cache=True)
def _check_lots(instrs, instr, lots):
    if lots <= 0:
        return R_LOTS_INVALID
    if lots > instrs[instr, I_LOTS_MAX]:
        return R_LOTS_ABOVE_MAX
    return 0


@njit(cache=True)
def _would_take(instrs, levels, instr, side, price):
    best = instrs[instr, I_BEST + (1 - side)]
    return best != EMPTY and _crosses(side, levels[best, L_PRICE], price)


@njit(cache=True)
def _sell_cover(instrs, pos, pht, cap, cht, account, instr, lots, covered_now, uncovered_now):
    """Split an ask into covered and uncovered lots; return (covered, code).

    `covered_now`/`uncovered_now` are what the order already holds (amend), released first.
    """
    covered = min(lots, _long_free(pos, pht, account, instr) + covered_now)
    uncovered = lots - covered
    if (
        uncovered > uncovered_now
        and _cap_free_for(instrs, cap, cht, account, instr) < uncovered - uncovered_now
    ):
        return covered, R_INSUFFICIENT_COVER
    return covered, 0


@njit(cache=True)
def _place(
    meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, gtd, ev, n, ci, cmds
):
    account = cmds[ci, C0_ACCOUNT]
    instr = cmds[ci, C0_INSTR]
    side = cmds[ci, C0_SIDE]
    price = cmds[ci, C0_PRICE]
    lots = cmds[ci, C0_LOTS]
    flags = cmds[ci, C0_FLAGS]
    tif = flags & 3
    market = (flags & F_MARKET) != 0
    post_only = (flags & F_POST_ONLY) != 0
    stp = (flags >> F_STP_SHIFT) & 7
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, instr)
    code = _check_instrument(instrs, instr)
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, 0, instr)
    code = _check_lots(instrs, instr, lots)
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, 0, instr)
    if (side != BUY and side != SELL) or stp > STP_DECREMENT:
        return _reject(instrs, ev, n, ci, account, R_ORDER_TYPE_INVALID, 0, instr)
    if market:
        # Market orders never rest: GTC means IOC; they trade up to a protection price.
        if post_only or tif == TIF_GTD:
            return _reject(instrs, ev, n, ci, account, R_ORDER_TYPE_INVALID, 0, instr)
        best = instrs[instr, I_BEST + (1 - side)]
        if best == EMPTY:
            return _reject(instrs, ev, n, ci, account, R_NO_LIQUIDITY, 0, instr)
        ref = levels[best, L_PRICE]
        if side == BUY:
            price = min(ref * (BPS + cfg[0, CFG_PROTECTION_BPS]) // BPS, instrs[instr, I_BAND_HI])
        else:
            price = max(
                -(-ref * (BPS - cfg[0, CFG_PROTECTION_BPS]) // BPS), instrs[instr, I_BAND_LO]
            )
    else:
        code = _check_price(instrs, instr, price)
        if code != 0:
            return _reject(instrs, ev, n, ci, account, code, 0, instr)
        if post_only and (tif == TIF_IOC or tif == TIF_FOK):
            return _reject(instrs, ev, n, ci, account, R_ORDER_TYPE_INVALID, 0, instr)
    if tif == TIF_GTD and cmds[ci, C0_EXPIRE] <= meta[0, M_NOW]:
        return _reject(instrs, ev, n, ci, account, R_EXPIRY_INVALID, 0, instr)
    if post_only and _would_take(instrs, levels, instr, side, price):
        return _reject(instrs, ev, n, ci, account, R_POST_ONLY_WOULD_TAKE, 0, instr)
    if accts[account, A_OPEN] >= cfg[0, CFG_ORDERS_OPEN_MAX]:
        return _reject(instrs, ev, n, ci, account, R_OPEN_ORDERS_LIMIT, 0, instr)
    code = _pool_room(meta, orders, levels, pos, obl, gtd, lots, True, tif == TIF_GTD)
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, 0, instr)
    if (
        tif == TIF_FOK
        and _fok_fillable(instrs, orders, levels, instr, side, price, account, stp, lots) < lots
    ):
        return _reject(instrs, ev, n, ci, account, R_FOK_NOT_FILLABLE, 0, instr)
    covered = 0
    if side == BUY:
        unit = _unit_hold(instrs, instr, price, cfg[0, CFG_TAKER_BPS])
        hold = unit * lots
    else:
        covered, code = _sell_cover(instrs, pos, pht, cap, cht, account, instr, lots, 0, 0)
        if code != 0:
            return _reject(instrs, ev, n, ci, account, code, 0, instr)
        unit = instrs[instr, I_COLLAT_UNIT]
        hold = unit * (lots - covered)
    if hold > accts[account, A_AVAIL]:
        return _reject(instrs, ev, n, ci, account, R_INSUFFICIENT_CASH, 0, instr)
    # --- accepted: from here on nothing can refuse -------------------------------------------
    expire = cmds[ci, C0_EXPIRE] if tif == TIF_GTD else 0
    slot = _order_new(meta, accts, orders, account, instr, side, price, lots, flags, expire)
    orders[slot, O_UNIT] = unit
    orders[slot, O_COVERED] = covered
    n = _emit(
        ev, n, EV_ACCEPTED, ci, orders[slot, O_ID], account, instrs[instr, I_ID], side, price, lots, flags, expire,
        0, 0, 0, 0,
    )  # fmt: skip
    if hold != 0:
        n = _cash(accts, ev, n, ci, account, -hold, hold, 0, 0, CR_HOLD, orders[slot, O_ID])
    if side == SELL:
        if covered > 0:
            pos[_pos_get(meta, instrs, pos, pht, account, instr), P_RESERVED] += covered
        if lots > covered:
            _cap_use(instrs, cap, cht, account, instr, lots - covered)
    n, alive = _match(
        meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, slot, price
    )
    if alive:
        n = _rest_or_finish(
            meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, gtd, ev, n, ci, slot, True
        )
    return n


@njit(cache=True)
def _owned_order(instrs, orders, ev, n, ci, account, order_id):
    """Return (slot, ev, n); slot EMPTY after emitting the rejection."""
    slot = _order_slot(orders, order_id)
    if slot == EMPTY:
        n = _reject(instrs, ev, n, ci, account, R_UNKNOWN_ORDER, order_id, -1)
        return EMPTY, n
    if orders[slot, O_ACCOUNT] != account:
        n = _reject(instrs, ev, n, ci, account, R_NOT_ORDER_OWNER, order_id, -1)
        return EMPTY, n
    return slot, n


@njit(cache=True)
def _cancel(meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, cmds):
    slot, n = _owned_order(instrs, orders, ev, n, ci, cmds[ci, C0_ACCOUNT], cmds[ci, C0_ORDER])
    if slot == EMPTY:
        return n
    lots = orders[slot, O_LOTS]
    return _reduce(
        meta,
        accts,
        instrs,
        orders,
        levels,
        lht,
        pos,
        pht,
        cap,
        cht,
        ev,
        n,
        ci,
        slot,
        lots,
        EV_CANCELLED,
        CX_USER,
    )


@njit(cache=True)
def _cancel_all(meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, cmds):
    account = cmds[ci, C0_ACCOUNT]
    instr = cmds[ci, C0_INSTR]
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, instr)
    if instr != INSTR_ALL:
        code = _check_instrument(instrs, instr)
        if code != 0:
            return _reject(instrs, ev, n, ci, account, code, 0, instr)
    slot = accts[account, A_HEAD]
    while slot != EMPTY:
        nxt = orders[slot, O_ANEXT]
        if instr == INSTR_ALL or orders[slot, O_INSTR] == instr:
            n = _reduce(
                meta,
                accts,
                instrs,
                orders,
                levels,
                lht,
                pos,
                pht,
                cap,
                cht,
                ev,
                n,
                ci,
                slot,
                orders[slot, O_LOTS],
                EV_CANCELLED,
                CX_CANCEL_ALL,
            )
        slot = nxt
    return n


@njit(cache=True)
def _amend(
    meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, gtd, ev, n, ci, cmds
):
    account = cmds[ci, C0_ACCOUNT]
    order_id = cmds[ci, C0_ORDER]
    price = cmds[ci, C0_PRICE]
    lots = cmds[ci, C0_LOTS]
    slot, n = _owned_order(instrs, orders, ev, n, ci, account, order_id)
    if slot == EMPTY:
        return n
    instr = orders[slot, O_INSTR]
    code = _check_lots(instrs, instr, lots)
    if code == 0:
        code = _check_price(instrs, instr, price)
    if code == 0 and price == orders[slot, O_PRICE] and lots == orders[slot, O_LOTS]:
        code = R_AMEND_NO_CHANGE
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, order_id, instr)
    side = orders[slot, O_SIDE]
    if price == orders[slot, O_PRICE] and lots < orders[slot, O_LOTS]:
        # A pure decrease keeps time priority: release what the cut lots held.
        n = _emit(
            ev,
            n,
            EV_AMENDED,
            ci,
            order_id,
            account,
            instrs[instr, I_ID],
            price,
            lots,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        )
        cut = orders[slot, O_LOTS] - lots
        n = _release(accts, instrs, orders, pos, pht, cap, cht, ev, n, ci, slot, cut)
        levels[orders[slot, O_LEVEL], L_LOTS] -= cut
        orders[slot, O_LOTS] = lots
        return n
    if (orders[slot, O_FLAGS] & F_POST_ONLY) != 0 and _would_take(
        instrs, levels, instr, side, price
    ):
        return _reject(instrs, ev, n, ci, account, R_POST_ONLY_WOULD_TAKE, order_id, instr)
    code = _pool_room(meta, orders, levels, pos, obl, gtd, lots, False, False)
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, order_id, instr)
    old_lots = orders[slot, O_LOTS]
    if side == BUY:
        unit = _unit_hold(instrs, instr, price, cfg[0, CFG_TAKER_BPS])
        delta_hold = unit * lots - orders[slot, O_UNIT] * old_lots
        covered = 0
    else:
        old_cov = orders[slot, O_COVERED]
        old_unc = old_lots - old_cov
        covered, code = _sell_cover(
            instrs, pos, pht, cap, cht, account, instr, lots, old_cov, old_unc
        )
        if code != 0:
            return _reject(instrs, ev, n, ci, account, code, order_id, instr)
        unit = orders[slot, O_UNIT]
        delta_hold = unit * ((lots - covered) - old_unc)
    if delta_hold > accts[account, A_AVAIL]:
        return _reject(instrs, ev, n, ci, account, R_INSUFFICIENT_CASH, order_id, instr)
    # --- accepted: re-price loses time priority and may trade ---------------------------------
    _book_unlink(meta, instrs, orders, levels, lht, slot)
    n = _emit(
        ev,
        n,
        EV_AMENDED,
        ci,
        order_id,
        account,
        instrs[instr, I_ID],
        price,
        lots,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    if delta_hold != 0:
        n = _cash(accts, ev, n, ci, account, -delta_hold, delta_hold, 0, 0, CR_HOLD, order_id)
    if side == SELL:
        if covered != orders[slot, O_COVERED]:
            pos[_pos_get(meta, instrs, pos, pht, account, instr), P_RESERVED] += (
                covered - orders[slot, O_COVERED]
            )
        _cap_use(
            instrs,
            cap,
            cht,
            account,
            instr,
            (lots - covered) - (old_lots - orders[slot, O_COVERED]),
        )
        orders[slot, O_COVERED] = covered
    orders[slot, O_UNIT] = unit
    orders[slot, O_PRICE] = price
    orders[slot, O_LOTS] = lots
    n, alive = _match(
        meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, slot, price
    )
    if alive:
        n = _rest_or_finish(
            meta,
            accts,
            instrs,
            orders,
            levels,
            lht,
            pos,
            pht,
            cap,
            cht,
            gtd,
            ev,
            n,
            ci,
            slot,
            False,
        )
    return n


# ============================================================================ cash and capacity


@njit(cache=True)
def _deposit(meta, cfg, accts, instrs, ev, n, ci, cmds):
    account = cmds[ci, C0_ACCOUNT]
    amount = cmds[ci, C0_AUX]
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if amount <= 0 or amount > cfg[0, CFG_DEPOSIT_MAX]:
        return _reject(instrs, ev, n, ci, account, R_AMOUNT_INVALID, 0, -1)
    if accts[account, A_AVAIL] + amount > cfg[0, CFG_BALANCE_MAX]:
        return _reject(instrs, ev, n, ci, account, R_BALANCE_LIMIT, 0, -1)
    meta[0, M_TRANSFER_SEQ] += 1
    ref = meta[0, M_TRANSFER_SEQ]
    n = _cash(accts, ev, n, ci, account, amount, 0, 0, 0, CR_DEPOSIT, ref)
    return _cash(accts, ev, n, ci, ACCT_EXTERNAL, -amount, 0, 0, 0, CR_DEPOSIT, ref)


@njit(cache=True)
def _withdraw(meta, accts, instrs, ev, n, ci, cmds):
    account = cmds[ci, C0_ACCOUNT]
    amount = cmds[ci, C0_AUX]
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if amount <= 0:
        return _reject(instrs, ev, n, ci, account, R_AMOUNT_INVALID, 0, -1)
    if amount > accts[account, A_AVAIL]:
        return _reject(instrs, ev, n, ci, account, R_INSUFFICIENT_CASH, 0, -1)
    meta[0, M_TRANSFER_SEQ] += 1
    ref = meta[0, M_TRANSFER_SEQ]
    n = _cash(accts, ev, n, ci, account, -amount, 0, 0, 0, CR_WITHDRAWAL, ref)
    return _cash(accts, ev, n, ci, ACCT_EXTERNAL, amount, 0, 0, 0, CR_WITHDRAWAL, ref)


@njit(cache=True)
def _capacity(meta, cfg, accts, instrs, cap, cht, ev, n, ci, cmds):
    """Set a provider's GPUs for every hour in [start, end) of one GPU model and region."""
    account = cmds[ci, C0_ACCOUNT]
    capkey = cmds[ci, C0_AUX]
    start = cmds[ci, C0_AUX2]
    end = cmds[ci, C0_AUX3]
    gpus = cmds[ci, C0_LOTS]
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if (
        end <= start
        or start < 0
        or end - start > cfg[0, CFG_CAPACITY_HOURS_MAX]
        or gpus < 0
        or gpus > cfg[0, CFG_CAPACITY_GPUS_MAX]
        or capkey < 0
        or capkey >= 64
    ):
        return _reject(instrs, ev, n, ci, account, R_CAPACITY_RANGE_INVALID, 0, -1)
    ht = cht
    missing = 0
    for h in range(start, end):
        row = _ht_get(ht, _cap_key(account, capkey, h))
        if row == EMPTY:
            missing += 1
        elif cap[row, C_USED] > gpus:
            return _reject(instrs, ev, n, ci, account, R_CAPACITY_BELOW_COMMITTED, 0, -1)
    if cap.shape[0] - meta[0, M_CAP_LIVE] < missing:
        return _reject(instrs, ev, n, ci, account, R_ENGINE_FULL, 0, -1)
    for h in range(start, end):
        key = _cap_key(account, capkey, h)
        row = _ht_get(ht, key)
        if row == EMPTY:
            row = _alloc(meta, cap, M_CAP_FREE, M_CAP_HWM, C_NEXT)
            meta[0, M_CAP_LIVE] += 1
            cap[row, C_KEY] = key
            cap[row, C_USED] = 0
            cap[row, C_NEXT] = EMPTY
            _ht_put(ht, key, row)
        cap[row, C_CAP] = gpus
    return _emit(ev, n, EV_CAPACITY, ci, account, capkey, start, end, gpus, 0, 0, 0, 0, 0, 0, 0)


# ============================================================================ clock, gate, delivery


@njit(cache=True)
def _expire_gtd(
    meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, gtd, ev, n, ci
):
    heap = gtd
    while meta[0, M_GTD_SIZE] > 0 and heap[0, 0] <= meta[0, M_NOW]:
        slot = _order_slot(orders, _gtd_pop(meta, gtd))
        if slot != EMPTY:
            lots = orders[slot, O_LOTS]
            n = _reduce(
                meta,
                accts,
                instrs,
                orders,
                levels,
                lht,
                pos,
                pht,
                cap,
                cht,
                ev,
                n,
                ci,
                slot,
                lots,
                EV_EXPIRED,
                XP_GTD,
            )
    return n


@njit(cache=True)
def _close_instrument(
    meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, ev, n, ci, instr
):
    """Gate closure: expire resting orders, turn positions into delivery obligations."""
    for side in (BUY, SELL):
        while instrs[instr, I_BEST + side] != EMPTY:
            slot = levels[instrs[instr, I_BEST + side], L_HEAD]
            n = _reduce(
                meta,
                accts,
                instrs,
                orders,
                levels,
                lht,
                pos,
                pht,
                cap,
                cht,
                ev,
                n,
                ci,
                slot,
                orders[slot, O_LOTS],
                EV_EXPIRED,
                XP_GATE,
            )
    instrs[instr, I_STATE] = INSTR_CLOSED
    rows = np.empty(meta[0, M_POS_HWM], dtype=np.int64)
    count = 0
    open_interest = 0
    for r in range(meta[0, M_POS_HWM]):
        if pos[r, P_ACCOUNT] != EMPTY and pos[r, P_INSTR] == instr:
            rows[count] = r
            count += 1
            if pos[r, P_LOTS] > 0:
                open_interest += pos[r, P_LOTS]
    rows = rows[:count]
    # Assignment is by account id, so the outcome is a function of the positions alone.
    accounts = np.empty(count, dtype=np.int64)
    for k in range(count):
        accounts[k] = pos[rows[k], P_ACCOUNT]
    rows = rows[np.argsort(accounts)]
    n = _emit(
        ev, n, EV_CLOSED, ci, instrs[instr, I_ID], instr, open_interest, 0, 0, 0, 0, 0, 0, 0, 0, 0
    )
    for r in rows:
        lots = pos[r, P_LOTS]
        if lots != 0:
            n = _emit(
                ev, n, EV_POSITION, ci, pos[r, P_ACCOUNT], instrs[instr, I_ID], -lots, 0, PR_ASSIGNED, 0,
                0, 0, 0, 0, 0, 0,
            )  # fmt: skip
    li = 0
    long_left = 0
    for r in rows:
        if pos[r, P_LOTS] >= 0:
            continue
        short_total = -pos[r, P_LOTS]
        short_left = short_total
        while short_left > 0:
            while long_left == 0:
                while pos[rows[li], P_LOTS] <= 0:
                    li += 1
                long_left = pos[rows[li], P_LOTS]
                li += 1
            gpus = min(short_left, long_left)
            holder = pos[rows[li - 1], P_ACCOUNT]
            last = gpus == short_left
            escrow = pos[r, P_ESCROW] if last else pos[r, P_ESCROW] * gpus // short_left
            fees = pos[r, P_FEES] if last else pos[r, P_FEES] * gpus // short_left
            collat = pos[r, P_COLLAT] if last else pos[r, P_COLLAT] * gpus // short_left
            pos[r, P_ESCROW] -= escrow
            pos[r, P_FEES] -= fees
            pos[r, P_COLLAT] -= collat
            short_left -= gpus
            long_left -= gpus
            n = _assign(
                meta,
                instrs,
                obl,
                ev,
                n,
                ci,
                instr,
                pos[r, P_ACCOUNT],
                holder,
                gpus,
                escrow,
                fees,
                collat,
            )
    for r in rows:
        # What a position holds beyond its obligations (a short that was bought back) goes home.
        escrow = pos[r, P_ESCROW]
        collat = pos[r, P_COLLAT]
        if escrow != 0 or collat != 0:
            n = _cash(accts, ev, n, ci, pos[r, P_ACCOUNT], escrow + collat, 0, -escrow, -collat,
                CR_SHORT_COVERED, instrs[instr, I_ID],
            )  # fmt: skip
        _pos_free(meta, instrs, pos, pht, r)
    return n


@njit(cache=True)
def _assign(meta, instrs, obl, ev, n, ci, instr, provider, holder, gpus, escrow, fees, collat):
    b = _alloc(meta, obl, M_OBL_FREE, M_OBL_HWM, B_NEXT)
    meta[0, M_OBL_SEQ] += 1
    meta[0, M_OBL_LIVE] += 1
    obl[b, B_ID] = (meta[0, M_OBL_SEQ] << ORDER_SLOT_BITS) | b
    obl[b, B_STATE] = OBL_ASSIGNED
    obl[b, B_PROVIDER] = provider
    obl[b, B_HOLDER] = holder
    obl[b, B_GPUS] = gpus
    obl[b, B_START] = instrs[instr, I_START]
    obl[b, B_HOURS] = instrs[instr, I_HOURS]
    obl[b, B_HOURS_LEFT] = instrs[instr, I_HOURS]
    obl[b, B_ESCROW_LEFT] = escrow
    obl[b, B_FEES_LEFT] = fees
    obl[b, B_COLLAT_LEFT] = collat
    obl[b, B_INSTR_ID] = instrs[instr, I_ID]
    obl[b, B_GPU] = instrs[instr, I_GPU]
    obl[b, B_REGION] = instrs[instr, I_REGION]
    obl[b, B_PRODUCT] = instrs[instr, I_PRODUCT]
    obl[b, B_NEXT] = EMPTY
    obl[b, B_RELEASED] = 0
    return _emit(
        ev, n, EV_ASSIGNED, ci, obl[b, B_ID], provider, holder, gpus, instrs[instr, I_START], instrs[instr, I_HOURS],
        escrow, instrs[instr, I_ID], 0, 0, 0, 0,
    )  # fmt: skip


@njit(cache=True)
def _release_hour(accts, obl, ev, n, ci, b):
    """Pay the provider one delivered hour: its share of escrow and of collateral."""
    left = obl[b, B_HOURS_LEFT]
    escrow = obl[b, B_ESCROW_LEFT] // left
    collat = obl[b, B_COLLAT_LEFT] // left
    fees = obl[b, B_FEES_LEFT] // left
    obl[b, B_ESCROW_LEFT] -= escrow
    obl[b, B_COLLAT_LEFT] -= collat
    obl[b, B_FEES_LEFT] -= fees
    obl[b, B_HOURS_LEFT] = left - 1
    obl[b, B_RELEASED] += escrow
    if escrow != 0 or collat != 0:
        n = _cash(accts, ev, n, ci, obl[b, B_PROVIDER], escrow + collat, 0, -escrow, -collat,
            CR_DELIVERY_RELEASE, obl[b, B_ID],
        )  # fmt: skip
    return n


@njit(cache=True)
def _settle(meta, accts, obl, ev, n, ci, b, outcome):
    """Close an obligation: undelivered hours refund the holder, plus the penalty."""
    holder = obl[b, B_HOLDER]
    provider = obl[b, B_PROVIDER]
    refund = obl[b, B_ESCROW_LEFT]
    fees = obl[b, B_FEES_LEFT]
    penalty = obl[b, B_COLLAT_LEFT]
    if refund != 0:
        n = _cash(accts, ev, n, ci, provider, 0, 0, -refund, 0, CR_DELIVERY_REFUND, obl[b, B_ID])
    if fees != 0:
        n = _cash(accts, ev, n, ci, ACCT_FEES, -fees, 0, 0, 0, CR_DELIVERY_REFUND, obl[b, B_ID])
    if refund + fees != 0:
        n = _cash(
            accts, ev, n, ci, holder, refund + fees, 0, 0, 0, CR_DELIVERY_REFUND, obl[b, B_ID]
        )
    if penalty != 0:
        n = _cash(accts, ev, n, ci, provider, 0, 0, 0, -penalty, CR_DELIVERY_PENALTY, obl[b, B_ID])
        n = _cash(accts, ev, n, ci, holder, penalty, 0, 0, 0, CR_DELIVERY_PENALTY, obl[b, B_ID])
    delivered = obl[b, B_HOURS] - obl[b, B_HOURS_LEFT]
    n = _emit(
        ev, n, EV_SETTLED, ci, obl[b, B_ID], provider, holder, outcome, delivered,
        obl[b, B_HOURS_LEFT], obl[b, B_RELEASED], refund + fees, penalty, 0, 0, 0,
    )  # fmt: skip
    obl[b, B_STATE] = OBL_FREE
    obl[b, B_ID] = 0
    obl[b, B_NEXT] = meta[0, M_OBL_FREE]
    meta[0, M_OBL_FREE] = b
    meta[0, M_OBL_LIVE] -= 1
    return n


@njit(cache=True)
def _deliver_to(accts, obl, ev, n, ci, b, hours_done):
    """Release every hour up to `hours_done` delivered hours."""
    while obl[b, B_HOURS] - obl[b, B_HOURS_LEFT] < hours_done and obl[b, B_HOURS_LEFT] > 0:
        n = _release_hour(accts, obl, ev, n, ci, b)
    return n


@njit(cache=True)
def _elapsed_hours(meta, obl, b):
    now = meta[0, M_NOW]
    return min(max((now - obl[b, B_START]) // NS_PER_HOUR, 0), obl[b, B_HOURS])


@njit(cache=True)
def _clock(
    meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, gtd, ev, n, ci, cmds
):
    if cmds[ci, C0_AUX] > meta[0, M_NOW]:
        meta[0, M_NOW] = cmds[ci, C0_AUX]
    now = meta[0, M_NOW]
    n = _expire_gtd(
        meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, gtd, ev, n, ci
    )
    for i in range(instrs.shape[0]):
        if instrs[i, I_STATE] == INSTR_OPEN and instrs[i, I_GATE] <= now:
            n = _close_instrument(
                meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, ev, n, ci, i
            )
    for b in range(meta[0, M_OBL_HWM]):
        state = obl[b, B_STATE]
        if state == OBL_ASSIGNED and now >= obl[b, B_START] + cfg[0, CFG_DEADLINE_NS]:
            n = _settle(meta, accts, obl, ev, n, ci, b, DO_FAILED)
        elif state == OBL_CONFIRMED:
            n = _deliver_to(accts, obl, ev, n, ci, b, _elapsed_hours(meta, obl, b))
            if obl[b, B_HOURS_LEFT] == 0:
                n = _settle(meta, accts, obl, ev, n, ci, b, DO_DELIVERED)
    return n


@njit(cache=True)
def _obligation(instrs, obl, ev, n, ci, cmds):
    """Return (slot, ev, n) for a delivery command; slot EMPTY after a rejection."""
    account = cmds[ci, C0_ACCOUNT]
    oid = cmds[ci, C0_ORDER]
    b = oid & ORDER_SLOT_MASK if oid > 0 else EMPTY
    if b == EMPTY or b >= obl.shape[0] or obl[b, B_ID] != oid:
        n = _reject(instrs, ev, n, ci, account, R_UNKNOWN_OBLIGATION, oid, -1)
        return EMPTY, n
    if account != ACCT_EXTERNAL and account != obl[b, B_PROVIDER]:
        n = _reject(instrs, ev, n, ci, account, R_NOT_OBLIGATION_PROVIDER, oid, -1)
        return EMPTY, n
    return b, n


@njit(cache=True)
def _confirm(meta, accts, instrs, obl, ev, n, ci, cmds):
    b, n = _obligation(instrs, obl, ev, n, ci, cmds)
    if b == EMPTY:
        return n
    if obl[b, B_STATE] != OBL_ASSIGNED:
        return _reject(
            instrs, ev, n, ci, cmds[ci, C0_ACCOUNT], R_OBLIGATION_STATE, obl[b, B_ID], -1
        )
    obl[b, B_STATE] = OBL_CONFIRMED
    n = _emit(
        ev,
        n,
        EV_STARTED,
        ci,
        obl[b, B_ID],
        obl[b, B_PROVIDER],
        obl[b, B_HOLDER],
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    # A confirmation that arrives late still pays the hours already elapsed.
    n = _deliver_to(accts, obl, ev, n, ci, b, _elapsed_hours(meta, obl, b))
    if obl[b, B_HOURS_LEFT] == 0:
        n = _settle(meta, accts, obl, ev, n, ci, b, DO_DELIVERED)
    return n


@njit(cache=True)
def _fail(meta, accts, instrs, obl, ev, n, ci, cmds):
    b, n = _obligation(instrs, obl, ev, n, ci, cmds)
    if b == EMPTY:
        return n
    claimed = cmds[ci, C0_LOTS]
    if claimed < 0 or claimed > obl[b, B_HOURS]:
        return _reject(instrs, ev, n, ci, cmds[ci, C0_ACCOUNT], R_AMOUNT_INVALID, obl[b, B_ID], -1)
    if obl[b, B_STATE] == OBL_CONFIRMED:
        # Hours count as delivered only once they have passed and the provider claims them.
        n = _deliver_to(accts, obl, ev, n, ci, b, min(claimed, _elapsed_hours(meta, obl, b)))
    delivered = obl[b, B_HOURS] - obl[b, B_HOURS_LEFT]
    return _settle(meta, accts, obl, ev, n, ci, b, DO_INTERRUPTED if delivered > 0 else DO_FAILED)


# ============================================================================ dispatcher


@njit(cache=True)
def _room_needed(meta, cfg, accts, instrs, obl, gtd, cmds, ci):
    """Upper bound on the event rows one command can emit (checked before it runs)."""
    op = cmds[ci, C0_OP]
    account = cmds[ci, C0_ACCOUNT]
    open_orders = accts[account, A_OPEN] if 0 <= account < accts.shape[0] else 0
    if op == OP_PLACE or op == OP_AMEND:
        # accept + hold + remainder; per lot at most one fill (6 rows) or one decrement (4 rows);
        # self-trade cancels of the account's own orders (2 rows each)
        lots = min(max(cmds[ci, C0_LOTS], 0), cfg[0, CFG_LOTS_MAX])
        return 8 + 7 * lots + 2 * open_orders
    if op == OP_CANCEL_ALL:
        return 1 + 2 * open_orders
    if op == OP_CLOCK:
        return _clock_room(meta, instrs, obl, gtd, max(meta[0, M_NOW], cmds[ci, C0_AUX]))
    if op == OP_CONFIRM or op == OP_FAIL:
        return 8 + 2 * HOURS_MAX
    return 4


HOURS_MAX = 168


@njit(cache=True)
def _clock_room(meta, instrs, obl, gtd, now):
    """Event rows a clock tick at `now` can emit: expiries, closures, delivery progress."""
    rows = 2 * _gtd_due(gtd, meta[0, M_GTD_SIZE], now)
    for i in range(instrs.shape[0]):
        if instrs[i, I_STATE] == INSTR_OPEN and instrs[i, I_GATE] <= now:
            p = instrs[i, I_POSITIONS]
            rows += 1 + 2 * instrs[i, I_ORDERS] + 3 * p + p * (2 * HOURS_MAX + 8)
    for b in range(meta[0, M_OBL_HWM]):
        if obl[b, B_STATE] != OBL_FREE:
            rows += 2 * obl[b, B_HOURS_LEFT] + 8
    return rows


@njit(cache=True)
def _gtd_due(heap, size, now):
    """How many heap entries expire at `now` (walks only the entries that do)."""
    count = 0
    stack = [0]
    stack.pop()
    if size > 0:
        stack.append(0)
    while len(stack) > 0:
        i = stack.pop()
        if heap[i, 0] <= now:
            count += 1
            for child in (2 * i + 1, 2 * i + 2):
                if child < size:
                    stack.append(child)
    return count


@njit(cache=True)
def _apply(cmds_in, first, st, ev_in, n):
    """Apply command rows from `first` on, writing events from row `n`.

    Returns (event count, next command). The next command is below `len(cmds)` when the event
    buffer has no room for it: nothing of it has run; grow the buffer and call again from there.
    """
    meta, cfg, accts = _unmanaged(st[0]), _unmanaged(st[1]), _unmanaged(st[2])
    instrs, orders, levels = _unmanaged(st[3]), _unmanaged(st[4]), _unmanaged(st[5])
    lht, pos, pht = _unmanaged(st[6]), _unmanaged(st[7]), _unmanaged(st[8])
    cap, cht, obl, gtd = (
        _unmanaged(st[9]),
        _unmanaged(st[10]),
        _unmanaged(st[11]),
        _unmanaged(st[12]),
    )
    ev = _unmanaged(ev_in)
    cmds = _unmanaged(cmds_in)
    for ci in range(first, cmds.shape[0]):
        if n + _room_needed(meta, cfg, accts, instrs, obl, gtd, cmds, ci) > ev.shape[0]:
            return n, ci
        op = cmds[ci, C0_OP]
        if op == OP_PLACE:
            n = _place(
                meta,
                cfg,
                accts,
                instrs,
                orders,
                levels,
                lht,
                pos,
                pht,
                cap,
                cht,
                obl,
                gtd,
                ev,
                n,
                ci,
                cmds,
            )
        elif op == OP_CANCEL:
            n = _cancel(
                meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, cmds
            )
        elif op == OP_AMEND:
            n = _amend(
                meta,
                cfg,
                accts,
                instrs,
                orders,
                levels,
                lht,
                pos,
                pht,
                cap,
                cht,
                obl,
                gtd,
                ev,
                n,
                ci,
                cmds,
            )
        elif op == OP_CANCEL_ALL:
            n = _cancel_all(
                meta, accts, instrs, orders, levels, lht, pos, pht, cap, cht, ev, n, ci, cmds
            )
        elif op == OP_DEPOSIT:
            n = _deposit(meta, cfg, accts, instrs, ev, n, ci, cmds)
        elif op == OP_WITHDRAW:
            n = _withdraw(meta, accts, instrs, ev, n, ci, cmds)
        elif op == OP_CAPACITY:
            n = _capacity(meta, cfg, accts, instrs, cap, cht, ev, n, ci, cmds)
        elif op == OP_CLOCK:
            n = _clock(
                meta,
                cfg,
                accts,
                instrs,
                orders,
                levels,
                lht,
                pos,
                pht,
                cap,
                cht,
                obl,
                gtd,
                ev,
                n,
                ci,
                cmds,
            )
        elif op == OP_CONFIRM:
            n = _confirm(meta, accts, instrs, obl, ev, n, ci, cmds)
        elif op == OP_FAIL:
            n = _fail(meta, accts, instrs, obl, ev, n, ci, cmds)
        elif op == OP_LIST:
            n = _list(meta, cfg, instrs, ev, n, ci, cmds)
        else:
            # OP_REJECT: the facade refused it (malformed); the code is in C0_AUX.
            n = _reject(
                instrs, ev, n, ci, cmds[ci, C0_ACCOUNT], cmds[ci, C0_AUX], cmds[ci, C0_ORDER], -1
            )
    return n, cmds.shape[0]


@njit(cache=True)
def _rebuild(meta, cfg, accts, instrs, orders, levels, lht, pos, pht, cap, cht, obl, gtd):
    """Re-index levels, positions and capacity rows after a restore."""
    for lv in range(meta[0, M_LEVEL_HWM]):
        book = levels[lv, L_BOOK]
        if book != EMPTY:
            _ht_put(lht, _level_key(book >> 1, book & 1, levels[lv, L_PRICE]), lv)
    for r in range(meta[0, M_POS_HWM]):
        if pos[r, P_ACCOUNT] != EMPTY:
            _ht_put(pht, _pos_key(pos[r, P_ACCOUNT], pos[r, P_INSTR]), r)
    for r in range(meta[0, M_CAP_HWM]):
        _ht_put(cht, cap[r, C_KEY], r)
