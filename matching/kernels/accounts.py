"""Cash and capacity commands: deposits, withdrawals (direct, or requested then settled by an
operator), provider capacity per hour."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import (
    CR_DEPOSIT,
    CR_WITHDRAWAL,
    CR_WITHDRAWAL_REJECTED,
    CR_WITHDRAWAL_REQUESTED,
    EMPTY,
    NS_PER_HOUR,
    R_AMOUNT_INVALID,
    R_BALANCE_LIMIT,
    R_CAPACITY_BELOW_COMMITTED,
    R_CAPACITY_LIMIT,
    R_CAPACITY_RANGE_INVALID,
    R_DUPLICATE_REFERENCE,
    R_ENGINE_FULL,
    R_INSUFFICIENT_CASH,
    R_UNKNOWN_ACCOUNT,
    R_UNKNOWN_WITHDRAWAL,
    R_WITHDRAWAL_LIMIT,
    _cash,
    _cash_pending,
    _emit_capacity,
    _emit_deposited,
    _emit_wd_requested,
    _emit_wd_settled,
    _reject,
)
from matching.kernels.orders import _user_account
from matching.kernels.pools import _alloc, _cap_free, _cap_key, _cap_new, _ht_get
from matching.layout import (
    A_AVAIL,
    A_CAP_ROWS,
    A_WD_DAY,
    A_WD_DAY_SUM,
    ACCT_EXTERNAL,
    C_CAP,
    C_CAPACITY_ACCOUNT,
    C_CAPACITY_END_HOUR,
    C_CAPACITY_GPUS,
    C_CAPACITY_KEY,
    C_CAPACITY_START_HOUR,
    C_DEPOSIT_REF,
    C_TRANSFER_ACCOUNT,
    C_TRANSFER_AMOUNT,
    C_USED,
    C_WD_APPROVED,
    C_WD_ID,
    CAP_CAPKEY_MASK,
    CFG_BALANCE_MAX,
    CFG_CAPACITY_GPUS_MAX,
    CFG_CAPACITY_HORIZON_HOURS,
    CFG_CAPACITY_HOURS_MAX,
    CFG_CAPACITY_ROWS_ACCOUNT_MAX,
    CFG_DEPOSIT_MAX,
    CFG_WITHDRAWAL_DAY_MAX,
    CFG_WITHDRAWAL_MAX,
    M_CAP_LIVE,
    M_NOW,
    M_REFS_LIVE,
    M_TRANSFER_SEQ,
    M_WD_FREE,
    M_WD_HWM,
    M_WD_LIVE,
    M_WD_SEQ,
    ORDER_SLOT_BITS,
    ORDER_SLOT_MASK,
    W_ACCOUNT,
    W_AMOUNT,
    W_ID,
    W_NEXT,
)

NS_PER_DAY = 24 * NS_PER_HOUR


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
    reference = cmds[ci, C_DEPOSIT_REF]
    if reference != 0:
        slot = _ref_slot(st.deposit_refs, reference)
        if st.deposit_refs[slot, 0] == reference:
            return _reject(instrs, ev, n, ci, account, R_DUPLICATE_REFERENCE, 0, -1)
        if meta[0, M_REFS_LIVE] >= st.deposit_refs.shape[0] // 2:
            return _reject(instrs, ev, n, ci, account, R_ENGINE_FULL, 0, -1)
        st.deposit_refs[slot, 0] = reference
        meta[0, M_REFS_LIVE] += 1
    meta[0, M_TRANSFER_SEQ] += 1
    ref = meta[0, M_TRANSFER_SEQ]
    n = _emit_deposited(ev, n, ci, ref, account, amount)
    n = _cash(accts, ev, n, ci, account, amount, 0, 0, 0, CR_DEPOSIT, ref)
    return _cash(accts, ev, n, ci, ACCT_EXTERNAL, -amount, 0, 0, 0, CR_DEPOSIT, ref)


@njit(cache=True, _nrt=False)
def _ref_slot(refs, reference):
    """The slot holding `reference`, or the empty slot where it would go (linear probing; the
    table is never more than half full, so a probe ends)."""
    mask = refs.shape[0] - 1
    i = reference & mask
    while refs[i, 0] != 0 and refs[i, 0] != reference:
        i = (i + 1) & mask
    return i


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
def _request_withdrawal(st, ev, n, ci, cmds):
    """Move the amount from available to pending, within the per-request and per-day limits."""
    meta, cfg, accts, instrs, wds = st.meta, st.cfg, st.accounts, st.instruments, st.withdrawals
    account = cmds[ci, C_TRANSFER_ACCOUNT]
    amount = cmds[ci, C_TRANSFER_AMOUNT]
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if amount <= 0:
        return _reject(instrs, ev, n, ci, account, R_AMOUNT_INVALID, 0, -1)
    day = meta[0, M_NOW] // NS_PER_DAY
    today = accts[account, A_WD_DAY_SUM] if accts[account, A_WD_DAY] == day else 0
    if amount > cfg[0, CFG_WITHDRAWAL_MAX] or amount > cfg[0, CFG_WITHDRAWAL_DAY_MAX] - today:
        return _reject(instrs, ev, n, ci, account, R_WITHDRAWAL_LIMIT, 0, -1)
    if amount > accts[account, A_AVAIL]:
        return _reject(instrs, ev, n, ci, account, R_INSUFFICIENT_CASH, 0, -1)
    if meta[0, M_WD_LIVE] >= wds.shape[0]:
        return _reject(instrs, ev, n, ci, account, R_ENGINE_FULL, 0, -1)
    w = _alloc(meta, wds, M_WD_FREE, M_WD_HWM, W_NEXT)
    meta[0, M_WD_SEQ] += 1
    meta[0, M_WD_LIVE] += 1
    wid = (meta[0, M_WD_SEQ] << ORDER_SLOT_BITS) | w
    wds[w, W_ID] = wid
    wds[w, W_ACCOUNT] = account
    wds[w, W_AMOUNT] = amount
    wds[w, W_NEXT] = EMPTY
    accts[account, A_WD_DAY] = day
    accts[account, A_WD_DAY_SUM] = today + amount
    n = _emit_wd_requested(ev, n, ci, wid, account, amount, 0)
    return _cash_pending(accts, ev, n, ci, account, -amount, amount, CR_WITHDRAWAL_REQUESTED, wid)


@njit(cache=True, _nrt=False)
def _settle_withdrawal(st, ev, n, ci, cmds):
    """Approve a pending withdrawal (the money leaves to the external account) or reject it
    (it returns to available; the day's limit is not given back)."""
    meta, accts, instrs, wds = st.meta, st.accounts, st.instruments, st.withdrawals
    if cmds[ci, C_TRANSFER_ACCOUNT] != ACCT_EXTERNAL:  # only the operator settles
        return _reject(instrs, ev, n, ci, cmds[ci, C_TRANSFER_ACCOUNT], R_UNKNOWN_ACCOUNT, 0, -1)
    wid = cmds[ci, C_WD_ID]
    w = wid & ORDER_SLOT_MASK if wid > 0 else EMPTY
    if w == EMPTY or w >= wds.shape[0] or wds[w, W_ID] != wid:
        return _reject(instrs, ev, n, ci, ACCT_EXTERNAL, R_UNKNOWN_WITHDRAWAL, wid, -1)
    account = wds[w, W_ACCOUNT]
    amount = wds[w, W_AMOUNT]
    approved = 1 if cmds[ci, C_WD_APPROVED] != 0 else 0
    n = _emit_wd_settled(ev, n, ci, wid, account, amount, approved)
    if approved:
        n = _cash_pending(accts, ev, n, ci, account, 0, -amount, CR_WITHDRAWAL, wid)
        n = _cash(accts, ev, n, ci, ACCT_EXTERNAL, amount, 0, 0, 0, CR_WITHDRAWAL, wid)
    else:
        n = _cash_pending(accts, ev, n, ci, account, amount, -amount, CR_WITHDRAWAL_REJECTED, wid)
    wds[w, W_ID] = 0
    wds[w, W_NEXT] = meta[0, M_WD_FREE]
    meta[0, M_WD_FREE] = w
    meta[0, M_WD_LIVE] -= 1
    return n


@njit(cache=True, _nrt=False)
def _capacity(st, ev, n, ci, cmds):
    """Set a provider's GPUs for every hour in [start, end) of one GPU model and region.

    Only hours an instrument can still deliver in take a row: the range must end after the
    current hour and within the listing horizon; its hours before the current one are left out
    (the event names the hours set). Zero GPUs frees the rows, as a missing row means none.
    """
    meta, cfg, accts, instrs = st.meta, st.cfg, st.accounts, st.instruments
    cap, ht = st.capacity, st.capacity_ht
    account = cmds[ci, C_CAPACITY_ACCOUNT]
    capkey = cmds[ci, C_CAPACITY_KEY]
    start = cmds[ci, C_CAPACITY_START_HOUR]
    end = cmds[ci, C_CAPACITY_END_HOUR]
    gpus = cmds[ci, C_CAPACITY_GPUS]
    now_hour = meta[0, M_NOW] // NS_PER_HOUR
    if not _user_account(accts, account):
        return _reject(instrs, ev, n, ci, account, R_UNKNOWN_ACCOUNT, 0, -1)
    if (
        end <= start
        or start < 0
        or end - start > cfg[0, CFG_CAPACITY_HOURS_MAX]
        or end <= now_hour
        or end > now_hour + cfg[0, CFG_CAPACITY_HORIZON_HOURS]
        or gpus < 0
        or gpus > cfg[0, CFG_CAPACITY_GPUS_MAX]
        or capkey < 0
        or capkey > CAP_CAPKEY_MASK
    ):
        return _reject(instrs, ev, n, ci, account, R_CAPACITY_RANGE_INVALID, 0, -1)
    start = max(start, now_hour)
    missing = 0
    for h in range(start, end):
        row = _ht_get(ht, _cap_key(account, capkey, h))
        if row == EMPTY:
            missing += 1
        elif cap[row, C_USED] > gpus:
            return _reject(instrs, ev, n, ci, account, R_CAPACITY_BELOW_COMMITTED, 0, -1)
    if gpus == 0:
        missing = 0
    if accts[account, A_CAP_ROWS] + missing > cfg[0, CFG_CAPACITY_ROWS_ACCOUNT_MAX]:
        return _reject(instrs, ev, n, ci, account, R_CAPACITY_LIMIT, 0, -1)
    if cap.shape[0] - meta[0, M_CAP_LIVE] < missing:
        return _reject(instrs, ev, n, ci, account, R_ENGINE_FULL, 0, -1)
    for h in range(start, end):
        key = _cap_key(account, capkey, h)
        row = _ht_get(ht, key)
        if gpus == 0:
            if row != EMPTY:  # nothing is committed on it: the check above saw used <= 0
                _cap_free(meta, accts, cap, ht, row)
            continue
        if row == EMPTY:
            row = _cap_new(meta, accts, cap, ht, key)
        cap[row, C_CAP] = gpus
    return _emit_capacity(ev, n, ci, account, capkey, start, end, gpus)
