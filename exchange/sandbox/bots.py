"""Simulated market participants for `gx sandbox`: providers, market makers and buyers.

Every bot is a real client of the gateway: an SDK `Client` with its own account and API key,
order entry, amends, cancels and provisioning answers over its WebSocket session, book reads and
routed orders over REST, capacity and deliveries through `ProviderAgent`. So a sandbox with bots
exercises the same path a trader's program does (signing, rate limits, the order desk, the
engine, settlement, market data and the feeds), at a moderate load that leaves a 2-core machine
responsive: about 20 commands per second in total (about 60 for the first seconds, while the
books fill), 1-3 trades per second, the whole sandbox about a third of one core.

    providers   stream capacity for their GPU models and regions, quote ask ladders a little
                above the fair price, and answer provisioning requests: most are confirmed,
                `FAIL_PROBABILITY` fail at the start and `INTERRUPT_PROBABILITY` are interrupted
                during the window, so refunds and penalties happen; now and then they withdraw
                part of their cash above `WITHDRAWAL_RESERVE_MICROS` to a sandbox bank account
                (the sandbox's operator, exchange/sandbox/operator.py, approves most)
    makers      quote two levels a side around the fair price on the nearest instruments of
                their models, requoting by amend (a new order when the old one is gone); they
                are capacity-backed (a neocloud's trading desk), so their asks are covered by
                streamed capacity and they confirm every delivery
    buyers      take liquidity: `app` buys the nearest hours in small IOC and market orders,
                `algo` buys below and resells above the fair price, `lab` routes orders for
                GPU-hours across instruments and buys day blocks; every buyer reports
                `DISPUTE_PROBABILITY` of its confirmed deliveries unreachable in their first
                hour, for the operator to resolve

The fair price of each GPU model is a seeded, mean-reverting random walk around the catalog's
reference price (`World`); an instrument's fair price adds a region premium, a block discount
and, for hours, a time-of-day shape. All randomness comes from the seed; timing on a shared
machine is not reproducible, so two runs with one seed make similar, not identical, markets.
The walk is a float simulation of the world outside the exchange; everything sent to the
gateway is integer ticks formatted as the wire's decimal strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, TypeVar

import msgspec

from exchange.client import (
    Client,
    GatewayError,
    Market,
    NetworkError,
    NotFoundError,
    OrderResult,
    ProviderAgent,
    ProvisionRequest,
    ProvisionResult,
    RateLimitError,
    RejectedError,
)
from exchange.wire import Prices, money_to_str
from schemas.catalog import Catalog
from schemas.units import MICROS_PER_USD, NS_PER_HOUR

__all__ = [
    "BotSpec",
    "BotStats",
    "Bots",
    "World",
    "roster",
    "FAIL_PROBABILITY",
    "INTERRUPT_PROBABILITY",
    "DISPUTE_PROBABILITY",
    "payout_micros",
]

log = logging.getLogger("gx.bots")

Role = Literal["provider", "maker", "buyer"]
T = TypeVar("T")

# ---------------------------------------------------------------------- named limits

HOURLY_QUOTED = 3  # hourly instruments quoted per GPU model and region: the nearest trading
DAILY_QUOTED = 1  # day blocks quoted per GPU model and region
GATE_MARGIN_NS = 2 * 60 * 1_000_000_000  # stop quoting an instrument this close to gate closure
MARKETS_REFRESH_S = 60.0  # how often the instrument list is read again (the calendar rolls)
FAIR_STEP_S = 1.0  # the fair price moves once per this interval
FAIR_VOLATILITY = 0.0015  # standard deviation of one step of log(fair / reference)
FAIR_REVERSION = 0.01  # share of log(fair / reference) pulled back per step
FAIR_LEVEL_MIN, FAIR_LEVEL_MAX = 0.6, 1.6  # fair / reference never leaves this range
REGION_PREMIUM = 0.02  # each further region in the catalog's order costs 2 % more
BLOCK_DISCOUNT = 0.02  # times log10(hours): a day block about 3 %, a week block about 4 % off
DAYTIME_AMPLITUDE = 0.03  # hourly prices peak at 15:00 UTC, 3 % above the daily mean
CAPACITY_HORIZON_HOURS = 72  # capacity streamed from the current hour on (covers the quoted)
CAPACITY_REFRESH_S = 600.0  # capacity is streamed again as the window rolls forward
FAIL_PROBABILITY = 0.05  # a provider's delivery fails at its start
INTERRUPT_PROBABILITY = 0.05  # a provider's delivery is confirmed, then interrupted
INTERRUPT_AFTER_S = (60.0, 900.0)  # an interruption comes this long after the start
# The bots share the gateway's process and loop: a busy moment must not look like a dead link.
HEARTBEAT_TIMEOUT_S = 15.0
ERROR_BACKOFF_S = 1.0  # pause after an unexpected refusal or a lost connection
CRASH_BACKOFF_S = 5.0  # pause before a bot whose loop raised a bug starts again
STOP_ROUND_S = 2.0  # stopping: how long one round waits for the cancelled bots
STOP_ROUNDS_MAX = 5
DEPOSIT_PROVIDER_MICROS = 5_000_000 * 1_000_000
DEPOSIT_MAKER_MICROS = 20_000_000 * 1_000_000
# Small enough that buyers run low within a session and the operator's top-ups show.
DEPOSIT_BUYER_MICROS = 10_000 * 1_000_000
# Providers bank part of their cash now and then; what they keep lets them go on trading.
WITHDRAWAL_FIRST_S = (3.0, 10.0)  # a provider's first withdrawal comes this long after its start
WITHDRAWAL_EVERY_S = (60.0, 180.0)  # then one each this long
WITHDRAWAL_RESERVE_MICROS = DEPOSIT_PROVIDER_MICROS // 2  # never withdrawn
WITHDRAWAL_SHARE_PERCENT = 50  # of the cash above the reserve, asked for at a time
WITHDRAWAL_MAX_MICROS = 250_000 * 1_000_000
WITHDRAWAL_MIN_MICROS = 100 * 1_000_000  # less is left for the next time
# Buyers dispute a few deliveries, in the first hour of the window as the engine requires.
DISPUTE_CHECK_S = 60.0  # how often a buyer looks at its confirmed deliveries
DISPUTE_PROBABILITY = 0.03  # of the confirmed deliveries a buyer holds
DISPUTE_MARGIN_NS = 5 * 60 * 1_000_000_000  # not this close to the end of the first hour
ACCOUNT_PROVIDER_FIRST = 200
ACCOUNT_MAKER_FIRST = 300
ACCOUNT_BUYER_FIRST = 400


def _bps(value: float, bps: float) -> float:
    return value * (1.0 + bps / 10_000.0)


def payout_micros(available_micros: int) -> int:
    """Return what a provider withdraws from its available cash (0: nothing this time)."""
    above = available_micros - WITHDRAWAL_RESERVE_MICROS
    amount = min(WITHDRAWAL_MAX_MICROS, above * WITHDRAWAL_SHARE_PERCENT // 100)
    return amount if amount >= WITHDRAWAL_MIN_MICROS else 0


# ---------------------------------------------------------------------- the cast


class BotSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One simulated participant: its account, what it trades and how much cash it starts with."""

    name: str
    role: Role
    account: int
    deposit_micros: int
    gpus: tuple[str, ...] = ()  # providers and makers: the models they offer
    regions: tuple[str, ...] = ()
    capacity_gpus: int = 0  # GPUs streamed per model and region and hour
    style: str = ""  # buyers: app, algo or lab

    @property
    def scopes(self) -> tuple[str, ...]:
        """Return the API key scopes the bot needs."""
        if self.role == "buyer":
            return ("read", "trade")
        if self.role == "provider":
            return ("read", "trade", "provide", "withdraw")
        return ("read", "trade", "provide")


