"""Reads of the settlement ledger (streams/ledger/schema.py) that other processes serve.

The gateway's `GET /api/v1/ledger` pages an account's postings from here and `GET /statements`
reads a period with its opening balances, so the SQL that knows the tables and their indexes
lives beside the migrations that create them.

A page is read backwards along `postings_by_account_seq` from a cursor (the `(seq, posting_index)`
of the last entry the reader saw, as `"seq.index"`), never with OFFSET: each page costs its size,
however deep. Times are engine times (`ts_event`), a period is `[from_ns, to_ns)`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas.codes import CashReason
from streams.ledger.schema import (
    BUCKET_AVAILABLE,
    BUCKET_COLLATERAL,
    BUCKET_ESCROW,
    BUCKET_HELD,
    BUCKET_PENDING,
    TRANSFER_COMPLETED,
    TRANSFER_DEPOSIT,
    TRANSFER_PENDING,
    TRANSFER_REJECTED,
    TRANSFER_WITHDRAWAL,
)

__all__ = [
    "ACCOUNT_POSTINGS_SQL",
    "BUCKET_NAMES",
    "REASON_NAMES",
    "TIME_MAX_NS",
    "Posting",
    "Cursor",
    "TRANSFER_KINDS",
    "TRANSFER_STATUS_NAMES",
    "PendingWithdrawal",
    "Transfer",
    "account_transfers",
    "pending_withdrawals",
    "account_postings",
    "opening_balances",
    "parse_cursor",
    "period_postings",
]

TIME_MAX_NS = 2**63 - 1

# An account's postings before a cursor within a period, newest first: read backwards along
# postings_by_account_seq (the row comparison is what the index orders by), never sorted.
ACCOUNT_POSTINGS_SQL = (
    "SELECT seq, posting_index, ts_event, bucket, amount_micros, reason, ref_id FROM postings "
    "WHERE account = $1 AND (seq, posting_index) < ($2, $3) "
    "AND ts_event >= $4 AND ts_event < $5 "
    "ORDER BY seq DESC, posting_index DESC LIMIT $6"
)
# The same period oldest first, for a statement.
PERIOD_POSTINGS_SQL = (
    "SELECT seq, posting_index, ts_event, bucket, amount_micros, reason, ref_id FROM postings "
    "WHERE account = $1 AND ts_event >= $2 AND ts_event < $3 "
    "ORDER BY seq, posting_index LIMIT $4"
)
# An account's deposits or withdrawals, newest first, along transfers_by_account.
ACCOUNT_TRANSFERS_SQL = (
    "SELECT transfer_id, amount_micros, reference, status, ts_requested, ts_event FROM transfers "
    "WHERE account = $1 AND kind = $2 ORDER BY ts_requested DESC, transfer_id DESC LIMIT $3"
)
# Withdrawals awaiting an operator, oldest first, across accounts: no index serves it, as only
# operators' tools ask and pending rows are few (a status scan of transfers, not of postings).
PENDING_WITHDRAWALS_SQL = (
    "SELECT shard, transfer_id, account, amount_micros, reference, ts_requested FROM transfers "
    "WHERE kind = $1 AND status = $2 ORDER BY ts_requested, transfer_id LIMIT $3"
)
OPENING_BALANCES_SQL = (
    "SELECT bucket, COALESCE(sum(amount_micros), 0)::bigint AS amount FROM postings "
    "WHERE account = $1 AND ts_event < $2 GROUP BY bucket"
)

BUCKET_NAMES = {
    BUCKET_AVAILABLE: "available",
    BUCKET_HELD: "held",
    BUCKET_ESCROW: "escrow",
    BUCKET_COLLATERAL: "collateral",
    BUCKET_PENDING: "pending",
}
# Why money moved, as the API names it: the CashReason member in lower case ("delivery_release").
REASON_NAMES = {int(reason): reason.name.lower() for reason in CashReason}

TRANSFER_KINDS = {"deposit": TRANSFER_DEPOSIT, "withdrawal": TRANSFER_WITHDRAWAL}
TRANSFER_STATUS_NAMES = {
    TRANSFER_PENDING: "pending",
    TRANSFER_COMPLETED: "completed",
    TRANSFER_REJECTED: "rejected",
}

Cursor = tuple[int, int]  # (seq, posting_index) of the last entry a reader saw
_START: Cursor = (TIME_MAX_NS, 2**15 - 1)  # before every posting (posting_index is a smallint)


class Posting(msgspec.Struct, frozen=True, kw_only=True):
    """One posting of an account as the ledger holds it (money in integer micro-dollars)."""

    seq: int  # the engine sequence of the CashChanged that posted it
    index: int  # its posting_index: (seq, index) names the posting
    ts_event: int
    bucket: int  # BUCKET_*
    amount_micros: int
    reason: int  # schemas.codes.CashReason
    ref_id: int


_CURSOR = re.compile(r"([0-9]{1,19})\.([0-9]{1,5})")  # ASCII digits: str.isdigit takes "²"


def parse_cursor(text: str | None) -> Cursor | None:
    """A cursor from its wire form "seq.index"; None when it is not one."""
    if text is None or text == "":
        return _START
    match = _CURSOR.fullmatch(text)
    if match is None:
        return None
    cursor = (int(match[1]), int(match[2]))
    return cursor if cursor <= _START else None


def _posting(row: Any) -> Posting:
    return Posting(
        seq=row["seq"],
        index=row["posting_index"],
        ts_event=row["ts_event"],
        bucket=row["bucket"],
        amount_micros=row["amount_micros"],
        reason=row["reason"],
        ref_id=row["ref_id"],
    )


async def account_postings(
    conn: Any,
    account: int,
    limit: int,
    before: Cursor = _START,
    from_ns: int = 0,
    to_ns: int = TIME_MAX_NS,
) -> list[Posting]:
    """The account's newest `limit` postings before `before` in `[from_ns, to_ns)`, newest first.

    `conn` is a connection or a pool.
    """
    rows = await conn.fetch(ACCOUNT_POSTINGS_SQL, account, *before, from_ns, to_ns, limit)
    return [_posting(row) for row in rows]


async def period_postings(
    conn: Any, account: int, from_ns: int, to_ns: int, limit: int
) -> list[Posting]:
    """The account's postings in `[from_ns, to_ns)`, oldest first, at most `limit`."""
    rows = await conn.fetch(PERIOD_POSTINGS_SQL, account, from_ns, to_ns, limit)
    return [_posting(row) for row in rows]


