"""Reads of the settlement ledger (streams/ledger/schema.py) that other processes serve.

The gateway's `GET /api/v1/ledger` pages an account's postings from here, so the SQL that knows
the tables and their indexes lives beside the migrations that create them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from streams.ledger.schema import BUCKET_AVAILABLE, BUCKET_COLLATERAL, BUCKET_ESCROW, BUCKET_HELD

__all__ = ["ACCOUNT_POSTINGS_SQL", "BUCKET_NAMES", "Posting", "account_postings"]

# An account's newest postings: read backwards along postings_by_account_seq, never sorted.
ACCOUNT_POSTINGS_SQL = (
    "SELECT seq, ts_event, bucket, amount_micros, reason, ref_id FROM postings "
    "WHERE account = $1 ORDER BY seq DESC, posting_index DESC LIMIT $2"
)

BUCKET_NAMES = {
    BUCKET_AVAILABLE: "available",
    BUCKET_HELD: "held",
    BUCKET_ESCROW: "escrow",
    BUCKET_COLLATERAL: "collateral",
}


class Posting(msgspec.Struct, frozen=True, kw_only=True):
    """One posting of an account as the ledger holds it (money in integer micro-dollars)."""

    seq: int  # the engine sequence of the CashChanged that posted it
    ts_event: int
    bucket: int  # BUCKET_*
    amount_micros: int
    reason: int  # schemas.codes.CashReason
    ref_id: int


async def account_postings(conn: Any, account: int, limit: int) -> list[Posting]:
    """The account's newest `limit` postings, newest first (`conn`: a connection or a pool)."""
    rows = await conn.fetch(ACCOUNT_POSTINGS_SQL, account, limit)
    return [
        Posting(
            seq=row["seq"],
            ts_event=row["ts_event"],
            bucket=row["bucket"],
            amount_micros=row["amount_micros"],
            reason=row["reason"],
            ref_id=row["ref_id"],
        )
        for row in rows
    ]
