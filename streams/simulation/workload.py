"""The seeded workload: random but realistic command streams for the engine.

Given a seed it always produces the same commands, reacting to the engine's events (order ids,
obligation ids) the way traders, providers and the provisioning service would.
"""

from __future__ import annotations

import random

from schemas import commands as c
from schemas import events as e
from schemas.codes import OrderType, SelfTradePrevention, Side, TimeInForce
from schemas.symbols import parse_symbol

__all__ = ["ACCOUNTS", "MINUTE_NS", "PROVIDERS", "Simulation"]

ACCOUNTS = list(range(10, 18))
PROVIDERS = [10, 11, 12]
MINUTE_NS = 60_000_000_000


class Simulation:
    """Generates the next batch of commands from what the engine has said so far."""

    def __init__(self, seed: int, symbols: list[str], start_ns: int) -> None:
        self.rng = random.Random(seed)
        self.now = start_ns
        hourly = [s for s in symbols if ".1h." in s]
        self.symbols = hourly[:3] + [s for s in symbols if ".1d." in s][:1]
        self.orders: dict[int, tuple[int, int]] = {}  # order id -> (account, price)
        self.obligations: dict[int, int] = {}  # obligation id -> provider
        self.mid = {s: 2400 + 37 * i for i, s in enumerate(self.symbols)}

    def opening(self) -> list[c.Command]:
        """Fund every account and give the providers capacity for the traded instruments."""
        out: list[c.Command] = [
            c.Deposit(account=a, amount_micros=self.rng.randint(50, 400) * 1_000_000)
            for a in ACCOUNTS
        ]
        for p in PROVIDERS:
            for symbol in self.symbols:
                key = parse_symbol(symbol)
                out.append(
                    c.CapacityUpdate(
                        account=p,
                        gpu=key.gpu,
                        region=key.region,
                        start_ns=key.start_ns,
                        end_ns=key.end_ns,
                        gpus=self.rng.randint(5, 40),
                    )
                )
        return out

    def observe(self, events: list) -> None:
        """Learn order and obligation ids from the engine's events."""
        for ev in events:
            if isinstance(ev, e.OrderAccepted):
                self.orders[ev.order_id] = (ev.account, ev.price_ticks)
            elif isinstance(ev, e.OrderCancelled | e.OrderExpired):
                if isinstance(ev, e.OrderExpired) or ev.lots_remaining == 0:
                    self.orders.pop(ev.order_id, None)
            elif isinstance(ev, e.DeliveryAssigned):
                self.obligations[ev.obligation_id] = ev.provider
            elif isinstance(ev, e.DeliverySettled):
                self.obligations.pop(ev.obligation_id, None)

    def batch(self, size: int) -> list[c.Command]:
        """The next `size` commands."""
        return [self._one() for _ in range(size)]

    def _one(self) -> c.Command:
        r = self.rng.random()
        if r < 0.55:
            return self._place()
        if r < 0.70 and self.orders:
            order_id = self.rng.choice(sorted(self.orders))
            account, _ = self.orders[order_id]
            return c.CancelOrder(account=account, order_id=order_id)
        if r < 0.78 and self.orders:
            order_id = self.rng.choice(sorted(self.orders))
            account, price = self.orders[order_id]
            return c.AmendOrder(
                account=account,
                order_id=order_id,
                price_ticks=price + self.rng.choice([0, 0, -3, 2, 5]),
                lots=self.rng.randint(1, 6),
            )
        if r < 0.80:
            symbol = self.rng.choice([None, *self.symbols])
            return c.CancelAll(account=self.rng.choice(ACCOUNTS), symbol=symbol)
        if r < 0.83:
            kinds: list[type[c.Deposit] | type[c.Withdraw]] = [c.Deposit, c.Withdraw]
            kind = self.rng.choice(kinds)
            amount = self.rng.randint(-5, 200) * 100_000
            return kind(account=self.rng.choice(ACCOUNTS), amount_micros=amount)
        if r < 0.96 and self.obligations:
            oid = self.rng.choice(sorted(self.obligations))
            provider = self.obligations[oid]
            if self.rng.random() < 0.7:
                return c.DeliveryConfirmed(account=provider, obligation_id=oid)
            return c.DeliveryFailed(
                account=provider, obligation_id=oid, hours_delivered=self.rng.randint(0, 2)
            )
        if r < 0.96:
            return self._place()
        self.now += self.rng.randint(1, 6) * MINUTE_NS
        return c.ClockTick(ts_ns=self.now)

    def _place(self) -> c.PlaceOrder:
        rng = self.rng
        symbol = rng.choice(self.symbols)
        self.mid[symbol] += rng.randint(-4, 4)
        side = rng.choice(["buy", "sell"])
        skew = -1 if side == "buy" else 1
        price = self.mid[symbol] + skew * rng.randint(-3, 12)
        kind = rng.random()
        tif, order_type, post_only = "gtc", "limit", False
        if kind < 0.10:
            tif = "ioc"
        elif kind < 0.15:
            tif = "fok"
        elif kind < 0.22:
            order_type, tif = "market", "ioc"
        elif kind < 0.30:
            post_only = True
        elif kind < 0.38:
            tif = "gtd"
        return c.PlaceOrder(
            account=rng.choice(ACCOUNTS),
            symbol=symbol,
            side=Side(side),
            lots=rng.choice([1, 1, 2, 3, 5, 8, 0, 1001])
            if rng.random() < 0.05
            else rng.randint(1, 6),
            price_ticks=price if rng.random() > 0.02 else 10**7,
            order_type=OrderType(order_type),
            tif=TimeInForce(tif),
            post_only=post_only,
            stp=SelfTradePrevention(
                rng.choice(["none", "cancel_taker", "cancel_maker", "cancel_both", "decrement"])
            ),
            expire_ns=self.now + rng.randint(1, 90) * MINUTE_NS if tif == "gtd" else 0,
        )
