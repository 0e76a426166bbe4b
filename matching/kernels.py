"""Numba kernels: the whole single-writer state machine over preallocated int64 arrays.

Private by convention (`_name`): only `matching.engine` calls them, after validating input.
Every kernel takes the state tuple `st` (see `matching.layout`), writes event rows into `ev`
(grown by doubling when full, so every kernel that emits returns `(ev, n)`), never raises on
bad input (refusals are events) and never reads a clock or a random source.
"""

from __future__ import annotations

import numpy as np
from numba import njit

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
    EV_WIDTH,
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
    ST_ACCTS,
    ST_CAP,
    ST_CAP_HT,
    ST_CFG,
    ST_GTD,
    ST_INSTRS,
    ST_LEVEL_HT,
    ST_LEVELS,
    ST_META,
    ST_OBL,
    ST_ORDERS,
    ST_POS,
    ST_POS_HT,
    STP_CANCEL_BOTH,
    STP_CANCEL_MAKER,
    STP_DECREMENT,
    STP_NONE,
    TIF_FOK,
    TIF_GTD,
    TIF_IOC,
)  # fmt: skip

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
def _grow(ev):
    bigger = np.zeros((ev.shape[0] * 2, EV_WIDTH), dtype=np.int64)
    bigger[: ev.shape[0]] = ev
    return bigger


@njit(cache=True)
def _emit(ev, n, typ, ci, a, b, c, d, e, f, g, h, i, j, k, m):
    if n >= ev.shape[0]:
        ev = _grow(ev)
    row = ev[n]
    row[E_TYPE] = typ
    row[E_CMD] = ci
    row[2] = a
    row[3] = b
    row[4] = c
    row[5] = d
    row[6] = e
    row[7] = f
    row[8] = g
    row[9] = h
    row[10] = i
    row[11] = j
    row[12] = k
    row[13] = m
    return ev, n + 1


@njit(cache=True)
def _reject(st, ev, n, ci, account, code, order_id, instr):
    iid = st[ST_INSTRS][instr, I_ID] if 0 <= instr < st[ST_INSTRS].shape[0] else 0
    return _emit(ev, n, EV_REJECTED, ci, account, code, order_id, iid, 0, 0, 0, 0, 0, 0, 0, 0)


@njit(cache=True)
def _cash(st, ev, n, ci, account, d_avail, d_held, d_escrow, d_collat, reason, ref):
    """Apply one account's balance deltas and emit the CashChanged row."""
    acct = st[ST_ACCTS][account]
    acct[A_AVAIL] += d_avail
    acct[A_HELD] += d_held
    acct[A_ESCROW] += d_escrow
    acct[A_COLLAT] += d_collat
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
    head = meta[free_col]
    if head != EMPTY:
        meta[free_col] = rows[head, link_col]
        return head
    slot = meta[hwm_col]
    if slot >= rows.shape[0]:
        return EMPTY
    meta[hwm_col] = slot + 1
    return slot


@njit(cache=True)
def _room(st, pool_rows, hwm_col, live_col):
    """Rows still available in a pool: capacity minus live rows."""
    return st[pool_rows].shape[0] - st[ST_META][0, live_col]


# ============================================================================ positions


@njit(cache=True)
def _pos_key(account, instr):
    return (account << 20) | instr


@njit(cache=True)
def _pos_find(st, account, instr):
    return _ht_get(st[ST_POS_HT], _pos_key(account, instr))


@njit(cache=True)
def _pos_get(st, account, instr):
    """Return the position row, creating it (caller checked room first)."""
    row = _ht_get(st[ST_POS_HT], _pos_key(account, instr))
    if row != EMPTY:
        return row
    meta = st[ST_META][0]
    pos = st[ST_POS]
    row = _alloc(meta, pos, M_POS_FREE, M_POS_HWM, P_NEXT)
    pos[row, :] = 0
    pos[row, P_ACCOUNT] = account
    pos[row, P_INSTR] = instr
    pos[row, P_NEXT] = EMPTY
    meta[M_POS_LIVE] += 1
    _ht_put(st[ST_POS_HT], _pos_key(account, instr), row)
    return row


@njit(cache=True)
def _pos_free(st, row):
    meta = st[ST_META][0]
    pos = st[ST_POS]
    _ht_del(st[ST_POS_HT], _pos_key(pos[row, P_ACCOUNT], pos[row, P_INSTR]))
    pos[row, :] = 0
    pos[row, P_ACCOUNT] = EMPTY
    pos[row, P_NEXT] = meta[M_POS_FREE]
    meta[M_POS_FREE] = row
    meta[M_POS_LIVE] -= 1


# ============================================================================ capacity


@njit(cache=True)
def _cap_key(account, capkey, hour):
    return (((account << 6) | capkey) << 20) | (hour & 0xFFFFF)


@njit(cache=True)
def _cap_free_for(st, account, instr):
    """Smallest unused capacity over the instrument's delivery hours (0 if any hour is missing)."""
    ins = st[ST_INSTRS][instr]
    cap = st[ST_CAP]
    ht = st[ST_CAP_HT]
    best = -1
    for h in range(ins[I_HOURS]):
        row = _ht_get(ht, _cap_key(account, ins[I_CAPKEY], ins[I_HOUR0] + h))
        if row == EMPTY:
            return 0
        free = cap[row, C_CAP] - cap[row, C_USED]
        if best < 0 or free < best:
            best = free
    return max(best, 0)


@njit(cache=True)
def _cap_use(st, account, instr, delta):
    """Add `delta` GPUs to the committed capacity of every delivery hour of the instrument."""
    ins = st[ST_INSTRS][instr]
    cap = st[ST_CAP]
    ht = st[ST_CAP_HT]
    for h in range(ins[I_HOURS]):
        row = _ht_get(ht, _cap_key(account, ins[I_CAPKEY], ins[I_HOUR0] + h))
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
def _level_get_or_add(st, instr, side, price):
    levels = st[ST_LEVELS]
    key = _level_key(instr, side, price)
    lv = _ht_get(st[ST_LEVEL_HT], key)
    if lv != EMPTY:
        return lv
    meta = st[ST_META][0]
    lv = _alloc(meta, levels, M_LEVEL_FREE, M_LEVEL_HWM, L_NEXT)
    meta[M_LEVELS_LIVE] += 1
    row = levels[lv]
    row[L_PRICE] = price
    row[L_HEAD] = EMPTY
    row[L_TAIL] = EMPTY
    row[L_LOTS] = 0
    row[L_COUNT] = 0
    row[L_BOOK] = instr * 2 + side
    _ht_put(st[ST_LEVEL_HT], key, lv)
    ins = st[ST_INSTRS][instr]
    best = ins[I_BEST + side]
    worst = ins[I_WORST + side]
    if best == EMPTY:
        row[L_PREV] = EMPTY
        row[L_NEXT] = EMPTY
        ins[I_BEST + side] = lv
        ins[I_WORST + side] = lv
    elif _better(price, levels[best, L_PRICE], side):
        row[L_PREV] = EMPTY
        row[L_NEXT] = best
        levels[best, L_PREV] = lv
        ins[I_BEST + side] = lv
    elif not _better(price, levels[worst, L_PRICE], side):
        row[L_PREV] = worst
        row[L_NEXT] = EMPTY
        levels[worst, L_NEXT] = lv
        ins[I_WORST + side] = lv
    else:
        cur = levels[best, L_NEXT]
        while _better(levels[cur, L_PRICE], price, side):
            cur = levels[cur, L_NEXT]
        prev = levels[cur, L_PREV]
        row[L_PREV] = prev
        row[L_NEXT] = cur
        levels[prev, L_NEXT] = lv
        levels[cur, L_PREV] = lv
    return lv


