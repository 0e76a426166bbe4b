"""Time-driven work: listing, GTD expiry, gate closure, delivery assignment and settlement."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import (
    CR_DELIVERY_PENALTY,
    CR_DELIVERY_REFUND,
    CR_DELIVERY_RELEASE,
    CR_SHORT_COVERED,
    DO_DELIVERED,
    DO_FAILED,
    DO_INTERRUPTED,
    EMPTY,
    NS_PER_HOUR,
    PR_ASSIGNED,
    R_AMOUNT_INVALID,
    R_DISPUTE_WINDOW,
    R_NOT_OBLIGATION_HOLDER,
    R_NOT_OBLIGATION_PROVIDER,
    R_OBLIGATION_STATE,
    R_UNKNOWN_ACCOUNT,
    R_UNKNOWN_OBLIGATION,
    XP_GATE,
    XP_GTD,
    _cash,
    _emit_assigned,
    _emit_closed,
    _emit_disputed,
    _emit_listed,
    _emit_position,
    _emit_resolved,
    _emit_settled,
    _emit_started,
    _reject,
)
from matching.kernels.book import _order_slot, _reduce
from matching.kernels.controls import _breaker_tick
from matching.kernels.expiry import _gtd_pop
from matching.kernels.pools import _alloc, _cap_sweep, _pos_free
from matching.layout import (
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
    C_CLOCK_TS_NS,
    C_DELIVERY_ACCOUNT,
    C_DELIVERY_OBLIGATION,
    C_FAIL_HOURS_DELIVERED,
    C_LIST_BAND_HI,
    C_LIST_BAND_LO,
    C_LIST_GATE_NS,
    C_LIST_GPU,
    C_LIST_HOURS,
    C_LIST_INSTRUMENT_ID,
    C_LIST_LOTS_MAX,
    C_LIST_PRODUCT,
    C_LIST_REGION,
    C_LIST_SLOT,
    C_LIST_START_NS,
    C_RESOLVE_RELEASE,
    CFG_DEADLINE_NS,
    CFG_PENALTY_MICROS,
    CFG_REGIONS,
    CFG_TICK_MICROS,
    EV_EXPIRED,
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
    I_LOTS_MAX,
    I_NOTIONAL_UNIT,
    I_PRODUCT,
    I_REGION,
    I_START,
    I_STATE,
    I_WORST,
    INSTR_CLOSED,
    INSTR_OPEN,
    L_HEAD,
    M_GTD_SIZE,
    M_INSTR_SEQ,
    M_NOW,
    M_OBL_FREE,
    M_OBL_HWM,
    M_OBL_LIVE,
    M_OBL_SEQ,
    M_POS_HWM,
    O_LOTS,
    OBL_ASSIGNED,
    OBL_CONFIRMED,
    OBL_DISPUTED,
    OBL_FREE,
    ORDER_SLOT_BITS,
    ORDER_SLOT_MASK,
    P_ACCOUNT,
    P_COLLAT,
    P_ESCROW,
    P_FEES,
    P_INSTR,
    P_LOTS,
    SELL,
)


@njit(cache=True, _nrt=False)
def _list(st, ev, n, ci, cmds):
    """List an instrument in the slot the facade chose (it mirrors closures in command order)."""
    meta, cfg, instrs = st.meta, st.cfg, st.instruments
    row = instrs[cmds[ci, C_LIST_SLOT]]
    row[:] = 0
    hours = cmds[ci, C_LIST_HOURS]
    row[I_ID] = cmds[ci, C_LIST_INSTRUMENT_ID]
    row[I_STATE] = INSTR_OPEN
    row[I_GPU] = cmds[ci, C_LIST_GPU]
    row[I_REGION] = cmds[ci, C_LIST_REGION]
    row[I_PRODUCT] = cmds[ci, C_LIST_PRODUCT]
    row[I_START] = cmds[ci, C_LIST_START_NS]
    row[I_HOURS] = hours
    row[I_GATE] = cmds[ci, C_LIST_GATE_NS]
    row[I_BAND_LO] = cmds[ci, C_LIST_BAND_LO]
    row[I_BAND_HI] = cmds[ci, C_LIST_BAND_HI]
    row[I_LOTS_MAX] = cmds[ci, C_LIST_LOTS_MAX]
    row[I_BEST] = EMPTY
    row[I_BEST + 1] = EMPTY
    row[I_WORST] = EMPTY
    row[I_WORST + 1] = EMPTY
    row[I_CAPKEY] = cmds[ci, C_LIST_GPU] * cfg[0, CFG_REGIONS] + cmds[ci, C_LIST_REGION]
    row[I_HOUR0] = cmds[ci, C_LIST_START_NS] // NS_PER_HOUR
    row[I_NOTIONAL_UNIT] = cfg[0, CFG_TICK_MICROS] * hours
    row[I_COLLAT_UNIT] = cfg[0, CFG_PENALTY_MICROS] * hours
    meta[0, M_INSTR_SEQ] = max(meta[0, M_INSTR_SEQ], cmds[ci, C_LIST_INSTRUMENT_ID])
    return _emit_listed(ev, n, ci, row[I_ID], cmds[ci, C_LIST_SLOT])


@njit(cache=True, _nrt=False)
def _expire_gtd(st, ev, n, ci):
    meta, orders, gtd = st.meta, st.orders, st.gtd_heap
    while meta[0, M_GTD_SIZE] > 0 and gtd[0, 0] <= meta[0, M_NOW]:
        slot = _order_slot(orders, _gtd_pop(meta, gtd))
        if slot != EMPTY:
            n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_EXPIRED, XP_GTD)
    return n


@njit(cache=True, _nrt=False)
def _close_instrument(st, ev, n, ci, instr):
    """Gate closure: expire resting orders, turn positions into delivery obligations."""
    meta, accts, instrs, orders = st.meta, st.accounts, st.instruments, st.orders
    levels, pos, scratch = st.levels, st.positions, st.scratch
    for side in (BUY, SELL):
        while instrs[instr, I_BEST + side] != EMPTY:
            slot = levels[instrs[instr, I_BEST + side], L_HEAD]
            n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_EXPIRED, XP_GATE)
    instrs[instr, I_STATE] = INSTR_CLOSED
    # Collect (account, row) of the instrument's positions in the scratch rows, sorted by
    # account: assignment is by account id, so the outcome is a function of the positions alone.
    count = 0
    open_interest = 0
    for r in range(meta[0, M_POS_HWM]):
        if pos[r, P_ACCOUNT] != EMPTY and pos[r, P_INSTR] == instr:
            scratch[count, 0] = pos[r, P_ACCOUNT]
            scratch[count, 1] = r
            count += 1
            if pos[r, P_LOTS] > 0:
                open_interest += pos[r, P_LOTS]
    _heapsort_rows(scratch, count)
    n = _emit_closed(ev, n, ci, instrs[instr, I_ID], instr, open_interest)
    for k in range(count):
        r = scratch[k, 1]
        lots = pos[r, P_LOTS]
        if lots != 0:
            n = _emit_position(
                ev, n, ci, pos[r, P_ACCOUNT], instrs[instr, I_ID], -lots, 0, PR_ASSIGNED, 0
            )
    li = 0
    long_left = 0
    for k in range(count):
        r = scratch[k, 1]
        if pos[r, P_LOTS] >= 0:
            continue
        short_total = -pos[r, P_LOTS]
        short_left = short_total
        while short_left > 0:
            while long_left == 0:
                while pos[scratch[li, 1], P_LOTS] <= 0:
                    li += 1
                long_left = pos[scratch[li, 1], P_LOTS]
                li += 1
            gpus = min(short_left, long_left)
            holder = pos[scratch[li - 1, 1], P_ACCOUNT]
            last = gpus == short_left
            escrow = pos[r, P_ESCROW] if last else pos[r, P_ESCROW] * gpus // short_left
            fees = pos[r, P_FEES] if last else pos[r, P_FEES] * gpus // short_left
            collat = pos[r, P_COLLAT] if last else pos[r, P_COLLAT] * gpus // short_left
            pos[r, P_ESCROW] -= escrow
            pos[r, P_FEES] -= fees
            pos[r, P_COLLAT] -= collat
            short_left -= gpus
            long_left -= gpus
            n = _assign(st, ev, n, ci, instr, pos[r, P_ACCOUNT], holder, gpus, escrow, fees, collat)
    for k in range(count):
        r = scratch[k, 1]
        # What a position holds beyond its obligations (a short that was bought back) goes home.
        escrow = pos[r, P_ESCROW]
        collat = pos[r, P_COLLAT]
        if escrow != 0 or collat != 0:
            n = _cash(accts, ev, n, ci, pos[r, P_ACCOUNT], escrow + collat, 0, -escrow, -collat,
                CR_SHORT_COVERED, instrs[instr, I_ID],
            )  # fmt: skip
        _pos_free(meta, instrs, pos, st.position_ht, r)
    return n


@njit(cache=True, _nrt=False)
def _assign(st, ev, n, ci, instr, provider, holder, gpus, escrow, fees, collat):
    meta, instrs, obl = st.meta, st.instruments, st.obligations
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
    return _emit_assigned(
        ev, n, ci, obl[b, B_ID], provider, holder, gpus, instrs[instr, I_START], instrs[instr, I_HOURS],
        escrow, instrs[instr, I_ID],
    )  # fmt: skip


@njit(cache=True, _nrt=False)
def _release_hour(st, ev, n, ci, b):
    """Pay the provider one delivered hour: its share of escrow and of collateral."""
    accts, obl = st.accounts, st.obligations
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


@njit(cache=True, _nrt=False)
def _settle(st, ev, n, ci, b, outcome):
    """Close an obligation: undelivered hours refund the holder, plus the penalty."""
    meta, accts, obl = st.meta, st.accounts, st.obligations
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
    n = _emit_settled(
        ev, n, ci, obl[b, B_ID], provider, holder, outcome, delivered,
        obl[b, B_HOURS_LEFT], obl[b, B_RELEASED], refund + fees, penalty,
    )  # fmt: skip
    obl[b, B_STATE] = OBL_FREE
    obl[b, B_ID] = 0
    obl[b, B_NEXT] = meta[0, M_OBL_FREE]
    meta[0, M_OBL_FREE] = b
    meta[0, M_OBL_LIVE] -= 1
    return n


@njit(cache=True, _nrt=False)
def _deliver_to(st, ev, n, ci, b, hours_done):
    """Release every hour up to `hours_done` delivered hours."""
    obl = st.obligations
    while obl[b, B_HOURS] - obl[b, B_HOURS_LEFT] < hours_done and obl[b, B_HOURS_LEFT] > 0:
        n = _release_hour(st, ev, n, ci, b)
    return n


@njit(cache=True, _nrt=False)
def _elapsed_hours(meta, obl, b):
    now = meta[0, M_NOW]
    return min(max((now - obl[b, B_START]) // NS_PER_HOUR, 0), obl[b, B_HOURS])


@njit(cache=True, _nrt=False)
def _clock(st, ev, n, ci, cmds):
    meta, cfg, instrs, obl = st.meta, st.cfg, st.instruments, st.obligations
    hour_before = meta[0, M_NOW] // NS_PER_HOUR
    if cmds[ci, C_CLOCK_TS_NS] > meta[0, M_NOW]:
        meta[0, M_NOW] = cmds[ci, C_CLOCK_TS_NS]
    now = meta[0, M_NOW]
    if now // NS_PER_HOUR > hour_before:
        # An hour is over: its capacity rows back nothing more (once an hour, not every tick).
        _cap_sweep(meta, st.accounts, st.capacity, st.capacity_ht, now // NS_PER_HOUR)
    n = _expire_gtd(st, ev, n, ci)
    for i in range(instrs.shape[0]):
        if instrs[i, I_STATE] == INSTR_OPEN and instrs[i, I_GATE] <= now:
            n = _close_instrument(st, ev, n, ci, i)
    n = _breaker_tick(st, ev, n, ci)
    for b in range(meta[0, M_OBL_HWM]):
        state = obl[b, B_STATE]
        if state == OBL_ASSIGNED and now >= obl[b, B_START] + cfg[0, CFG_DEADLINE_NS]:
            n = _settle(st, ev, n, ci, b, DO_FAILED)
        elif state == OBL_CONFIRMED:
            n = _deliver_to(st, ev, n, ci, b, _elapsed_hours(meta, obl, b))
            if obl[b, B_HOURS_LEFT] == 0:
                n = _settle(st, ev, n, ci, b, DO_DELIVERED)
    return n


@njit(cache=True, _nrt=False)
def _obligation(instrs, obl, ev, n, ci, cmds):
    """Return (slot, n) for a delivery command; slot EMPTY after a rejection."""
    account = cmds[ci, C_DELIVERY_ACCOUNT]
    oid = cmds[ci, C_DELIVERY_OBLIGATION]
    b = oid & ORDER_SLOT_MASK if oid > 0 else EMPTY
    if b == EMPTY or b >= obl.shape[0] or obl[b, B_ID] != oid:
        n = _reject(instrs, ev, n, ci, account, R_UNKNOWN_OBLIGATION, oid, -1)
        return EMPTY, n
    if account != ACCT_EXTERNAL and account != obl[b, B_PROVIDER]:
        n = _reject(instrs, ev, n, ci, account, R_NOT_OBLIGATION_PROVIDER, oid, -1)
        return EMPTY, n
    return b, n


@njit(cache=True, _nrt=False)
def _confirm(st, ev, n, ci, cmds):
    meta, instrs, obl = st.meta, st.instruments, st.obligations
    b, n = _obligation(instrs, obl, ev, n, ci, cmds)
    if b == EMPTY:
        return n
    if obl[b, B_STATE] != OBL_ASSIGNED:
        return _reject(
            instrs, ev, n, ci, cmds[ci, C_DELIVERY_ACCOUNT], R_OBLIGATION_STATE, obl[b, B_ID], -1
        )
    obl[b, B_STATE] = OBL_CONFIRMED
    n = _emit_started(ev, n, ci, obl[b, B_ID], obl[b, B_PROVIDER], obl[b, B_HOLDER])
    # A confirmation that arrives late still pays the hours already elapsed.
    n = _deliver_to(st, ev, n, ci, b, _elapsed_hours(meta, obl, b))
    if obl[b, B_HOURS_LEFT] == 0:
        n = _settle(st, ev, n, ci, b, DO_DELIVERED)
    return n


@njit(cache=True, _nrt=False)
def _fail(st, ev, n, ci, cmds):
    meta, instrs, obl = st.meta, st.instruments, st.obligations
    b, n = _obligation(instrs, obl, ev, n, ci, cmds)
    if b == EMPTY:
        return n
    claimed = cmds[ci, C_FAIL_HOURS_DELIVERED]
    if claimed < 0 or claimed > obl[b, B_HOURS]:
        return _reject(
            instrs, ev, n, ci, cmds[ci, C_DELIVERY_ACCOUNT], R_AMOUNT_INVALID, obl[b, B_ID], -1
        )
    if obl[b, B_STATE] == OBL_CONFIRMED:
        # Hours count as delivered only once they have passed and the provider claims them.
        n = _deliver_to(st, ev, n, ci, b, min(claimed, _elapsed_hours(meta, obl, b)))
    delivered = obl[b, B_HOURS] - obl[b, B_HOURS_LEFT]
    return _settle(st, ev, n, ci, b, DO_INTERRUPTED if delivered > 0 else DO_FAILED)


@njit(cache=True, _nrt=False)
def _dispute(st, ev, n, ci, cmds):
    """The holder cannot reach a confirmed machine: hold its hours until an operator resolves.

    Only in the first hour of the window: later, the hours the holder used speak for themselves.
    """
    meta, instrs, obl = st.meta, st.instruments, st.obligations
    account = cmds[ci, C_DELIVERY_ACCOUNT]
    oid = cmds[ci, C_DELIVERY_OBLIGATION]
    b = oid & ORDER_SLOT_MASK if oid > 0 else EMPTY
    if b == EMPTY or b >= obl.shape[0] or obl[b, B_ID] != oid:
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_OBLIGATION, oid, -1)
    if account != obl[b, B_HOLDER]:
        return _reject(instrs, ev, n, ci, account, R_NOT_OBLIGATION_HOLDER, oid, -1)
    if obl[b, B_STATE] != OBL_CONFIRMED:
        return _reject(instrs, ev, n, ci, account, R_OBLIGATION_STATE, oid, -1)
    now = meta[0, M_NOW]
    if now < obl[b, B_START] or now >= obl[b, B_START] + NS_PER_HOUR:
        return _reject(instrs, ev, n, ci, account, R_DISPUTE_WINDOW, oid, -1)
    obl[b, B_STATE] = OBL_DISPUTED
    return _emit_disputed(ev, n, ci, oid, obl[b, B_PROVIDER], obl[b, B_HOLDER])


@njit(cache=True, _nrt=False)
def _resolve(st, ev, n, ci, cmds):
    """An operator ends a dispute: release (delivery goes on, elapsed hours are paid at once) or
    refund the holder every hour not yet released, with the penalty, as a failed delivery."""
    meta, instrs, obl = st.meta, st.instruments, st.obligations
    if cmds[ci, C_DELIVERY_ACCOUNT] != ACCT_EXTERNAL:  # only the operator resolves
        return _reject(instrs, ev, n, ci, cmds[ci, C_DELIVERY_ACCOUNT], R_UNKNOWN_ACCOUNT, 0, -1)
    b, n = _obligation(instrs, obl, ev, n, ci, cmds)
    if b == EMPTY:
        return n
    if obl[b, B_STATE] != OBL_DISPUTED:
        return _reject(
            instrs, ev, n, ci, cmds[ci, C_DELIVERY_ACCOUNT], R_OBLIGATION_STATE, obl[b, B_ID], -1
        )
    release = 1 if cmds[ci, C_RESOLVE_RELEASE] != 0 else 0
    n = _emit_resolved(ev, n, ci, obl[b, B_ID], obl[b, B_PROVIDER], obl[b, B_HOLDER], release)
    if release == 0:
        delivered = obl[b, B_HOURS] - obl[b, B_HOURS_LEFT]
        return _settle(st, ev, n, ci, b, DO_INTERRUPTED if delivered > 0 else DO_FAILED)
    obl[b, B_STATE] = OBL_CONFIRMED
    n = _deliver_to(st, ev, n, ci, b, _elapsed_hours(meta, obl, b))
    if obl[b, B_HOURS_LEFT] == 0:
        n = _settle(st, ev, n, ci, b, DO_DELIVERED)
    return n


@njit(cache=True, _nrt=False)
def _heapsort_rows(a, count):
    """Sort rows a[:count] by column 0 in place (no allocation: kernels run without NRT)."""
    for start in range(count // 2 - 1, -1, -1):
        _sift_down(a, start, count)
    for end in range(count - 1, 0, -1):
        for col in range(a.shape[1]):
            a[0, col], a[end, col] = a[end, col], a[0, col]
        _sift_down(a, 0, end)


@njit(cache=True, _nrt=False)
def _sift_down(a, i, size):
    while True:
        child = 2 * i + 1
        if child >= size:
            return
        if child + 1 < size and a[child + 1, 0] > a[child, 0]:
            child += 1
        if a[child, 0] <= a[i, 0]:
            return
        for col in range(a.shape[1]):
            a[i, col], a[child, col] = a[child, col], a[i, col]
        i = child
