"""The whole journey of a GPU-hour, through the SDK and the ccxt class only, on the embedded
exchange; the operator works with `gx funds` and checks with `gx audit`.

An operator deposits for a buyer and a provider; the provider streams capacity and posts asks
on three consecutive hours; the buyer registers an SSH key, buys the three hours with a routed
order and resells part of the first; gate closure assigns the deliveries; the provider's agent
receives the holder's key and confirms the first and third with access and fails the second;
the holder sees the access on its deliveries channel; the first hour is released, the second
refunded with the penalty, the third disputed and refunded by the operator; the provider
withdraws its earnings and the operator approves. Then the audit passes (postings sum to zero,
deposits minus withdrawals equal what accounts hold) and every balance equals its statement's
running total.

The clock is the exchange's own (ClockTick commands), as the clock process would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from ccxt.test.exchange.base import test_deposit_withdrawal as check_transaction

from exchange.cli.gx import main as gx_main
from exchange.client import (
    Client,
    DeliveryUpdate,
    GpuExchange,
    ProviderAgent,
    ProvisionRequest,
    ProvisionResult,
)
from schemas import commands as c
from schemas.symbols import format_symbol, parse_symbol
from tests.support.gateway_harness import (
    FUNDS_MICROS,
    MAKER,
    PROVIDER,
    TRADER,
    Exchange,
    running_exchange,
)
from tests.support.operator import gx_funds

from .conftest import run
from .test_deliveries import ssh_key

pytestmark = pytest.mark.timeout(240)

HOUR_NS = 3_600_000_000_000
MINUTE_NS = 60_000_000_000
# Reads of the ledger wait for settlement, which runs nicer than the rest: on a loaded machine
# it lags by seconds. Polled every 50 ms, up to 30 s.
LEDGER_POLLS_MAX = 600
ACCESS = {"host": "gpu-3.provider.example", "port": 22, "user": "gx", "instructions": "cd /data"}


def sdk(ex: Exchange, name: str) -> Client:
    keys = ex.keys[name]
    return Client(ex.url, keys.key_id, keys.secret)


def ccxt_client(ex: Exchange, name: str) -> GpuExchange:
    keys = ex.keys[name]
    return GpuExchange(
        {"apiKey": keys.key_id, "secret": keys.secret, "urls": {"api": {"rest": ex.url}}}
    )


async def drain(watch: Any, into: list[DeliveryUpdate]) -> None:
    async for item in watch:
        into.append(item)


def test_a_gpu_hour_from_deposit_to_payout(broker, dsn, capsys):
    async def journey() -> None:
        async with running_exchange(broker, dsn, provisioning=True) as ex:
            first = parse_symbol(ex.symbol)
            hours = [first.start_ns + i * HOUR_NS for i in range(3)]
            symbols = [format_symbol(msgspec.structs.replace(first, start_ns=ns)) for ns in hours]
            for symbol in symbols:
                assert ex.gateway.accounts.is_listed(symbol), symbol

            # 1. The operator credits two bank payments; a repeated run credits nothing more.
            for account, amount, ref in (
                (TRADER, "5000", "WIRE-B-1"),
                (PROVIDER, "800", "WIRE-P-1"),
            ):
                status, answer, err = await gx_funds(
                    broker,
                    "deposit",
                    "--account",
                    str(account),
                    "--amount",
                    amount,
                    "--reference",
                    ref,
                )
                assert (status, answer["status"]) == (0, "credited"), err
            status, answer, _ = await gx_funds(
                broker,
                "deposit",
                "--account",
                str(TRADER),
                "--amount",
                "5000",
                "--reference",
                "WIRE-B-1",
            )
            assert answer["status"] == "already_credited"

            async with (
                sdk(ex, "trader") as buyer,
                sdk(ex, "provider") as provider,
                ccxt_client(ex, "trader") as buyer_cx,
                ccxt_client(ex, "provider") as provider_cx,
                ccxt_client(ex, "maker") as maker_cx,
            ):
                deposits = await buyer_cx.fetch_deposits("USD")
                for deposit in deposits:
                    check_transaction(buyer_cx, {}, "fetchDeposits", deposit, "USD", _now_ms())
                assert [d["txid"] for d in deposits if d["txid"] == "WIRE-B-1"] == ["WIRE-B-1"]
                markets = {m["id"]: m["symbol"] for m in await buyer_cx.fetch_markets()}

                # 2. The provider streams capacity and quotes the three hours.
                agent = ProviderAgent(provider)
                await agent.update_capacity(
                    first.gpu, first.region, hours[0], hours[-1] + HOUR_NS, gpus=8
                )
                requests: list[ProvisionRequest] = []

                async def handler(request: ProvisionRequest) -> ProvisionResult | None:
                    requests.append(request)
                    if request.stage != "start":
                        return None
                    if request.symbol == symbols[1]:
                        return ProvisionResult.fail(reason="power loss in the rack")
                    return ProvisionResult.confirm(**ACCESS)

                for i, symbol in enumerate(symbols):
                    await provider_cx.create_order(
                        markets[symbol], "limit", "sell", 2, 2.0 + i / 10
                    )

                # A route plans from the published book (market data), a step behind the
                # engine's answers: it is the book a buyer sees.
                for symbol in symbols:
                    for _ in range(LEDGER_POLLS_MAX):
                        if (await buyer_cx.fetch_order_book(markets[symbol]))["asks"]:
                            break
                        await asyncio.sleep(0.05)

                # 3. The buyer registers a key, buys the three hours routed, resells one.
                key = await buyer.add_ssh_key(ssh_key())
                seen: list[DeliveryUpdate] = []
                tasks = [
                    asyncio.create_task(drain(buyer.watch_deliveries(), seen)),
                    asyncio.create_task(agent.run(handler)),
                ]
                routed = await buyer.route_order(
                    first.gpu, 6, hours[0], hours[-1] + HOUR_NS, "3.000",
                    regions=[first.region], products=["1h"],
                )  # fmt: skip
                assert (routed.gpu_hours_filled, routed.gpu_hours_left) == (6, 0)
                await maker_cx.create_order(markets[symbols[0]], "limit", "buy", 1, 2.5)
                resold = await buyer_cx.create_order(markets[symbols[0]], "limit", "sell", 1, 2.5)
                assert resold["status"] == "closed"
                positions = {p.symbol: p.qty for p in await buyer.fetch_positions()}
                assert positions == {symbols[0]: 1, symbols[1]: 2, symbols[2]: 2}

                # 4. Gate closure of the first hour: its deliveries assigned to the holders (the
                # buyer, and the maker who bought the lot it resold), with their SSH keys.
                async def assigned(symbol: str) -> int:
                    found = await ex.wait_for(
                        lambda: [
                            u.delivery.obligation_id for u in seen
                            if u.type == "assigned" and u.delivery.symbol == symbol
                        ],
                        timeout_s=30,
                        what=f"{symbol} assigned",
                    )  # fmt: skip
                    return int(found[0])

                async def pushed(kind: str, obligation_id: int) -> DeliveryUpdate:
                    found = await ex.wait_for(
                        lambda: [
                            u for u in seen
                            if u.type == kind and u.delivery.obligation_id == obligation_id
                        ],
                        timeout_s=30,
                        what=f"{kind} of delivery {obligation_id}",
                    )  # fmt: skip
                    return found[-1]  # type: ignore[no-any-return]

                await ex.send(c.ClockTick(ts_ns=hours[0] - 10 * MINUTE_NS))
                first_id = await assigned(symbols[0])
                await ex.wait_for(lambda: len(requests) >= 2, timeout_s=30, what="the requests")
                assert {r.holder for r in requests} == {TRADER, MAKER}
                for r in requests:
                    fingerprints = [k.fingerprint for k in r.ssh_keys]
                    assert fingerprints == ([key.fingerprint] if r.holder == TRADER else [])

                # 5. The first hour starts: the holder sees the access at once; the second
                # hour's gate closes.
                await ex.send(c.ClockTick(ts_ns=hours[0]))
                confirmed = await pushed("confirmed", first_id)
                await ex.wait_for(
                    lambda: [u for u in seen if u.type == "confirmed" and u.delivery.access],
                    timeout_s=30,
                    what="the access on the deliveries channel",
                )
                access = [u for u in seen if u.type == "confirmed" and u.delivery.access][
                    0
                ].delivery.access
                assert access is not None and confirmed.delivery.symbol == symbols[0]
                assert (access.host, access.port, access.user) == (ACCESS["host"], 22, "gx")
                await ex.send(c.ClockTick(ts_ns=hours[1] - 10 * MINUTE_NS))
                second_id = await assigned(symbols[1])

                # 6. The first hour is released; the second fails at its start (refund + penalty).
                await ex.send(c.ClockTick(ts_ns=hours[1]))
                await pushed("hour_released", first_id)
                failed = (await pushed("settled", second_id)).delivery
                assert failed.outcome == "failed" and failed.refund > 0 and failed.penalty > 0
                await ex.send(c.ClockTick(ts_ns=hours[2] - 10 * MINUTE_NS))
                third = await assigned(symbols[2])

                # 7. The third starts; its machines cannot be reached: dispute, operator refunds.
                await ex.send(c.ClockTick(ts_ns=hours[2] + MINUTE_NS))
                await ex.wait_for(
                    lambda: [
                        u
                        for u in seen
                        if u.type == "confirmed" and u.delivery.obligation_id == third
                    ],
                    timeout_s=30,
                    what="the third confirmed",
                )
                disputed = await buyer.dispute_delivery(third, "connection refused on port 22")
                assert disputed.state == "disputed"
                status, resolved, err = await gx_funds(broker, "resolve", str(third), "--refund")
                assert (status, resolved["status"]) == (0, "refunded"), err
                await ex.send(c.ClockTick(ts_ns=hours[2] + HOUR_NS))
                refunded = await ex.wait_for(
                    lambda: [
                        u for u in seen if u.type == "settled" and u.delivery.obligation_id == third
                    ],
                    timeout_s=30,
                    what="the disputed delivery refunded",
                )
                assert (
                    refunded[-1].delivery.refund > 0 and refunded[-1].delivery.hours_released == 0
                )
                outcomes = {
                    d.obligation_id: (d.state, d.outcome, d.hours_released)
                    for d in await buyer.fetch_deliveries(role="holder")
                }
                assert outcomes == {
                    first_id: ("settled", "delivered", 1),
                    second_id: ("settled", "failed", 0),
                    third: ("settled", "failed", 0),
                }, outcomes

                # 8. The provider withdraws its earnings; the operator approves.
                # (the harness funded every account with FUNDS_MICROS: the rest is the journey's)
                free = Decimal(str((await provider_cx.fetch_balance())["USD"]["free"]))
                paid_out = free - FUNDS_MICROS // 1_000_000
                assert paid_out > 800  # its deposit and what it earned
                withdrawal = await provider_cx.withdraw(
                    "USD", float(paid_out), "DE89 3704 0044 0532 0130 00"
                )
                assert withdrawal["status"] == "pending" and withdrawal["type"] == "withdrawal"
                check_transaction(provider_cx, {}, "withdraw", withdrawal, "USD", _now_ms())
                status, approved, err = await gx_funds(broker, "approve", withdrawal["id"])
                assert (status, approved["status"]) == (0, "approved"), err

                async def withdrawn() -> list[dict[str, Any]]:
                    return [
                        w for w in await provider_cx.fetch_withdrawals("USD") if w["status"] == "ok"
                    ]

                for _ in range(LEDGER_POLLS_MAX):
                    if await withdrawn():
                        break
                    await asyncio.sleep(0.05)
                assert [w["id"] for w in await withdrawn()] == [withdrawal["id"]]
                for w in await provider_cx.fetch_withdrawals("USD"):
                    check_transaction(provider_cx, {}, "fetchWithdrawals", w, "USD", _now_ms())

                # 9. Every balance equals the running total of its statement (once settlement
                # has written the last events: the statement is read from the ledger).
                for client in (buyer, provider):
                    for _ in range(LEDGER_POLLS_MAX):
                        balance, closing = await _balance_and_statement(client)
                        if balance == closing:
                            break
                        await asyncio.sleep(0.05)
                    assert balance == closing

                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    run(journey(), timeout_s=230)
    capsys.readouterr()
    status = gx_main(
        ["audit", "--bootstrap", broker.bootstrap_servers, "--no-check-crcs", "--dsn", dsn]
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["ok"], report["violations"]
    assert report["ledger_compared"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _balance_and_statement(client: Client) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """The account's balance by bucket, and each bucket's last running total on its statement."""
    buckets = ("available", "held", "escrow", "collateral", "pending")
    balance = await client.fetch_balance()
    closing = dict.fromkeys(buckets, Decimal(0))
    for entry in await client.fetch_statement():
        assert entry.balance is not None
        closing[entry.bucket] = entry.balance
    return {b: getattr(balance, b) for b in buckets}, closing
