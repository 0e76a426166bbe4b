"""An account's ledger as its users read it: pages of entries, and statements for an accountant.

Both read the settlement ledger in PostgreSQL (streams/ledger/reads.py), never the gateway's
memory, so every gateway instance answers alike and nothing depends on how long one has run.
An entry names its bucket and reason ("available", "delivery_release"), never a number; money is
a decimal string of dollars. A page goes back from a cursor, so an account with a long history
is read in full, page by page. A statement lists a period oldest first with the opening balance
of each bucket and each entry's running balance, so the last running balance of a bucket is its
balance at the period's end; a provider's payouts (escrow released per delivered hour, fees,
penalties) read as such lines.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime
from datetime import time as dt_time
from typing import Any

from exchange.wire import NS_PATTERN, ErrorCode, WireError, int_pattern, money_to_str
from streams.ledger.reads import (
    BUCKET_NAMES,
    REASON_NAMES,
    TIME_MAX_NS,
    Cursor,
    Posting,
    account_postings,
    opening_balances,
    parse_cursor,
    period_postings,
)

__all__ = [
    "CURSOR_PATTERN",
    "LEDGER_PAGE_MAX",
    "STATEMENT_ENTRIES_MAX",
    "STATEMENT_FORMATS",
    "TIME_SCHEMA",
    "ledger_page",
    "parse_time_ns",
    "statement",
]

LEDGER_PAGE_MAX = 1_000
STATEMENT_ENTRIES_MAX = 100_000  # a longer period is asked for in parts
STATEMENT_FORMATS = ("json", "csv")
CURSOR_INDEX_MAX = 2**15 - 1  # posting_index is a smallint
CSV_COLUMNS = ("ts_ns", "time", "seq", "id", "bucket", "reason", "ref_id", "amount", "balance")


_YEAR = r"([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
DATE_PATTERN = f"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
DATE_TIME_PATTERN = (
    f"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
# The `from` and `to` of a query: UNIX nanoseconds, an RFC 3339 date or date-time, or empty
# (no bound).
TIME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "anyOf": [
        {"maxLength": 0},
        {"pattern": NS_PATTERN},
        {"pattern": DATE_PATTERN, "format": "date"},
        {"pattern": DATE_TIME_PATTERN, "format": "date-time"},
    ],
}
CURSOR_PATTERN = (
    "^(" + int_pattern(TIME_MAX_NS)[1:-1] + r")\.(" + int_pattern(CURSOR_INDEX_MAX)[1:-1] + ")$"
)
_NS_RE, _DATE_RE, _DATE_TIME_RE = (
    re.compile(p) for p in (NS_PATTERN, DATE_PATTERN, DATE_TIME_PATTERN)
)
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def parse_time_ns(text: str | None, name: str, default: int) -> int:
    """A time from the query: UNIX nanoseconds, or an RFC 3339 date or date-time (a date is
    midnight UTC), clamped to 0..TIME_MAX_NS (nothing in the ledger lies outside)."""
    if text is None or text == "":
        return default
    if _NS_RE.fullmatch(text):
        return int(text)
    try:
        if _DATE_RE.fullmatch(text):
            when = datetime.combine(date.fromisoformat(text), dt_time(), UTC)
        elif _DATE_TIME_RE.fullmatch(text):
            when = datetime.fromisoformat(text)
        else:
            raise ValueError(text)
    except ValueError:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"{name}: expected UNIX nanoseconds, an RFC 3339 date (2026-01-31) or date-time "
            f"(2026-01-31T12:00:00Z), found {text[:40]!r}",
        ) from None
    try:
        seconds = int(when.timestamp())
    except (OverflowError, ValueError):  # a year-1 or year-9999 time shifted past the calendar
        return 0 if when.year < 1970 else TIME_MAX_NS
    ns = seconds * 1_000_000_000 + when.microsecond * 1_000
    return min(max(ns, 0), TIME_MAX_NS)


def _period(from_text: str | None, to_text: str | None) -> tuple[int, int]:
    """`[from, to)` in nanoseconds; from after to is an empty period, not an error."""
    return parse_time_ns(from_text, "from", 0), parse_time_ns(to_text, "to", TIME_MAX_NS)


def _cursor(text: str | None) -> Cursor:
    """The `cursor` of a page: empty for the newest, else a previous page's `next_cursor`."""
    before = parse_cursor(text) if not text or _CURSOR_RE.fullmatch(text) else None
    if before is None:
        raise WireError(
            ErrorCode.BAD_REQUEST, "cursor: expected the next_cursor of a previous page (seq.index)"
        )
    return before


