"""Market controls: halts, the circuit breaker, account suspension, cancelling an instrument.

Every control is a command in the log (the operator's, as the external account 0) or follows
from one (a trade trips the breaker, a clock tick ends its halt), so replays are exact.

Circuit breaker. Each open instrument keeps a reference price: the last trade price when the
current window of `CFG_BREAKER_WINDOW_NS` engine time began (windows are aligned to multiples
of the window, so the reference depends on the log alone, never on how often ticks come). The
first clock tick in a new window resamples it; an instrument that has never traded takes its
first trade's price. After an order or amend has traded, its last fill price (the furthest a
taker walks the book) is compared with the reference: more than `CFG_BREAKER_MOVE_BPS_MAX`
basis points away, and the instrument halts until the first tick at or after now plus
`CFG_BREAKER_HALT_NS`. The trade that trips it stands (it was matched at prices resting orders
offered); what halts is the next order. When the halt ends the reference restarts from the last
price, so the market reopens around where it stopped instead of tripping again at once.
"""

from __future__ import annotations

from numba import njit

from matching.kernels._base import (
    ACCOUNT_FIRST_USER,
    BPS,
    CX_OPERATOR,
    EMPTY,
    HR_BREAKER,
    HR_OPERATOR,
    R_ACCOUNT_NOT_SUSPENDED,
    R_ACCOUNT_SUSPENDED,
    R_INSTRUMENT_HALTED,
    R_INSTRUMENT_NOT_HALTED,
    R_INSTRUMENT_NOT_TRADING,
    R_NOT_OPERATOR,
    R_UNKNOWN_ACCOUNT,
    R_UNKNOWN_INSTRUMENT,
    _emit_halted,
    _emit_instr_cancelled,
    _emit_reinstated,
    _emit_resumed,
    _emit_suspended,
    _reject,
)
from matching.kernels.book import _reduce
from matching.layout import (
    A_HEAD,
    A_OPEN,
    A_SUSPENDED,
    ACCT_EXTERNAL,
    C0_OP,
    C_CONTROL_ACCOUNT,
    C_CONTROL_INSTR,
    C_CONTROL_TARGET,
    CFG_BREAKER_HALT_NS,
    CFG_BREAKER_MOVE_BPS_MAX,
    CFG_BREAKER_WINDOW_NS,
    EV_CANCELLED,
    I_BEST,
    I_HALT,
    I_HALT_UNTIL,
    I_ID,
    I_LAST_PRICE,
    I_ORDERS,
    I_REF_PRICE,
    I_REF_WINDOW,
    I_STATE,
    I_VOLUME,
    INSTR_NOT_TRADING,
    INSTR_OPEN,
    L_HEAD,
    M_NOW,
    O_ANEXT,
    O_LOTS,
    OP_CANCEL_INSTR,
    OP_HALT,
    OP_REINSTATE,
    OP_RESUME,
    OP_SUSPEND,
    SELL,
)

# ------------------------------------------------------------------ checks on the order path


@njit(cache=True, _nrt=False)
def _order_refusal(accts, instrs, account, instr):
    """ACCOUNT_SUSPENDED or INSTRUMENT_HALTED for an order or amend that may trade, else 0."""
    if accts[account, A_SUSPENDED] != 0:
        return R_ACCOUNT_SUSPENDED
    if instrs[instr, I_HALT] != 0:
        return R_INSTRUMENT_HALTED
    return 0


