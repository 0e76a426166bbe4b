"""Cash and capacity commands: deposits, withdrawals, provider capacity per hour."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import (
    CR_DEPOSIT,
    CR_WITHDRAWAL,
    EMPTY,
    R_AMOUNT_INVALID,
    R_BALANCE_LIMIT,
    R_CAPACITY_BELOW_COMMITTED,
    R_CAPACITY_RANGE_INVALID,
    R_ENGINE_FULL,
    R_INSUFFICIENT_CASH,
    R_UNKNOWN_ACCOUNT,
    _cash,
    _emit_capacity,
    _reject,
)
from matching.kernels.orders import _user_account
from matching.kernels.pools import _alloc, _cap_key, _ht_get, _ht_put
from matching.layout import (
    A_AVAIL,
    ACCT_EXTERNAL,
    C_CAP,
    C_CAPACITY_ACCOUNT,
    C_CAPACITY_END_HOUR,
    C_CAPACITY_GPUS,
    C_CAPACITY_KEY,
    C_CAPACITY_START_HOUR,
    C_KEY,
    C_NEXT,
    C_TRANSFER_ACCOUNT,
    C_TRANSFER_AMOUNT,
    C_USED,
    CFG_BALANCE_MAX,
    CFG_CAPACITY_GPUS_MAX,
    CFG_CAPACITY_HOURS_MAX,
    CFG_DEPOSIT_MAX,
    M_CAP_FREE,
    M_CAP_HWM,
    M_CAP_LIVE,
    M_TRANSFER_SEQ,
)


@njit(cache=True, _nrt=False)
def _deposit(st, ev, n, ci, cmds):
    meta, cfg, accts, instrs = st.meta, st.cfg, st.accounts, st.instruments
    account = cmds[ci, C_TRANSFER_ACCOUNT]
    amount = cmds[ci, C_TRANSFER_AMOUNT]
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


@njit(cache=True, _nrt=False)
def _withdraw(st, ev, n, ci, cmds):
    meta, accts, instrs = st.meta, st.accounts, st.instruments
    account = cmds[ci, C_TRANSFER_ACCOUNT]
    amount = cmds[ci, C_TRANSFER_AMOUNT]
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


@njit(cache=True, _nrt=False)
def _capacity(st, ev, n, ci, cmds):
    """Set a provider's GPUs for every hour in [start, end) of one GPU model and region."""
    meta, cfg, accts, instrs = st.meta, st.cfg, st.accounts, st.instruments
    cap, ht = st.capacity, st.capacity_ht
    account = cmds[ci, C_CAPACITY_ACCOUNT]
    capkey = cmds[ci, C_CAPACITY_KEY]
    start = cmds[ci, C_CAPACITY_START_HOUR]
    end = cmds[ci, C_CAPACITY_END_HOUR]
    gpus = cmds[ci, C_CAPACITY_GPUS]
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
    return _emit_capacity(ev, n, ci, account, capkey, start, end, gpus)
