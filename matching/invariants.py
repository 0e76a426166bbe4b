"""Invariants of the engine state, checked by tests after every batch and by the audit.

Each check recomputes a quantity from first principles (orders, positions, obligations) and
compares it with what the engine keeps incrementally.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from matching import layout as lay
from matching.state import State
from schemas.units import NS_PER_HOUR

__all__ = ["violations"]


def violations(st: State) -> list[str]:
    """Return a description of every broken invariant (empty when the state is sound)."""
    found: list[str] = []
    found += _money(st)
    found += _books(st)
    found += _positions(st)
    found += _capacity(st)
    return found


def _live_orders(st: State) -> np.ndarray:
    meta = st[lay.ST_META][0]
    orders = st[lay.ST_ORDERS][: int(meta[lay.M_ORDER_HWM])]
    return orders[orders[:, lay.O_ID] != 0]


def _money(st: State) -> list[str]:
    out = []
    accts = st[lay.ST_ACCTS]
    buckets = accts[:, [lay.A_AVAIL, lay.A_HELD, lay.A_ESCROW, lay.A_COLLAT]]
    total = int(buckets.sum())
    if total != 0:
        out.append(f"money: all balances sum to {total}, expected 0")
    users = buckets[lay.ACCT_FEES :]
    if (users < 0).any():
        bad = np.argwhere(users < 0)[0]
        out.append(f"money: account {bad[0] + lay.ACCT_FEES} bucket {bad[1]} is negative")
    held: dict[int, int] = defaultdict(int)
    for o in _live_orders(st):
        lots = int(o[lay.O_LOTS])
        if o[lay.O_SIDE] == lay.BUY:
            held[int(o[lay.O_ACCOUNT])] += int(o[lay.O_UNIT]) * lots
        else:
            held[int(o[lay.O_ACCOUNT])] += int(o[lay.O_UNIT]) * (lots - int(o[lay.O_COVERED]))
    escrow: dict[int, int] = defaultdict(int)
    collat: dict[int, int] = defaultdict(int)
    meta = st[lay.ST_META][0]
    pos = st[lay.ST_POS][: int(meta[lay.M_POS_HWM])]
    for p in pos[pos[:, lay.P_ACCOUNT] != -1]:
        escrow[int(p[lay.P_ACCOUNT])] += int(p[lay.P_ESCROW])
        collat[int(p[lay.P_ACCOUNT])] += int(p[lay.P_COLLAT])
    obl = st[lay.ST_OBL][: int(meta[lay.M_OBL_HWM])]
    for b in obl[obl[:, lay.B_ID] != 0]:
        escrow[int(b[lay.B_PROVIDER])] += int(b[lay.B_ESCROW_LEFT])
        collat[int(b[lay.B_PROVIDER])] += int(b[lay.B_COLLAT_LEFT])
    for account in np.flatnonzero(buckets[:, 1:].any(axis=1) | (accts[:, lay.A_OPEN] != 0)):
        a = int(account)
        row = accts[a]
        if row[lay.A_HELD] != held[a]:
            out.append(f"money: account {a} holds {row[lay.A_HELD]}, its orders need {held[a]}")
        if row[lay.A_ESCROW] != escrow[a]:
            out.append(f"money: account {a} escrow {row[lay.A_ESCROW]}, expected {escrow[a]}")
        if row[lay.A_COLLAT] != collat[a]:
            out.append(f"money: account {a} collateral {row[lay.A_COLLAT]}, expected {collat[a]}")
    return out


def _books(st: State) -> list[str]:
    out = []
    instrs = st[lay.ST_INSTRS]
    levels = st[lay.ST_LEVELS]
    orders = st[lay.ST_ORDERS]
    live = _live_orders(st)
    resting = live[live[:, lay.O_LEVEL] != -1]
    seen = 0
    for slot in np.flatnonzero(instrs[:, lay.I_STATE] == lay.INSTR_OPEN):
        prices = []
        for side in (lay.BUY, lay.SELL):
            lv = int(instrs[slot, lay.I_BEST + side])
            side_prices = []
            while lv != -1:
                lots = count = 0
                o = int(levels[lv, lay.L_HEAD])
                while o != -1:
                    lots += int(orders[o, lay.O_LOTS])
                    count += 1
                    o = int(orders[o, lay.O_NEXT])
                if lots != levels[lv, lay.L_LOTS] or count != levels[lv, lay.L_COUNT] or not count:
                    out.append(f"book: instrument {slot} level {lv} totals disagree with orders")
                seen += count
                side_prices.append(int(levels[lv, lay.L_PRICE]))
                lv = int(levels[lv, lay.L_NEXT])
            ordered = sorted(side_prices, reverse=side == lay.BUY)
            if side_prices != ordered or len(set(side_prices)) != len(side_prices):
                out.append(f"book: instrument {slot} side {side} levels out of price order")
            prices.append(side_prices)
        if prices[0] and prices[1] and prices[0][0] >= prices[1][0]:
            out.append(f"book: instrument {slot} crossed: bid {prices[0][0]} >= ask {prices[1][0]}")
    if seen != len(resting):
        out.append(f"book: {len(resting)} resting orders, {seen} reachable from the books")
    meta = st[lay.ST_META][0]
    if meta[lay.M_ORDERS_LIVE] != len(live):
        out.append(f"book: live-order counter {meta[lay.M_ORDERS_LIVE]}, found {len(live)}")
    return out


def _positions(st: State) -> list[str]:
    out = []
    meta = st[lay.ST_META][0]
    pos = st[lay.ST_POS][: int(meta[lay.M_POS_HWM])]
    pos = pos[pos[:, lay.P_ACCOUNT] != -1]
    net: dict[int, int] = defaultdict(int)
    for p in pos:
        net[int(p[lay.P_INSTR])] += int(p[lay.P_LOTS])
    for instr, lots in net.items():
        if lots != 0:
            out.append(f"positions: instrument {instr} nets to {lots} lots, expected 0")
    reserved: dict[tuple[int, int], int] = defaultdict(int)
    for o in _live_orders(st):
        if o[lay.O_SIDE] == lay.SELL:
            reserved[(int(o[lay.O_ACCOUNT]), int(o[lay.O_INSTR]))] += int(o[lay.O_COVERED])
    for p in pos:
        key = (int(p[lay.P_ACCOUNT]), int(p[lay.P_INSTR]))
        if p[lay.P_RESERVED] != reserved.pop(key, 0):
            out.append(f"positions: {key} reserves {p[lay.P_RESERVED]} lots for resale asks")
    for key, lots in reserved.items():
        if lots:
            out.append(f"positions: {key} has covered asks of {lots} lots but no position")
    return out


def _capacity(st: State) -> list[str]:
    out = []
    meta = st[lay.ST_META][0]
    rows = st[lay.ST_CAP][: int(meta[lay.M_CAP_HWM])]
    cap = rows[rows[:, lay.C_KEY] != -1]
    over = cap[cap[:, lay.C_USED] > cap[:, lay.C_CAP]]
    if len(over):
        out.append(f"capacity: {len(over)} provider-hours committed beyond streamed capacity")
    if len(cap) != meta[lay.M_CAP_LIVE]:
        out.append(f"capacity: {len(cap)} live rows, the pool counts {meta[lay.M_CAP_LIVE]}")
    hours = cap[:, lay.C_KEY] & lay.CAP_HOUR_MASK
    past = int((hours < meta[lay.M_NOW] // NS_PER_HOUR).sum())
    if past:
        out.append(f"capacity: {past} rows of hours already over (the tick frees them)")
    accounts = cap[:, lay.C_KEY] >> lay.CAP_ACCOUNT_SHIFT
    held = np.bincount(accounts, minlength=len(st[lay.ST_ACCTS]))
    counted = st[lay.ST_ACCTS][:, lay.A_CAP_ROWS]
    for account in np.flatnonzero(held != counted):
        out.append(
            f"capacity: account {account} holds {held[account]} rows, counts {counted[account]}"
        )
    return out
