"""`gx bench journey`: how long a user waits at two steps of the journey, against a broker floor.

The whole exchange runs in this process (exchange/stack.py, provisioning and settlement
included, as the journey test runs it) over the embedded broker and PostgreSQL; the SDK clients
(exchange.client) talk to its gateway over loopback from the same event loop.

Figures, each over its rounds (p50, p99 and max, in ms):
- `deposit_to_balance`: the operator's Deposit (as `gx funds deposit` makes it) produced to
  gx.commands -> the account's `watch_balance()` push showing the credit. Two broker hops:
  gx.commands -> engine -> gx.events -> gateway. A fresh account per round, so the push that
  ends the round cannot be an earlier round's.
- `deposit_to_order_accepted`: the same start -> `create_order` returning, the order placed as
  soon as that balance push arrived (REST, the client order id reserved in PostgreSQL, two more
  broker hops).
- `confirm_to_access`: the provider agent's handler returns `ProvisionResult.confirm(...)` ->
  the holder's `watch_deliveries()` push `confirmed` with the access. Three broker hops:
  gateway -> gx.provisioning -> provisioning worker -> gx.commands -> engine -> gx.events ->
  gateway. Each round is its own hour: the provider asks, the buyer buys, a ClockTick closes
  the gate (the delivery is assigned), a ClockTick at the start asks the agent.
- `floor`: one record produced (`send_and_wait`, the same producer settings) -> a consumer
  already polling the same broker (the stages' fetch wait) reading it; one broker hop.

The rounds interleave with the floor (floor, deposit, floor, confirm, ...), so the floor is
measured under the same load and the `*_vs_floor_p50` ratios compare like with like.
`provider_ws_reconnects` and `buyer_ws_reconnects` count the SDK sessions' reconnects during
the run (a session that receives no frame within its heartbeat timeout reconnects): a round
that waited for one shows in its figures.

On the embedded broker a consumer's empty fetch is held for its whole wait even when a record
arrives meanwhile, so a hop costs up to its consumer's fetch wait. The stages here wait
`fetch_wait_ms`; the provisioning worker is a faust consumer, whose fetch wait faust fixes
itself (faust/transport/drivers/aiokafka.py), so on this broker `confirm_to_access` mostly
measures that wait. A broker that answers a fetch when data arrives does not add it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Generic, TypeVar

import numpy as np
import uvloop
from aiokafka import AIOKafkaProducer, TopicPartition

from exchange.bench.report import Report, add_benchmark, print_report, require_positive
from exchange.client import Client, DeliveryUpdate, ProviderAgent, ProvisionRequest, ProvisionResult
from exchange.client.feeds import Watch
from exchange.stack import Stack, StackOptions
from schemas import commands as c
from schemas.codec import encode
from schemas.ids import ACCOUNT_FIRST_USER
from schemas.symbols import InstrumentKey, format_symbol, parse_symbol
from schemas.units import MICROS_PER_USD, NS_PER_HOUR, usd_to_micros
from streams.consumers import log_consumer
from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import open_database
from streams.settings import Settings
from streams.topics import shard_key, topics

__all__ = ["register", "run", "bench_journey"]

ROUNDS_DEFAULT = 20
CONFIRM_ROUNDS_DEFAULT = 10
# Each confirm round takes the next hour; the deposit rounds' book is an hour after them all.
confirm_rounds_max = 48
MASTER_KEY = "bench-journey-master-key-not-a-secret-00"
PROVIDER, BUYER = ACCOUNT_FIRST_USER, ACCOUNT_FIRST_USER + 1
fresh_account_first = ACCOUNT_FIRST_USER + 100  # the deposit rounds' accounts count up from here
FUNDS_MICROS = 10**12  # the provider's and the buyer's cash, for collateral and purchases
DEPOSIT_USD = "1000.00"
CAPACITY_GPUS = 1000
GPU, REGION = "H100-SXM", "us-east"
BID_USD = "1.000"  # the deposit rounds' bid: rests on a book without asks
ASK_USD = "2.000"  # the confirm rounds' ask, which the buyer takes
ACCESS_HOST, ACCESS_PORT, ACCESS_USER = "gpu-1.provider.example", 22, "gx"
fetch_wait_ms = 5  # the stages' and the floor's idle fetch wait (the harness's setting)
floor_topic = "bench.journey.floor"
listing_wait_s = 180.0  # a cold Numba compile of the engine's kernels included
step_wait_s = 30.0  # any one awaited push

T = TypeVar("T")


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `journey` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "journey",
        "deposit to tradable and confirm to access, against a broker round trip",
        __doc__,
    )
    p.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT, help="deposit rounds")
    p.add_argument(
        "--confirm-rounds",
        type=int,
        default=CONFIRM_ROUNDS_DEFAULT,
        help=f"confirm rounds, one instrument hour each (at most {confirm_rounds_max})",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the journey benchmark and print its figures."""
    require_positive(args, "rounds", "confirm_rounds")
    if args.confirm_rounds > confirm_rounds_max:
        raise SystemExit(
            f"--confirm-rounds: expected at most {confirm_rounds_max} (one listed hour each), "
            f"found {args.confirm_rounds}"
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    report = bench_journey(args.rounds, args.confirm_rounds)
    print_report(report, args.json)
    return 0


def _progress(text: str) -> None:
    print(f"gx bench journey: {text}", file=sys.stderr, flush=True)


def bench_journey(rounds: int, confirm_rounds: int) -> Report:
    """Start the exchange, run the interleaved rounds; return the figures."""
    with EmbeddedBroker(broker_count=1) as broker, open_database("gx_bench_journey") as dsn:
        broker.group_initial_rebalance_delay_ms(0)  # the provisioning worker's group joins at once
        broker.create_topic(floor_topic, 1)
        return uvloop.run(_bench(broker, dsn, rounds, confirm_rounds))


class _Arrivals(Generic[T]):
    """A watch's items with the time each arrived, read by a task of its own so that the
    arrival time does not wait for whoever looks at the item."""

    def __init__(self, watch: Watch[T]) -> None:
        self.items: list[tuple[int, T]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(watch))

    async def _read(self, watch: Watch[T]) -> None:
        try:
            async for item in watch:
                self.items.append((time.perf_counter_ns(), item))
                self._changed.set()
        finally:
            self._changed.set()

    async def first(self, check: Callable[[T], bool], start: int = 0) -> tuple[int, T]:
        """Return the first item from index `start` on that passes `check`, and its time."""
        seen = start
        async with asyncio.timeout(step_wait_s):
            while True:
                for ns, item in self.items[seen:]:
                    if check(item):
                        return ns, item
                seen = len(self.items)
                if self._task.done():
                    self._task.result()  # raises what ended the watch, if anything did
                    raise RuntimeError("the watch ended before the push the round waits for")
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _Floor:
    """One record at a time through `floor_topic`: produced, then read by a polling consumer."""

    def __init__(self, producer: AIOKafkaProducer, bootstrap: str) -> None:
        self.producer = producer
        self.consumer = log_consumer(bootstrap, check_crcs=False, fetch_wait_ms=fetch_wait_ms)
        self.read_ns: dict[bytes, int] = {}
        self._read = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sent = 0

    async def start(self) -> None:
        await self.consumer.start()
        partition = TopicPartition(floor_topic, 0)
        self.consumer.assign([partition])
        await self.consumer.seek_to_end(partition)  # only this run's records count
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=step_wait_s * 1000)
            now = time.perf_counter_ns()
            for records in batches.values():
                for record in records:
                    assert record.value is not None
                    self.read_ns[record.value] = now
            self._read.set()

    async def round_trip_ns(self) -> int:
        """Produce one record; return the time until the consumer read it."""
        assert self._task is not None
        self._sent += 1
        value = b"%d" % self._sent
        t0 = time.perf_counter_ns()
        await self.producer.send_and_wait(floor_topic, value, partition=0)
        async with asyncio.timeout(step_wait_s):
            while value not in self.read_ns:
                if self._task.done():
                    self._task.result()
                self._read.clear()
                await self._read.wait()
        return self.read_ns.pop(value) - t0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