def roster(catalog: Catalog) -> list[BotSpec]:
    """Return the bots of a sandbox: three providers, two makers and three buyers.

    Every GPU model has at least one provider, most have two; the flagship (the catalog's first
    model) has both makers, the others one each.
    """
    gpus = [g.model for g in catalog.gpus]
    regions = tuple(catalog.regions)
    specs: list[BotSpec] = []
    for i in range(3):
        served = tuple(dict.fromkeys([*gpus[i::3], gpus[(i + 1) % len(gpus)]]))
        specs.append(
            BotSpec(
                name=f"provider-{i + 1}",
                role="provider",
                account=ACCOUNT_PROVIDER_FIRST + i,
                deposit_micros=DEPOSIT_PROVIDER_MICROS,
                gpus=served,
                regions=regions,
                capacity_gpus=(64, 128, 256)[i],
            )
        )
    for i in range(2):
        quoted = tuple(dict.fromkeys([gpus[0], *gpus[1 + i :: 2]]))
        specs.append(
            BotSpec(
                name=f"maker-{i + 1}",
                role="maker",
                account=ACCOUNT_MAKER_FIRST + i,
                deposit_micros=DEPOSIT_MAKER_MICROS,
                gpus=quoted,
                regions=regions,
                capacity_gpus=400,
            )
        )
    for i, style in enumerate(("app", "algo", "lab")):
        specs.append(
            BotSpec(
                name=f"buyer-{style}",
                role="buyer",
                account=ACCOUNT_BUYER_FIRST + i,
                deposit_micros=DEPOSIT_BUYER_MICROS,
                style=style,
            )
        )
    return specs