async def opening_balances(conn: Any, account: int, at_ns: int) -> dict[int, int]:
    """The account's balance per bucket from every posting before `at_ns` (BUCKET_* -> micros)."""
    rows = await conn.fetch(OPENING_BALANCES_SQL, account, at_ns)
    found = {bucket: 0 for bucket in BUCKET_NAMES}
    found.update({row["bucket"]: row["amount"] for row in rows})
    return found


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """A deposit or a withdrawal of an account as the ledger holds it."""

    transfer_id: int  # the deposit's or withdrawal's id, the ref_id of its postings
    amount_micros: int
    reference: str  # a deposit's payment reference, a withdrawal's destination
    status: int  # TRANSFER_PENDING, _COMPLETED or _REJECTED
    ts_requested: int  # engine time it was credited or asked for
    ts_updated: int  # engine time of its last change (approval, rejection)


async def account_transfers(conn: Any, account: int, kind: int, limit: int) -> list[Transfer]:
    """The account's newest `limit` transfers of `kind` (TRANSFER_DEPOSIT or _WITHDRAWAL)."""
    rows = await conn.fetch(ACCOUNT_TRANSFERS_SQL, account, kind, limit)
    return [
        Transfer(
            transfer_id=row["transfer_id"],
            amount_micros=row["amount_micros"],
            reference=row["reference"],
            status=row["status"],
            ts_requested=row["ts_requested"],
            ts_updated=row["ts_event"],
        )
        for row in rows
    ]


class PendingWithdrawal(msgspec.Struct, frozen=True, kw_only=True):
    """A withdrawal awaiting an operator's approval or rejection (`SettleWithdrawal`)."""

    shard: int
    withdrawal_id: int
    account: int
    amount_micros: int
    destination: str
    ts_requested: int  # engine time it was asked for


async def pending_withdrawals(conn: Any, limit: int) -> list[PendingWithdrawal]:
    """The oldest `limit` withdrawals of any account still pending, oldest first."""
    rows = await conn.fetch(PENDING_WITHDRAWALS_SQL, TRANSFER_WITHDRAWAL, TRANSFER_PENDING, limit)
    return [
        PendingWithdrawal(
            shard=row["shard"],
            withdrawal_id=row["transfer_id"],
            account=row["account"],
            amount_micros=row["amount_micros"],
            destination=row["reference"],
            ts_requested=row["ts_requested"],
        )
        for row in rows
    ]
