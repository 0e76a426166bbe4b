"""A live gateway's frames and the topics' records, every one, against the AsyncAPI document.

Two traders log on, subscribe to every public and private channel, place, trade, amend, cancel
and make mistakes; every frame each socket sent and received is validated against the message
of its method or channel, then every record the run left on gx.commands, gx.events,
gx.marketdata and gx.provisioning against its topic's message. A frame or record with a wrong
field type must be refused by the same validator.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import orjson
import pytest
import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition

from exchange.gateway.asyncapi import PATH, asyncapi_document
from schemas.provisioning import ProvisionFailed, encode_provision, provider_key
from schemas.symbols import parse_symbol
from streams.topics import topics
from tests.support.asyncapi import Contract, ContractError
from tests.support.gateway_harness import PROVIDER, Exchange, Socket, rest, running_exchange

from .conftest import run

pytestmark = pytest.mark.timeout(240)


class Recorder:
    """A websockets connection that keeps every frame it sends and receives, decoded."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def send(self, data: str | bytes) -> None:
        self.sent.append(orjson.loads(data))
        await self.ws.send(data)

    def __aiter__(self) -> Any:
        return self._frames()

    async def _frames(self) -> Any:
        async for raw in self.ws:
            self.received.append(orjson.loads(raw))
            yield raw

    async def close(self) -> None:
        await self.ws.close()


def check_socket(contract: Contract, recorder: Recorder) -> int:
    """Validate a socket's frames: requests by method, answers by their request's method.

    A request the gateway refused as malformed (BAD_REQUEST, UNKNOWN_METHOD: this test sends
    only malformed ones of those) the document must refuse too; return how many it refused.
    """
    answers = {f.get("id"): f for f in recorder.received if "channel" not in f}
    methods: dict[Any, str] = {}
    refused = 0
    for frame in recorder.sent:
        methods[frame.get("id")] = frame.get("method")
        error = answers[frame.get("id")].get("error") or {}
        if error.get("code") in ("BAD_REQUEST", "UNKNOWN_METHOD"):
            with pytest.raises(ContractError):
                contract.request(frame)
            refused += 1
        else:
            contract.request(frame)
    for frame in recorder.received:
        contract.received(frame, None if "channel" in frame else methods.get(frame.get("id")))
    return refused


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every record of a topic from its start to its end now (key, value, headers)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, check_crcs=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def place(ws: Socket, symbol: str, side: str, price: str, qty: str, **extra: Any) -> dict:
    params = {"symbol": symbol, "side": side, "type": "limit", "price": price, "qty": qty, **extra}
    answer = await ws.request("order.place", params)
    assert answer["status"] == 200, answer
    return dict(answer["result"])


async def trade_and_watch(ex: Exchange, maker: Socket, taker: Socket) -> None:
    gpu, curve = ex.symbol.split(".")[0], ".".join(ex.symbol.split(".")[:3])
    public = [
        {"channel": "book", "symbols": [ex.symbol], "depth": 10},
        {"channel": "trades", "symbols": [ex.symbol]},
        {"channel": "ticker", "symbols": [ex.symbol]},
        {"channel": "candles", "symbols": [ex.symbol], "interval": "1m"},
        {"channel": "index", "symbols": [gpu]},
        {"channel": "curve", "symbols": [curve]},
    ]
    private = ["executions", "balances", "positions", "deliveries", "provisioning"]
    for ws in (maker, taker):
        assert (await ws.request("ping"))["status"] == 200
        for params in public + [{"channel": channel} for channel in private]:
            answer = await ws.request("subscribe", params)
            assert answer["status"] == 200, (params, answer)
    for price, qty in (("2.500", "3"), ("2.600", "2")):
        await place(maker, ex.symbol, "sell", price, qty, client_order_id=f"m-{price}")
    bought = await place(taker, ex.symbol, "buy", "2.600", "4", client_order_id="t-1")
    assert bought["order"]["status"] == "filled" and bought["fills"]
    resting = await place(taker, ex.symbol, "buy", "2.100", "2", post_only=True)
    order_id = resting["order"]["order_id"]
    answer = await taker.request(
        "order.amend", {"order_id": order_id, "price": "2.200", "qty": "1"}
    )
    assert answer["status"] == 200, answer
    assert (await taker.request("order.status", {"client_order_id": "t-1"}))["status"] == 200
    assert (await taker.request("order.cancel", {"order_id": order_id}))["status"] == 200
    await place(taker, ex.symbol, "buy", "2.000", "1")
    assert (await taker.request("order.cancel_all", {}))["status"] == 200
    assert (await taker.request("cancel_all_after", {"timeout_ms": 60_000}))["status"] == 200
    assert (await taker.request("cancel_all_after", {"timeout_ms": 0}))["status"] == 200
    assert (await taker.request("ssh_key.list"))["status"] == 200
    assert (await taker.request("delivery.list", {}))["status"] == 200
    start_ns = parse_symbol(ex.symbol).start_ns
    route = {
        "gpu": gpu, "gpu_hours": 1, "start_ns": str(start_ns),
        "end_ns": str(start_ns + 3_600_000_000_000), "max_price": "2.000",
    }  # fmt: skip
    assert (await taker.request("order.route", route))["status"] == 200
    # refusals: a wrong field type, an unknown method, a placement the engine refuses
    refused = await taker.request("order.place", {"symbol": ex.symbol, "side": "buy", "qty": 5})
    assert refused["status"] == 400, refused
    assert (await taker.request("no.such.method"))["status"] == 400
    answer = await taker.request(
        "order.place", {"symbol": ex.symbol, "side": "buy", "price": "2.000", "qty": "999999999"}
    )
    assert answer["status"] >= 400, answer
    await taker.request("unsubscribe", {"channel": "trades", "symbols": [ex.symbol]})
    await taker.wait_push(lambda p: p["channel"] == "positions" and p["type"] == "update")
    await taker.wait_push(lambda p: p["channel"] == "index")
    await taker.wait_push(lambda p: p["channel"] == "candles")
    await taker.wait_push(lambda p: p["channel"] == "heartbeat")
    await maker.wait_push(lambda p: p["channel"] == "heartbeat")