class BotStats(msgspec.Struct, kw_only=True):
    """What the bots did (since they started)."""

    placed: int = 0  # orders placed (including IOC and market orders)
    amended: int = 0
    refused: int = 0  # orders and amends the gateway or engine refused
    filled_lots: int = 0  # lots the bots' own aggressive orders filled
    routed: int = 0  # routed orders sent
    capacity_updates: int = 0
    confirmed: int = 0  # deliveries confirmed
    failed: int = 0  # deliveries failed at their start
    interrupted: int = 0  # deliveries interrupted during their window
    withdrawals: int = 0  # withdrawals requested (providers)
    disputes: int = 0  # deliveries disputed (buyers)
    errors: int = 0  # lost connections and unexpected answers
    crashes: int = 0  # bot loops restarted after a bug


# ---------------------------------------------------------------------- the world


class World:
    """What every bot knows: the listed instruments (from the gateway) and each model's fair price."""

    def __init__(self, catalog: Catalog, rng: random.Random) -> None:
        self.catalog = catalog
        self.prices = Prices(catalog.tick_micros)
        self.rng = rng
        self.reference = {g.model: g.reference_price_ticks for g in catalog.gpus}
        self.level = {g.model: 1.0 for g in catalog.gpus}  # fair / reference
        self.region_factor = {r: 1.0 + REGION_PREMIUM * i for i, r in enumerate(catalog.regions)}
        self.gpu_weight = {g.model: len(catalog.gpus) - i for i, g in enumerate(catalog.gpus)}
        self.region_weight = {r: len(catalog.regions) - i for i, r in enumerate(catalog.regions)}
        self.markets: dict[str, Market] = {}
        self.quoted: dict[tuple[str, str], list[Market]] = {}  # (gpu, region) -> nearest first

    def step(self) -> None:
        """Move every model's fair price one step of its mean-reverting random walk."""
        for gpu, level in self.level.items():
            x = math.log(level)
            x += -FAIR_REVERSION * x + FAIR_VOLATILITY * self.rng.gauss(0.0, 1.0)
            self.level[gpu] = min(FAIR_LEVEL_MAX, max(FAIR_LEVEL_MIN, math.exp(x)))

    def set_markets(self, markets: Sequence[Market], now_ns: int) -> None:
        """Keep the listed instruments and choose the quoted ones: the nearest still trading."""
        self.markets = {m.symbol: m for m in markets}
        quoted: dict[tuple[str, str], list[Market]] = {}
        for m in sorted(markets, key=lambda m: (m.start_ns, m.symbol)):
            if m.status not in ("", "trading") or m.gate_close_ns - now_ns < GATE_MARGIN_NS:
                continue
            chosen = quoted.setdefault((m.gpu, m.region), [])
            hourly = sum(1 for q in chosen if q.hours == 1)
            if m.hours == 1 and hourly < HOURLY_QUOTED:
                chosen.append(m)
            elif m.hours == 24 and len(chosen) - hourly < DAILY_QUOTED:
                chosen.append(m)
        self.quoted = quoted

    def tradable(self, symbol: str, now_ns: int) -> bool:
        """Return whether the instrument is listed and not about to close."""
        m = self.markets.get(symbol)
        return m is not None and m.gate_close_ns - now_ns >= GATE_MARGIN_NS

    def instruments(self, gpus: Sequence[str], regions: Sequence[str]) -> list[Market]:
        """Return the quoted instruments of some models and regions, most popular first."""
        found = [m for g in gpus for r in regions for m in self.quoted.get((g, r), [])]
        return sorted(found, key=lambda m: -self.weight(m))

    def weight(self, m: Market) -> float:
        """Return how much traders care about an instrument (flagship, big region, near hours)."""
        near = 1.0 / (1.0 + (m.start_ns - time.time_ns()) / (6 * NS_PER_HOUR))
        base = self.gpu_weight.get(m.gpu, 1) * self.region_weight.get(m.region, 1)
        return base * (3.0 * near if m.hours == 1 else 1.0)

    def pick(self, markets: Sequence[Market], rng: random.Random) -> Market | None:
        """Choose an instrument with the caller's random source, weighted by `weight`."""
        if not markets:
            return None
        return rng.choices(list(markets), [self.weight(m) for m in markets])[0]

    def fair(self, m: Market) -> float:
        """Return the fair price of an instrument in ticks (a float: a simulation variable)."""
        price = self.reference.get(m.gpu, 1000) * self.level.get(m.gpu, 1.0)
        price *= self.region_factor.get(m.region, 1.0)
        price *= 1.0 - BLOCK_DISCOUNT * math.log10(max(1, m.hours))
        if m.hours == 1:
            hour = (m.start_ns // NS_PER_HOUR) % 24
            price *= 1.0 + DAYTIME_AMPLITUDE * math.sin(2 * math.pi * (hour - 9) / 24)
        return price

    def ticks(self, value: float) -> int:
        """Round a price to whole ticks within the catalog's price band."""
        lo, hi = self.catalog.price_band_min_ticks, self.catalog.price_band_max_ticks
        return min(hi, max(lo, round(value)))

    def price(self, ticks: int) -> str:
        """Format ticks as the wire's price string."""
        return self.prices.to_str(ticks)

    def to_ticks(self, price: Decimal) -> int:
        """Convert an SDK price (a Decimal in USD) to ticks."""
        return int(price / self.prices.tick)


# ---------------------------------------------------------------------- the bots


class Bot:
    """One participant: a client of the gateway and a loop of actions."""

    def __init__(
        self,
        spec: BotSpec,
        client: Client,
        world: World,
        rng: random.Random,
        stats: BotStats,
        halt: asyncio.Event,
    ) -> None:
        self.spec = spec
        self.client = client
        self.world = world
        self.rng = rng
        self.stats = stats
        # Set when stopping: loops end at their next turn even if a cancellation was lost
        # (asyncio.wait_for in Python 3.11 can swallow one that races with its result).
        self.halt = halt
        self._background: set[asyncio.Future[None]] = set()

    async def run(self) -> None:
        """Act until cancelled; a bug restarts the loop after a pause instead of ending it."""
        try:
            while not self.halt.is_set():
                try:
                    await self.act()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.stats.crashes += 1
                    log.exception(
                        "%s: bot loop failed; restarting in %.0f s", self.spec.name, CRASH_BACKOFF_S
                    )
                    await asyncio.sleep(CRASH_BACKOFF_S)
        finally:
            for task in list(self._background):
                task.cancel()

    async def act(self) -> None:
        """The bot's behaviour; returns only to be restarted."""
        raise NotImplementedError

    async def sleep(self, low_s: float, high_s: float) -> None:
        await asyncio.sleep(self.rng.uniform(low_s, high_s))

    async def guarded(self, call: Callable[[], Awaitable[T]], what: str) -> T | None:
        """Run one gateway call; count and absorb refusals and lost connections (None)."""
        try:
            return await call()
        except GatewayError as error:
            await self.absorb(error, what)
        return None

    async def absorb(self, error: GatewayError, what: str) -> None:
        """Count a refusal or a lost connection, and pause when waiting helps."""
        if isinstance(error, RateLimitError):
            self.stats.refused += 1
            await asyncio.sleep(max(error.retry_after_ms / 1000, ERROR_BACKOFF_S))
        elif isinstance(error, RejectedError | NotFoundError):
            self.stats.refused += 1
            log.debug("%s: %s refused: %s", self.spec.name, what, error)
        else:
            self.stats.errors += 1
            level = logging.INFO if isinstance(error, NetworkError) else logging.WARNING
            log.log(level, "%s: %s: %s", self.spec.name, what, error)
            await asyncio.sleep(ERROR_BACKOFF_S)

    def background(self, coro: Awaitable[None]) -> None:
        """Run a side task the bot owns; it is cancelled with the bot."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def place(
        self,
        symbol: str,
        side: str,
        qty: int,
        price_ticks: int | None,
        *,
        tif: str = "gtc",
        kind: str = "limit",
    ) -> OrderResult | None:
        """Place an order over the WebSocket; return its result, or None when refused."""
        price = None if price_ticks is None else self.world.price(price_ticks)
        result = await self.guarded(
            lambda: self.client.create_order_ws(symbol, kind, side, qty, price, {"tif": tif}),
            f"{kind} {side} {qty} {symbol}",
        )
        if not isinstance(result, OrderResult):
            return None
        self.stats.placed += 1
        return result

    async def stream_capacity(self) -> None:
        """Offer `capacity_gpus` GPUs of every model and region, from this hour on."""
        agent = ProviderAgent(self.client)
        start_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
        end_ns = start_ns + CAPACITY_HORIZON_HOURS * NS_PER_HOUR
        for gpu in self.spec.gpus:
            for region in self.spec.regions:
                try:
                    await agent.update_capacity(
                        gpu, region, start_ns, end_ns, self.spec.capacity_gpus
                    )
                except GatewayError as error:
                    await self.absorb(error, f"capacity {gpu} {region}")
                else:
                    self.stats.capacity_updates += 1


class Quoter(Bot):
    """A bot that keeps resting orders at chosen levels: providers and makers."""

    requote_s: tuple[float, float] = (1.0, 2.0)  # steady pause between two instruments
    first_pass_s = 0.05  # pause between instruments on the first pass: books fill fast

    def __init__(
        self,
        spec: BotSpec,
        client: Client,
        world: World,
        rng: random.Random,
        stats: BotStats,
        halt: asyncio.Event,
    ) -> None:
        super().__init__(spec, client, world, rng, stats, halt)
        self.orders: dict[tuple[str, str, int], tuple[int, int, int]] = {}  # -> id, ticks, qty
        self._capacity_at = -math.inf

    def levels(self, m: Market) -> list[tuple[str, int, int, int]]:
        """Return the wanted orders of one instrument: (side, level, ticks, qty)."""
        raise NotImplementedError

    async def act(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while not self.halt.is_set():
            if loop.time() - self._capacity_at >= CAPACITY_REFRESH_S:
                await self.stream_capacity()
                self._capacity_at = loop.time()
            markets = self.world.instruments(self.spec.gpus, self.spec.regions)
            self._forget_closed(markets)
            for m in markets:
                if self.halt.is_set():
                    return
                await self.quote(m)
                if first:
                    await asyncio.sleep(self.first_pass_s)
                else:
                    await self.sleep(*self.requote_s)
            if not markets:
                await asyncio.sleep(ERROR_BACKOFF_S)
            first = False

    def _forget_closed(self, markets: Sequence[Market]) -> None:
        """Drop orders of instruments no longer quoted: they expire at gate closure."""
        live = {m.symbol for m in markets}
        for key in [k for k in self.orders if k[0] not in live]:
            del self.orders[key]

    async def quote(self, m: Market) -> None:
        """Bring one instrument's orders to the wanted levels: amend, or place anew."""
        for side, level, ticks, qty in self.levels(m):
            key = (m.symbol, side, level)
            known = self.orders.get(key)
            if known is not None and known[1] == ticks:
                continue  # same price: keep the order and its time priority
            if known is not None:
                amended = await self._amend(known[0], ticks, qty)
                if amended:
                    self.orders[key] = (known[0], ticks, qty)
                    continue
                del self.orders[key]  # filled, expired or refused: place a new one
            result = await self.place(m.symbol, side, qty, ticks)
            if result is not None and result.order.status in ("new", "partially_filled"):
                self.orders[key] = (result.order.order_id, ticks, qty)

    async def _amend(self, order_id: int, ticks: int, qty: int) -> bool:
        try:
            await self.client.amend_order_ws(self.world.price(ticks), qty, order_id=order_id)
        except (NotFoundError, RejectedError):
            return False  # the order is gone (filled, expired): not a refusal worth counting
        except GatewayError as error:
            await self.absorb(error, "amend")
            return False
        self.stats.amended += 1
        return True


class Delivering(Quoter):
    """A quoter whose sold hours must be delivered: answers provisioning while it quotes."""

    async def act(self) -> None:
        agent = ProviderAgent(self.client)
        provisioning = asyncio.create_task(agent.run(self.provision))
        try:
            await super().act()
        finally:
            provisioning.cancel()
            with contextlib.suppress(asyncio.CancelledError, GatewayError):
                await provisioning

    async def provision(self, request: ProvisionRequest) -> ProvisionResult | None:
        """Answer a provisioning request (None: no answer, e.g. to the gate-closure heads-up)."""
        raise NotImplementedError


class Provider(Delivering):
    """A GPU provider: capacity, an ask ladder above the fair price, provisioning answers,
    withdrawals of its cash above the reserve."""

    requote_s = (1.0, 2.5)

    async def act(self) -> None:
        paying = asyncio.create_task(self._pay_out())
        try:
            await super().act()
        finally:
            paying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await paying

    async def _pay_out(self) -> None:
        """Withdraw now and then until cancelled; a bug is counted and the next one goes on."""
        await self.sleep(*WITHDRAWAL_FIRST_S)
        while not self.halt.is_set():
            try:
                await self.withdraw()
            except Exception:  # nothing awaits this task until the bot stops: say so now
                self.stats.crashes += 1
                log.exception("%s: withdrawing failed", self.spec.name)
            await self.sleep(*WITHDRAWAL_EVERY_S)

    async def withdraw(self) -> None:
        """Ask for part of the available cash above the reserve, to the provider's bank."""
        balance = await self.guarded(self.client.fetch_balance, "balance")
        if balance is None:
            return
        amount = payout_micros(int(balance.available * MICROS_PER_USD))
        if amount == 0:
            return
        destination = f"sandbox-bank-{self.spec.account}"
        sent = await self.guarded(
            lambda: self.client.withdraw(money_to_str(amount), destination),
            f"withdraw {money_to_str(amount)}",
        )
        if sent is not None:
            self.stats.withdrawals += 1

    def levels(self, m: Market) -> list[tuple[str, int, int, int]]:
        fair = self.world.fair(m)
        cost = self.world.reference.get(m.gpu, 1000) * 0.85  # never sells below this
        first = max(cost, _bps(fair, self.rng.uniform(10, 80)))
        lots = (5, 20) if m.hours == 1 else (2, 6)
        return [
            ("sell", 0, self.world.ticks(first), self.rng.randint(*lots)),
            ("sell", 1, self.world.ticks(_bps(first, 150)), self.rng.randint(*lots)),
        ]

    async def provision(self, request: ProvisionRequest) -> ProvisionResult | None:
        """Confirm most deliveries; fail some at the start and interrupt some later."""
        if request.stage != "start":
            return None  # the heads-up at gate closure: the machines are booked
        draw = self.rng.random()
        if draw < FAIL_PROBABILITY:
            self.stats.failed += 1
            return ProvisionResult.fail(0, "no machines available at the start")
        if draw < FAIL_PROBABILITY + INTERRUPT_PROBABILITY:
            self.background(self._interrupt(request))
        self.stats.confirmed += 1
        return _confirm(self.spec, request)

    async def _interrupt(self, request: ProvisionRequest) -> None:
        """Report an interruption some minutes into the window, after the confirmation."""
        window_s = max(0.0, (request.end_ns - time.time_ns()) / 1e9)
        await asyncio.sleep(min(window_s * 0.9, self.rng.uniform(*INTERRUPT_AFTER_S)))
        hours = max(0, (time.time_ns() - request.start_ns) // NS_PER_HOUR)
        params = {
            "obligation_id": request.obligation_id,
            "hours_delivered": int(hours),
            "reason": "hardware fault: machines lost",
        }
        sent = await self.guarded(lambda: self.client.ws_request("provision.fail", params), "fail")
        if sent is not None:
            self.stats.interrupted += 1


class Maker(Delivering):
    """A market maker: two levels a side around the fair price; confirms every delivery."""

    requote_s = (0.3, 0.7)

    def __init__(
        self,
        spec: BotSpec,
        client: Client,
        world: World,
        rng: random.Random,
        stats: BotStats,
        halt: asyncio.Event,
    ) -> None:
        super().__init__(spec, client, world, rng, stats, halt)
        self.half_spread_bps = rng.uniform(15, 40)

    def levels(self, m: Market) -> list[tuple[str, int, int, int]]:
        fair = self.world.fair(m)
        half, step = self.half_spread_bps, 25.0
        lots = (2, 12) if m.hours == 1 else (1, 4)
        t = self.world.ticks
        return [
            ("buy", 0, t(_bps(fair, -half)), self.rng.randint(*lots)),
            ("buy", 1, t(_bps(fair, -half - step)), self.rng.randint(*lots)),
            ("sell", 0, t(_bps(fair, half)), self.rng.randint(*lots)),
            ("sell", 1, t(_bps(fair, half + step)), self.rng.randint(*lots)),
        ]

    async def provision(self, request: ProvisionRequest) -> ProvisionResult | None:
        if request.stage != "start":
            return None
        self.stats.confirmed += 1
        return _confirm(self.spec, request)


def _confirm(spec: BotSpec, request: ProvisionRequest) -> ProvisionResult:
    host = f"{spec.name.lower()}.sandbox.invalid"  # a reserved name: nothing real is handed out
    note = f"sandbox delivery {request.obligation_id}: {request.gpus} GPUs"
    return ProvisionResult.confirm(host, 22, "gx", note)


class Buyer(Bot):
    """A taker: `app` buys the nearest hours, `algo` trades around fair, `lab` routes."""

    def __init__(
        self,
        spec: BotSpec,
        client: Client,
        world: World,
        rng: random.Random,
        stats: BotStats,
        halt: asyncio.Event,
    ) -> None:
        super().__init__(spec, client, world, rng, stats, halt)
        self.held: dict[str, int] = {}  # lots bought and not yet resold, per symbol
        self.considered: dict[int, int] = {}  # deliveries drawn for a dispute -> start_ns

    async def act(self) -> None:
        style = {"app": self.app, "algo": self.algo, "lab": self.lab}[self.spec.style]
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while not self.halt.is_set():
            now_ns = time.time_ns()
            for symbol in [s for s in self.held if not self.world.tradable(s, now_ns)]:
                del self.held[symbol]  # gate closure made it a delivery: nothing to resell
            if loop.time() - checked >= DISPUTE_CHECK_S:
                checked = loop.time()
                await self.dispute_some()
            await style()

    async def dispute_some(self) -> None:
        """Draw each confirmed delivery in its first hour once; dispute the unlucky ones."""
        deliveries = await self.guarded(
            lambda: self.client.fetch_deliveries("confirmed", "holder"), "deliveries"
        )
        if deliveries is None:
            return
        now_ns = time.time_ns()
        last_ns = now_ns + DISPUTE_MARGIN_NS - NS_PER_HOUR  # a window started after this
        self.considered = {i: s for i, s in self.considered.items() if s > last_ns}
        for d in deliveries:
            if d.obligation_id in self.considered or not last_ns < d.start_ns <= now_ns:
                continue
            self.considered[d.obligation_id] = d.start_ns  # a released dispute is not redrawn
            if self.rng.random() >= DISPUTE_PROBABILITY:
                continue
            dispute = functools.partial(
                self.client.dispute_delivery, d.obligation_id, "sandbox: machines unreachable"
            )
            sent = await self.guarded(dispute, f"dispute {d.obligation_id}")
            if sent is not None:
                self.stats.disputes += 1

    def _quoted(self, hours: int) -> list[Market]:
        gpus, regions = list(self.world.reference), list(self.world.region_factor)
        return [m for m in self.world.instruments(gpus, regions) if m.hours == hours]

    async def _best(self, symbol: str) -> tuple[int | None, int | None]:
        """Return the best bid and ask in ticks (None when that side is empty)."""
        book = await self.guarded(lambda: self.client.fetch_order_book(symbol, 5), "book")
        if book is None:
            return None, None
        bid = self.world.to_ticks(book.bids[0][0]) if book.bids else None
        ask = self.world.to_ticks(book.asks[0][0]) if book.asks else None
        return bid, ask

    async def take(self, m: Market, side: str, qty: int, limit_ticks: int | None) -> int:
        """Send an IOC (a market order when no limit is given); return the lots filled."""
        kind = "limit" if limit_ticks is not None else "market"
        result = await self.place(m.symbol, side, qty, limit_ticks, tif="ioc", kind=kind)
        filled = int(result.order.cum_qty) if result is not None else 0
        self.stats.filled_lots += filled
        if side == "buy":
            self.held[m.symbol] = self.held.get(m.symbol, 0) + filled
        else:
            self.held[m.symbol] = self.held.get(m.symbol, 0) - filled
        return filled

    async def app(self) -> None:
        """Buy the nearest hours in bursts: small IOCs crossing the spread, some market orders."""
        for _ in range(self.rng.randint(1, 4)):
            m = self.world.pick(self._quoted(1), self.rng)
            if m is None:
                break
            if self.rng.random() < 0.2:
                await self.take(m, "buy", self.rng.randint(1, 3), None)
            else:
                _, ask = await self._best(m.symbol)
                if ask is not None:
                    limit = self.world.ticks(_bps(ask, 30))
                    await self.take(m, "buy", self.rng.randint(1, 4), limit)
            await self.sleep(0.1, 0.4)
        await self.sleep(1.5, 4.0)

    async def algo(self) -> None:
        """Buy below the fair price, resell above it; otherwise make a small random trade."""
        m = self.world.pick(self._quoted(1), self.rng)
        if m is not None:
            fair = self.world.fair(m)
            bid, ask = await self._best(m.symbol)
            held = self.held.get(m.symbol, 0)
            if ask is not None and ask < _bps(fair, -10):
                await self.take(m, "buy", self.rng.randint(1, 5), ask)
            elif bid is not None and held > 0 and bid > _bps(fair, 10):
                await self.take(m, "sell", min(held, self.rng.randint(1, 5)), bid)
            elif held > 0 and bid is not None and self.rng.random() < 0.5:
                await self.take(m, "sell", min(held, self.rng.randint(1, 3)), bid)
            elif ask is not None:
                await self.take(m, "buy", self.rng.randint(1, 2), ask)
        await self.sleep(1.5, 4.0)

    async def lab(self) -> None:
        """Route orders for blocks of GPU-hours over the next hours; sometimes buy a day block."""
        if self.rng.random() < 0.6:
            await self._route()
        else:
            m = self.world.pick(self._quoted(24), self.rng)
            if m is not None:
                _, ask = await self._best(m.symbol)
                if ask is not None:
                    limit = self.world.ticks(_bps(ask, 20))
                    await self.take(m, "buy", self.rng.randint(1, 3), limit)
        await self.sleep(8.0, 20.0)

    async def _route(self) -> None:
        m = self.world.pick(self._quoted(1), self.rng)
        if m is None:
            return
        start_ns = m.start_ns
        end_ns = start_ns + HOURLY_QUOTED * NS_PER_HOUR
        max_ticks = self.world.ticks(_bps(self.world.fair(m), 150))
        gpu_hours = self.rng.randint(4, 24)
        result = await self.guarded(
            lambda: self.client.route_order(
                m.gpu, gpu_hours, start_ns, end_ns, self.world.price(max_ticks), products=["1h"]
            ),
            f"route {gpu_hours} GPU-hours of {m.gpu}",
        )
        if result is not None:
            self.stats.routed += 1


# ---------------------------------------------------------------------- the crowd


class Bots:
    """Start every bot against one gateway; stop them all."""

    def __init__(
        self,
        base_url: str,
        catalog: Catalog,
        specs: Sequence[BotSpec],
        credentials: Mapping[str, tuple[str, str]],
        *,
        seed: int,
    ) -> None:
        """`credentials` maps each spec's name to its API key and secret."""
        missing = [s.name for s in specs if s.name not in credentials]
        if missing:
            raise ValueError(f"credentials: expected a key for every bot, missing {missing}")
        self.base_url = base_url
        self.catalog = catalog
        self.specs = list(specs)
        self.credentials = dict(credentials)
        self.seed = seed
        self.stats = BotStats()
        self.world = World(catalog, random.Random(f"{seed}:world"))
        self._reader = Client(base_url)  # public reads shared by the world
        self._clients: list[Client] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._halt = asyncio.Event()

    async def start(self) -> None:
        """Read the listed instruments, then start the world's clock and every bot."""
        await self._refresh()
        self._spawn("world", self._world())
        for spec in self.specs:
            key, secret = self.credentials[spec.name]
            client = Client(self.base_url, key, secret, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
            self._clients.append(client)
            rng = random.Random(f"{self.seed}:{spec.name}")
            kind = {"provider": Provider, "maker": Maker, "buyer": Buyer}[spec.role]
            bot = kind(spec, client, self.world, rng, self.stats, self._halt)
            self._spawn(spec.name, bot.run())

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"bot:{name}"))

    async def _refresh(self) -> None:
        markets = await self._reader.fetch_markets()
        self.world.set_markets(markets, time.time_ns())

    async def _world(self) -> None:
        """Move fair prices every step; read the instrument list again now and then."""
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        while not self._halt.is_set():
            await asyncio.sleep(FAIR_STEP_S)
            self.world.step()
            if loop.time() - refreshed >= MARKETS_REFRESH_S:
                refreshed = loop.time()
                try:
                    await self._refresh()
                except GatewayError as error:
                    self.stats.errors += 1
                    log.warning("bots: reading the instruments failed: %s", error)
            else:
                # The quoted set also shrinks between reads, as gate closures come.
                self.world.set_markets(list(self.world.markets.values()), time.time_ns())

    async def stop(self) -> None:
        """Stop every bot and close its connections."""
        self._halt.set()
        pending = {t for t in self._tasks if not t.done()}
        for _ in range(STOP_ROUNDS_MAX):
            if not pending:
                break
            for task in pending:
                task.cancel()  # again each round: a cancellation can be lost in a race
            _, pending = await asyncio.wait(pending, timeout=STOP_ROUND_S)
        if pending:
            log.warning("bots: %d tasks did not stop", len(pending))
        closing = [client.close() for client in [*self._clients, self._reader]]
        await asyncio.gather(*closing, return_exceptions=True)
