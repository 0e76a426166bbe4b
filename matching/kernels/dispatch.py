"""The entry point: room checks and the command dispatcher, and re-indexing after restore."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import EMPTY, _reject
from matching.kernels.accounts import (
    _capacity,
    _deposit,
    _request_withdrawal,
    _settle_withdrawal,
    _withdraw,
)
from matching.kernels.book import _level_key
from matching.kernels.controls import _breaker_room, _control, _control_room
from matching.kernels.expiry import _gtd_due
from matching.kernels.lifecycle import _clock, _confirm, _dispute, _fail, _list, _resolve
from matching.kernels.orders import _amend, _cancel, _cancel_all, _place
from matching.kernels.pools import _ht_put, _pos_key
from matching.layout import (
    A_OPEN,
    B_HOURS_LEFT,
    B_STATE,
    C0_ACCOUNT,
    C0_OP,
    C_CLOCK_TS_NS,
    C_KEY,
    C_PLACE_LOTS,
    C_REJECT_ACCOUNT,
    C_REJECT_CODE,
    C_REJECT_ORDER,
    CFG_LOTS_MAX,
    I_GATE,
    I_ORDERS,
    I_POSITIONS,
    I_STATE,
    INSTR_OPEN,
    L_BOOK,
    L_PRICE,
    M_CAP_HWM,
    M_GTD_SIZE,
    M_LEVEL_HWM,
    M_NOW,
    M_OBL_HWM,
    M_POS_HWM,
    OBL_FREE,
    OP_AMEND,
    OP_CANCEL,
    OP_CANCEL_ALL,
    OP_CANCEL_INSTR,
    OP_CAPACITY,
    OP_CLOCK,
    OP_CONFIRM,
    OP_DEPOSIT,
    OP_DISPUTE,
    OP_FAIL,
    OP_HALT,
    OP_LIST,
    OP_PLACE,
    OP_REINSTATE,
    OP_RESOLVE,
    OP_RESUME,
    OP_SUSPEND,
    OP_WD_REQUEST,
    OP_WD_SETTLE,
    OP_WITHDRAW,
    P_ACCOUNT,
    P_INSTR,
)


@njit(cache=True, _nrt=False)
def _room_needed(st, cmds, ci):
    """Upper bound on the event rows one command can emit (checked before it runs)."""
    meta, cfg, accts = st.meta, st.cfg, st.accounts
    op = cmds[ci, C0_OP]
    account = cmds[ci, C0_ACCOUNT]
    open_orders = accts[account, A_OPEN] if 0 <= account < accts.shape[0] else 0
    if op == OP_PLACE or op == OP_AMEND:
        # accept + hold + remainder; per lot at most one fill (6 rows) or one decrement (4 rows);
        # self-trade cancels of the account's own orders (2 rows each); a breaker's halt
        lots = min(max(cmds[ci, C_PLACE_LOTS], 0), cfg[0, CFG_LOTS_MAX])  # C_AMEND_LOTS too
        return 9 + 7 * lots + 2 * open_orders
    if op == OP_CANCEL_ALL:
        return 1 + 2 * open_orders
    if op == OP_CLOCK:
        return _clock_room(st, max(meta[0, M_NOW], cmds[ci, C_CLOCK_TS_NS]))
    if op == OP_CONFIRM or op == OP_FAIL or op == OP_RESOLVE:
        return 8 + 2 * HOURS_MAX
    if OP_HALT <= op <= OP_REINSTATE:
        return _control_room(st, cmds, ci)
    return 4


HOURS_MAX = 168


@njit(cache=True, _nrt=False)
def _clock_room(st, now):
    """Event rows a clock tick at `now` can emit: expiries, closures, delivery progress."""
    meta, instrs, obl, gtd = st.meta, st.instruments, st.obligations, st.gtd_heap
    rows = 2 * _gtd_due(gtd, meta[0, M_GTD_SIZE], now) + _breaker_room(st, now)
    for i in range(instrs.shape[0]):
        if instrs[i, I_STATE] == INSTR_OPEN and instrs[i, I_GATE] <= now:
            p = instrs[i, I_POSITIONS]
            rows += 1 + 2 * instrs[i, I_ORDERS] + 3 * p + p * (2 * HOURS_MAX + 8)
    for b in range(meta[0, M_OBL_HWM]):
        if obl[b, B_STATE] != OBL_FREE:
            rows += 2 * obl[b, B_HOURS_LEFT] + 8
    return rows


@njit(cache=True, _nrt=False)
def _apply(cmds, first, st, ev, n):
    """Apply command rows from `first` on, writing events from row `n`.

    Returns (event count, next command). The next command is below `len(cmds)` when the event
    buffer has no room for it: nothing of it has run; grow the buffer and call again from there.
    """
    for ci in range(first, cmds.shape[0]):
        if n + _room_needed(st, cmds, ci) > ev.shape[0]:
            return n, ci
        op = cmds[ci, C0_OP]
        if op == OP_PLACE:
            n = _place(st, ev, n, ci, cmds)
        elif op == OP_CANCEL:
            n = _cancel(st, ev, n, ci, cmds)
        elif op == OP_AMEND:
            n = _amend(st, ev, n, ci, cmds)
        elif op == OP_CANCEL_ALL:
            n = _cancel_all(st, ev, n, ci, cmds)
        elif op == OP_DEPOSIT:
            n = _deposit(st, ev, n, ci, cmds)
        elif op == OP_WITHDRAW:
            n = _withdraw(st, ev, n, ci, cmds)
        elif op == OP_CAPACITY:
            n = _capacity(st, ev, n, ci, cmds)
        elif op == OP_CLOCK:
            n = _clock(st, ev, n, ci, cmds)
        elif op == OP_CONFIRM:
            n = _confirm(st, ev, n, ci, cmds)
        elif op == OP_FAIL:
            n = _fail(st, ev, n, ci, cmds)
        elif op == OP_LIST:
            n = _list(st, ev, n, ci, cmds)
        elif op == OP_DISPUTE:
            n = _dispute(st, ev, n, ci, cmds)
        elif op == OP_RESOLVE:
            n = _resolve(st, ev, n, ci, cmds)
        elif op == OP_WD_REQUEST:
            n = _request_withdrawal(st, ev, n, ci, cmds)
        elif op == OP_WD_SETTLE:
            n = _settle_withdrawal(st, ev, n, ci, cmds)
        elif op == OP_HALT or op == OP_RESUME or op == OP_CANCEL_INSTR:
            n = _control(st, ev, n, ci, cmds)
        elif op == OP_SUSPEND or op == OP_REINSTATE:
            n = _control(st, ev, n, ci, cmds)
        else:
            # OP_REJECT: the facade refused it (malformed).
            n = _reject(
                st.instruments,
                ev,
                n,
                ci,
                cmds[ci, C_REJECT_ACCOUNT],
                cmds[ci, C_REJECT_CODE],
                cmds[ci, C_REJECT_ORDER],
                -1,
            )
    return n, cmds.shape[0]


@njit(cache=True, _nrt=False)
def _rebuild(st):
    """Re-index levels, positions and live capacity rows after a restore."""
    meta, levels, lht = st.meta, st.levels, st.level_ht
    pos, pht, cap, cht = st.positions, st.position_ht, st.capacity, st.capacity_ht
    for lv in range(meta[0, M_LEVEL_HWM]):
        book = levels[lv, L_BOOK]
        if book != EMPTY:
            _ht_put(lht, _level_key(book >> 1, book & 1, levels[lv, L_PRICE]), lv)
    for r in range(meta[0, M_POS_HWM]):
        if pos[r, P_ACCOUNT] != EMPTY:
            _ht_put(pht, _pos_key(pos[r, P_ACCOUNT], pos[r, P_INSTR]), r)
    for r in range(meta[0, M_CAP_HWM]):
        if cap[r, C_KEY] != EMPTY:
            _ht_put(cht, cap[r, C_KEY], r)
