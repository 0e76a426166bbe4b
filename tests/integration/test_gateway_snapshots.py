"""The gateway starts from a snapshot of its projections and reads only the log's tail.

Over the embedded broker and a private PostgreSQL database: the log is filled by in-process
engines (exchange/bench/gateway_start.py `LogFiller`), gateways are real `GatewayServer`s.
The projections are compared structurally (every attribute of every object reachable from
them, caches and connection state left out) with those of a gateway that replayed the whole
log, so a field a snapshot forgets, or restores wrong, shows up as a difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import orjson
import pytest
import websockets

from exchange.bench.gateway_start import MASTER_KEY, LogFiller
from exchange.gateway.accounts import Accounts
from exchange.gateway.app import GatewayServer
from exchange.gateway.deliveries import Deliveries
from exchange.gateway.keys import SCOPES
from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.provisioning import Provisioning
from exchange.gateway.snapshot import (
    GATEWAY_SNAPSHOT_KEY,
    SnapshotInvalid,
    capture,
    digest,
    restore,
)
from exchange.wire import Prices
from schemas.catalog import load_catalog
from streams.event_records import CommandGrouper
from streams.settings import Settings
from tests.support.gateway_harness import Keys, Socket

from .conftest import run

pytestmark = pytest.mark.timeout(120)

EVERY_EVENTS = 3_000  # small, so a log of a few ten thousand events holds several snapshots
FIRST_EVENTS = 12_000
TAIL_EVENTS = 6_000
ACCOUNTS = 8
# Caches and the connections' state: rebuilt on demand, never part of what the log determines.
_SKIPPED = frozenset(
    {"prices", "_price_strs", "views", "snapshots", "_figures", "keys_of", "_handlers"}
)


def structure(value: Any, seen: dict[int, str] | None = None, path: str = "") -> Any:
    """Plain data for every object reachable from `value` (shared objects named once)."""
    seen = {} if seen is None else seen
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.value)
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, tuple):
        return ("tuple", [structure(v, seen, path) for v in value])
    if isinstance(value, msgspec.Struct):
        return (type(value).__name__, msgspec.to_builtins(value))
    if id(value) in seen:
        return ("ref", seen[id(value)])
    seen[id(value)] = path
    if isinstance(value, list):
        return [structure(v, seen, f"{path}[]") for v in value]
    if isinstance(value, deque):
        return ("deque", value.maxlen, [structure(v, seen, f"{path}[]") for v in value])
    if isinstance(value, dict):
        items = [(structure(k, seen), structure(v, seen, f"{path}.{k}")) for k, v in value.items()]
        if isinstance(value, OrderedDict):
            return ("ordered", items)
        # A plain dict's order follows how the reader interleaved the partitions (providers'
        # requests come from four gx.provisioning partitions): not something the log fixes.
        return ("dict", sorted(items, key=lambda kv: repr(kv[0])))
    if isinstance(value, set | frozenset):
        return ("set", sorted(repr(v) for v in value))
    if isinstance(value, Accounts) and path.endswith("_accounts"):
        return "the Accounts"  # Deliveries numbers its pushes with the Accounts: wiring
    names = getattr(type(value), "__slots__", None) or list(getattr(value, "__dict__", ()))
    assert names, f"{path}: {type(value).__name__} has no attributes to compare"
    return (
        type(value).__name__,
        {n: structure(getattr(value, n), seen, f"{path}.{n}") for n in names if n not in _SKIPPED},
    )


def difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two structures first differ, and how (None: they are equal)."""
    if a == b:
        return None
    if type(a) is not type(b) or not isinstance(a, list | tuple | dict):
        return f"{path}: {str(a)[:200]} != {str(b)[:200]}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            found = difference(a.get(k), b.get(k), f"{path}.{k}")
            if found:
                return found
        return None
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        found = difference(x, y, f"{path}[{i}]")
        if found:
            return found
    return f"{path}: lengths {len(a)} != {len(b)}"


def projections(server: GatewayServer) -> dict[str, Any]:
    assert server.gateway is not None
    return {k: structure(v, path=k) for k, v in server.gateway.hub.projections().items()}


def settings_of(broker: Any, dsn: str, every: int = EVERY_EVENTS) -> Settings:
    return Settings(
        gateway_master_key=MASTER_KEY,
        kafka_fetch_wait_ms=5,
        shards=1,  # one gx.events partition: every account's pushes in one order, whoever reads
        kafka_bootstrap=broker.bootstrap_servers,
        database_url=dsn,
        gateway_snapshot_every_events=every,
    )


