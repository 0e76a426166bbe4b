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

import time
from typing import Any

import msgspec

from exchange.gateway.hub import Hub
from exchange.wire import ErrorCode, WireError, money_to_str, ns_to_str
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


class WithdrawParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount: str
    destination: str


def _amount_micros(text: str) -> int:
    try:
        micros = usd_to_micros(text)
    except UnitError as error:
        raise WireError(ErrorCode.BAD_REQUEST, str(error)) from None
    if micros <= 0:
        raise WireError(ErrorCode.BAD_REQUEST, f"amount: expected more than 0, found {text}")
    return micros


def _destination(text: str) -> str:
    """The destination as given, refused when empty, too long or holding control characters
    (it is shown to operators and written to the ledger as text)."""
    if not text or len(text) > DESTINATION_CHARS_MAX:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"destination: expected 1-{DESTINATION_CHARS_MAX} characters, found {len(text)}",
        )
    if not text.isprintable():
        raise WireError(ErrorCode.BAD_REQUEST, "destination: control characters are not allowed")
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
