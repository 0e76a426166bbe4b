"""`gx admin`: the operator's market controls and dead letters.

    gx admin halt H100-SXM.us-east.1h.2026-12-01T14 --reason "provider outage"
    gx admin resume H100-SXM.us-east.1h.2026-12-01T14     # an operator's halt or a breaker's
    gx admin cancel-instrument H100-SXM.us-east.1h.2026-12-01T14   # every resting order
    gx admin suspend 42 --reason kyc      # its open orders cancelled, new orders refused
    gx admin reinstate 42
    gx admin dead-letters --dsn postgresql://...           # what settlement could not settle
    gx admin replay-dead-letter 0:1234 --dsn postgresql://...   # after the fix, exactly once

The market controls are engine commands like `gx funds`': one command to gx.commands as the
external account (0), the events it caused awaited on gx.events, one JSON object printed; they
are in the log, so the engine replays them and the audit sees them. The dead-letter actions read
and write the ledger (streams/settlement/dead_letters.py says why a replay never posts twice).
Exit status: 0 done, 1 refused (the engine's code and reason, or the replay's), 2 usage or no
broker or database, 3 no answer within --timeout (the command is in the log and may still act).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg
import msgspec
import orjson

from exchange.cli.funds import ANSWER_TIMEOUT_S, submit_and_print
from exchange.cli.process import add_broker, add_database, load, usage_error
from exchange.wire import reject_name
from schemas import commands as c
from schemas import events as e
from schemas.codes import HaltReason
from streams.settlement.dead_letters import list_dead_letters, replay_dead_letter
from streams.settlement.rows import prepare_connection

__all__ = ["register", "outcome", "control_command"]

_CONTROLS = ("halt", "resume", "cancel-instrument", "suspend", "reinstate")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `admin` with its market controls and dead-letter actions."""
    parser = subparsers.add_parser(
        "admin",
        help="halt, resume, suspend, cancel an instrument; dead letters (operator)",
        description="Operator market controls through gx.commands, and settlement dead letters.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    halt = actions.add_parser("halt", help="stop trading in an instrument until resumed")
    resume = actions.add_parser("resume", help="end an instrument's halt")
    cancel = actions.add_parser("cancel-instrument", help="cancel every order in an instrument")
    for action in (halt, resume, cancel):
        action.add_argument("symbol")
    suspend = actions.add_parser("suspend", help="cancel an account's orders, refuse new ones")
    reinstate = actions.add_parser("reinstate", help="let a suspended account trade again")
    for action in (suspend, reinstate):
        action.add_argument("account", type=int)
    for action in (halt, suspend):
        action.add_argument("--reason", default="", help="kept in the command log")
    for name in _CONTROLS:
        action = actions.choices[name]
        add_broker(action)
        action.add_argument("--shard", type=int, default=0)
        action.add_argument("--timeout", type=float, default=ANSWER_TIMEOUT_S, help="seconds")
        action.set_defaults(handler=run_control)
    listing = actions.add_parser("dead-letters", help="list what settlement could not settle")
    listing.add_argument("--all", action="store_true", help="include those already replayed")
    replay = actions.add_parser("replay-dead-letter", help="settle a record's dead letters once")
    replay.add_argument("position", help="PARTITION:OFFSET of the gx.events record")
    for action in (listing, replay):
        add_database(action, "the ledger's PostgreSQL URL (or GX_DATABASE_URL)")
        action.add_argument("--consumer", default="settlement", help="the settlement consumer")
        action.set_defaults(handler=run_dead_letters)


def control_command(args: argparse.Namespace) -> c.Command:
    """The engine command of a market-control action."""
    common: dict[str, Any] = {"shard": args.shard, "ts_init": time.time_ns()}
    if args.action == "halt":
        return c.HaltInstrument(**common, symbol=args.symbol, reason=args.reason)
    if args.action == "resume":
        return c.ResumeInstrument(**common, symbol=args.symbol)
    if args.action == "cancel-instrument":
        return c.CancelInstrumentOrders(**common, symbol=args.symbol)
    if args.action == "suspend":
        return c.SuspendAccount(**common, target_account=args.account, reason=args.reason)
    return c.ReinstateAccount(**common, target_account=args.account)


def run_control(args: argparse.Namespace) -> int:
    """Run one market control; print its outcome as JSON; return the exit status."""
    return submit_and_print(
        f"admin {args.action}", args, lambda: control_command(args), lambda _, ev: outcome(ev)
    )


def outcome(events: list[e.Event]) -> tuple[dict[str, Any], int]:
    """What to print for a market control's events, and the exit status."""
    cancelled = sum(1 for x in events if isinstance(x, e.OrderCancelled))
    for x in events:
        if isinstance(x, e.CommandRejected):
            return {"status": "refused", "code": reject_name(x.code), "reason": x.reason}, 1
        if isinstance(x, e.InstrumentHalted):
            return {
                "status": "halted",
                "symbol": x.symbol,
                "reason": HaltReason(x.reason).name.lower(),
            }, 0
        if isinstance(x, e.InstrumentResumed):
            return {"status": "resumed", "symbol": x.symbol}, 0
        if isinstance(x, e.InstrumentOrdersCancelled):
            return {"status": "cancelled", "symbol": x.symbol, "orders": x.orders}, 0
        if isinstance(x, e.AccountSuspended):
            return {"status": "suspended", "account": x.account, "orders_cancelled": cancelled}, 0
        if isinstance(x, e.AccountReinstated):
            return {"status": "reinstated", "account": x.account}, 0
    return {"status": "unanswered", "events": [type(x).__name__ for x in events]}, 1


def _position(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"position: expected PARTITION:OFFSET such as 0:1234, found {text!r}")
    return int(partition), int(offset)


def run_dead_letters(args: argparse.Namespace) -> int:
    """List dead letters or replay one record's; print JSON; return the exit status."""
    name = f"admin {args.action}"
    try:
        settings = load(args)
        if not settings.database_url:
            raise ValueError("dsn: expected --dsn or GX_DATABASE_URL, the ledger's PostgreSQL")
        position = _position(args.position) if args.action == "replay-dead-letter" else None
    except ValueError as error:
        return usage_error(name, error)
    try:
        answer, status = asyncio.run(_dead_letters(settings.database_url, args, position))
    except (OSError, asyncpg.PostgresError) as error:
        return usage_error(name, error)
    print(orjson.dumps(answer).decode())
    return status


async def _dead_letters(
    dsn: str, args: argparse.Namespace, position: tuple[int, int] | None
) -> tuple[dict[str, Any], int]:
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_connection(conn)
        if position is None:
            found = await list_dead_letters(conn, consumer=args.consumer, include_replayed=args.all)
            letters = [
                {**_builtins(d), "id": f"{d.partition}:{d.offset}"} for d in found
            ]  # the id replay-dead-letter takes
            return {"status": "listed", "dead_letters": letters}, 0
        done = await replay_dead_letter(conn, *position, time.time_ns(), consumer=args.consumer)
        return _builtins(done), 0 if done.status in ("replayed", "already_replayed") else 1
    finally:
        await conn.close()


def _builtins(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(value)
    return out