@njit(cache=True)
def _level_remove(st, lv):
    levels = st[ST_LEVELS]
    row = levels[lv]
    book = row[L_BOOK]
    instr = book >> 1
    side = book & 1
    ins = st[ST_INSTRS][instr]
    prev = row[L_PREV]
    nxt = row[L_NEXT]
    if prev == EMPTY:
        ins[I_BEST + side] = nxt
    else:
        levels[prev, L_NEXT] = nxt
    if nxt == EMPTY:
        ins[I_WORST + side] = prev
    else:
        levels[nxt, L_PREV] = prev
    _ht_del(st[ST_LEVEL_HT], _level_key(instr, side, row[L_PRICE]))
    meta = st[ST_META][0]
    row[L_BOOK] = EMPTY
    row[L_NEXT] = meta[M_LEVEL_FREE]
    meta[M_LEVEL_FREE] = lv
    meta[M_LEVELS_LIVE] -= 1


# ============================================================================ orders


@njit(cache=True)
def _order_slot(st, order_id):
    """Slot of a live order id, or EMPTY."""
    if order_id <= 0:
        return EMPTY
    slot = order_id & ORDER_SLOT_MASK
    orders = st[ST_ORDERS]
    if slot >= orders.shape[0] or orders[slot, O_ID] != order_id:
        return EMPTY
    return slot


@njit(cache=True)
def _order_new(st, account, instr, side, price, lots, flags, expire):
    meta = st[ST_META][0]
    orders = st[ST_ORDERS]
    slot = _alloc(meta, orders, M_ORDER_FREE, M_ORDER_HWM, O_NEXT)
    meta[M_ORDER_SEQ] += 1
    meta[M_ORDERS_LIVE] += 1
    o = orders[slot]
    o[O_ID] = (meta[M_ORDER_SEQ] << ORDER_SLOT_BITS) | slot
    o[O_ACCOUNT] = account
    o[O_INSTR] = instr
    o[O_SIDE] = side
    o[O_PRICE] = price
    o[O_LOTS] = lots
    o[O_FILLED] = 0
    o[O_FLAGS] = flags
    o[O_EXPIRE] = expire
    o[O_PREV] = EMPTY
    o[O_NEXT] = EMPTY
    o[O_LEVEL] = EMPTY
    o[O_UNIT] = 0
    o[O_COVERED] = 0
    # Append to the account's list of open orders (cancel-all walks it in placement order).
    acct = st[ST_ACCTS][account]
    tail = acct[A_TAIL]
    o[O_APREV] = tail
    o[O_ANEXT] = EMPTY
    if tail == EMPTY:
        acct[A_HEAD] = slot
    else:
        orders[tail, O_ANEXT] = slot
    acct[A_TAIL] = slot
    acct[A_OPEN] += 1
    return slot


@njit(cache=True)
def _order_free(st, slot):
    meta = st[ST_META][0]
    orders = st[ST_ORDERS]
    o = orders[slot]
    acct = st[ST_ACCTS][o[O_ACCOUNT]]
    prev = o[O_APREV]
    nxt = o[O_ANEXT]
    if prev == EMPTY:
        acct[A_HEAD] = nxt
    else:
        orders[prev, O_ANEXT] = nxt
    if nxt == EMPTY:
        acct[A_TAIL] = prev
    else:
        orders[nxt, O_APREV] = prev
    acct[A_OPEN] -= 1
    o[O_ID] = 0
    o[O_LOTS] = 0
    o[O_NEXT] = meta[M_ORDER_FREE]
    meta[M_ORDER_FREE] = slot
    meta[M_ORDERS_LIVE] -= 1


@njit(cache=True)
def _book_append(st, slot):
    """Rest an order at the back of its price level."""
    orders = st[ST_ORDERS]
    o = orders[slot]
    lv = _level_get_or_add(st, o[O_INSTR], o[O_SIDE], o[O_PRICE])
    levels = st[ST_LEVELS]
    tail = levels[lv, L_TAIL]
    o[O_PREV] = tail
    o[O_NEXT] = EMPTY
    o[O_LEVEL] = lv
    if tail == EMPTY:
        levels[lv, L_HEAD] = slot
    else:
        orders[tail, O_NEXT] = slot
    levels[lv, L_TAIL] = slot
    levels[lv, L_LOTS] += o[O_LOTS]
    levels[lv, L_COUNT] += 1


@njit(cache=True)
def _book_unlink(st, slot):
    """Take a resting order out of its level, removing the level when it empties."""
    orders = st[ST_ORDERS]
    levels = st[ST_LEVELS]
    o = orders[slot]
    lv = o[O_LEVEL]
    if lv == EMPTY:
        return
    prev = o[O_PREV]
    nxt = o[O_NEXT]
    if prev == EMPTY:
        levels[lv, L_HEAD] = nxt
    else:
        orders[prev, O_NEXT] = nxt
    if nxt == EMPTY:
        levels[lv, L_TAIL] = prev
    else:
        orders[nxt, O_PREV] = prev
    levels[lv, L_LOTS] -= o[O_LOTS]
    levels[lv, L_COUNT] -= 1
    o[O_LEVEL] = EMPTY
    o[O_PREV] = EMPTY
    o[O_NEXT] = EMPTY
    if levels[lv, L_COUNT] == 0:
        _level_remove(st, lv)


@njit(cache=True)
def _release(st, ev, n, ci, slot, lots):
    """Release the holds and reservations behind `lots` unfilled lots of an order."""
    o = st[ST_ORDERS][slot]
    account = o[O_ACCOUNT]
    if o[O_SIDE] == BUY:
        amount = o[O_UNIT] * lots
    else:
        # Uncovered lots are released first: they tie up capacity and collateral.
        uncovered_total = o[O_LOTS] - o[O_COVERED]
        unc = min(lots, uncovered_total)
        cov = lots - unc
        if cov > 0:
            prow = _pos_find(st, account, o[O_INSTR])
            st[ST_POS][prow, P_RESERVED] -= cov
            o[O_COVERED] -= cov
        if unc > 0:
            _cap_use(st, account, o[O_INSTR], -unc)
        amount = o[O_UNIT] * unc
    if amount != 0:
        ev, n = _cash(st, ev, n, ci, account, amount, -amount, 0, 0, CR_RELEASE, o[O_ID])
    return ev, n