@njit(cache=True, _nrt=False)
def _breaker_after_trades(st, ev, n, ci, instr, volume_before):
    """After an order or amend: halt the instrument if its trades moved too far."""
    meta, cfg, instrs = st.meta, st.cfg, st.instruments
    if instrs[instr, I_VOLUME] == volume_before:
        return n
    last = instrs[instr, I_LAST_PRICE]
    ref = instrs[instr, I_REF_PRICE]
    if ref == 0:
        instrs[instr, I_REF_PRICE] = last
        instrs[instr, I_REF_WINDOW] = meta[0, M_NOW] // cfg[0, CFG_BREAKER_WINDOW_NS]
        return n
    move_bps = cfg[0, CFG_BREAKER_MOVE_BPS_MAX]
    if move_bps == 0 or abs(last - ref) * BPS <= move_bps * ref:
        return n
    until = meta[0, M_NOW] + cfg[0, CFG_BREAKER_HALT_NS]
    instrs[instr, I_HALT] = HR_BREAKER
    instrs[instr, I_HALT_UNTIL] = until
    return _emit_halted(ev, n, ci, instrs[instr, I_ID], HR_BREAKER, until, ref, last)


# ------------------------------------------------------------------ clock ticks


@njit(cache=True, _nrt=False)
def _resample(cfg, instrs, i, now):
    instrs[i, I_REF_PRICE] = instrs[i, I_LAST_PRICE]
    instrs[i, I_REF_WINDOW] = now // cfg[0, CFG_BREAKER_WINDOW_NS]


@njit(cache=True, _nrt=False)
def _breaker_tick(st, ev, n, ci):
    """End the circuit breakers' halts that are due; resample references in a new window."""
    meta, cfg, instrs = st.meta, st.cfg, st.instruments
    now = meta[0, M_NOW]
    window = now // cfg[0, CFG_BREAKER_WINDOW_NS]
    for i in range(instrs.shape[0]):
        if instrs[i, I_STATE] != INSTR_OPEN:
            continue
        if instrs[i, I_HALT] == HR_BREAKER and now >= instrs[i, I_HALT_UNTIL]:
            instrs[i, I_HALT] = 0
            instrs[i, I_HALT_UNTIL] = 0
            _resample(cfg, instrs, i, now)
            n = _emit_resumed(ev, n, ci, instrs[i, I_ID], HR_BREAKER)
        elif instrs[i, I_REF_WINDOW] < window and instrs[i, I_LAST_PRICE] != 0:
            _resample(cfg, instrs, i, now)
    return n


@njit(cache=True, _nrt=False)
def _breaker_room(st, now):
    """Event rows a tick at `now` needs to end the breakers' halts."""
    instrs = st.instruments
    rows = 0
    for i in range(instrs.shape[0]):
        if (
            instrs[i, I_STATE] == INSTR_OPEN
            and instrs[i, I_HALT] == HR_BREAKER
            and now >= instrs[i, I_HALT_UNTIL]
        ):
            rows += 1
    return rows


# ------------------------------------------------------------------ operator commands


@njit(cache=True, _nrt=False)
def _check_instrument(instrs, instr):
    """0 for an open instrument's slot, else its refusal code (orders and operator commands)."""
    if instr == INSTR_NOT_TRADING:
        return R_INSTRUMENT_NOT_TRADING
    if instr < 0 or instr >= instrs.shape[0] or instrs[instr, I_STATE] == 0:
        return R_UNKNOWN_INSTRUMENT
    if instrs[instr, I_STATE] != INSTR_OPEN:
        return R_INSTRUMENT_NOT_TRADING
    return 0


@njit(cache=True, _nrt=False)
def _control_room(st, cmds, ci):
    """Event rows an operator command can emit (every cancel is at most 2 rows)."""
    op = cmds[ci, C0_OP]
    if op == OP_SUSPEND:
        target = cmds[ci, C_CONTROL_TARGET]
        if 0 <= target < st.accounts.shape[0]:
            return 2 + 2 * st.accounts[target, A_OPEN]
    if op == OP_CANCEL_INSTR:
        instr = cmds[ci, C_CONTROL_INSTR]
        if 0 <= instr < st.instruments.shape[0]:
            return 2 + 2 * st.instruments[instr, I_ORDERS]
    return 2


