"""`gx admin` against the embedded stack: halt, a refusal, resume, suspend an account; list a
dead letter and replay it exactly once."""

from __future__ import annotations

import asyncpg
import pytest

from exchange.client import Client
from exchange.client.errors import RejectedError
from schemas import events as ev
from schemas.codec import encode
from schemas.codes import CashReason
from tests.integration.conftest import run
from tests.support.gateway_harness import TRADER, running_exchange
from tests.support.operator import gx, gx_admin


def test_halt_refuses_orders_until_resumed_and_suspension_refuses_the_account(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            keys = ex.keys["trader"]
            async with Client(ex.url, keys.key_id, keys.secret) as trader:
                status, answer, err = await gx_admin(broker, "halt", ex.symbol, "--reason", "test")
                assert (status, answer) == (
                    0,
                    {"status": "halted", "symbol": ex.symbol, "reason": "operator"},
                ), err
                with pytest.raises(RejectedError) as refused:
                    await trader.create_order(ex.symbol, "limit", "buy", 1, 2.4)
                assert refused.value.code == "INSTRUMENT_HALTED"
                status, answer, _ = await gx_admin(broker, "halt", ex.symbol)
                assert (status, answer["code"]) == (1, "INSTRUMENT_HALTED")
                status, answer, _ = await gx_admin(broker, "resume", ex.symbol)
                assert (status, answer["status"]) == (0, "resumed")
                order = await trader.create_order(ex.symbol, "limit", "buy", 1, 2.4)
                assert order.order.order_id

                status, answer, _ = await gx_admin(broker, "suspend", str(TRADER))
                assert (status, answer) == (
                    0,
                    {"status": "suspended", "account": TRADER, "orders_cancelled": 1},
                )
                with pytest.raises(RejectedError) as refused:
                    await trader.create_order(ex.symbol, "limit", "buy", 1, 2.4)
                assert refused.value.code == "ACCOUNT_SUSPENDED"
                status, answer, _ = await gx_admin(broker, "reinstate", str(TRADER))
                assert (status, answer["status"]) == (0, "reinstated")
                assert (await trader.create_order(ex.symbol, "limit", "buy", 1, 2.4)).order.order_id

    run(scenario())


# A deposit's two legs, as if settlement had refused them before a fix: shard 7 is no engine's,
# so these postings are the only ones it has.
_SHARD, _PARTITION, _OFFSET = 7, 3, 41
_LEGS = [
    ev.CashChanged(
        shard=_SHARD,
        seq=seq,
        input_offset=5,
        ts_event=1,
        account=account,
        available_delta=delta,
        held_delta=0,
        escrow_delta=0,
        collateral_delta=0,
        reason=int(CashReason.DEPOSIT),
        ref_id=99,
    )  # fmt: skip
    for seq, account, delta in ((1, TRADER, 1_000_000), (2, 0, -1_000_000))
]


def test_dead_letter_is_listed_and_replayed_exactly_once(dsn):
    async def scenario() -> None:
        status, _, err = await gx("admin", "dead-letters", "--dsn", dsn)  # migrates the ledger
        assert status == 0, err
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(
                'INSERT INTO dead_letters (consumer, topic, partition, "offset", event_index, '
                "reason, payload) VALUES ('settlement', 'gx.events', $1, $2, $3, $4, $5)",
                [
                    (_PARTITION, _OFFSET, i, "out of range (before the fix)", encode(leg))
                    for i, leg in enumerate(_LEGS)
                ],
            )
            status, listed, _ = await gx("admin", "dead-letters", "--dsn", dsn)
            ids = [d["id"] for d in listed["dead_letters"]]
            assert status == 0 and ids.count(f"{_PARTITION}:{_OFFSET}") == 2
            position = f"{_PARTITION}:{_OFFSET}"
            status, answer, err = await gx("admin", "replay-dead-letter", position, "--dsn", dsn)
            assert (status, answer["status"], answer["postings"]) == (0, "replayed", 2), err
            status, answer, _ = await gx("admin", "replay-dead-letter", position, "--dsn", dsn)
            assert (status, answer["status"]) == (0, "already_replayed")
            # Even with its mark lost, a replay posts nothing twice.
            await conn.execute("UPDATE dead_letters SET replayed_ns = NULL")
            status, answer, _ = await gx("admin", "replay-dead-letter", position, "--dsn", dsn)
            assert (status, answer["status"], answer["postings"]) == (0, "replayed", 0)
            total = await conn.fetchval("SELECT count(*) FROM postings WHERE shard = $1", _SHARD)
            assert total == 2
            status, answer, _ = await gx("admin", "replay-dead-letter", "3:999", "--dsn", dsn)
            assert (status, answer["status"]) == (1, "not_found")
            status, listed, _ = await gx("admin", "dead-letters", "--dsn", dsn)
            assert listed["dead_letters"] == []
        finally:
            await conn.close()

    run(scenario())
