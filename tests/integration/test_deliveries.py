"""Deliveries end to end: a trade, gate closure, the provider agent confirms with access, and
the holder sees the access on its private `deliveries` channel and in `GET /deliveries`.

The whole exchange runs in-process (tests/support/gateway_harness.py) with the provisioning
process, so the confirmation goes provider agent -> gx.provisioning -> provisioning ->
gx.commands -> engine -> gx.events -> the gateway's Deliveries projection.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.client import Client, DeliveryUpdate, ProviderAgent, ProvisionRequest, ProvisionResult
from schemas import commands as c
from schemas.symbols import parse_symbol
from tests.support.gateway_harness import (
    MAKER,
    PROVIDER,
    TRADER,
    Exchange,
    running_exchange,
    socket,
)

from .conftest import run

pytestmark = pytest.mark.timeout(180)

MINUTE_NS = 60_000_000_000
ACCESS = {"host": "gpu-7.example.com", "port": 2222, "user": "gx", "instructions": "nvidia-smi"}


def client(ex: Exchange, name: str) -> Client:
    keys = ex.keys[name]
    return Client(ex.url, keys.key_id, keys.secret)


def ssh_key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode() + " holder@laptop"


async def drain(watch: object, into: list[DeliveryUpdate]) -> None:
    async for item in watch:  # type: ignore[attr-defined]
        into.append(item)


def test_holder_sees_the_confirmed_access_and_a_third_account_sees_nothing(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn, provisioning=True) as ex:
            key = parse_symbol(ex.symbol)

            async def handler(request: ProvisionRequest) -> ProvisionResult | None:
                if request.stage != "start":
                    return None
                return ProvisionResult.confirm(**ACCESS)

            async with (
                client(ex, "provider") as provider,
                client(ex, "trader") as holder,
                client(ex, "maker") as third,
                socket(ex) as provider_ws,
                socket(ex) as third_ws,
            ):
                await holder.add_ssh_key(ssh_key())
                holder_seen: list[DeliveryUpdate] = []
                third_seen: list[DeliveryUpdate] = []
                tasks = [
                    asyncio.create_task(drain(holder.watch_deliveries(), holder_seen)),
                    asyncio.create_task(drain(third.watch_deliveries(), third_seen)),
                    asyncio.create_task(ProviderAgent(provider).run(handler)),
                ]
                await provider.create_order(ex.symbol, "limit", "sell", 2, "2.000")
                await holder.create_order(ex.symbol, "limit", "buy", 2, "2.000")
                await ex.send(c.ClockTick(ts_ns=key.start_ns - 10 * MINUTE_NS))  # gate closure
                await ex.wait_for(
                    lambda: [u for u in holder_seen if u.type == "assigned"],
                    timeout_s=30,
                    what="the assigned push",
                )
                assigned = next(u for u in holder_seen if u.type == "assigned").delivery
                assert (assigned.holder, assigned.provider, assigned.gpus) == (TRADER, PROVIDER, 2)
                assert assigned.access is None

                outstanding = ex.gateway.provisioning.is_outstanding
                await ex.wait_for(
                    lambda: outstanding(PROVIDER, assigned.obligation_id),
                    timeout_s=30,
                    what="the provisioning request",
                )
                # Bad access is refused over the WebSocket with BAD_ACCESS, and nothing is sent.
                await provider_ws.logon(ex.keys["provider"])
                bad = [
                    {**ACCESS, "host": "gpu 7"},
                    {**ACCESS, "port": 0},
                    {**ACCESS, "port": 65_536},
                    {**ACCESS, "user": "u" * 65},
                    {**ACCESS, "instructions": "i" * 2001},
                    "ssh gx@gpu-7.example.com",
                ]
                for access in bad:
                    answer = await provider_ws.request(
                        "provision.confirm",
                        {"obligation_id": assigned.obligation_id, "access": access},
                    )
                    assert answer["status"] == 400, answer
                    assert answer["error"]["code"] == "BAD_ACCESS", answer
                assert outstanding(PROVIDER, assigned.obligation_id)

                await ex.send(c.ClockTick(ts_ns=key.start_ns))  # the agent confirms
                confirmed = await ex.wait_for(
                    lambda: [u for u in holder_seen if u.type == "confirmed" and u.delivery.access],
                    timeout_s=30,
                    what="the confirmed push with access",
                )
                access = confirmed[0].delivery.access
                assert access is not None
                assert (access.host, access.port, access.user, access.instructions) == (
                    ACCESS["host"],
                    ACCESS["port"],
                    ACCESS["user"],
                    ACCESS["instructions"],
                )
                fetched = await holder.fetch_deliveries(state="confirmed")
                assert [d.obligation_id for d in fetched] == [assigned.obligation_id]
                assert fetched[0].access == access and fetched[0].state == "confirmed"
                assert [d.access for d in await provider.fetch_deliveries()] == [access]

                # The third account: no pushes, no deliveries, no dispute of another's delivery.
                assert third_seen == []
                assert await third.fetch_deliveries() == []
                await third_ws.logon(ex.keys["maker"])
                listed = await third_ws.request("delivery.list", {})
                assert listed["result"] == {"deliveries": []}
                refused = await third_ws.request(
                    "delivery.dispute", {"obligation_id": assigned.obligation_id}
                )
                assert refused["error"]["code"] == "UNKNOWN_DELIVERY", refused
                assert MAKER not in {d["holder"] for d in ex.gateway.deliveries.deliveries(TRADER)}
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    run(scenario(), timeout_s=170)