@contextlib.asynccontextmanager
async def gateway(settings: Settings, dsn: str) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(settings, dsn, catalog=load_catalog(), mock_broker=True, port=0)
    await server.start()
    try:
        assert server.gateway is not None
        await asyncio.wait_for(server.gateway.hub.ready.wait(), 30)
        yield server
    finally:
        await server.close()


def hub_of(server: GatewayServer) -> Any:
    assert server.gateway is not None
    return server.gateway.hub


async def snapshot_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT input_offset, state_hash, snapshot FROM engine_snapshots WHERE shard = $1 "
            "ORDER BY input_offset DESC",
            GATEWAY_SNAPSHOT_KEY,
        )
    finally:
        await conn.close()


async def first_log_and_snapshots(broker: Any, dsn: str) -> tuple[LogFiller, int]:
    """Fill the first part of the log, let a gateway read it and save snapshots; then the tail.

    Returns the filler (open) and the records in the whole log.
    """
    settings = settings_of(broker, dsn)
    filler = LogFiller(broker, settings, FIRST_EVENTS + TAIL_EVENTS, accounts=ACCOUNTS)
    await filler.open()
    await filler.fill(FIRST_EVENTS)
    await filler.provision()
    async with gateway(settings, dsn) as first:
        assert hub_of(first).snapshots.loaded_position is None  # none yet: the whole log
        while hub_of(first).snapshots.saved == 0:
            await asyncio.sleep(0.05)
    await filler.fill(TAIL_EVENTS)
    return filler, 0


def test_snapshot_plus_tail_equals_a_full_replay(broker, dsn):
    async def scenario() -> None:
        filler, _ = await first_log_and_snapshots(broker, dsn)
        await filler.close()
        async with gateway(settings_of(broker, dsn, every=0), dsn) as full:
            expected = projections(full)
            all_records = hub_of(full).stats.records
        async with gateway(settings_of(broker, dsn), dsn) as resumed:
            hub = hub_of(resumed)
            loaded = hub.snapshots.loaded_position
            got = projections(resumed)
            tail = hub.stats.records
        assert loaded is not None and loaded > 0, "the gateway did not start from its snapshot"
        # it read only what follows the snapshot: the tail, not the whole log
        assert tail == all_records - loaded, (tail, all_records, loaded)
        assert tail < all_records
        assert difference(got, expected) is None
        print(f"snapshot at {loaded} of {all_records} records; tail read: {tail}")

    run(scenario(), timeout_s=100)


def test_a_damaged_or_foreign_snapshot_is_refused_and_the_log_replayed(broker, dsn, caplog):
    async def scenario() -> None:
        filler, _ = await first_log_and_snapshots(broker, dsn)
        await filler.close()
        async with gateway(settings_of(broker, dsn), dsn) as second:  # saves after the tail
            while hub_of(second).snapshots.saved == 0:
                await asyncio.sleep(0.05)
        rows = await snapshot_rows(dsn)
        assert len(rows) >= 2
        conn = await asyncpg.connect(dsn)
        try:
            newest = rows[0]
            damaged = bytes(newest["snapshot"])[:-7] + b"garbage"  # the digest no longer matches
            await conn.execute(
                "UPDATE engine_snapshots SET snapshot = $1 WHERE shard = $2 AND input_offset = $3",
                damaged, GATEWAY_SNAPSHOT_KEY, newest["input_offset"],
            )  # fmt: skip
            for row in rows[1:]:  # well formed, of a format this code does not know
                foreign = msgspec.msgpack.encode(
                    {"format": 99, "offsets": [], "roots": [], "state": []}
                )
                await conn.execute(
                    "UPDATE engine_snapshots SET snapshot = $1, state_hash = $2 "
                    "WHERE shard = $3 AND input_offset = $4",
                    foreign, digest(foreign), GATEWAY_SNAPSHOT_KEY, row["input_offset"],
                )  # fmt: skip
        finally:
            await conn.close()
        async with gateway(settings_of(broker, dsn, every=0), dsn) as full:
            expected = projections(full)
        with caplog.at_level(logging.INFO, logger="gx.gateway"):
            async with gateway(settings_of(broker, dsn, every=10**9), dsn) as fallback:
                assert hub_of(fallback).snapshots.loaded_position is None
                got = projections(fallback)
        assert difference(got, expected) is None
        text = caplog.text
        assert "is damaged (its digest differs)" in text
        assert "format: expected 1, found 99" in text
        assert "no gateway snapshot restores: replaying the whole log" in text

    run(scenario(), timeout_s=100)


