"""The sandbox's operator: what `gx funds` does by hand, done every few seconds.

    withdrawals   every pending withdrawal of any account (the ledger's `transfers`) is settled
                  at the next round: approved, or rejected with WITHDRAWAL_REJECT_PROBABILITY
    top-ups       an account the operator funds whose available cash fell below
                  TOPUP_FLOOR_PERCENT of its funding gets a deposit back up to it, under a
                  reference of its own (the engine credits a reference once)
    disputes      a delivery disputed by a holder the operator watches is resolved once it has
                  been disputed for DISPUTE_REVIEW_S: released to the provider, or refunded to
                  the holder with DISPUTE_REFUND_PROBABILITY

Each decision is drawn from the seed and the withdrawal's or obligation's id, not from a shared
random stream, so an id gets the same decision however the rounds fall on a busy machine.
Commands go through the gateway's hub as account 0 and are awaited, so when a round ends the
gateway's projections already show what it did; the ledger shows a settled withdrawal a moment
later. So each id sent is remembered while its source still lists it (the ledger as pending, the
projection as disputed) and is not sent twice once the engine answered, even with a refusal; a
command left unanswered (a timeout) is sent again at the next round, and refused if it had
taken effect after all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence

import asyncpg
import msgspec

from exchange.gateway.context import Gateway
from exchange.wire import WireError
from schemas import commands as c
from schemas import events as e
from schemas.units import usd_to_micros
from streams.ledger.reads import pending_withdrawals

__all__ = [
    "Operator",
    "OperatorStats",
    "OPERATOR_INTERVAL_S",
    "WITHDRAWAL_REJECT_PROBABILITY",
    "TOPUP_FLOOR_PERCENT",
    "DISPUTE_REVIEW_S",
    "DISPUTE_REFUND_PROBABILITY",
    "approves",
    "refunds",
    "topup_micros",
]

log = logging.getLogger("gx.sandbox.operator")

OPERATOR_INTERVAL_S = 5.0  # how long a withdrawal waits at most, and a round's pace
WITHDRAWAL_REJECT_PROBABILITY = 0.1  # compliance said no: the amount returns to available
WITHDRAWALS_PER_ROUND_MAX = 100  # pending withdrawals read and settled in one round
TOPUP_FLOOR_PERCENT = 20  # of an account's funding: below it, it is funded up again
DISPUTE_REVIEW_S = 30.0  # a dispute shows as disputed this long before it is resolved
DISPUTE_REFUND_PROBABILITY = 0.5  # the holder was right: refunded, the provider penalised


class OperatorStats(msgspec.Struct, kw_only=True):
    """What the operator did (since it started)."""

    approved: int = 0  # withdrawals paid out
    rejected: int = 0  # withdrawals returned to available
    topped_up: int = 0  # deposits made to funded accounts
    released: int = 0  # disputes resolved for the provider
    refunded: int = 0  # disputes resolved for the holder
    refused: int = 0  # commands the engine refused (the state changed meanwhile)
    errors: int = 0  # rounds cut short: the engine or the database did not answer
    crashes: int = 0  # rounds that raised a bug


def approves(seed: int, withdrawal_id: int) -> bool:
    """Return whether the operator approves a withdrawal (the same for a seed and id)."""
    draw = random.Random(f"{seed}:withdrawal:{withdrawal_id}").random()
    return draw >= WITHDRAWAL_REJECT_PROBABILITY


def refunds(seed: int, obligation_id: int) -> bool:
    """Return whether the operator refunds a disputed delivery's holder (else it releases)."""
    return random.Random(f"{seed}:dispute:{obligation_id}").random() < DISPUTE_REFUND_PROBABILITY


def topup_micros(available_micros: int, funding_micros: int) -> int:
    """Return the deposit that brings an account back to its funding, 0 above the floor."""
    if available_micros * 100 >= funding_micros * TOPUP_FLOOR_PERCENT:
        return 0
    return funding_micros - available_micros