@njit(cache=True)
def _reduce(st, ev, n, ci, slot, lots, event_type, reason):
    """Cancel or expire `lots` of an order (all of them removes it), releasing what they held."""
    orders = st[ST_ORDERS]
    o = orders[slot]
    remaining = o[O_LOTS] - lots
    ev, n = _emit(
        ev, n, event_type, ci, o[O_ID], o[O_ACCOUNT], _iid(st, o[O_INSTR]), lots, remaining, reason,
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    ev, n = _release(st, ev, n, ci, slot, lots)
    if o[O_LEVEL] != EMPTY:
        st[ST_LEVELS][o[O_LEVEL], L_LOTS] -= lots
    o[O_LOTS] = remaining
    if remaining == 0:
        _book_unlink(st, slot)
        _order_free(st, slot)
    return ev, n


# ============================================================================ trades


@njit(cache=True)
def _cover_short(st, account, instr, prow, q):
    """A buy of q lots by a short account: release escrow and collateral pro rata."""
    pos = st[ST_POS][prow]
    short = -pos[P_LOTS]
    if short <= 0:
        return 0, 0
    c = min(q, short)
    escrow = pos[P_ESCROW] * c // short
    collat = pos[P_COLLAT] * c // short
    fees = pos[P_FEES] * c // short
    pos[P_ESCROW] -= escrow
    pos[P_COLLAT] -= collat
    pos[P_FEES] -= fees
    _cap_use(st, account, instr, -c)
    return escrow, collat


@njit(cache=True)
def _fill(st, ev, n, ci, instr, maker, taker, price, q):
    """Execute q lots between a resting maker and the taker at the maker's price."""
    meta = st[ST_META][0]
    cfg = st[ST_CFG][0]
    orders = st[ST_ORDERS]
    ins = st[ST_INSTRS][instr]
    mo = orders[maker]
    to = orders[taker]
    taker_side = to[O_SIDE]
    if taker_side == BUY:
        buy, sell = taker, maker
        bps_buy, bps_sell = cfg[CFG_TAKER_BPS], cfg[CFG_MAKER_BPS]
    else:
        buy, sell = maker, taker
        bps_buy, bps_sell = cfg[CFG_MAKER_BPS], cfg[CFG_TAKER_BPS]
    bo = orders[buy]
    so = orders[sell]
    unit = ins[I_NOTIONAL_UNIT] * price
    notional = unit * q
    fee_buy = notional * bps_buy // BPS
    q_cov = min(q, so[O_COVERED])
    q_unc = q - q_cov
    n_cov = unit * q_cov
    n_unc = unit * q_unc
    fee_cov = n_cov * bps_sell // BPS
    fee_unc = n_unc * bps_sell // BPS
    fee_sell = fee_cov + fee_unc
    meta[M_TRADE_SEQ] += 1
    trade_id = meta[M_TRADE_SEQ]
    if taker_side == BUY:
        maker_fee, taker_fee = fee_sell, fee_buy
    else:
        maker_fee, taker_fee = fee_buy, fee_sell
    ev, n = _emit(
        ev, n, EV_TRADE, ci, trade_id, ins[I_ID], price, q, taker_side, mo[O_ID], to[O_ID],
        mo[O_ACCOUNT], to[O_ACCOUNT], maker_fee, taker_fee, 0,
    )  # fmt: skip
    # buyer: pay from the hold, cover any short first
    ba = bo[O_ACCOUNT]
    brow = _pos_get(st, ba, instr)
    hold = bo[O_UNIT] * q
    escrow, collat = _cover_short(st, ba, instr, brow, q)
    st[ST_POS][brow, P_LOTS] += q
    ev, n = _cash(
        st, ev, n, ci, ba, hold - notional - fee_buy + escrow + collat, -hold, -escrow, -collat,
        CR_TRADE, trade_id,
    )  # fmt: skip
    # seller: covered lots close a long and are paid now; uncovered lots open a short into escrow
    sa = so[O_ACCOUNT]
    srow = _pos_get(st, sa, instr)
    spos = st[ST_POS][srow]
    spos[P_LOTS] -= q
    spos[P_RESERVED] -= q_cov
    so[O_COVERED] -= q_cov
    to_escrow = n_unc - fee_unc
    collat_moved = so[O_UNIT] * q_unc
    spos[P_ESCROW] += to_escrow
    spos[P_FEES] += fee_unc
    spos[P_COLLAT] += collat_moved
    ev, n = _cash(
        st, ev, n, ci, sa, n_cov - fee_cov, -collat_moved, to_escrow, collat_moved,
        CR_TRADE, trade_id,
    )  # fmt: skip
    if fee_buy + fee_sell != 0:
        ev, n = _cash(st, ev, n, ci, ACCT_FEES, fee_buy + fee_sell, 0, 0, 0, CR_FEE, trade_id)
    ev, n = _emit(
        ev, n, EV_POSITION, ci, ba, ins[I_ID], q, st[ST_POS][brow, P_LOTS], PR_TRADE, trade_id,
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    ev, n = _emit(
        ev,
        n,
        EV_POSITION,
        ci,
        sa,
        ins[I_ID],
        -q,
        spos[P_LOTS],
        PR_TRADE,
        trade_id,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    mo[O_LOTS] -= q
    mo[O_FILLED] += q
    to[O_LOTS] -= q
    to[O_FILLED] += q
    st[ST_LEVELS][mo[O_LEVEL], L_LOTS] -= q
    ins[I_LAST_PRICE] = price
    ins[I_VOLUME] += q
    return ev, n


@njit(cache=True)
def _crosses(side, level_price, limit):
    return level_price <= limit if side == BUY else level_price >= limit


@njit(cache=True)
def _fok_fillable(st, instr, side, limit, account, stp, lots):
    """Lots an FOK order would fill before matching stops (self-trade rules included)."""
    levels = st[ST_LEVELS]
    orders = st[ST_ORDERS]
    lv = st[ST_INSTRS][instr, I_BEST + (1 - side)]
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
def _match(st, ev, n, ci, taker, limit):
    """Match the taker against the opposite book up to its limit price. Return (ev, n, alive)."""
    orders = st[ST_ORDERS]
    levels = st[ST_LEVELS]
    to = orders[taker]
    instr = to[O_INSTR]
    side = to[O_SIDE]
    account = to[O_ACCOUNT]
    stp = (to[O_FLAGS] >> F_STP_SHIFT) & 7
    ins = st[ST_INSTRS][instr]
    lv = ins[I_BEST + (1 - side)]
    while lv != EMPTY and to[O_LOTS] > 0:
        price = levels[lv, L_PRICE]
        if not _crosses(side, price, limit):
            break
        o = levels[lv, L_HEAD]
        next_lv = levels[lv, L_NEXT]
        while o != EMPTY and to[O_LOTS] > 0:
            next_o = orders[o, O_NEXT]
            if orders[o, O_ACCOUNT] == account and stp != STP_NONE:
                if stp == STP_CANCEL_MAKER:
                    ev, n = _reduce(
                        st, ev, n, ci, o, orders[o, O_LOTS], EV_CANCELLED, CX_SELF_TRADE
                    )
                elif stp == STP_DECREMENT:
                    d = min(orders[o, O_LOTS], to[O_LOTS])
                    ev, n = _reduce(st, ev, n, ci, o, d, EV_CANCELLED, CX_SELF_TRADE)
                    ev, n = _reduce(st, ev, n, ci, taker, d, EV_CANCELLED, CX_SELF_TRADE)
                    if orders[taker, O_ID] == 0:
                        return ev, n, False
                else:
                    if stp == STP_CANCEL_BOTH:
                        ev, n = _reduce(
                            st, ev, n, ci, o, orders[o, O_LOTS], EV_CANCELLED, CX_SELF_TRADE
                        )
                    ev, n = _reduce(st, ev, n, ci, taker, to[O_LOTS], EV_CANCELLED, CX_SELF_TRADE)
                    return ev, n, False
            else:
                q = min(to[O_LOTS], orders[o, O_LOTS])
                ev, n = _fill(st, ev, n, ci, instr, o, taker, price, q)
                if orders[o, O_LOTS] == 0:
                    _book_unlink(st, o)
                    _order_free(st, o)
            o = next_o
        # Every order of the level was filled or cancelled (so the level is gone) or the taker
        # is done; only this level's orders were touched, so the saved neighbour is still valid.
        lv = next_lv
    if orders[taker, O_ID] == 0:
        return ev, n, False
    return ev, n, True


@njit(cache=True)
def _rest_or_finish(st, ev, n, ci, slot, new_order):
    """After matching: rest a GTC/GTD remainder, cancel an IOC/FOK/market remainder."""
    orders = st[ST_ORDERS]
    o = orders[slot]
    if o[O_LOTS] == 0:
        _order_free(st, slot)
        return ev, n
    tif = o[O_FLAGS] & 3
    if tif == TIF_IOC or tif == TIF_FOK or (o[O_FLAGS] & F_MARKET) != 0:
        return _reduce(st, ev, n, ci, slot, o[O_LOTS], EV_CANCELLED, CX_IOC)
    if o[O_LEVEL] == EMPTY:
        _book_append(st, slot)
        if tif == TIF_GTD and new_order:
            _gtd_push(st, o[O_EXPIRE], o[O_ID])
    return ev, n


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
def _gtd_push(st, expire, order_id):
    meta = st[ST_META][0]
    heap = st[ST_GTD]
    i = meta[M_GTD_SIZE]
    meta[M_GTD_SIZE] = i + 1
    heap[i, 0] = expire
    heap[i, 1] = order_id
    while i > 0:
        parent = (i - 1) // 2
        if not _heap_less(heap, i, parent):
            break
        _heap_swap(heap, i, parent)
        i = parent


@njit(cache=True)
def _gtd_pop(st):
    meta = st[ST_META][0]
    heap = st[ST_GTD]
    size = meta[M_GTD_SIZE] - 1
    meta[M_GTD_SIZE] = size
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
def _unit_hold(ins, price, taker_bps):
    """Cash held per lot of a bid: notional at its limit plus the taker fee, rounded up."""
    notional = ins[I_NOTIONAL_UNIT] * price
    return notional + (notional * taker_bps + BPS - 1) // BPS


@njit(cache=True)
def _user_account(st, account):
    return ACCOUNT_FIRST_USER <= account < st[ST_ACCTS].shape[0]


@njit(cache=True)
def _long_free(st, account, instr):
    """Long lots not yet promised to open asks (what can be resold)."""
    prow = _pos_find(st, account, instr)
    if prow == EMPTY:
        return 0
    pos = st[ST_POS][prow]
    return max(pos[P_LOTS] - pos[P_RESERVED], 0)


@njit(cache=True)
def _pool_room(st, lots):
    """Reject code if the pools cannot take one more order matching up to `lots` makers."""
    meta = st[ST_META][0]
    if meta[M_ORDERS_LIVE] >= st[ST_ORDERS].shape[0]:
        return R_ENGINE_FULL
    if meta[M_LEVELS_LIVE] >= st[ST_LEVELS].shape[0]:
        return R_ENGINE_FULL
    if st[ST_POS].shape[0] - meta[M_POS_LIVE] < lots + 1:
        return R_ENGINE_FULL
    if meta[M_GTD_SIZE] >= st[ST_GTD].shape[0]:
        return R_ENGINE_FULL
    return 0


@njit(cache=True)
def _iid(st, instr):
    return st[ST_INSTRS][instr, I_ID]


@njit(cache=True)
def _list(st, ev, n, ci, cmd):
    """List an instrument in the slot the facade chose (it mirrors closures in command order)."""
    cfg = st[ST_CFG][0]
    row = st[ST_INSTRS][cmd[C0_INSTR]]
    row[:] = 0
    hours = cmd[C0_AUX]
    row[I_ID] = cmd[C0_ORDER]
    row[I_STATE] = INSTR_OPEN
    row[I_GPU] = cmd[C0_ACCOUNT]
    row[I_REGION] = cmd[C0_SIDE]
    row[I_PRODUCT] = cmd[C0_FLAGS]
    row[I_START] = cmd[C0_EXPIRE]
    row[I_HOURS] = hours
    row[I_GATE] = cmd[C0_AUX2]
    row[I_BAND_LO] = cmd[C0_PRICE]
    row[I_BAND_HI] = cmd[C0_AUX3]
    row[I_LOTS_MAX] = cmd[C0_LOTS]
    row[I_BEST] = EMPTY
    row[I_BEST + 1] = EMPTY
    row[I_WORST] = EMPTY
    row[I_WORST + 1] = EMPTY
    row[I_CAPKEY] = cmd[C0_ACCOUNT] * cfg[CFG_REGIONS] + cmd[C0_SIDE]
    row[I_HOUR0] = cmd[C0_EXPIRE] // NS_PER_HOUR
    row[I_NOTIONAL_UNIT] = cfg[CFG_TICK_MICROS] * hours
    row[I_COLLAT_UNIT] = cfg[CFG_PENALTY_MICROS] * hours
    meta = st[ST_META][0]
    meta[M_INSTR_SEQ] = max(meta[M_INSTR_SEQ], cmd[C0_ORDER])
    return _emit(ev, n, EV_LISTED, ci, row[I_ID], cmd[C0_INSTR], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


@njit(cache=True)
def _check_instrument(st, instr):
    if instr == INSTR_NOT_TRADING:
        return R_INSTRUMENT_NOT_TRADING
    if instr < 0 or instr >= st[ST_INSTRS].shape[0] or st[ST_INSTRS][instr, I_STATE] == 0:
        return R_UNKNOWN_INSTRUMENT
    if st[ST_INSTRS][instr, I_STATE] != INSTR_OPEN:
        return R_INSTRUMENT_NOT_TRADING
    return 0


@njit(cache=True)
def _check_price(ins, price):
    if price <= 0:
        return R_PRICE_INVALID
    if price < ins[I_BAND_LO] or price > ins[I_BAND_HI]:
        return R_PRICE_OUT_OF_BAND
    return 0


@njit(cache=True)
def _check_lots(ins, lots):
    if lots <= 0:
        return R_LOTS_INVALID
    if lots > ins[I_LOTS_MAX]:
        return R_LOTS_ABOVE_MAX
    return 0


@njit(cache=True)
def _would_take(st, instr, side, price):
    best = st[ST_INSTRS][instr, I_BEST + (1 - side)]
    return best != EMPTY and _crosses(side, st[ST_LEVELS][best, L_PRICE], price)


@njit(cache=True)
def _sell_cover(st, account, instr, lots, covered_now, uncovered_now):
    """Split an ask into covered and uncovered lots; return (covered, code).

    `covered_now`/`uncovered_now` are what the order already holds (amend), released first.
    """
    covered = min(lots, _long_free(st, account, instr) + covered_now)
    uncovered = lots - covered
    if uncovered > uncovered_now and _cap_free_for(st, account, instr) < uncovered - uncovered_now:
        return covered, R_INSUFFICIENT_COVER
    return covered, 0


@njit(cache=True)
def _place(st, ev, n, ci, cmd):
    cfg = st[ST_CFG][0]
    meta = st[ST_META][0]
    account = cmd[C0_ACCOUNT]
    instr = cmd[C0_INSTR]
    side = cmd[C0_SIDE]
    price = cmd[C0_PRICE]
    lots = cmd[C0_LOTS]
    flags = cmd[C0_FLAGS]
    tif = flags & 3
    market = (flags & F_MARKET) != 0
    post_only = (flags & F_POST_ONLY) != 0
    stp = (flags >> F_STP_SHIFT) & 7
    if not _user_account(st, account):
        return _reject(st, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, instr)
    code = _check_instrument(st, instr)
    if code != 0:
        return _reject(st, ev, n, ci, account, code, 0, instr)
    ins = st[ST_INSTRS][instr]
    code = _check_lots(ins, lots)
    if code != 0:
        return _reject(st, ev, n, ci, account, code, 0, instr)
    if (side != BUY and side != SELL) or stp > STP_DECREMENT:
        return _reject(st, ev, n, ci, account, R_ORDER_TYPE_INVALID, 0, instr)
    if market:
        # Market orders never rest: GTC means IOC; they trade up to a protection price.
        if post_only or tif == TIF_GTD:
            return _reject(st, ev, n, ci, account, R_ORDER_TYPE_INVALID, 0, instr)
        best = ins[I_BEST + (1 - side)]
        if best == EMPTY:
            return _reject(st, ev, n, ci, account, R_NO_LIQUIDITY, 0, instr)
        ref = st[ST_LEVELS][best, L_PRICE]
        if side == BUY:
            price = min(ref * (BPS + cfg[CFG_PROTECTION_BPS]) // BPS, ins[I_BAND_HI])
        else:
            price = max(-(-ref * (BPS - cfg[CFG_PROTECTION_BPS]) // BPS), ins[I_BAND_LO])
    else:
        code = _check_price(ins, price)
        if code != 0:
            return _reject(st, ev, n, ci, account, code, 0, instr)
        if post_only and (tif == TIF_IOC or tif == TIF_FOK):
            return _reject(st, ev, n, ci, account, R_ORDER_TYPE_INVALID, 0, instr)
    if tif == TIF_GTD and cmd[C0_EXPIRE] <= meta[M_NOW]:
        return _reject(st, ev, n, ci, account, R_EXPIRY_INVALID, 0, instr)
    if post_only and _would_take(st, instr, side, price):
        return _reject(st, ev, n, ci, account, R_POST_ONLY_WOULD_TAKE, 0, instr)
    acct = st[ST_ACCTS][account]
    if acct[A_OPEN] >= cfg[CFG_ORDERS_OPEN_MAX]:
        return _reject(st, ev, n, ci, account, R_OPEN_ORDERS_LIMIT, 0, instr)
    code = _pool_room(st, lots)
    if code != 0:
        return _reject(st, ev, n, ci, account, code, 0, instr)
    if tif == TIF_FOK and _fok_fillable(st, instr, side, price, account, stp, lots) < lots:
        return _reject(st, ev, n, ci, account, R_FOK_NOT_FILLABLE, 0, instr)
    covered = 0
    if side == BUY:
        unit = _unit_hold(ins, price, cfg[CFG_TAKER_BPS])
        hold = unit * lots
    else:
        covered, code = _sell_cover(st, account, instr, lots, 0, 0)
        if code != 0:
            return _reject(st, ev, n, ci, account, code, 0, instr)
        unit = ins[I_COLLAT_UNIT]
        hold = unit * (lots - covered)
    if hold > acct[A_AVAIL]:
        return _reject(st, ev, n, ci, account, R_INSUFFICIENT_CASH, 0, instr)
    # --- accepted: from here on nothing can refuse -------------------------------------------
    expire = cmd[C0_EXPIRE] if tif == TIF_GTD else 0
    slot = _order_new(st, account, instr, side, price, lots, flags, expire)
    o = st[ST_ORDERS][slot]
    o[O_UNIT] = unit
    o[O_COVERED] = covered
    ev, n = _emit(
        ev, n, EV_ACCEPTED, ci, o[O_ID], account, ins[I_ID], side, price, lots, flags, expire,
        0, 0, 0, 0,
    )  # fmt: skip
    if hold != 0:
        ev, n = _cash(st, ev, n, ci, account, -hold, hold, 0, 0, CR_HOLD, o[O_ID])
    if side == SELL:
        if covered > 0:
            st[ST_POS][_pos_get(st, account, instr), P_RESERVED] += covered
        if lots > covered:
            _cap_use(st, account, instr, lots - covered)
    ev, n, alive = _match(st, ev, n, ci, slot, price)
    if alive:
        ev, n = _rest_or_finish(st, ev, n, ci, slot, True)
    return ev, n


@njit(cache=True)
def _owned_order(st, ev, n, ci, account, order_id):
    """Return (slot, ev, n); slot EMPTY after emitting the rejection."""
    slot = _order_slot(st, order_id)
    if slot == EMPTY:
        ev, n = _reject(st, ev, n, ci, account, R_UNKNOWN_ORDER, order_id, -1)
        return EMPTY, ev, n
    if st[ST_ORDERS][slot, O_ACCOUNT] != account:
        ev, n = _reject(st, ev, n, ci, account, R_NOT_ORDER_OWNER, order_id, -1)
        return EMPTY, ev, n
    return slot, ev, n


@njit(cache=True)
def _cancel(st, ev, n, ci, cmd):
    slot, ev, n = _owned_order(st, ev, n, ci, cmd[C0_ACCOUNT], cmd[C0_ORDER])
    if slot == EMPTY:
        return ev, n
    lots = st[ST_ORDERS][slot, O_LOTS]
    return _reduce(st, ev, n, ci, slot, lots, EV_CANCELLED, CX_USER)


@njit(cache=True)
def _cancel_all(st, ev, n, ci, cmd):
    account = cmd[C0_ACCOUNT]
    instr = cmd[C0_INSTR]
    if not _user_account(st, account):
        return _reject(st, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, instr)
    if instr != INSTR_ALL:
        code = _check_instrument(st, instr)
        if code != 0:
            return _reject(st, ev, n, ci, account, code, 0, instr)
    orders = st[ST_ORDERS]
    slot = st[ST_ACCTS][account, A_HEAD]
    while slot != EMPTY:
        nxt = orders[slot, O_ANEXT]
        if instr == INSTR_ALL or orders[slot, O_INSTR] == instr:
            ev, n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_CANCELLED, CX_CANCEL_ALL)
        slot = nxt
    return ev, n


@njit(cache=True)
def _amend(st, ev, n, ci, cmd):
    cfg = st[ST_CFG][0]
    account = cmd[C0_ACCOUNT]
    order_id = cmd[C0_ORDER]
    price = cmd[C0_PRICE]
    lots = cmd[C0_LOTS]
    slot, ev, n = _owned_order(st, ev, n, ci, account, order_id)
    if slot == EMPTY:
        return ev, n
    o = st[ST_ORDERS][slot]
    instr = o[O_INSTR]
    ins = st[ST_INSTRS][instr]
    code = _check_lots(ins, lots)
    if code == 0:
        code = _check_price(ins, price)
    if code == 0 and price == o[O_PRICE] and lots == o[O_LOTS]:
        code = R_AMEND_NO_CHANGE
    if code != 0:
        return _reject(st, ev, n, ci, account, code, order_id, instr)
    side = o[O_SIDE]
    if price == o[O_PRICE] and lots < o[O_LOTS]:
        # A pure decrease keeps time priority: release what the cut lots held.
        ev, n = _emit(
            ev, n, EV_AMENDED, ci, order_id, account, ins[I_ID], price, lots, 1, 0, 0, 0, 0, 0, 0
        )
        cut = o[O_LOTS] - lots
        ev, n = _release(st, ev, n, ci, slot, cut)
        st[ST_LEVELS][o[O_LEVEL], L_LOTS] -= cut
        o[O_LOTS] = lots
        return ev, n
    if (o[O_FLAGS] & F_POST_ONLY) != 0 and _would_take(st, instr, side, price):
        return _reject(st, ev, n, ci, account, R_POST_ONLY_WOULD_TAKE, order_id, instr)
    code = _pool_room(st, lots)
    if code != 0:
        return _reject(st, ev, n, ci, account, code, order_id, instr)
    acct = st[ST_ACCTS][account]
    old_lots = o[O_LOTS]
    if side == BUY:
        unit = _unit_hold(ins, price, cfg[CFG_TAKER_BPS])
        delta_hold = unit * lots - o[O_UNIT] * old_lots
        covered = 0
    else:
        old_cov = o[O_COVERED]
        old_unc = old_lots - old_cov
        covered, code = _sell_cover(st, account, instr, lots, old_cov, old_unc)
        if code != 0:
            return _reject(st, ev, n, ci, account, code, order_id, instr)
        unit = o[O_UNIT]
        delta_hold = unit * ((lots - covered) - old_unc)
    if delta_hold > acct[A_AVAIL]:
        return _reject(st, ev, n, ci, account, R_INSUFFICIENT_CASH, order_id, instr)
    # --- accepted: re-price loses time priority and may trade ---------------------------------
    _book_unlink(st, slot)
    ev, n = _emit(
        ev, n, EV_AMENDED, ci, order_id, account, ins[I_ID], price, lots, 0, 0, 0, 0, 0, 0, 0
    )
    if delta_hold != 0:
        ev, n = _cash(st, ev, n, ci, account, -delta_hold, delta_hold, 0, 0, CR_HOLD, order_id)
    if side == SELL:
        if covered != o[O_COVERED]:
            st[ST_POS][_pos_get(st, account, instr), P_RESERVED] += covered - o[O_COVERED]
        _cap_use(st, account, instr, (lots - covered) - (old_lots - o[O_COVERED]))
        o[O_COVERED] = covered
    o[O_UNIT] = unit
    o[O_PRICE] = price
    o[O_LOTS] = lots
    ev, n, alive = _match(st, ev, n, ci, slot, price)
    if alive:
        ev, n = _rest_or_finish(st, ev, n, ci, slot, False)
    return ev, n


# ============================================================================ cash and capacity


@njit(cache=True)
def _deposit(st, ev, n, ci, cmd):
    cfg = st[ST_CFG][0]
    account = cmd[C0_ACCOUNT]
    amount = cmd[C0_AUX]
    if not _user_account(st, account):
        return _reject(st, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if amount <= 0 or amount > cfg[CFG_DEPOSIT_MAX]:
        return _reject(st, ev, n, ci, account, R_AMOUNT_INVALID, 0, -1)
    if st[ST_ACCTS][account, A_AVAIL] + amount > cfg[CFG_BALANCE_MAX]:
        return _reject(st, ev, n, ci, account, R_BALANCE_LIMIT, 0, -1)
    ev, n = _cash(st, ev, n, ci, account, amount, 0, 0, 0, CR_DEPOSIT, 0)
    return _cash(st, ev, n, ci, ACCT_EXTERNAL, -amount, 0, 0, 0, CR_DEPOSIT, 0)


@njit(cache=True)
def _withdraw(st, ev, n, ci, cmd):
    account = cmd[C0_ACCOUNT]
    amount = cmd[C0_AUX]
    if not _user_account(st, account):
        return _reject(st, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if amount <= 0:
        return _reject(st, ev, n, ci, account, R_AMOUNT_INVALID, 0, -1)
    if amount > st[ST_ACCTS][account, A_AVAIL]:
        return _reject(st, ev, n, ci, account, R_INSUFFICIENT_CASH, 0, -1)
    ev, n = _cash(st, ev, n, ci, account, -amount, 0, 0, 0, CR_WITHDRAWAL, 0)
    return _cash(st, ev, n, ci, ACCT_EXTERNAL, amount, 0, 0, 0, CR_WITHDRAWAL, 0)


@njit(cache=True)
def _capacity(st, ev, n, ci, cmd):
    """Set a provider's GPUs for every hour in [start, end) of one GPU model and region."""
    cfg = st[ST_CFG][0]
    meta = st[ST_META][0]
    account = cmd[C0_ACCOUNT]
    capkey = cmd[C0_AUX]
    start = cmd[C0_AUX2]
    end = cmd[C0_AUX3]
    gpus = cmd[C0_LOTS]
    if not _user_account(st, account):
        return _reject(st, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if (
        end <= start
        or start < 0
        or end - start > cfg[CFG_CAPACITY_HOURS_MAX]
        or gpus < 0
        or gpus > cfg[CFG_CAPACITY_GPUS_MAX]
        or capkey < 0
        or capkey >= 64
    ):
        return _reject(st, ev, n, ci, account, R_CAPACITY_RANGE_INVALID, 0, -1)
    cap = st[ST_CAP]
    ht = st[ST_CAP_HT]
    missing = 0
    for h in range(start, end):
        row = _ht_get(ht, _cap_key(account, capkey, h))
        if row == EMPTY:
            missing += 1
        elif cap[row, C_USED] > gpus:
            return _reject(st, ev, n, ci, account, R_CAPACITY_BELOW_COMMITTED, 0, -1)
    if cap.shape[0] - meta[M_CAP_LIVE] < missing:
        return _reject(st, ev, n, ci, account, R_ENGINE_FULL, 0, -1)
    for h in range(start, end):
        key = _cap_key(account, capkey, h)
        row = _ht_get(ht, key)
        if row == EMPTY:
            row = _alloc(meta, cap, M_CAP_FREE, M_CAP_HWM, C_NEXT)
            meta[M_CAP_LIVE] += 1
            cap[row, C_KEY] = key
            cap[row, C_USED] = 0
            cap[row, C_NEXT] = EMPTY
            _ht_put(ht, key, row)
        cap[row, C_CAP] = gpus
    return _emit(ev, n, EV_CAPACITY, ci, account, capkey, start, end, gpus, 0, 0, 0, 0, 0, 0, 0)


# ============================================================================ clock, gate, delivery


@njit(cache=True)
def _expire_gtd(st, ev, n, ci):
    meta = st[ST_META][0]
    heap = st[ST_GTD]
    while meta[M_GTD_SIZE] > 0 and heap[0, 0] <= meta[M_NOW]:
        slot = _order_slot(st, _gtd_pop(st))
        if slot != EMPTY:
            lots = st[ST_ORDERS][slot, O_LOTS]
            ev, n = _reduce(st, ev, n, ci, slot, lots, EV_EXPIRED, XP_GTD)
    return ev, n


@njit(cache=True)
def _close_instrument(st, ev, n, ci, instr):
    """Gate closure: expire resting orders, turn positions into delivery obligations."""
    ins = st[ST_INSTRS][instr]
    levels = st[ST_LEVELS]
    orders = st[ST_ORDERS]
    for side in (BUY, SELL):
        while ins[I_BEST + side] != EMPTY:
            slot = levels[ins[I_BEST + side], L_HEAD]
            ev, n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_EXPIRED, XP_GATE)
    ins[I_STATE] = INSTR_CLOSED
    pos = st[ST_POS]
    meta = st[ST_META][0]
    rows = np.empty(meta[M_POS_HWM], dtype=np.int64)
    count = 0
    open_interest = 0
    for r in range(meta[M_POS_HWM]):
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
    ev, n = _emit(ev, n, EV_CLOSED, ci, ins[I_ID], instr, open_interest, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    for r in rows:
        lots = pos[r, P_LOTS]
        if lots != 0:
            ev, n = _emit(
                ev, n, EV_POSITION, ci, pos[r, P_ACCOUNT], ins[I_ID], -lots, 0, PR_ASSIGNED, 0,
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
            ev, n = _assign(
                st, ev, n, ci, instr, pos[r, P_ACCOUNT], holder, gpus, escrow, fees, collat
            )
    for r in rows:
        # What a position holds beyond its obligations (a short that was bought back) goes home.
        escrow = pos[r, P_ESCROW]
        collat = pos[r, P_COLLAT]
        if escrow != 0 or collat != 0:
            ev, n = _cash(
                st, ev, n, ci, pos[r, P_ACCOUNT], escrow + collat, 0, -escrow, -collat,
                CR_SHORT_COVERED, ins[I_ID],
            )  # fmt: skip
        _pos_free(st, r)
    return ev, n


@njit(cache=True)
def _assign(st, ev, n, ci, instr, provider, holder, gpus, escrow, fees, collat):
    meta = st[ST_META][0]
    ins = st[ST_INSTRS][instr]
    obl = st[ST_OBL]
    b = _alloc(meta, obl, M_OBL_FREE, M_OBL_HWM, B_NEXT)
    meta[M_OBL_SEQ] += 1
    meta[M_OBL_LIVE] += 1
    row = obl[b]
    row[B_ID] = (meta[M_OBL_SEQ] << ORDER_SLOT_BITS) | b
    row[B_STATE] = OBL_ASSIGNED
    row[B_PROVIDER] = provider
    row[B_HOLDER] = holder
    row[B_GPUS] = gpus
    row[B_START] = ins[I_START]
    row[B_HOURS] = ins[I_HOURS]
    row[B_HOURS_LEFT] = ins[I_HOURS]
    row[B_ESCROW_LEFT] = escrow
    row[B_FEES_LEFT] = fees
    row[B_COLLAT_LEFT] = collat
    row[B_INSTR_ID] = ins[I_ID]
    row[B_GPU] = ins[I_GPU]
    row[B_REGION] = ins[I_REGION]
    row[B_PRODUCT] = ins[I_PRODUCT]
    row[B_NEXT] = EMPTY
    row[B_RELEASED] = 0
    return _emit(
        ev, n, EV_ASSIGNED, ci, row[B_ID], provider, holder, gpus, ins[I_START], ins[I_HOURS],
        escrow, ins[I_ID], 0, 0, 0, 0,
    )  # fmt: skip


@njit(cache=True)
def _release_hour(st, ev, n, ci, b):
    """Pay the provider one delivered hour: its share of escrow and of collateral."""
    row = st[ST_OBL][b]
    left = row[B_HOURS_LEFT]
    escrow = row[B_ESCROW_LEFT] // left
    collat = row[B_COLLAT_LEFT] // left
    fees = row[B_FEES_LEFT] // left
    row[B_ESCROW_LEFT] -= escrow
    row[B_COLLAT_LEFT] -= collat
    row[B_FEES_LEFT] -= fees
    row[B_HOURS_LEFT] = left - 1
    row[B_RELEASED] += escrow
    if escrow != 0 or collat != 0:
        ev, n = _cash(
            st, ev, n, ci, row[B_PROVIDER], escrow + collat, 0, -escrow, -collat,
            CR_DELIVERY_RELEASE, row[B_ID],
        )  # fmt: skip
    return ev, n


@njit(cache=True)
def _settle(st, ev, n, ci, b, outcome):
    """Close an obligation: undelivered hours refund the holder, plus the penalty."""
    row = st[ST_OBL][b]
    holder = row[B_HOLDER]
    provider = row[B_PROVIDER]
    refund = row[B_ESCROW_LEFT]
    fees = row[B_FEES_LEFT]
    penalty = row[B_COLLAT_LEFT]
    if refund != 0:
        ev, n = _cash(st, ev, n, ci, provider, 0, 0, -refund, 0, CR_DELIVERY_REFUND, row[B_ID])
    if fees != 0:
        ev, n = _cash(st, ev, n, ci, ACCT_FEES, -fees, 0, 0, 0, CR_DELIVERY_REFUND, row[B_ID])
    if refund + fees != 0:
        ev, n = _cash(st, ev, n, ci, holder, refund + fees, 0, 0, 0, CR_DELIVERY_REFUND, row[B_ID])
    if penalty != 0:
        ev, n = _cash(st, ev, n, ci, provider, 0, 0, 0, -penalty, CR_DELIVERY_PENALTY, row[B_ID])
        ev, n = _cash(st, ev, n, ci, holder, penalty, 0, 0, 0, CR_DELIVERY_PENALTY, row[B_ID])
    delivered = row[B_HOURS] - row[B_HOURS_LEFT]
    ev, n = _emit(
        ev, n, EV_SETTLED, ci, row[B_ID], provider, holder, outcome, delivered,
        row[B_HOURS_LEFT], row[B_RELEASED], refund + fees, penalty, 0, 0, 0,
    )  # fmt: skip
    meta = st[ST_META][0]
    row[B_STATE] = OBL_FREE
    row[B_ID] = 0
    row[B_NEXT] = meta[M_OBL_FREE]
    meta[M_OBL_FREE] = b
    meta[M_OBL_LIVE] -= 1
    return ev, n


@njit(cache=True)
def _deliver_to(st, ev, n, ci, b, hours_done):
    """Release every hour up to `hours_done` delivered hours."""
    row = st[ST_OBL][b]
    while row[B_HOURS] - row[B_HOURS_LEFT] < hours_done and row[B_HOURS_LEFT] > 0:
        ev, n = _release_hour(st, ev, n, ci, b)
    return ev, n


@njit(cache=True)
def _elapsed_hours(st, b):
    row = st[ST_OBL][b]
    now = st[ST_META][0, M_NOW]
    return min(max((now - row[B_START]) // NS_PER_HOUR, 0), row[B_HOURS])


@njit(cache=True)
def _clock(st, ev, n, ci, cmd):
    meta = st[ST_META][0]
    cfg = st[ST_CFG][0]
    if cmd[C0_AUX] > meta[M_NOW]:
        meta[M_NOW] = cmd[C0_AUX]
    now = meta[M_NOW]
    ev, n = _expire_gtd(st, ev, n, ci)
    instrs = st[ST_INSTRS]
    for i in range(instrs.shape[0]):
        if instrs[i, I_STATE] == INSTR_OPEN and instrs[i, I_GATE] <= now:
            ev, n = _close_instrument(st, ev, n, ci, i)
    obl = st[ST_OBL]
    for b in range(meta[M_OBL_HWM]):
        state = obl[b, B_STATE]
        if state == OBL_ASSIGNED and now >= obl[b, B_START] + cfg[CFG_DEADLINE_NS]:
            ev, n = _settle(st, ev, n, ci, b, DO_FAILED)
        elif state == OBL_CONFIRMED:
            ev, n = _deliver_to(st, ev, n, ci, b, _elapsed_hours(st, b))
            if obl[b, B_HOURS_LEFT] == 0:
                ev, n = _settle(st, ev, n, ci, b, DO_DELIVERED)
    return ev, n


@njit(cache=True)
def _obligation(st, ev, n, ci, cmd):
    """Return (slot, ev, n) for a delivery command; slot EMPTY after a rejection."""
    account = cmd[C0_ACCOUNT]
    oid = cmd[C0_ORDER]
    b = oid & ORDER_SLOT_MASK if oid > 0 else EMPTY
    obl = st[ST_OBL]
    if b == EMPTY or b >= obl.shape[0] or obl[b, B_ID] != oid:
        ev, n = _reject(st, ev, n, ci, account, R_UNKNOWN_OBLIGATION, oid, -1)
        return EMPTY, ev, n
    if account != ACCT_EXTERNAL and account != obl[b, B_PROVIDER]:
        ev, n = _reject(st, ev, n, ci, account, R_NOT_OBLIGATION_PROVIDER, oid, -1)
        return EMPTY, ev, n
    return b, ev, n


@njit(cache=True)
def _confirm(st, ev, n, ci, cmd):
    b, ev, n = _obligation(st, ev, n, ci, cmd)
    if b == EMPTY:
        return ev, n
    row = st[ST_OBL][b]
    if row[B_STATE] != OBL_ASSIGNED:
        return _reject(st, ev, n, ci, cmd[C0_ACCOUNT], R_OBLIGATION_STATE, row[B_ID], -1)
    row[B_STATE] = OBL_CONFIRMED
    ev, n = _emit(
        ev, n, EV_STARTED, ci, row[B_ID], row[B_PROVIDER], row[B_HOLDER], 0, 0, 0, 0, 0, 0, 0, 0, 0
    )
    # A confirmation that arrives late still pays the hours already elapsed.
    ev, n = _deliver_to(st, ev, n, ci, b, _elapsed_hours(st, b))
    if row[B_HOURS_LEFT] == 0:
        ev, n = _settle(st, ev, n, ci, b, DO_DELIVERED)
    return ev, n


@njit(cache=True)
def _fail(st, ev, n, ci, cmd):
    b, ev, n = _obligation(st, ev, n, ci, cmd)
    if b == EMPTY:
        return ev, n
    row = st[ST_OBL][b]
    claimed = cmd[C0_LOTS]
    if claimed < 0 or claimed > row[B_HOURS]:
        return _reject(st, ev, n, ci, cmd[C0_ACCOUNT], R_AMOUNT_INVALID, row[B_ID], -1)
    if row[B_STATE] == OBL_CONFIRMED:
        # Hours count as delivered only once they have passed and the provider claims them.
        ev, n = _deliver_to(st, ev, n, ci, b, min(claimed, _elapsed_hours(st, b)))
    delivered = row[B_HOURS] - row[B_HOURS_LEFT]
    return _settle(st, ev, n, ci, b, DO_INTERRUPTED if delivered > 0 else DO_FAILED)


# ============================================================================ dispatcher


@njit(cache=True)
def _apply(cmds, st, ev):
    """Apply every command row in order; return (events, event count)."""
    n = 0
    for ci in range(cmds.shape[0]):
        cmd = cmds[ci]
        op = cmd[C0_OP]
        if op == OP_PLACE:
            ev, n = _place(st, ev, n, ci, cmd)
        elif op == OP_CANCEL:
            ev, n = _cancel(st, ev, n, ci, cmd)
        elif op == OP_AMEND:
            ev, n = _amend(st, ev, n, ci, cmd)
        elif op == OP_CANCEL_ALL:
            ev, n = _cancel_all(st, ev, n, ci, cmd)
        elif op == OP_DEPOSIT:
            ev, n = _deposit(st, ev, n, ci, cmd)
        elif op == OP_WITHDRAW:
            ev, n = _withdraw(st, ev, n, ci, cmd)
        elif op == OP_CAPACITY:
            ev, n = _capacity(st, ev, n, ci, cmd)
        elif op == OP_CLOCK:
            ev, n = _clock(st, ev, n, ci, cmd)
        elif op == OP_CONFIRM:
            ev, n = _confirm(st, ev, n, ci, cmd)
        elif op == OP_FAIL:
            ev, n = _fail(st, ev, n, ci, cmd)
        elif op == OP_LIST:
            ev, n = _list(st, ev, n, ci, cmd)
        else:
            # OP_REJECT: the facade refused it (unknown symbol, malformed); code in C0_AUX.
            ev, n = _reject(st, ev, n, ci, cmd[C0_ACCOUNT], cmd[C0_AUX], cmd[C0_ORDER], -1)
    return ev, n


@njit(cache=True)
def _rebuild(st):
    """Re-index levels, positions and capacity rows after a restore."""
    meta = st[ST_META][0]
    levels = st[ST_LEVELS]
    for lv in range(meta[M_LEVEL_HWM]):
        book = levels[lv, L_BOOK]
        if book != EMPTY:
            _ht_put(st[ST_LEVEL_HT], _level_key(book >> 1, book & 1, levels[lv, L_PRICE]), lv)
    pos = st[ST_POS]
    for r in range(meta[M_POS_HWM]):
        if pos[r, P_ACCOUNT] != EMPTY:
            _ht_put(st[ST_POS_HT], _pos_key(pos[r, P_ACCOUNT], pos[r, P_INSTR]), r)
    cap = st[ST_CAP]
    for r in range(meta[M_CAP_HWM]):
        _ht_put(st[ST_CAP_HT], cap[r, C_KEY], r)