def test_two_gateways_saving_at_once_leave_snapshots_that_restore(broker, dsn):
    async def scenario() -> None:
        settings = settings_of(broker, dsn, every=1_000)
        filler = LogFiller(broker, settings, 30_000, accounts=ACCOUNTS)
        await filler.open()
        await filler.fill(4_000)
        async with gateway(settings, dsn) as a, gateway(settings, dsn) as b:
            for _ in range(4):  # both read each step and save while the other does
                await filler.fill(4_000)
                await asyncio.sleep(0.3)
            saved = hub_of(a).snapshots.saved + hub_of(b).snapshots.saved
        await filler.close()
        rows = await snapshot_rows(dsn)
        assert saved >= 4 and len(rows) >= 2, (saved, len(rows))
        for row in rows:  # every kept row is whole: its digest matches, it decodes
            assert digest(bytes(row["snapshot"])) == row["state_hash"]
        async with gateway(settings_of(broker, dsn, every=0), dsn) as full:
            expected = projections(full)
        async with gateway(settings, dsn) as resumed:
            assert hub_of(resumed).snapshots.loaded_position == rows[0]["input_offset"]
            got = projections(resumed)
        assert difference(got, expected) is None
        print(f"{saved} snapshots saved by two gateways, {len(rows)} kept")

    run(scenario(), timeout_s=100)


def test_a_client_resuming_from_before_the_snapshot_gets_no_gap(broker, dsn):
    async def scenario() -> None:
        filler, _ = await first_log_and_snapshots(broker, dsn)
        await filler.close()
        async with gateway(settings_of(broker, dsn), dsn) as server:
            assert server.gateway is not None
            hub, accounts = server.gateway.hub, server.gateway.accounts
            assert hub.snapshots.loaded_position is not None
            account = 10
            kept = accounts._accounts[account].recent[0]  # executions, oldest kept first
            # a position within the resume buffer that is older than the snapshot point
            from_seq = kept[len(kept) // 4][0]
            last = accounts.last_seq(account, "executions")
            api_key, secret = await server.gateway.keys.create(account, SCOPES)
            url = server.url.replace("http://", "ws://") + "/ws"
            async with websockets.connect(url, max_size=None) as ws:
                client = Socket(ws)
                assert (await client.logon(Keys(api_key.key_id, secret, account)))["status"] == 200
                answer = await client.request(
                    "subscribe", {"channel": "executions", "resume_from_seq": from_seq}
                )
                assert answer["result"]["resumed"] is True, answer
                await client.wait_push(lambda p: p.get("account_seq") == last)
                pushes = client.channel("executions")
                assert pushes[0]["prev_account_seq"] == from_seq
                for before, after in zip(pushes, pushes[1:], strict=False):
                    assert after["prev_account_seq"] == before["account_seq"], (before, after)
                # older than what is kept: told to start over from a snapshot, never a gap
                old = await client.request(
                    "subscribe", {"channel": "balances", "resume_from_seq": 1}
                )
                assert old["result"]["resumed"] is False
                await client.wait_push(
                    lambda p: p["channel"] == "balances" and p.get("type") == "snapshot"
                )
                await client.close()

    run(scenario(), timeout_s=100)


def test_restore_leaves_the_projections_untouched_when_it_refuses():
    prices = Prices(load_catalog().tick_micros)
    accounts = Accounts(prices)
    roots: dict[str, object] = {
        "accounts": accounts,
        "feed": MarketFeed(prices),
        "provisioning": Provisioning(),
        "deliveries": Deliveries(accounts),
        "commands": CommandGrouper(),
    }
    payload = capture(roots, {("gx.events", 0): 5})
    before = {k: structure(v, path=k) for k, v in roots.items()}
    with pytest.raises(SnapshotInvalid, match="past the end of this log"):
        restore(payload, roots, ends={("gx.events", 0): 4})
    with pytest.raises(SnapshotInvalid, match="does not decode"):
        restore(payload[:-3], roots, ends={("gx.events", 0): 9})
    tree = msgspec.msgpack.decode(payload)
    tree["state"][0][0][1] = [99, "x"]  # a tree node of no known kind
    with pytest.raises(SnapshotInvalid, match="tree node tag"):
        restore(msgspec.msgpack.encode(tree), roots, ends={("gx.events", 0): 9})
    assert {k: structure(v, path=k) for k, v in roots.items()} == before
    assert restore(payload, roots, ends={("gx.events", 0): 5}) == {("gx.events", 0): 5}
    assert orjson.dumps(accounts.instruments()) == b"[]"