def _entry(p: Posting) -> dict[str, Any]:
    return {
        "id": f"{p.seq}.{p.index}",
        "seq": p.seq,
        "ts_ns": str(p.ts_event),
        "bucket": BUCKET_NAMES.get(p.bucket, str(p.bucket)),
        "amount": money_to_str(p.amount_micros),
        "reason": REASON_NAMES.get(p.reason, str(p.reason)),
        "ref_id": p.ref_id,
    }


async def ledger_page(
    pool: Any,
    account: int,
    limit: int,
    cursor: str | None = None,
    from_text: str | None = None,
    to_text: str | None = None,
) -> dict[str, Any]:
    """One page of the account's entries, newest first, and the cursor of the next (or None)."""
    if not 1 <= limit <= LEDGER_PAGE_MAX:
        raise WireError(
            ErrorCode.BAD_REQUEST, f"limit: expected 1-{LEDGER_PAGE_MAX}, found {limit}"
        )
    before = _cursor(cursor)
    from_ns, to_ns = _period(from_text, to_text)
    # One more than the page: a full last page then says there is nothing after it.
    postings = await account_postings(pool, account, limit + 1, before, from_ns, to_ns)
    entries = [_entry(p) for p in postings[:limit]]
    more = len(postings) > limit
    return {"entries": entries, "next_cursor": entries[-1]["id"] if more else None}


async def statement(
    pool: Any, account: int, from_text: str | None, to_text: str | None, format: str
) -> tuple[bytes | dict[str, Any], str]:
    """The period's statement and its media type: JSON, or CSV with one line per entry."""
    if format not in STATEMENT_FORMATS:
        raise WireError(
            ErrorCode.BAD_REQUEST, f"format: expected one of {STATEMENT_FORMATS}, found {format!r}"
        )
    from_ns, to_ns = _period(from_text, to_text)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        # One snapshot: the opening balances and the entries agree even while settlement writes.
        opening = await opening_balances(conn, account, from_ns)
        postings = await period_postings(conn, account, from_ns, to_ns, STATEMENT_ENTRIES_MAX + 1)
    if len(postings) > STATEMENT_ENTRIES_MAX:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"the period holds more than {STATEMENT_ENTRIES_MAX} entries: ask for a shorter one",
        )
    running = dict(opening)
    lines = []
    for p in postings:
        running[p.bucket] = running.get(p.bucket, 0) + p.amount_micros
        lines.append({**_entry(p), "balance": money_to_str(running[p.bucket])})
    names = BUCKET_NAMES
    if format == "json":
        return {
            "account": account,
            "from_ns": str(from_ns),
            "to_ns": str(to_ns),
            "opening": {names[b]: money_to_str(v) for b, v in opening.items() if b in names},
            "closing": {names[b]: money_to_str(v) for b, v in running.items() if b in names},
            "entries": lines,
        }, "application/json"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for bucket, amount in opening.items():
        writer.writerow((from_ns, _iso(from_ns), "", "", names.get(bucket, bucket), "opening", "", "", money_to_str(amount)))  # fmt: skip
    for line in lines:
        writer.writerow(
            (line["ts_ns"], _iso(int(line["ts_ns"])), line["seq"], line["id"], line["bucket"],
             line["reason"], line["ref_id"], line["amount"], line["balance"])
        )  # fmt: skip
    return out.getvalue().encode(), "text/csv"


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
