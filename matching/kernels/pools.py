"""Hash tables and row pools: positions per (account, instrument), provider capacity per hour."""

from __future__ import annotations

from numba import njit

from matching.kernels._base import EMPTY
from matching.layout import (
    A_CAP_ROWS,
    C_CAP,
    C_KEY,
    C_NEXT,
    C_USED,
    CAP_ACCOUNT_SHIFT,
    CAP_CAPKEY_BITS,
    CAP_HOUR_BITS,
    CAP_HOUR_MASK,
    I_CAPKEY,
    I_HOUR0,
    I_HOURS,
    I_POSITIONS,
    M_CAP_FREE,
    M_CAP_HWM,
    M_CAP_LIVE,
    M_POS_FREE,
    M_POS_HWM,
    M_POS_LIVE,
    P_ACCOUNT,
    P_INSTR,
    P_NEXT,
)


@njit(cache=True, _nrt=False)
def _ht_home(key, mask):
    s = (key & 0x7FFFFFFF) * 0x7FEB352D + (key >> 31) * 0x68E31DA5
    s ^= s >> 29
    return s & mask


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _ht_put(ht, key, value):
    mask = ht.shape[0] - 1
    i = _ht_home(key, mask)
    while ht[i, 0] != EMPTY:
        i = (i + 1) & mask
    ht[i, 0] = key
    ht[i, 1] = value


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _pos_key(account, instr):
    return (account << 20) | instr


@njit(cache=True, _nrt=False)
def _pos_find(pht, account, instr):
    return _ht_get(pht, _pos_key(account, instr))


@njit(cache=True, _nrt=False)
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


@njit(cache=True, _nrt=False)
def _pos_free(meta, instrs, pos, pht, row):
    instrs[pos[row, P_INSTR], I_POSITIONS] -= 1
    _ht_del(pht, _pos_key(pos[row, P_ACCOUNT], pos[row, P_INSTR]))
    pos[row, :] = 0
    pos[row, P_ACCOUNT] = EMPTY
    pos[row, P_NEXT] = meta[0, M_POS_FREE]
    meta[0, M_POS_FREE] = row
    meta[0, M_POS_LIVE] -= 1


@njit(cache=True, _nrt=False)
def _cap_key(account, capkey, hour):
    """The row key of (account, capkey, hour): disjoint bit fields, so no two rows share one
    (the caller checked capkey < 64 and 0 <= hour < 2**22; accounts are below 2**30)."""
    return (((account << CAP_CAPKEY_BITS) | capkey) << CAP_HOUR_BITS) | hour


@njit(cache=True, _nrt=False)
def _cap_new(meta, accts, cap, ht, key):
    """Allocate a row for `key` with no capacity (the caller checked the pool and the limit)."""
    row = _alloc(meta, cap, M_CAP_FREE, M_CAP_HWM, C_NEXT)
    meta[0, M_CAP_LIVE] += 1
    accts[key >> CAP_ACCOUNT_SHIFT, A_CAP_ROWS] += 1
    cap[row, C_KEY] = key
    cap[row, C_CAP] = 0
    cap[row, C_USED] = 0
    cap[row, C_NEXT] = EMPTY
    _ht_put(ht, key, row)
    return row


@njit(cache=True, _nrt=False)
def _cap_free(meta, accts, cap, ht, row):
    """Return a row to the pool: its account holds one row fewer."""
    key = cap[row, C_KEY]
    _ht_del(ht, key)
    accts[key >> CAP_ACCOUNT_SHIFT, A_CAP_ROWS] -= 1
    cap[row, C_KEY] = EMPTY
    cap[row, C_CAP] = 0
    cap[row, C_USED] = 0
    cap[row, C_NEXT] = meta[0, M_CAP_FREE]
    meta[0, M_CAP_FREE] = row
    meta[0, M_CAP_LIVE] -= 1


@njit(cache=True, _nrt=False)
def _cap_sweep(meta, accts, cap, ht, hour):
    """Free every row of an hour before `hour`, in row order (so the free list, and every later
    allocation, is a function of the rows alone).

    Nothing reads such a row again: capacity backs the asks of open instruments only, and an
    open instrument's gate, so its first hour, is still ahead; obligations keep no capacity row.
    """
    for row in range(meta[0, M_CAP_HWM]):
        key = cap[row, C_KEY]
        if key != EMPTY and key & CAP_HOUR_MASK < hour:
            _cap_free(meta, accts, cap, ht, row)


@njit(cache=True, _nrt=False)
def _cap_free_for(instrs, cap, ht, account, instr):
    """Smallest unused capacity over the instrument's delivery hours (0 if any hour is missing)."""
    best = -1
    for h in range(instrs[instr, I_HOURS]):
        row = _ht_get(ht, _cap_key(account, instrs[instr, I_CAPKEY], instrs[instr, I_HOUR0] + h))
        if row == EMPTY:
            return 0
        free = cap[row, C_CAP] - cap[row, C_USED]
        if best < 0 or free < best:
            best = free
    return max(best, 0)


@njit(cache=True, _nrt=False)
def _cap_use(instrs, cap, ht, account, instr, delta):
    """Add `delta` GPUs to the committed capacity of every delivery hour of the instrument."""
    for h in range(instrs[instr, I_HOURS]):
        row = _ht_get(ht, _cap_key(account, instrs[instr, I_CAPKEY], instrs[instr, I_HOUR0] + h))
        if row != EMPTY:
            cap[row, C_USED] = max(cap[row, C_USED] + delta, 0)