@njit(cache=True, _nrt=False)
def _control(st, ev, n, ci, cmds):
    """Run one operator command: halt, resume, cancel an instrument, suspend, reinstate."""
    instrs = st.instruments
    account = cmds[ci, C_CONTROL_ACCOUNT]
    op = cmds[ci, C0_OP]
    if account != ACCT_EXTERNAL:
        instr = cmds[ci, C_CONTROL_INSTR] if op != OP_SUSPEND and op != OP_REINSTATE else -1
        return _reject(instrs, ev, n, ci, account, R_NOT_OPERATOR, 0, instr)
    if op == OP_SUSPEND or op == OP_REINSTATE:
        return _account_status(st, ev, n, ci, cmds[ci, C_CONTROL_TARGET], op == OP_SUSPEND)
    instr = cmds[ci, C_CONTROL_INSTR]
    code = _check_instrument(instrs, instr)
    if code != 0:
        return _reject(instrs, ev, n, ci, account, code, 0, instr)
    if op == OP_HALT:
        if instrs[instr, I_HALT] == HR_OPERATOR:
            return _reject(instrs, ev, n, ci, account, R_INSTRUMENT_HALTED, 0, instr)
        # An operator's halt replaces a breaker's: it lasts until the operator resumes.
        instrs[instr, I_HALT] = HR_OPERATOR
        instrs[instr, I_HALT_UNTIL] = 0
        return _emit_halted(ev, n, ci, instrs[instr, I_ID], HR_OPERATOR, 0, 0, 0)
    if op == OP_RESUME:
        reason = instrs[instr, I_HALT]
        if reason == 0:
            return _reject(instrs, ev, n, ci, account, R_INSTRUMENT_NOT_HALTED, 0, instr)
        instrs[instr, I_HALT] = 0
        instrs[instr, I_HALT_UNTIL] = 0
        _resample(st.cfg, instrs, instr, st.meta[0, M_NOW])
        return _emit_resumed(ev, n, ci, instrs[instr, I_ID], reason)
    return _cancel_instrument(st, ev, n, ci, instr)


@njit(cache=True, _nrt=False)
def _cancel_instrument(st, ev, n, ci, instr):
    """Cancel every resting order of the instrument: bids best first, then asks."""
    instrs, orders, levels = st.instruments, st.orders, st.levels
    count = 0
    for side in range(SELL + 1):
        while instrs[instr, I_BEST + side] != EMPTY:
            slot = levels[instrs[instr, I_BEST + side], L_HEAD]
            n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_CANCELLED, CX_OPERATOR)
            count += 1
    return _emit_instr_cancelled(ev, n, ci, instrs[instr, I_ID], count)


@njit(cache=True, _nrt=False)
def _account_status(st, ev, n, ci, target, suspend):
    """Suspend (cancelling the account's open orders) or reinstate a user account."""
    accts, instrs, orders = st.accounts, st.instruments, st.orders
    if not ACCOUNT_FIRST_USER <= target < accts.shape[0]:
        return _reject(instrs, ev, n, ci, ACCT_EXTERNAL, R_UNKNOWN_ACCOUNT, 0, -1)
    if suspend:
        if accts[target, A_SUSPENDED] != 0:
            return _reject(instrs, ev, n, ci, ACCT_EXTERNAL, R_ACCOUNT_SUSPENDED, 0, -1)
        slot = accts[target, A_HEAD]
        while slot != EMPTY:
            nxt = orders[slot, O_ANEXT]
            n = _reduce(st, ev, n, ci, slot, orders[slot, O_LOTS], EV_CANCELLED, CX_OPERATOR)
            slot = nxt
        accts[target, A_SUSPENDED] = 1
        return _emit_suspended(ev, n, ci, target)
    if accts[target, A_SUSPENDED] == 0:
        return _reject(instrs, ev, n, ci, ACCT_EXTERNAL, R_ACCOUNT_NOT_SUSPENDED, 0, -1)
    accts[target, A_SUSPENDED] = 0
    return _emit_reinstated(ev, n, ci, target)
