"""Planning a commit: which pending events settle next (dedupe, sequence gaps, command and
record boundaries, balanced cash), and which become dead letters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from schemas import events as ev
from schemas.codec import encode
from streams.settlement.decode import Entry, Malformed


class Plan(msgspec.Struct):
    """What one partition's pending records contribute to the next transaction."""

    count: int = 0  # pending entries covered (settled or skipped) by this commit
    events: list[tuple[int, Any]] = msgspec.field(default_factory=list)  # (offset, event)
    # (offset, index in its record, why, bytes) of each event skipped as a dead letter
    dead: list[tuple[int, int, str, bytes | None]] = msgspec.field(default_factory=list)
    duplicates: int = 0
    malformed: int = 0
    seq_gaps: int = 0
    unbalanced: int = 0
    last_seq: dict[int, int] = msgspec.field(default_factory=dict)  # shard -> seq after commit


_DUPLICATE, _MALFORMED, _GAP = 0, 1, 2


def plan_commit(pending: Sequence[Entry], last_seq: Mapping[int, int], caught_up: bool) -> Plan:
    """Choose the longest prefix of `pending` that ends at a command boundary; classify it.

    `last_seq` is the last settled sequence per shard. The trailing command is held back unless
    the partition is read to its end (`caught_up`) and its cash deltas balance.
    """
    plan = Plan(last_seq=dict(last_seq))
    seqs = dict(last_seq)
    # i, kind, offset, index in record, why, bytes
    skipped: list[tuple[int, int, int, int, str, bytes | None]] = []
    group: list[tuple[int, Any]] = []
    indexes: list[int] = []  # the group's events' places in their records
    key: tuple[int, int] | None = None
    start = cash = 0
    record_start, record_offset = 0, -1  # pending starts at a record boundary
    for i, (offset, item) in enumerate(pending):
        if offset != record_offset:
            record_start, record_offset = i, offset
        if type(item) is Malformed:
            skipped.append((i, _MALFORMED, offset, i - record_start, item.reason, item.payload))
            continue
        last = seqs.get(item.shard, 0)
        if item.seq <= last:
            skipped.append((i, _DUPLICATE, offset, 0, "", None))
            continue
        if item.seq != last + 1:
            why = f"sequence gap: shard {item.shard} expected seq {last + 1}, found {item.seq}"
            skipped.append((i, _GAP, offset, i - record_start, why, encode(item)))
            continue
        seqs[item.shard] = item.seq
        if (item.shard, item.input_offset) != key:
            if group:
                _close_group(plan, group, indexes, cash)
            group, indexes, key, start, cash = [], [], (item.shard, item.input_offset), i, 0
        group.append((offset, item))
        indexes.append(i - record_start)
        if type(item) is ev.CashChanged:
            cash += _cash_sum(item)
    if group and caught_up and cash == 0:
        _close_group(plan, group, indexes, cash)
        plan.count = len(pending)
    else:
        plan.count = start if group else len(pending)
    for i, kind, offset, index, why, payload in skipped:
        if i >= plan.count:
            break
        if kind == _DUPLICATE:
            plan.duplicates += 1
            continue
        plan.dead.append((offset, index, why, payload))
        plan.malformed += kind == _MALFORMED
        plan.seq_gaps += kind == _GAP
    plan.dead.sort(key=lambda dead: (dead[0], dead[1]))
    return plan


def _cash_sum(event: ev.CashChanged) -> int:
    return (
        event.available_delta
        + event.held_delta
        + event.escrow_delta
        + event.collateral_delta
        + event.pending_delta
    )


def _close_group(plan: Plan, group: list[tuple[int, Any]], indexes: list[int], cash: int) -> None:
    """Settle one complete command; dead-letter its cash events if they do not balance.

    `indexes` are the events' places in their records (named in their dead letters).
    """
    last = group[-1][1]
    plan.last_seq[last.shard] = last.seq
    if cash == 0:
        plan.events.extend(group)
        return
    plan.unbalanced += 1
    why = f"unbalanced command: shard {last.shard} input offset {last.input_offset} cash sums to {cash}"
    for (offset, event), index in zip(group, indexes, strict=True):
        if type(event) is ev.CashChanged:
            plan.dead.append((offset, index, why, encode(event)))
        else:
            plan.events.append((offset, event))


def _plan_at_record_boundary(
    pending: list[Entry], last_seq: Mapping[int, int], complete: bool, partial: set[int]
) -> Plan:
    """`plan_commit`, never ending inside a batch record: the consumer position stays a record
    boundary, which is where the audit compares the ledger with its replay.

    A plan that would end inside a record (a command split over records is held back) ends
    instead where that record starts, or before the partial records leading to it.
    """
    plan = plan_commit(pending, last_seq, complete)
    cut = plan.count
    if not 0 < cut < len(pending) or pending[cut][0] != pending[cut - 1][0]:
        return plan
    while cut > 0 and pending[cut - 1][0] == pending[cut][0]:
        cut -= 1  # to the start of the record
    while cut > 0 and pending[cut - 1][0] in partial:
        cut -= 1  # the records before it continue into it: back to the command's start
        while cut > 0 and pending[cut - 1][0] == pending[cut][0]:
            cut -= 1
    return plan_commit(pending[:cut], last_seq, True) if cut else Plan(last_seq=dict(last_seq))
