"""Price levels and orders: the book of each instrument, holds released when orders shrink."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import CR_RELEASE, EMPTY, _cash, _emit_cancelled, _emit_expired, _iid
from matching.kernels.pools import _alloc, _cap_use, _ht_del, _ht_get, _ht_put, _pos_find
from matching.layout import (
    A_HEAD,
    A_OPEN,
    A_TAIL,
    BUY,
    EV_CANCELLED,
    I_BEST,
    I_ORDERS,
    I_WORST,
    L_BOOK,
    L_COUNT,
    L_HEAD,
    L_LOTS,
    L_NEXT,
    L_PREV,
    L_PRICE,
    L_TAIL,
    M_LEVEL_FREE,
    M_LEVEL_HWM,
    M_LEVELS_LIVE,
    M_ORDER_FREE,
    M_ORDER_HWM,
    M_ORDER_SEQ,
    M_ORDERS_LIVE,
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
    ORDER_SLOT_BITS,
    ORDER_SLOT_MASK,
    P_RESERVED,
)


@njit(cache=True, _nrt=False)
def _better(a, b, side):
    """Whether price a has priority over price b on this side of the book."""
    return a > b if side == BUY else a < b


@njit(cache=True, _nrt=False)
def _level_key(instr, side, price):
    return ((instr * 2 + side) << 31) | price


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _order_slot(orders, order_id):
    """Slot of a live order id, or EMPTY."""
    if order_id <= 0:
        return EMPTY
    slot = order_id & ORDER_SLOT_MASK
    if slot >= orders.shape[0] or orders[slot, O_ID] != order_id:
        return EMPTY
    return slot


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _book_append(meta, instrs, orders, levels, lht, slot):
    """Rest an order at the back of its price level."""
    instr, side, price = orders[slot, O_INSTR], orders[slot, O_SIDE], orders[slot, O_PRICE]
    lv = _level_get_or_add(meta, instrs, levels, lht, instr, side, price)
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


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _release(st, ev, n, ci, slot, lots):
    """Release the holds and reservations behind `lots` unfilled lots of an order."""
    accts, instrs, orders, pos, pht = (
        st.accounts,
        st.instruments,
        st.orders,
        st.positions,
        st.position_ht,
    )
    cap, cht = st.capacity, st.capacity_ht
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


@njit(cache=True, _nrt=False)
def _reduce(st, ev, n, ci, slot, lots, event_type, reason):
    """Cancel or expire `lots` of an order (all of them removes it), releasing what they held."""
    meta, accts, instrs, orders = st.meta, st.accounts, st.instruments, st.orders
    levels, lht = st.levels, st.level_ht
    remaining = orders[slot, O_LOTS] - lots
    oid, account = orders[slot, O_ID], orders[slot, O_ACCOUNT]
    iid = _iid(instrs, orders[slot, O_INSTR])
    if event_type == EV_CANCELLED:
        n = _emit_cancelled(ev, n, ci, oid, account, iid, lots, remaining, reason)
    else:
        n = _emit_expired(ev, n, ci, oid, account, iid, lots, remaining, reason)
    n = _release(st, ev, n, ci, slot, lots)
    if orders[slot, O_LEVEL] != EMPTY:
        levels[orders[slot, O_LEVEL], L_LOTS] -= lots
    orders[slot, O_LOTS] = remaining
    if remaining == 0:
        _book_unlink(meta, instrs, orders, levels, lht, slot)
        _order_free(meta, accts, orders, slot)
    return n
