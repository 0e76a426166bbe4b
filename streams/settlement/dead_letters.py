"""Dead letters: list them, and replay one record's after a fix (`gx admin dead-letters`,
`gx admin replay-dead-letter PARTITION:OFFSET`).

A dead letter is an event the settlement writer could not settle (streams/settlement/__init__.py)
kept with its bytes, its position and the reason. After the cause is fixed (a writer that now
accepts the field, a repaired row), an operator replays it: the stored bytes are decoded again and
settled through the same rows and SQL as the writer's.

Why a replay can never double-post:

- The unit is one gx.events record (partition, offset): every dead letter of it not yet replayed,
  taken with `SELECT ... FOR UPDATE`, so two replays at once queue on the row locks and the second
  finds them marked. A command's events sit in one record, so its CashChanged legs are replayed
  together; a replay whose cash does not sum to zero per command is refused and changes nothing.
- The rows go through the staged `INSERT ... ON CONFLICT` path only, never the writer's direct
  COPY. Postings are keyed by (shard, seq, posting_index): an event already in the ledger (the
  writer settled a copy of it produced again, or an earlier replay) conflicts and posts nothing;
  trades conflict on their id; orders, positions, deliveries and transfers only move forward by
  `seq`.
- The ledger rows and the mark (`replayed_ns`) are written in one transaction: a crash leaves
  both or neither, and a replayed dead letter is refused as `already_replayed`.
- Positions (`consumer_positions`, `shard_positions`) are not moved: the writer's resume point
  and duplicate filter stay exactly as the log's prefix they describe.

A replayed event that still cannot be settled (undecodable, out of range) is refused with the
reason, and nothing changes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from schemas import events as ev
from streams.event_records import is_event_batch, pack_events
from streams.settlement.decode import Malformed, decode_record
from streams.settlement.rows import _APPLY, _APPLY_ORDER, _Rows
from streams.settlement.writer import CONSUMER_DEFAULT

__all__ = ["DeadLetter", "ReplayOutcome", "list_dead_letters", "replay_dead_letter"]

dead_letters_listed_max = 1000


class DeadLetter(msgspec.Struct, frozen=True):
    """One stored dead letter, without its bytes."""

    consumer: str
    topic: str
    partition: int
    offset: int
    event_index: int
    reason: str
    payload_bytes: int
    replayed_ns: int | None


class ReplayOutcome(msgspec.Struct, frozen=True):
    """What a replay did: `status` is replayed, already_replayed, not_found, or refused."""

    status: str
    partition: int
    offset: int
    events: int = 0
    postings: int = 0  # postings new to the ledger (0 when every one was there already)
    reason: str = ""


async def list_dead_letters(
    conn: Any, *, consumer: str = CONSUMER_DEFAULT, include_replayed: bool = False
) -> list[DeadLetter]:
    """The consumer's dead letters by position, at most `dead_letters_listed_max`."""
    rows = await conn.fetch(
        'SELECT consumer, topic, partition, "offset", event_index, reason, '
        "coalesce(length(payload), 0) AS payload_bytes, replayed_ns FROM dead_letters "
        "WHERE consumer = $1 AND ($2 OR replayed_ns IS NULL) "
        'ORDER BY partition, "offset", event_index LIMIT $3',
        consumer,
        include_replayed,
        dead_letters_listed_max,
    )
    return [DeadLetter(**dict(r)) for r in rows]


async def replay_dead_letter(
    conn: Any, partition: int, offset: int, now_ns: int, *, consumer: str = CONSUMER_DEFAULT
) -> ReplayOutcome:
    """Settle the dead letters of the record at (partition, offset) again, once; see the module.

    `now_ns` is stored as the replay's time (the caller's clock: this is an operator's act).
    """
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT event_index, payload, replayed_ns FROM dead_letters WHERE consumer = $1 "
            'AND partition = $2 AND "offset" = $3 ORDER BY event_index FOR UPDATE',
            consumer,
            partition,
            offset,
        )
        if not rows:
            return ReplayOutcome("not_found", partition, offset)
        waiting = [r for r in rows if r["replayed_ns"] is None]
        if not waiting:
            return ReplayOutcome("already_replayed", partition, offset)
        events, problem = _decode(waiting)
        if problem:
            return ReplayOutcome("refused", partition, offset, reason=problem)
        staged = _stage(partition, offset, events)
        postings = 0
        for table in _APPLY_ORDER:
            if table in staged:
                await conn.copy_records_to_table(table, records=staged[table])
                status = await conn.execute(_APPLY[table])
                if table == "stage_postings":  # "INSERT 0 n": the postings new to the ledger
                    postings = int(status.split()[-1])
        await conn.execute(
            "UPDATE dead_letters SET replayed_ns = $4 WHERE consumer = $1 AND partition = $2 "
            'AND "offset" = $3 AND event_index = any($5::integer[])',
            consumer,
            partition,
            offset,
            now_ns,
            [r["event_index"] for r in waiting],
        )
        return ReplayOutcome("replayed", partition, offset, len(events), postings)


def _decode(rows: list[Any]) -> tuple[list[Any], str]:
    """The stored events, or the reason they still cannot be settled."""
    events: list[Any] = []
    for r in rows:
        if r["payload"] is None:
            return [], f"event {r['event_index']}: no stored bytes (a record without a value)"
        payload = bytes(r["payload"])
        if is_event_batch(payload):
            # A record that could not be split keeps the whole record's bytes per event.
            decoded = decode_record(payload)[r["event_index"] : r["event_index"] + 1]
        else:  # one event's own bytes, as the record held them
            decoded = decode_record(pack_events([payload]))
        for d in decoded:
            if isinstance(d, Malformed):
                return [], f"event {r['event_index']}: still not settleable: {d.reason}"
            events.append(d)
    cash: dict[tuple[int, int], int] = defaultdict(int)
    for e in events:
        if isinstance(e, ev.CashChanged):
            cash[(e.shard, e.input_offset)] += (
                e.available_delta + e.held_delta + e.escrow_delta + e.collateral_delta
                + e.pending_delta
            )  # fmt: skip
    unbalanced = sorted(k for k, v in cash.items() if v)
    if unbalanced:
        return [], f"cash of command (shard, input offset) {unbalanced[0]} does not sum to zero"
    return events, ""


def _stage(partition: int, offset: int, events: list[Any]) -> dict[str, list[tuple[Any, ...]]]:
    rows = _Rows()
    for event in events:
        rows.add(partition, offset, event)
    return rows.staged()