def test_live_frames_and_topic_records_match_the_asyncapi_document(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            served = await rest(ex, "GET", PATH)
            assert served.status_code == 200 and served.headers["content-type"].startswith(
                "application/json"
            )
            document = served.json()
            assert document == asyncapi_document(ex.stack.settings)
            assert (await rest(ex, "GET", "/api/v1/schema/openapi.json")).status_code == 200
            contract = Contract(document)
            async with (
                websockets.connect(ex.ws_url, max_size=None) as ws_a,
                websockets.connect(ex.ws_url, max_size=None) as ws_b,
            ):
                recorders = [Recorder(ws_a), Recorder(ws_b)]
                maker, taker = Socket(recorders[0]), Socket(recorders[1])
                assert (await maker.logon(ex.keys["provider"]))["status"] == 200
                assert (await taker.logon(ex.keys["trader"]))["status"] == 200
                await trade_and_watch(ex, maker, taker)
                await maker.close()
                await taker.close()
            # a provider's failure report, as the gateway writes it (no delivery in this run)
            failed = ProvisionFailed(obligation_id=1, provider=PROVIDER, reason="test")
            await ex._producer.send_and_wait(
                topics(ex.stack.settings)["provisioning"].name,
                encode_provision(failed),
                key=provider_key(PROVIDER),
            )
            refused = sum(check_socket(contract, recorder) for recorder in recorders)
            assert refused == 2  # the qty of the wrong type and the unknown method
            seen = {}
            for role, topic in topics(ex.stack.settings).items():
                records = await read_topic(broker.bootstrap_servers, topic.name, topic.partitions)
                for record in records:
                    contract.record(role, record.key, record.value, record.headers)
                seen[role] = records
            print(f"\nvalidated: {contract.counts}, refused as the gateway did: {refused}")
            assert contract.counts["sent"] >= 30 and contract.counts["received"] >= 60
            assert all(contract.counts.get(role, 0) > 0 for role in seen), contract.counts
            received = {f["channel"] for r in recorders for f in r.received if "channel" in f}
            assert received >= {
                "book", "trades", "ticker", "candles", "index", "curve", "executions",
                "balances", "positions", "deliveries", "heartbeat",
            }, received  # fmt: skip

            # the same validator refuses a wrong field type in a frame and in a record
            push = next(f for f in recorders[1].received if f.get("channel") == "executions")
            bad = copy.deepcopy(push)
            bad["account_seq"] = str(bad["account_seq"])
            with pytest.raises(ContractError, match="account_seq"):
                contract.received(bad, None)
            value = seen["events"][-1].value
            events = msgspec.msgpack.decode(value)
            events[0]["seq"] = "1"
            with pytest.raises(ContractError):
                contract.record("events", seen["events"][-1].key, msgspec.msgpack.encode(events))

    run(scenario(), timeout_s=220)
