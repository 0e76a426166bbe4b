"""Money in and out through the gateway: withdrawal requests, and the lists of deposits and
withdrawals.

A withdrawal is asked for with `POST /withdrawals {"amount", "destination"}` by a key with the
`withdraw` scope: the gateway checks the amount and the destination, sends `RequestWithdrawal`
and answers from the engine's `WithdrawalRequested` (the amount is pending at once: it left
`available` and cannot be traded) or its refusal (INSUFFICIENT_CASH, WITHDRAWAL_LIMIT). An
operator approves or rejects it later (`gx funds approve|reject`); deposits come only from
operators (`gx funds deposit`), never through the gateway.

The lists are read from the ledger's `transfers` table (streams/ledger/reads.py), which the
settlement writer fills from the same events, so they survive every restart; a request just
answered shows in `GET /withdrawals` once settlement has written its event (milliseconds).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import msgspec

from exchange.gateway.hub import Hub
from exchange.gateway.openapi import documented
from exchange.wire import ErrorCode, WireError, money_to_str, ns_to_str, positive_decimal_pattern
from schemas import commands as c
from schemas import events as e
from schemas.units import UnitError, usd_to_micros
from streams.ledger.reads import TRANSFER_KINDS, TRANSFER_STATUS_NAMES, Transfer, account_transfers

__all__ = [
    "DESTINATION_CHARS_MAX",
    "WithdrawParams",
    "list_transfers",
    "request_withdrawal",
    "transfer_view",
]

DESTINATION_CHARS_MAX = 128  # a bank account, an IBAN with a note, a wallet address
AMOUNT_DIGITS_MAX = 12  # dollars before the point: the engine's cash check refuses the rest
AMOUNT_PATTERN = positive_decimal_pattern(6, AMOUNT_DIGITS_MAX)  # USD at micro-dollar precision
# Printable ASCII: shown to operators and written to the ledger as text, so no control or
# invisible characters and no look-alike letters.
DESTINATION_PATTERN = f"^[ -~]{{1,{DESTINATION_CHARS_MAX}}}$"
_AMOUNT_RE, _DESTINATION_RE = re.compile(AMOUNT_PATTERN), re.compile(DESTINATION_PATTERN)


class WithdrawParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount: Annotated[str, documented("USD > 0, at most 6 decimals", pattern=AMOUNT_PATTERN)]
    destination: Annotated[str, documented("printable ASCII", pattern=DESTINATION_PATTERN)]


def _amount_micros(text: str) -> int:
    if _AMOUNT_RE.fullmatch(text) is None:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"amount: expected USD > 0 with at most 6 decimals and {AMOUNT_DIGITS_MAX} digits "
            f"before the point, found {text[:40]!r}",
        )
    try:
        return usd_to_micros(text)
    except UnitError as error:  # not reached: the pattern admits only what converts
        raise WireError(ErrorCode.BAD_REQUEST, str(error)) from None


def _destination(text: str) -> str:
    """The destination as given, refused unless 1-DESTINATION_CHARS_MAX printable ASCII
    characters (it is shown to operators and written to the ledger as text)."""
    if _DESTINATION_RE.fullmatch(text) is None:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"destination: expected 1-{DESTINATION_CHARS_MAX} printable ASCII characters, "
            f"found {len(text)} characters",
        )
    return text


async def request_withdrawal(
    hub: Hub, shard: int, account: int, p: WithdrawParams
) -> dict[str, Any]:
    """Ask the engine to pay `p.amount` out to `p.destination`; answer `{"withdrawal"}` pending.

    Raises WireError: BAD_REQUEST before anything is sent; the engine's refusal (422) after.
    """
    command = c.RequestWithdrawal(
        shard=shard,
        ts_init=time.time_ns(),
        account=account,
        amount_micros=_amount_micros(p.amount),
        destination=_destination(p.destination),
    )
    events = await hub.submit(command)
    for event in events:
        if isinstance(event, e.CommandRejected):
            raise WireError.rejected(event.code, event.reason)
        if isinstance(event, e.WithdrawalRequested):
            return {
                "withdrawal": {
                    "id": event.withdrawal_id,
                    "amount": money_to_str(event.amount_micros),
                    "destination": event.destination,
                    "status": "pending",
                    "ts_ns": ns_to_str(event.ts_event),
                    "updated_ns": ns_to_str(event.ts_event),
                }
            }
    raise WireError(ErrorCode.UNAVAILABLE, "the engine answered without a decision")


def transfer_view(kind: str, t: Transfer) -> dict[str, Any]:
    """A deposit or withdrawal as the wire shows it (exchange/API.md, "transfers")."""
    return {
        "id": t.transfer_id,
        "amount": money_to_str(t.amount_micros),
        ("reference" if kind == "deposit" else "destination"): t.reference,
        "status": TRANSFER_STATUS_NAMES.get(t.status, str(t.status)),
        "ts_ns": ns_to_str(t.ts_requested),
        "updated_ns": ns_to_str(t.ts_updated),
    }


async def list_transfers(pool: Any, account: int, kind: str, limit: int) -> list[dict[str, Any]]:
    """The account's newest `limit` deposits or withdrawals (`kind`), newest first."""
    rows = await account_transfers(pool, account, TRANSFER_KINDS[kind], limit)
    return [transfer_view(kind, row) for row in rows]