class Operator:
    """Settle withdrawals, top accounts up and resolve disputes, one round per interval.

    `funded` maps each account to top up to the cash it is funded with; `holders` are the
    accounts whose disputes are resolved.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        funded: Mapping[int, int],
        holders: Sequence[int],
        seed: int,
        interval_s: float = OPERATOR_INTERVAL_S,
        dispute_review_s: float = DISPUTE_REVIEW_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s: expected more than 0, found {interval_s}")
        self.gateway = gateway
        self.funded = dict(funded)
        self.holders = list(dict.fromkeys(holders))
        self.seed = seed
        self.interval_s = interval_s
        self.dispute_review_s = dispute_review_s
        self.stats = OperatorStats()
        self._settled: set[int] = set()  # withdrawal ids sent, still pending in the ledger
        self._topups: dict[int, int] = {}  # account -> top-ups made (each a new reference)
        self._disputed_at: dict[int, float] = {}  # obligation id -> when first seen disputed
        self._resolved: set[int] = set()  # obligation ids sent, still disputed in the projection

    async def run(self) -> None:
        """Run rounds until cancelled; a round that fails is counted and the next one tries."""
        while True:
            try:
                await self.round()
            except (WireError, asyncpg.PostgresError, OSError) as error:
                self.stats.errors += 1
                log.warning("operator: round cut short: %s", error)
            except Exception:  # a bug: say so, and keep the sandbox's money moving
                self.stats.crashes += 1
                log.exception("operator: round failed")
            await asyncio.sleep(self.interval_s)

    async def round(self) -> None:
        """Settle the pending withdrawals, top up the funded accounts, resolve due disputes."""
        await self.settle_withdrawals()
        await self.top_up()
        await self.resolve_disputes()

    async def settle_withdrawals(self) -> None:
        """Approve or reject every pending withdrawal not yet settled."""
        pending = await pending_withdrawals(self.gateway.pool, WITHDRAWALS_PER_ROUND_MAX)
        self._settled &= {w.withdrawal_id for w in pending}
        for w in pending:
            if w.withdrawal_id in self._settled:
                continue
            approved = approves(self.seed, w.withdrawal_id)
            command = c.SettleWithdrawal(
                shard=w.shard,
                ts_init=time.time_ns(),
                withdrawal_id=w.withdrawal_id,
                approved=approved,
            )
            taken = await self._send(command)
            self._settled.add(w.withdrawal_id)  # answered: a timeout raised, to be sent again
            if taken:
                if approved:
                    self.stats.approved += 1
                else:
                    self.stats.rejected += 1

    async def top_up(self) -> None:
        """Deposit to each funded account whose available cash fell below its floor."""
        for account, funding in self.funded.items():
            available = usd_to_micros(self.gateway.accounts.balances(account)["available"])
            amount = topup_micros(available, funding)
            if amount == 0:
                continue
            n = self._topups.get(account, 0) + 1
            command = c.Deposit(
                shard=self.gateway.desk.shard,
                ts_init=time.time_ns(),
                account=account,
                amount_micros=amount,
                ref=f"sandbox-topup-{account}-{n}",
            )
            taken = await self._send(command)
            # Answered: the next top-up gets a new reference. A timeout raised before this, and
            # the same reference goes again, which the engine credits once.
            self._topups[account] = n
            if taken:
                self.stats.topped_up += 1

    async def resolve_disputes(self) -> None:
        """Resolve each dispute of a watched holder once it has waited DISPUTE_REVIEW_S."""
        now = asyncio.get_running_loop().time()
        disputed = {
            d["obligation_id"]
            for holder in self.holders
            for d in self.gateway.deliveries.deliveries(holder, "disputed", "holder")
        }
        self._disputed_at = {i: self._disputed_at.get(i, now) for i in disputed}
        self._resolved &= disputed
        for obligation_id, seen in sorted(self._disputed_at.items()):
            if obligation_id in self._resolved or now - seen < self.dispute_review_s:
                continue
            refund = refunds(self.seed, obligation_id)
            command = c.ResolveDispute(
                shard=self.gateway.desk.shard,
                ts_init=time.time_ns(),
                obligation_id=obligation_id,
                release=not refund,
            )
            taken = await self._send(command)
            self._resolved.add(obligation_id)
            if taken:
                if refund:
                    self.stats.refunded += 1
                else:
                    self.stats.released += 1

    async def _send(self, command: c.Command) -> bool:
        """Submit one command and wait for the engine; return whether it was taken."""
        events = await self.gateway.hub.submit(command)
        refusal = next((ev for ev in events if isinstance(ev, e.CommandRejected)), None)
        if refusal is not None:
            self.stats.refused += 1
            log.info("operator: %s refused: %s", type(command).__name__, refusal.reason)
            return False
        return True
