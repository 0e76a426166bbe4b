"""In-memory sinks of gx.events for the simulator, with the real consumers' idempotency rules.

`LedgerSink` is the settlement writer without PostgreSQL: the same decode (`decode_record`), the
same plan (`_plan_at_record_boundary`: dedupe on the shard sequence, command and record
boundaries, balanced cash), the same rows (`_Rows`), and a commit that stores the consumer
position and the last sequence with the rows it covers, as the writer's transaction does.
`MarketDataSink` feeds `MarketData` per record as the market-data process does, dropping events
at or below the last sequence it applied.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streams.event_records import CommandGrouper, EventRecord, is_event_batch
from streams.marketdata.state import MarketData
from streams.settlement.decode import Entry, decode_record
from streams.settlement.plan import Plan, _plan_at_record_boundary
from streams.settlement.rows import _Rows

__all__ = ["LedgerSink", "MarketDataSink", "SinkError"]


class SinkError(AssertionError):
    """A sink saw something its ledger must never hold (a posting written twice)."""


class LedgerSink:
    """The ledger of one events partition, settled like `SettlementWriter` settles it."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        # committed state (what the writer's transaction stores)
        self.next_offset = 0
        self.last_seq: dict[int, int] = {}
        self.postings: dict[tuple[int, int, int], int] = {}  # (shard, seq, bucket) -> micros
        self.postings_sum = 0
        self.balances: Counter[tuple[int, int]] = Counter()  # (account, bucket) -> micros
        self.positions: dict[tuple[int, str], tuple[int, int]] = {}  # -> (seq, lots)
        self.dead_letters = 0
        self.duplicates = 0
        # read but not committed (lost on restart)
        self._pending: list[Entry] = []
        self._partial: set[int] = set()

    def restart(self) -> None:
        """Crash and come back: forget what was read and not committed."""
        self._pending, self._partial = [], set()

    def deliver(self, offset: int, record: EventRecord, caught_up: bool) -> None:
        """Read one record at `offset` (`caught_up`: nothing follows it yet) and commit."""
        self._pending.extend((offset, item) for item in decode_record(record.value))
        if record.partial:
            self._partial.add(offset)
        batch = is_event_batch(record.value)
        complete = (batch and not record.partial) or (not batch and caught_up)
        plan = _plan_at_record_boundary(self._pending, self.plan_seqs(), complete, self._partial)
        if plan.count:
            self._commit(plan)

    def accepts_stale(self) -> bool:
        """Whether an older record may come now: only between commits. Kafka delivers one
        partition in order, and the writer relies on it: its plan takes the last record read to
        tell whether the pending commands are complete, so an older record read while a split
        command is pending would let half of that command settle."""
        return not self._pending

    def plan_seqs(self) -> dict[int, int]:
        """The last settled sequence per shard the plan dedupes against."""
        return self.last_seq

    def balance_map(self) -> dict[tuple[int, int], int]:
        """Non-zero balances by (account, bucket 1..5)."""
        return {k: v for k, v in self.balances.items() if v}

    def position_map(self) -> dict[tuple[int, str], int]:
        """Non-zero positions by (account, symbol)."""
        return {k: lots for k, (_, lots) in self.positions.items() if lots}

    def _commit(self, plan: Plan) -> None:
        rows = _Rows()
        for offset, event in plan.events:
            rows.add(self.partition, offset, event)
        for row in rows.postings:
            _, _, _, shard, seq, _, account, bucket, amount = row[:9]
            key = (shard, seq, bucket)
            if key in self.postings:
                raise SinkError(f"ledger: posting {key} written twice")
            self.postings[key] = amount
            self.postings_sum += amount
            self.balances[(account, bucket)] += amount
        for account, symbol, _, lots, seq, _ in rows.positions.values():
            old = self.positions.get((account, symbol))
            if old is None or old[0] < seq:  # the writer's upsert only moves forward
                self.positions[(account, symbol)] = (seq, lots)
        pending = self._pending
        covered = pending[plan.count - 1][0] + 1
        self.next_offset = pending[plan.count][0] if plan.count < len(pending) else covered
        self.last_seq = plan.last_seq
        self.dead_letters += len(plan.dead)
        self.duplicates += plan.duplicates
        del pending[: plan.count]
        first = pending[0][0] if pending else None
        self._partial = {o for o in self._partial if first is not None and o >= first}


class MarketDataSink:
    """Market data of one events partition, fed per record as the process feeds it."""

    def __init__(self) -> None:
        self.md = MarketData()
        self.last_seq: dict[int, int] = {}
        self.next_offset = 0  # after the last record that ended a command: a restart resumes here
        self.messages = 0
        self._grouper = CommandGrouper(hold_partial=False)

    def restart(self) -> None:
        """Crash and come back: the state is rebuilt by a replay, so only the grouper resets."""
        self._grouper = CommandGrouper(hold_partial=False)

    def accepts_stale(self) -> bool:
        """Whether an older record may come now: always (events at or below the last sequence
        applied are dropped)."""
        return True

    def deliver(self, offset: int, record: EventRecord, caught_up: bool) -> None:
        """Read one record at `offset` and apply its new events."""
        commands, _ = self._grouper.feed(record.value, ())
        out: list[Any] = []
        for command in commands:
            for event in command.events:
                if event.seq <= self.last_seq.get(event.shard, 0):
                    continue
                self.last_seq[event.shard] = event.seq
                out += self.md.apply(event, offset)
            out += self.md.flush(command.shard)
        self.messages += len(out)
        if not record.partial:  # a restart reads a split command's records again (deduped)
            self.next_offset = max(self.next_offset, offset + 1)