class _Journey:
    """The running exchange, the operator's producer, the provider and the buyer."""

    def __init__(self, stack: Stack, producer: AIOKafkaProducer) -> None:
        assert stack.gateway is not None and stack.gateway.gateway is not None
        self.stack = stack
        self.gateway = stack.gateway.gateway
        self.url = stack.gateway.url
        self.producer = producer
        self.commands_topic = topics(stack.settings)["commands"].name
        self.gate_lead_ns = stack.catalog.gate_closure_lead_ns
        self.hours: list[int] = []
        self.book_symbol = ""
        self.confirmed_ns: dict[int, int] = {}  # obligation id -> when the handler returned
        self.deposits = 0

    async def send(self, *commands: c.Command) -> None:
        """Produce commands to shard 0 of gx.commands, as the operator's tools do."""
        for command in commands:
            await self.producer.send_and_wait(
                self.commands_topic, encode(command), key=shard_key(0), partition=0
            )

    async def wait_for(self, check: Callable[[], Any], what: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := check()):
            self.stack.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
            await asyncio.sleep(0.02)
        return value

    async def client(self, account: int, scopes: tuple[str, ...]) -> Client:
        """An SDK client with a new API key of `account`."""
        api_key, secret = await self.gateway.keys.create(account, scopes)
        return Client(self.url, api_key.key_id, secret)

    async def setup(self, confirm_rounds: int) -> None:
        """List the instruments, fund the provider and the buyer, give the provider capacity."""
        accounts = self.gateway.accounts
        now_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
        await self.send(
            c.ClockTick(ts_ns=now_ns),
            *(c.Deposit(account=a, amount_micros=FUNDS_MICROS) for a in (PROVIDER, BUYER)),
        )
        await self.wait_for(accounts.instruments, "the listing", listing_wait_s)
        hourly = sorted(
            parse_symbol(i["symbol"]).start_ns
            for i in accounts.instruments()
            if i["symbol"].startswith(f"{GPU}.{REGION}.1h.")
        )
        wanted = [hourly[0] + i * NS_PER_HOUR for i in range(confirm_rounds + 1)]
        if hourly[: confirm_rounds + 1] != wanted:
            raise RuntimeError(
                f"listing: expected {confirm_rounds + 1} consecutive hourly {GPU}.{REGION} "
                f"instruments, found {len(hourly)}"
            )
        self.hours = wanted[:confirm_rounds]
        self.book_symbol = self.symbol(wanted[confirm_rounds])
        await self.send(
            c.CapacityUpdate(account=PROVIDER, gpu=GPU, region=REGION, start_ns=self.hours[0],
                             end_ns=self.hours[-1] + NS_PER_HOUR, gpus=CAPACITY_GPUS)
        )  # fmt: skip
        await self.wait_for(
            lambda: (
                accounts.capacity(PROVIDER) and accounts.balances(BUYER)["available"] != "0.000000"
            ),
            "the deposits and the capacity",
            step_wait_s,
        )

    def symbol(self, start_ns: int) -> str:
        """The hourly instrument of the benchmark's GPU and region starting at `start_ns`."""
        return format_symbol(InstrumentKey(gpu=GPU, region=REGION, product="1h", start_ns=start_ns))

    async def handler(self, request: ProvisionRequest) -> ProvisionResult | None:
        """The provider's agent: confirm every delivery at its start, with the access."""
        if request.stage != "start":
            return None
        result = ProvisionResult.confirm(ACCESS_HOST, ACCESS_PORT, ACCESS_USER)
        self.confirmed_ns[request.obligation_id] = time.perf_counter_ns()
        return result

    async def deposit_round(self) -> tuple[int, int]:
        """Deposit to a fresh account; return the ns until its balance push and until an order
        placed at that push was accepted."""
        account = fresh_account_first + self.deposits
        self.deposits += 1
        amount_micros = usd_to_micros(DEPOSIT_USD)
        credited = Decimal(amount_micros) / MICROS_PER_USD
        async with await self.client(account, ("read", "trade")) as client:
            balances = _Arrivals(client.watch_balance())
            try:
                await balances.first(lambda _: True)  # the snapshot: the subscription is live
                deposit = c.Deposit(
                    ts_init=time.time_ns(),
                    account=account,
                    amount_micros=amount_micros,
                    ref=f"BENCH-JOURNEY-{account}",
                )
                t0 = time.perf_counter_ns()
                await self.send(deposit)
                t1, _ = await balances.first(lambda b: b.available == credited)
                placed = await client.create_order(self.book_symbol, "limit", "buy", 1, BID_USD)
                t2 = time.perf_counter_ns()
            finally:
                await balances.close()
        if placed.order.status != "new":
            raise RuntimeError(f"the round's bid: expected status new, found {placed.order}")
        return t1 - t0, t2 - t0

    async def confirm_round(
        self, index: int, provider: Client, buyer: Client, deliveries: _Arrivals[DeliveryUpdate]
    ) -> int:
        """Sell, buy and deliver the round's hour; return the ns from the agent's confirm to the
        holder's access push."""
        start_ns = self.hours[index]
        symbol = self.symbol(start_ns)
        await provider.create_order(symbol, "limit", "sell", 1, ASK_USD)
        bought = await buyer.create_order(symbol, "limit", "buy", 1, ASK_USD)
        if bought.order.status != "filled":
            raise RuntimeError(f"the round's purchase: expected status filled, found {bought}")
        mark = len(deliveries.items)
        await self.send(c.ClockTick(ts_ns=start_ns - self.gate_lead_ns))
        _, assigned = await deliveries.first(
            lambda u: u.type == "assigned" and u.delivery.symbol == symbol, mark
        )
        obligation_id = assigned.delivery.obligation_id
        await self.send(c.ClockTick(ts_ns=start_ns))
        t1, _ = await deliveries.first(
            lambda u: (
                u.type == "confirmed"
                and u.delivery.obligation_id == obligation_id
                and u.delivery.access is not None
            ),
            mark,
        )
        return t1 - self.confirmed_ns[obligation_id]


