"""Matching a taker against the book, and settling each fill (cash, escrow, positions)."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import (
    BPS,
    CR_FEE,
    CR_TRADE,
    CX_IOC,
    CX_SELF_TRADE,
    EMPTY,
    PR_TRADE,
    _cash,
    _emit_position,
    _emit_trade,
)
from matching.kernels.book import _book_append, _book_unlink, _order_free, _reduce
from matching.kernels.expiry import _gtd_compact, _gtd_push
from matching.kernels.pools import _cap_use, _pos_get
from matching.layout import (
    ACCT_FEES,
    BUY,
    CFG_MAKER_BPS,
    CFG_TAKER_BPS,
    EV_CANCELLED,
    F_MARKET,
    F_STP_SHIFT,
    I_BEST,
    I_ID,
    I_LAST_PRICE,
    I_NOTIONAL_UNIT,
    I_VOLUME,
    L_HEAD,
    L_LOTS,
    L_NEXT,
    L_PRICE,
    M_GTD_SIZE,
    M_TRADE_SEQ,
    O_ACCOUNT,
    O_COVERED,
    O_EXPIRE,
    O_FILLED,
    O_FLAGS,
    O_ID,
    O_INSTR,
    O_LEVEL,
    O_LOTS,
    O_NEXT,
    O_SIDE,
    O_UNIT,
    P_COLLAT,
    P_ESCROW,
    P_FEES,
    P_LOTS,
    P_RESERVED,
    STP_CANCEL_BOTH,
    STP_CANCEL_MAKER,
    STP_DECREMENT,
    STP_NONE,
    TIF_FOK,
    TIF_GTD,
    TIF_IOC,
)


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _fill(st, ev, n, ci, instr, maker, taker, price, q):
    """Execute q lots between a resting maker and the taker at the maker's price."""
    meta, cfg, accts, instrs = st.meta, st.cfg, st.accounts, st.instruments
    orders, levels, pos, pht = st.orders, st.levels, st.positions, st.position_ht
    cap, cht = st.capacity, st.capacity_ht
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
    n = _emit_trade(
        ev, n, ci, trade_id, instrs[instr, I_ID], price, q, taker_side, orders[maker, O_ID], orders[taker, O_ID],
        orders[maker, O_ACCOUNT], orders[taker, O_ACCOUNT], maker_fee, taker_fee,
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
    n = _emit_position(ev, n, ci, ba, instrs[instr, I_ID], q, buyer_lots, PR_TRADE, trade_id)
    n = _emit_position(ev, n, ci, sa, instrs[instr, I_ID], -q, seller_lots, PR_TRADE, trade_id)
    orders[maker, O_LOTS] -= q
    orders[maker, O_FILLED] += q
    orders[taker, O_LOTS] -= q
    orders[taker, O_FILLED] += q
    levels[orders[maker, O_LEVEL], L_LOTS] -= q
    instrs[instr, I_LAST_PRICE] = price
    instrs[instr, I_VOLUME] += q
    return n


@njit(cache=True, _nrt=False)
def _crosses(side, level_price, limit):
    return level_price <= limit if side == BUY else level_price >= limit


@njit(cache=True, _nrt=False)
def _fok_fillable(st, instr, side, limit, account, stp, lots):
    """Lots an FOK order would fill before matching stops (self-trade rules included)."""
    instrs, orders, levels = st.instruments, st.orders, st.levels
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


@njit(cache=True, _nrt=False)
def _match(st, ev, n, ci, taker, limit):
    """Match the taker against the opposite book up to its limit price. Return (n, alive)."""
    meta, accts, instrs = st.meta, st.accounts, st.instruments
    orders, levels, lht = st.orders, st.levels, st.level_ht
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
                    n = _reduce(st, ev, n, ci, o, orders[o, O_LOTS], EV_CANCELLED, CX_SELF_TRADE)
                elif stp == STP_DECREMENT:
                    d = min(orders[o, O_LOTS], orders[taker, O_LOTS])
                    n = _reduce(st, ev, n, ci, o, d, EV_CANCELLED, CX_SELF_TRADE)
                    n = _reduce(st, ev, n, ci, taker, d, EV_CANCELLED, CX_SELF_TRADE)
                    if orders[taker, O_ID] == 0:
                        return n, False
                else:
                    if stp == STP_CANCEL_BOTH:
                        n = _reduce(
                            st, ev, n, ci, o, orders[o, O_LOTS], EV_CANCELLED, CX_SELF_TRADE
                        )
                    n = _reduce(
                        st, ev, n, ci, taker, orders[taker, O_LOTS], EV_CANCELLED, CX_SELF_TRADE
                    )
                    return n, False
            else:
                q = min(orders[taker, O_LOTS], orders[o, O_LOTS])
                n = _fill(st, ev, n, ci, instr, o, taker, price, q)
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


@njit(cache=True, _nrt=False)
def _rest_or_finish(st, ev, n, ci, slot, new_order):
    """After matching: rest a GTC/GTD remainder, cancel an IOC/FOK/market remainder."""
    meta, accts, instrs = st.meta, st.accounts, st.instruments
    orders, levels, lht, gtd = st.orders, st.levels, st.level_ht, st.gtd_heap
    if orders[slot, O_LOTS] == 0:
        _order_free(meta, accts, orders, slot)
        return n
    tif = orders[slot, O_FLAGS] & 3
    if tif == TIF_IOC or tif == TIF_FOK or (orders[slot, O_FLAGS] & F_MARKET) != 0:
        return _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_CANCELLED, CX_IOC)
    if orders[slot, O_LEVEL] == EMPTY:
        _book_append(meta, instrs, orders, levels, lht, slot)
        if tif == TIF_GTD and new_order:
            if meta[0, M_GTD_SIZE] >= gtd.shape[0]:
                _gtd_compact(meta, orders, gtd)  # room was checked before the order was accepted
            _gtd_push(meta, gtd, orders[slot, O_EXPIRE], orders[slot, O_ID])
    return n
