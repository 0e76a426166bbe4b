"""Settlement (`gx settle`): gx.events into the PostgreSQL ledger, idempotently.

One loop, one database connection, every partition of the events topic assigned by hand:

    getmany -> decode (msgspec) -> plan (dedupe, command boundaries) -> rows -> one transaction:
    COPY postings and trades straight into the ledger (under a savepoint), COPY the rest into
    temporary staging tables and INSERT ... SELECT ... ON CONFLICT into the ledger, upsert the
    consumer position -> commit.

Exactly once in effect, at-least-once underneath:

- The position to resume from is `consumer_positions.next_offset`, written in the same
  transaction as the rows it covers (Kafka group offsets are never used). A crash between two
  commits re-reads records whose effects were not committed, and nothing else.
- Duplicates are recognised twice over: the last settled event sequence per shard
  (`shard_positions`, same transaction) drops events already settled, even when the same event
  was produced again at a new offset; and every insert conflicts on its natural key, while the
  orders, positions and deliveries upserts only move forward (guarded by `seq`). Postings and
  trades, append-only and most of the rows, are copied into their tables directly: the sequence
  check makes a conflict impossible in a ledger only this writer fills, and should one happen
  anyway (a second writer under another consumer name), the savepoint rolls the copy back and
  the rows take the staged ON CONFLICT DO NOTHING path instead.
- Records are batches of whole commands (schemas/codec.py); a commit ends at a record that
  completes its last command (no `gx-partial` header), and the stored position is always a
  record boundary (a command split over records waits for its last record), which is where the
  audit compares the ledger with its replay. Single-event records (the first format) follow the
  rule below.
- A command's events (same shard and input offset) are settled in one transaction. Its
  CashChanged deltas sum to zero, so the sum of all postings is zero after every commit: a
  batch ends at the last complete command and holds back the trailing one, which is settled
  with the next batch, or at once when the partition is read to its end and its deltas balance.
- A record that cannot be settled (undecodable, unknown type, out-of-range integer, a sequence
  gap, a command whose cash does not balance) is logged with its partition and offset, counted,
  written to `dead_letters` in the same transaction, and skipped. After a sequence gap the
  shard's later events are dead-lettered too: the ledger stays an exact prefix of the log
  rather than silently missing money.

Modules: `decode` (records into events), `plan` (what a commit settles), `rows` (ledger rows,
staging tables and their SQL), `writer` (`SettlementWriter`, its stats, the loop).
"""

from streams.settlement.decode import Malformed, decode_record
from streams.settlement.plan import Plan, plan_commit
from streams.settlement.rows import prepare_connection
from streams.settlement.writer import CONSUMER_DEFAULT, SettlementStats, SettlementWriter

__all__ = [
    "SettlementWriter",
    "SettlementStats",
    "Malformed",
    "Plan",
    "decode_record",
    "plan_commit",
    "CONSUMER_DEFAULT",
    "prepare_connection",
]
