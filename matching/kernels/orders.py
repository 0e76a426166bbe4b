"""Order commands: validation, risk (holds, cover, limits), place, amend, cancel, cancel-all."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import (
    ACCOUNT_FIRST_USER,
    BPS,
    CR_HOLD,
    CX_CANCEL_ALL,
    CX_USER,
    EMPTY,
    R_AMEND_NO_CHANGE,
    R_ENGINE_FULL,
    R_EXPIRY_INVALID,
    R_FOK_NOT_FILLABLE,
    R_INSUFFICIENT_CASH,
    R_INSUFFICIENT_COVER,
    R_LOTS_ABOVE_MAX,
    R_LOTS_INVALID,
    R_NO_LIQUIDITY,
    R_NOT_ORDER_OWNER,
    R_OPEN_ORDERS_LIMIT,
    R_ORDER_TYPE_INVALID,
    R_POST_ONLY_WOULD_TAKE,
    R_PRICE_INVALID,
    R_PRICE_OUT_OF_BAND,
    R_UNKNOWN_ACCOUNT,
    R_UNKNOWN_ORDER,
    _cash,
    _emit_accepted,
    _emit_amended,
    _reject,
)
from matching.kernels.book import _book_unlink, _order_new, _order_slot, _reduce, _release
from matching.kernels.controls import _breaker_after_trades, _check_instrument, _order_refusal
from matching.kernels.expiry import _gtd_live
from matching.kernels.pools import _cap_free_for, _cap_use, _pos_find, _pos_get
from matching.kernels.trades import _crosses, _fok_fillable, _match, _rest_or_finish
from matching.layout import (
    A_AVAIL,
    A_HEAD,
    A_OPEN,
    BUY,
    C_AMEND_ACCOUNT,
    C_AMEND_LOTS,
    C_AMEND_ORDER,
    C_AMEND_PRICE,
    C_CANCEL_ACCOUNT,
    C_CANCEL_ALL_ACCOUNT,
    C_CANCEL_ALL_INSTR,
    C_CANCEL_ORDER,
    C_PLACE_ACCOUNT,
    C_PLACE_EXPIRE,
    C_PLACE_FLAGS,
    C_PLACE_INSTR,
    C_PLACE_LOTS,
    C_PLACE_PRICE,
    C_PLACE_SIDE,
    CFG_ORDERS_OPEN_MAX,
    CFG_PROTECTION_BPS,
    CFG_TAKER_BPS,
    EV_CANCELLED,
    F_MARKET,
    F_POST_ONLY,
    F_STP_SHIFT,
    I_BAND_HI,
    I_BAND_LO,
    I_BEST,
    I_COLLAT_UNIT,
    I_ID,
    I_LOTS_MAX,
    I_NOTIONAL_UNIT,
    I_VOLUME,
    INSTR_ALL,
    L_LOTS,
    L_PRICE,
    M_GTD_SIZE,
    M_LEVELS_LIVE,
    M_NOW,
    M_OBL_LIVE,
    M_ORDERS_LIVE,
    M_POS_LIVE,
    O_ACCOUNT,
    O_ANEXT,
    O_COVERED,
    O_FLAGS,
    O_ID,
    O_INSTR,
    O_LEVEL,
    O_LOTS,
    O_PRICE,
    O_SIDE,
    O_UNIT,
    P_LOTS,
    P_RESERVED,
    SELL,
    STP_DECREMENT,
    TIF_FOK,
    TIF_GTD,
    TIF_IOC,
)


@njit(cache=True, _nrt=False)
def _unit_hold(instrs, instr, price, taker_bps):
    """Cash held per lot of a bid: notional at its limit plus the taker fee, rounded up."""
    notional = instrs[instr, I_NOTIONAL_UNIT] * price
    return notional + (notional * taker_bps + BPS - 1) // BPS


@njit(cache=True, _nrt=False)
def _user_account(accts, account):
    return ACCOUNT_FIRST_USER <= account < accts.shape[0]


@njit(cache=True, _nrt=False)
def _long_free(pos, pht, account, instr):
    """Long lots not yet promised to open asks (what can be resold)."""
    prow = _pos_find(pht, account, instr)
    if prow == EMPTY:
        return 0
    return max(pos[prow, P_LOTS] - pos[prow, P_RESERVED], 0)


@njit(cache=True, _nrt=False)
def _pool_room(st, lots, new_order, gtd_order):
    """Reject code if the pools cannot take an order (new, or amended when `new_order` is
    False) that may rest on a new level and trade with up to `lots` makers."""
    meta, orders, levels, pos = st.meta, st.orders, st.levels, st.positions
    obl, gtd = st.obligations, st.gtd_heap
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


@njit(cache=True, _nrt=False)
def _check_price(instrs, instr, price):
    if price <= 0:
        return R_PRICE_INVALID
    if price < instrs[instr, I_BAND_LO] or price > instrs[instr, I_BAND_HI]:
        return R_PRICE_OUT_OF_BAND
    return 0


@njit(cache=True, _nrt=False)
def _check_lots(instrs, instr, lots):
    if lots <= 0:
        return R_LOTS_INVALID
    if lots > instrs[instr, I_LOTS_MAX]:
        return R_LOTS_ABOVE_MAX
    return 0


@njit(cache=True, _nrt=False)
def _would_take(instrs, levels, instr, side, price):
    best = instrs[instr, I_BEST + (1 - side)]
    return best != EMPTY and _crosses(side, levels[best, L_PRICE], price)


@njit(cache=True, _nrt=False)
def _sell_cover(st, account, instr, lots, covered_now, uncovered_now):
    """Split an ask into covered and uncovered lots; return (covered, code).

    `covered_now`/`uncovered_now` are what the order already holds (amend), released first.
    """
    instrs, pos, pht, cap, cht = (
        st.instruments,
        st.positions,
        st.position_ht,
        st.capacity,
        st.capacity_ht,
    )
    covered = min(lots, _long_free(pos, pht, account, instr) + covered_now)
    uncovered = lots - covered
    free = _cap_free_for(instrs, cap, cht, account, instr)
    if uncovered > uncovered_now and free < uncovered - uncovered_now:
        return covered, R_INSUFFICIENT_COVER
    return covered, 0


@njit(cache=True, _nrt=False)
def _place(st, ev, n, ci, cmds):
    meta, cfg, accts, instrs = st.meta, st.cfg, st.accounts, st.instruments
    orders, levels, pos, pht = st.orders, st.levels, st.positions, st.position_ht
    cap, cht = st.capacity, st.capacity_ht
    account = cmds[ci, C_PLACE_ACCOUNT]
    instr = cmds[ci, C_PLACE_INSTR]
    side = cmds[ci, C_PLACE_SIDE]
    price = cmds[ci, C_PLACE_PRICE]
    lots = cmds[ci, C_PLACE_LOTS]
    flags = cmds[ci, C_PLACE_FLAGS]
    tif = flags & 3
    market = (flags & F_MARKET) != 0
    post_only = (flags & F_POST_ONLY) != 0
    stp = (flags >> F_STP_SHIFT) & 7
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, instr)
    code = _check_instrument(instrs, instr)
    if code == 0:
        code = _order_refusal(accts, instrs, account, instr)
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
    if tif == TIF_GTD and cmds[ci, C_PLACE_EXPIRE] <= meta[0, M_NOW]:
        return _reject(instrs, ev, n, ci, account, R_EXPIRY_INVALID, 0, instr)
    if post_only and _would_take(instrs, levels, instr, side, price):
        return _reject(instrs, ev, n, ci, account, R_POST_ONLY_WOULD_TAKE, 0, instr)
    if accts[account, A_OPEN] >= cfg[0, CFG_ORDERS_OPEN_MAX]:
        return _reject(instrs, ev, n, ci, account, R_OPEN_ORDERS_LIMIT, 0, instr)
    code = _pool_room(st, lots, True, tif == TIF_GTD)
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, 0, instr)
    if tif == TIF_FOK and _fok_fillable(st, instr, side, price, account, stp, lots) < lots:
        return _reject(instrs, ev, n, ci, account, R_FOK_NOT_FILLABLE, 0, instr)
    covered = 0
    if side == BUY:
        unit = _unit_hold(instrs, instr, price, cfg[0, CFG_TAKER_BPS])
        hold = unit * lots
    else:
        covered, code = _sell_cover(st, account, instr, lots, 0, 0)
        if code != 0:
            return _reject(instrs, ev, n, ci, account, code, 0, instr)
        unit = instrs[instr, I_COLLAT_UNIT]
        hold = unit * (lots - covered)
    if hold > accts[account, A_AVAIL]:
        return _reject(instrs, ev, n, ci, account, R_INSUFFICIENT_CASH, 0, instr)
    # --- accepted: from here on nothing can refuse -------------------------------------------
    expire = cmds[ci, C_PLACE_EXPIRE] if tif == TIF_GTD else 0
    slot = _order_new(meta, accts, orders, account, instr, side, price, lots, flags, expire)
    orders[slot, O_UNIT] = unit
    orders[slot, O_COVERED] = covered
    n = _emit_accepted(
        ev,
        n,
        ci,
        orders[slot, O_ID],
        account,
        instrs[instr, I_ID],
        side,
        price,
        lots,
        flags,
        expire,
    )
    if hold != 0:
        n = _cash(accts, ev, n, ci, account, -hold, hold, 0, 0, CR_HOLD, orders[slot, O_ID])
    if side == SELL:
        if covered > 0:
            pos[_pos_get(meta, instrs, pos, pht, account, instr), P_RESERVED] += covered
        if lots > covered:
            _cap_use(instrs, cap, cht, account, instr, lots - covered)
    volume_before = instrs[instr, I_VOLUME]
    n, alive = _match(st, ev, n, ci, slot, price)
    if alive:
        n = _rest_or_finish(st, ev, n, ci, slot, True)
    return _breaker_after_trades(st, ev, n, ci, instr, volume_before)


@njit(cache=True, _nrt=False)
def _owned_order(instrs, orders, ev, n, ci, account, order_id):
    """Return (slot, n); slot EMPTY after emitting the rejection."""
    slot = _order_slot(orders, order_id)
    if slot == EMPTY:
        n = _reject(instrs, ev, n, ci, account, R_UNKNOWN_ORDER, order_id, -1)
        return EMPTY, n
    if orders[slot, O_ACCOUNT] != account:
        n = _reject(instrs, ev, n, ci, account, R_NOT_ORDER_OWNER, order_id, -1)
        return EMPTY, n
    return slot, n


@njit(cache=True, _nrt=False)
def _cancel(st, ev, n, ci, cmds):
    instrs, orders = st.instruments, st.orders
    slot, n = _owned_order(
        instrs, orders, ev, n, ci, cmds[ci, C_CANCEL_ACCOUNT], cmds[ci, C_CANCEL_ORDER]
    )
    if slot == EMPTY:
        return n
    return _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_CANCELLED, CX_USER)


@njit(cache=True, _nrt=False)
def _cancel_all(st, ev, n, ci, cmds):
    accts, instrs, orders = st.accounts, st.instruments, st.orders
    account = cmds[ci, C_CANCEL_ALL_ACCOUNT]
    instr = cmds[ci, C_CANCEL_ALL_INSTR]
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
            n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_CANCELLED, CX_CANCEL_ALL)
        slot = nxt
    return n


@njit(cache=True, _nrt=False)
def _amend(st, ev, n, ci, cmds):
    meta, cfg, accts, instrs = st.meta, st.cfg, st.accounts, st.instruments
    orders, levels, lht, pos, pht = st.orders, st.levels, st.level_ht, st.positions, st.position_ht
    cap, cht = st.capacity, st.capacity_ht
    account = cmds[ci, C_AMEND_ACCOUNT]
    order_id = cmds[ci, C_AMEND_ORDER]
    price = cmds[ci, C_AMEND_PRICE]
    lots = cmds[ci, C_AMEND_LOTS]
    slot, n = _owned_order(instrs, orders, ev, n, ci, account, order_id)
    if slot == EMPTY:
        return n
    instr = orders[slot, O_INSTR]
    code = _order_refusal(accts, instrs, account, instr)
    if code == 0:
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
        n = _emit_amended(ev, n, ci, order_id, account, instrs[instr, I_ID], price, lots, 1)
        cut = orders[slot, O_LOTS] - lots
        n = _release(st, ev, n, ci, slot, cut)
        levels[orders[slot, O_LEVEL], L_LOTS] -= cut
        orders[slot, O_LOTS] = lots
        return n
    if (orders[slot, O_FLAGS] & F_POST_ONLY) != 0 and _would_take(
        instrs, levels, instr, side, price
    ):
        return _reject(instrs, ev, n, ci, account, R_POST_ONLY_WOULD_TAKE, order_id, instr)
    code = _pool_room(st, lots, False, False)
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
        covered, code = _sell_cover(st, account, instr, lots, old_cov, old_unc)
        if code != 0:
            return _reject(instrs, ev, n, ci, account, code, order_id, instr)
        unit = orders[slot, O_UNIT]
        delta_hold = unit * ((lots - covered) - old_unc)
    if delta_hold > accts[account, A_AVAIL]:
        return _reject(instrs, ev, n, ci, account, R_INSUFFICIENT_CASH, order_id, instr)
    # --- accepted: re-price loses time priority and may trade ---------------------------------
    _book_unlink(meta, instrs, orders, levels, lht, slot)
    n = _emit_amended(ev, n, ci, order_id, account, instrs[instr, I_ID], price, lots, 0)
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
    volume_before = instrs[instr, I_VOLUME]
    n, alive = _match(st, ev, n, ci, slot, price)
    if alive:
        n = _rest_or_finish(st, ev, n, ci, slot, False)
    return _breaker_after_trades(st, ev, n, ci, instr, volume_before)
