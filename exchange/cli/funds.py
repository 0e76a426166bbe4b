"""`gx funds`: the operator's money desk, as engine commands through the log like any other.

    gx funds deposit --account 12 --amount 2500.00 --reference BANK-2026-12-03-0042
    gx funds approve 7          # a pending withdrawal: the money leaves
    gx funds reject 7           # it returns to the account's available cash
    gx funds resolve 31 --release | --refund   # a disputed delivery

Each produces one command to gx.commands as the external account (0), waits for the events it
caused on gx.events and prints one JSON object; the audit replays it like every other command.
A deposit's reference is credited once, so running the same deposit twice is safe: the second
answers `"already_credited"` (the engine's DUPLICATE_REFERENCE) and changes nothing. Exit status:
0 done, 1 refused by the engine (the code and reason are printed), 2 usage or no broker, 3 no
answer within --timeout (the command may still take effect: it is in the log).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from exchange.cli.process import add_broker, load, usage_error
from exchange.wire import money_to_str, reject_name
from schemas import commands as c
from schemas import events as e
from schemas.codec import encode
from schemas.codes import Reject
from schemas.units import UnitError, usd_to_micros
from streams.consumers import log_consumer
from streams.event_records import CommandGrouper
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["ANSWER_TIMEOUT_S", "register", "submit", "submit_and_print"]

ANSWER_TIMEOUT_S = 30.0  # how long a command waits for its events by default
_POLL_MS = 200


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `funds` with its actions `deposit`, `approve`, `reject` and `resolve`."""
    parser = subparsers.add_parser(
        "funds",
        help="deposit, approve or reject withdrawals, resolve disputes (operator)",
        description="Operator commands on accounts' money, sent through gx.commands.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    deposit = actions.add_parser("deposit", help="credit an external payment, once per reference")
    deposit.add_argument("--account", required=True, type=int)
    deposit.add_argument("--amount", required=True, help="USD, e.g. 2500.00")
    deposit.add_argument(
        "--reference", required=True, help="the payment's reference: credited at most once"
    )
    approve = actions.add_parser("approve", help="approve a pending withdrawal: the money leaves")
    reject = actions.add_parser("reject", help="reject a pending withdrawal: the money returns")
    for action in (approve, reject):
        action.add_argument("withdrawal_id", type=int)
    resolve = actions.add_parser("resolve", help="resolve a disputed delivery")
    resolve.add_argument("obligation_id", type=int)
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--release", action="store_true", help="the machines were reachable: pay the provider"
    )
    outcome.add_argument(
        "--refund", action="store_true", help="refund the holder the hours with the penalty"
    )
    for action in actions.choices.values():
        add_broker(action)
        action.add_argument("--shard", type=int, default=0)
        action.add_argument("--timeout", type=float, default=ANSWER_TIMEOUT_S, help="seconds")
        action.set_defaults(handler=run)


def _command(args: argparse.Namespace) -> c.Command:
    ts = time.time_ns()
    if args.action == "deposit":
        amount = usd_to_micros(args.amount)
        if amount <= 0:
            raise UnitError(f"amount: expected more than 0, found {args.amount}")
        if not args.reference.strip():
            raise ValueError("reference: expected the payment's reference, found nothing")
        return c.Deposit(
            shard=args.shard,
            ts_init=ts,
            account=args.account,
            amount_micros=amount,
            ref=args.reference,
        )
    if args.action in ("approve", "reject"):
        return c.SettleWithdrawal(
            shard=args.shard,
            ts_init=ts,
            withdrawal_id=args.withdrawal_id,
            approved=args.action == "approve",
        )
    return c.ResolveDispute(
        shard=args.shard, ts_init=ts, obligation_id=args.obligation_id, release=args.release
    )


def run(args: argparse.Namespace) -> int:
    """Run one `gx funds` action; print its outcome as JSON; return the exit status."""
    return submit_and_print(
        f"funds {args.action}", args, lambda: _command(args), lambda cmd, ev: outcome(cmd, ev)
    )


def submit_and_print(
    name: str,
    args: argparse.Namespace,
    build: Callable[[], c.Command],
    answer_of: Callable[[c.Command, list[e.Event]], tuple[dict[str, Any], int]],
) -> int:
    """Submit one operator command, print its answer as JSON; return the exit status.

    Shared by `gx funds` and `gx admin`: 2 usage or no broker, 3 no answer within --timeout.
    """
    try:
        settings = load(args)
        settings.broker()
        command = build()
    except ValueError as error:  # UnitError is one
        return usage_error(name, error)
    try:
        events = asyncio.run(submit(settings, command, args.mock_broker, args.timeout))
    except (KafkaError, OSError) as error:
        return usage_error(name, error)
    except TimeoutError:
        print(
            f"gx {name}: no answer from the engine within {args.timeout:g} s; the command is in "
            "the log and may still take effect",
            file=sys.stderr,
        )
        return 3
    answer, status = answer_of(command, events)
    print(orjson.dumps(answer).decode())
    return status


async def submit(
    settings: Settings, command: c.Command, mock_broker: bool, timeout_s: float
) -> list[e.Event]:
    """Produce `command` to its shard of gx.commands; return the events it caused.

    The events topic's end is read before the command is sent, so its events are after it
    whatever the engine's speed. Raises TimeoutError when they have not come in `timeout_s`.
    """
    roles = topics(settings)
    events_tp = TopicPartition(roles["events"].name, command.shard)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker(), acks="all", enable_idempotence=True
    )
    consumer = log_consumer(settings.broker(), check_crcs=not mock_broker, fetch_wait_ms=_POLL_MS)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([events_tp])
        end = (await consumer.end_offsets([events_tp]))[events_tp]
        consumer.seek(events_tp, end)
        sent = await producer.send_and_wait(
            roles["commands"].name,
            encode(command),
            key=shard_key(command.shard),
            partition=command.shard,
        )
        grouper = CommandGrouper()
        async with asyncio.timeout(timeout_s):
            while True:
                batch = await consumer.getmany(events_tp, timeout_ms=_POLL_MS)
                for record in batch.get(events_tp, []):
                    done, _errors = grouper.feed(record.value, record.headers)
                    for found in done:
                        if found.input_offset == sent.offset:
                            return found.events
    finally:
        await consumer.stop()
        await producer.stop()


def outcome(command: c.Command, events: list[e.Event]) -> tuple[dict[str, Any], int]:
    """What to print for the command's events, and the exit status."""
    for event in events:
        if isinstance(event, e.CommandRejected):
            if isinstance(command, c.Deposit) and event.code == Reject.DUPLICATE_REFERENCE:
                return {"status": "already_credited", "reference": command.ref}, 0
            return {"status": "refused", "code": reject_name(event.code), "reason": event.reason}, 1
        if isinstance(event, e.DepositCredited):
            return {
                "status": "credited",
                "deposit_id": event.deposit_id,
                "account": event.account,
                "amount": money_to_str(event.amount_micros),
                "reference": event.reference,
            }, 0
        if isinstance(event, e.WithdrawalSettled):
            return {
                "status": "approved" if event.approved else "rejected",
                "withdrawal_id": event.withdrawal_id,
                "account": event.account,
                "amount": money_to_str(event.amount_micros),
            }, 0
        if isinstance(event, e.DisputeResolved):
            return {
                "status": "released" if event.released else "refunded",
                "obligation_id": event.obligation_id,
                "provider": event.provider,
                "holder": event.holder,
            }, 0
    return {"status": "unanswered", "events": [type(ev).__name__ for ev in events]}, 1