async def _bench(broker: EmbeddedBroker, dsn: str, rounds: int, confirm_rounds: int) -> Report:
    settings = Settings(gateway_master_key=MASTER_KEY, kafka_fetch_wait_ms=fetch_wait_ms)
    stack = Stack(broker, dsn, settings, options=StackOptions(provisioning=True, settlement=True))
    _progress("starting the exchange")
    await stack.start()
    # `gx funds` produces this way (exchange/cli/funds.py `submit`); the floor shares it
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    floor = _Floor(producer, broker.bootstrap_servers)
    journey = _Journey(stack, producer)
    try:
        await floor.start()
        await journey.setup(confirm_rounds)
        async with (
            await journey.client(PROVIDER, ("read", "trade", "provide")) as provider,
            await journey.client(BUYER, ("read", "trade")) as buyer,
        ):
            deliveries = _Arrivals(buyer.watch_deliveries())
            agent = asyncio.create_task(ProviderAgent(provider).run(journey.handler))
            try:
                figures = await _rounds(
                    journey, floor, rounds, confirm_rounds, provider, buyer, deliveries
                )
            finally:
                agent.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await agent
                await deliveries.close()
            # a session's generation counts its logons: every one after the first is a reconnect
            reconnects = {
                "provider_ws_reconnects": max(provider.session.generation - 1, 0),
                "buyer_ws_reconnects": max(buyer.session.generation - 1, 0),
            }
    finally:
        await floor.stop()
        await producer.stop()
        await stack.stop()
    report = _report(*figures)
    report.update(reconnects)
    return report


