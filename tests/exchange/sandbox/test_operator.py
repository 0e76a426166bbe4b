"""The sandbox's operator over the gateway's real projections and a stand-in engine and ledger.

`Engine.submit` answers each command with the events the engine would log and applies them to
the `Accounts` and `Deliveries` projections, as the hub does before a submit returns; `Ledger`
answers the pending-withdrawals read with rows the test sets, so the lag between the engine and
the ledger can be played out.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from exchange import wire
from exchange.gateway.accounts import Accounts
from exchange.gateway.deliveries import Deliveries
from exchange.sandbox.bots import WITHDRAWAL_MAX_MICROS, WITHDRAWAL_RESERVE_MICROS, payout_micros
from exchange.sandbox.operator import (
    WITHDRAWAL_REJECT_PROBABILITY,
    Operator,
    approves,
    refunds,
    topup_micros,
)
from schemas import commands as c
from schemas import events as e
from schemas.codes import CashReason, DeliveryOutcome
from streams.ledger.reads import PENDING_WITHDRAWALS_SQL

SEED = 5
BUYER, PROVIDER = 400, 200
FUNDING = 10_000 * 1_000_000
START_NS = 1_000 * 3_600_000_000_000


class Engine:
    """Answer commands as the engine would; apply the events to the projections."""

    def __init__(self) -> None:
        self.accounts = Accounts(wire.Prices(1000))
        self.deliveries = Deliveries(self.accounts)
        self.seq = 0
        self.sent: list[c.Command] = []
        self.refuse: set[type] = set()  # command types answered with CommandRejected

    def log(self, kind: type[Any], **fields: Any) -> Any:
        self.seq += 1
        event = kind(seq=self.seq, ts_event=START_NS + self.seq, **fields)
        self.accounts.apply(event)
        self.deliveries.apply(event)
        return event

    def cash(self, account: int, available_delta: int) -> e.CashChanged:
        return self.log(
            e.CashChanged,
            account=account,
            available_delta=available_delta,
            held_delta=0,
            escrow_delta=0,
            collateral_delta=0,
            reason=int(CashReason.DEPOSIT),
            ref_id=0,
        )

    def disputed(self, obligation_id: int) -> None:
        people = {"obligation_id": obligation_id, "provider": PROVIDER, "holder": BUYER}
        self.log(
            e.DeliveryAssigned,
            symbol="H100-SXM.us-east.1h.2026-11-30T22",
            gpus=1,
            start_ns=START_NS,
            end_ns=START_NS + 3_600_000_000_000,
            escrow_micros=2_400_000,
            **people,
        )
        self.log(e.DeliveryStarted, **people)
        self.log(e.DeliveryDisputed, **people)

    async def submit(self, command: c.Command) -> list[e.Event]:
        self.sent.append(command)
        if type(command) in self.refuse:
            return [
                self.log(e.CommandRejected, command=type(command).__name__, code=1, reason="no")
            ]
        if isinstance(command, c.Deposit):
            return [self.cash(command.account, command.amount_micros)]
        if isinstance(command, c.ResolveDispute):
            people = {"obligation_id": command.obligation_id, "provider": PROVIDER, "holder": BUYER}
            events = [self.log(e.DisputeResolved, released=command.release, **people)]
            if not command.release:
                events.append(
                    self.log(
                        e.DeliverySettled,
                        outcome=int(DeliveryOutcome.FAILED),
                        hours_delivered=0,
                        hours_failed=1,
                        released_micros=0,
                        refund_micros=2_400_000,
                        penalty_micros=500_000,
                        **people,
                    )
                )
            return events
        return []  # a settled withdrawal changes nothing the operator reads back


class Ledger:
    """The pending-withdrawals read: rows as the settlement writer left them."""

    def __init__(self) -> None:
        self.pending: list[int] = []  # withdrawal ids still pending

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        assert sql == PENDING_WITHDRAWALS_SQL
        return [
            {
                "shard": 0,
                "transfer_id": i,
                "account": PROVIDER,
                "amount_micros": 1_000_000,
                "reference": f"sandbox-bank-{PROVIDER}",
                "ts_requested": START_NS + i,
            }
            for i in self.pending
        ]


def operator(engine: Engine, ledger: Ledger, review_s: float = 0.0) -> Operator:
    gateway = SimpleNamespace(
        hub=engine,
        pool=ledger,
        accounts=engine.accounts,
        deliveries=engine.deliveries,
        desk=SimpleNamespace(shard=0),
    )
    return Operator(
        gateway,  # type: ignore[arg-type]
        funded={BUYER: FUNDING},
        holders=[BUYER],
        seed=SEED,
        dispute_review_s=review_s,
    )


def test_pending_withdrawals_are_settled_once_each_as_the_seed_decides() -> None:
    engine, ledger = Engine(), Ledger()
    engine.cash(BUYER, FUNDING)  # no top-up in the way
    op = operator(engine, ledger)
    ledger.pending = list(range(1, 31))
    asyncio.run(op.settle_withdrawals())
    settles = [cmd for cmd in engine.sent if isinstance(cmd, c.SettleWithdrawal)]
    assert [s.withdrawal_id for s in settles] == ledger.pending
    assert all(s.approved == approves(SEED, s.withdrawal_id) for s in settles)
    assert op.stats.approved + op.stats.rejected == 30 and op.stats.rejected > 0

    # The ledger has not caught up yet: nothing is sent again. Then it shows one new request.
    asyncio.run(op.settle_withdrawals())
    assert len(engine.sent) == 30
    ledger.pending = [31]
    asyncio.run(op.settle_withdrawals())
    assert len(engine.sent) == 31
    assert engine.sent[-1] == c.SettleWithdrawal(
        ts_init=engine.sent[-1].ts_init, withdrawal_id=31, approved=approves(SEED, 31)
    )


def test_a_refused_settlement_is_counted_and_not_sent_again_while_pending() -> None:
    engine, ledger = Engine(), Ledger()
    engine.refuse.add(c.SettleWithdrawal)
    op = operator(engine, ledger)
    ledger.pending = [7]
    asyncio.run(op.settle_withdrawals())
    asyncio.run(op.settle_withdrawals())
    assert len(engine.sent) == 1
    assert op.stats.refused == 1 and op.stats.approved == op.stats.rejected == 0


def test_approval_is_fixed_by_seed_and_id_and_rejects_about_the_named_share() -> None:
    decisions = [approves(SEED, i) for i in range(1, 2001)]
    assert decisions == [approves(SEED, i) for i in range(1, 2001)]
    assert decisions != [approves(SEED + 1, i) for i in range(1, 2001)]
    rejected = decisions.count(False) / len(decisions)
    assert abs(rejected - WITHDRAWAL_REJECT_PROBABILITY) < 0.03


def test_a_low_account_is_topped_up_to_its_funding_under_a_new_reference_each_time() -> None:
    engine, ledger = Engine(), Ledger()
    op = operator(engine, ledger)
    engine.cash(BUYER, FUNDING // 10)  # below the floor
    asyncio.run(op.top_up())
    asyncio.run(op.top_up())  # the deposit already shows: nothing more
    engine.cash(BUYER, -FUNDING + FUNDING // 4)  # spent down to a quarter: above the floor
    asyncio.run(op.top_up())
    engine.cash(BUYER, -FUNDING // 4)  # spent it all
    asyncio.run(op.top_up())
    deposits = [cmd for cmd in engine.sent if isinstance(cmd, c.Deposit)]
    assert [(d.account, d.amount_micros) for d in deposits] == [
        (BUYER, FUNDING - FUNDING // 10),
        (BUYER, FUNDING),
    ]
    assert [d.ref for d in deposits] == [f"sandbox-topup-{BUYER}-1", f"sandbox-topup-{BUYER}-2"]
    assert engine.accounts.balances(BUYER)["available"] == wire.money_to_str(FUNDING)
    assert op.stats.topped_up == 2


def test_topup_is_zero_at_or_above_the_floor() -> None:
    assert topup_micros(FUNDING, FUNDING) == 0
    assert topup_micros(FUNDING // 5, FUNDING) == 0
    assert topup_micros(FUNDING // 5 - 1, FUNDING) == FUNDING - FUNDING // 5 + 1
    assert topup_micros(0, FUNDING) == FUNDING


def test_a_dispute_waits_its_review_then_is_resolved_once_as_the_seed_decides() -> None:
    engine, ledger = Engine(), Ledger()
    engine.cash(BUYER, FUNDING)
    engine.disputed(11)
    waiting = operator(engine, ledger, review_s=3600.0)
    asyncio.run(waiting.resolve_disputes())
    assert engine.sent == []

    op = operator(engine, ledger)
    asyncio.run(op.resolve_disputes())
    asyncio.run(op.resolve_disputes())
    assert engine.sent == [
        c.ResolveDispute(
            ts_init=engine.sent[0].ts_init, obligation_id=11, release=not refunds(SEED, 11)
        )
    ]
    assert engine.deliveries.deliveries(BUYER, "disputed", "holder") == []
    assert op.stats.released + op.stats.refunded == 1


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (WITHDRAWAL_RESERVE_MICROS, 0),
        (WITHDRAWAL_RESERVE_MICROS + 1_000 * 1_000_000, 500 * 1_000_000),
        (WITHDRAWAL_RESERVE_MICROS + 150 * 1_000_000, 0),  # half of it is below the minimum
        (10 * WITHDRAWAL_RESERVE_MICROS, WITHDRAWAL_MAX_MICROS),
        (0, 0),
    ],
)
def test_a_provider_withdraws_half_its_cash_above_the_reserve_within_bounds(
    available: int, expected: int
) -> None:
    assert payout_micros(available) == expected