async def _rounds(
    journey: _Journey,
    floor: _Floor,
    rounds: int,
    confirm_rounds: int,
    provider: Client,
    buyer: Client,
    deliveries: _Arrivals[DeliveryUpdate],
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Floor, deposit, floor, confirm, ... until both kinds of round are done."""
    balance_ns: list[int] = []
    order_ns: list[int] = []
    access_ns: list[int] = []
    floor_ns: list[int] = []
    _progress(f"{rounds} deposit rounds and {confirm_rounds} confirm rounds, each after a floor")
    for i in range(max(rounds, confirm_rounds)):
        if i < rounds:
            floor_ns.append(await floor.round_trip_ns())
            balance, order = await journey.deposit_round()
            balance_ns.append(balance)
            order_ns.append(order)
        if i < confirm_rounds:
            floor_ns.append(await floor.round_trip_ns())
            access_ns.append(await journey.confirm_round(i, provider, buyer, deliveries))
    return balance_ns, order_ns, access_ns, floor_ns


def _report(
    balance_ns: list[int], order_ns: list[int], access_ns: list[int], floor_ns: list[int]
) -> Report:
    report: Report = {
        "rounds": len(balance_ns),
        "confirm_rounds": len(access_ns),
        "floor_samples": len(floor_ns),
    }
    p50: dict[str, float] = {}
    for name, values in (
        ("deposit_to_balance", balance_ns),
        ("deposit_to_order_accepted", order_ns),
        ("confirm_to_access", access_ns),
        ("floor", floor_ns),
    ):
        ms = np.asarray(values, dtype=np.float64) / 1e6
        p50[name] = float(np.percentile(ms, 50))
        report[f"{name}_p50_ms"] = round(p50[name], 2)
        report[f"{name}_p99_ms"] = round(float(np.percentile(ms, 99)), 2)
        report[f"{name}_max_ms"] = round(float(ms.max()), 2)
    for name in ("deposit_to_balance", "deposit_to_order_accepted", "confirm_to_access"):
        report[f"{name}_vs_floor_p50"] = round(p50[name] / p50["floor"], 1)
    return report
