"""`gx audit` over the embedded broker and database: a settled market passes, a forged posting fails.

A seeded simulation's events are produced to the events topic and settled into an embedded
PostgreSQL by the settlement writer; `gx audit` (the CLI's main, in process) must then pass.
Corrupting one posting must fail the audit and name the account; a ledger that lags the log is
compared at its own position and only warned about; a checkpoint written by a clean run resumes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange.cli.gx import main as gx_main
from schemas.catalog import load_catalog
from streams.embedded.broker import EmbeddedBroker
from streams.topics import topics
from tests.support.records import per_command

from .conftest import run
from .test_settlement import Market, execute, fetch_all, produce, settings_for, settle
from .test_settlement import simulate as simulate_market

pytestmark = pytest.mark.timeout(30)

SEED = 5
BATCHES = 40


@pytest.fixture(scope="module")
def market() -> Market:
    return simulate_market(load_catalog(), SEED, BATCHES)


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(broker_count=1) as embedded:
        yield embedded


def gx_audit(
    capsys: pytest.CaptureFixture[str], broker: EmbeddedBroker, *args: str
) -> tuple[int, dict[str, Any]]:
    """Run `gx audit` in process; return its exit status and its JSON report."""
    capsys.readouterr()
    status = gx_main(["audit", "--bootstrap", broker.bootstrap_servers, "--no-check-crcs", *args])
    return status, json.loads(capsys.readouterr().out)


def boundary(events: list[Any], near: int) -> int:
    """The first index at or after `near` that starts a new command."""
    return next(
        i for i in range(near, len(events)) if events[i].input_offset != events[i - 1].input_offset
    )


def test_settled_market_passes_and_a_forged_posting_fails_naming_the_account(
    market: Market, broker: EmbeddedBroker, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(broker, batch_max=500)
    topic = topics(settings)["events"].name

    async def produce_and_settle() -> None:
        end = await produce(broker.bootstrap_servers, topic, per_command(market.events))
        await settle(settings, dsn, broker.bootstrap_servers, {0: end})

    run(produce_and_settle())
    status, report = gx_audit(capsys, broker, "--dsn", dsn)
    assert status == 0, report["violations"]
    assert report["ok"] and report["ledger_compared"] and report["warnings"] == []
    assert report["events"] == len(market.events)
    assert report["chain_heads"][0]["seq"] == market.events[-1].seq

    rows = run(
        fetch_all(
            dsn,
            "SELECT account, seq, posting_index FROM postings WHERE account >= 10 "
            "ORDER BY seq LIMIT 1",
        )
    )
    account, seq, index = rows[0]
    run(
        execute(
            dsn,
            f"UPDATE postings SET amount_micros = amount_micros + 1 "
            f"WHERE shard = 0 AND seq = {seq} AND posting_index = {index}",
        )
    )
    status, report = gx_audit(capsys, broker, "--dsn", dsn)
    assert status == 1 and not report["ok"]
    mismatches = [v for v in report["violations"] if v["kind"] == "ledger_balance_mismatch"]
    assert [v["account"] for v in mismatches] == [account]
    assert f"account {account}" in mismatches[0]["message"]
    assert "postings_not_zero_sum" in {v["kind"] for v in report["violations"]}


def test_lagging_ledger_is_compared_at_its_position_and_a_checkpoint_resumes(
    market: Market,
    broker: EmbeddedBroker,
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    settings = settings_for(broker, batch_max=500)
    topic = topics(settings)["events"].name
    cut = boundary(market.events, len(market.events) // 2)
    head, tail = market.events[:cut], market.events[cut:]

    async def settle_half() -> None:
        end = await produce(broker.bootstrap_servers, topic, per_command(head))
        await settle(settings, dsn, broker.bootstrap_servers, {0: end})

    run(settle_half())
    checkpoint = tmp_path / "audit.checkpoint"
    status, report = gx_audit(capsys, broker, "--dsn", dsn, "--write-checkpoint", str(checkpoint))
    assert status == 0 and report["warnings"] == [] and checkpoint.exists()

    run(produce(broker.bootstrap_servers, topic, per_command(tail)))
    status, report = gx_audit(capsys, broker, "--dsn", dsn)
    assert status == 0, report["violations"]
    assert report["warnings"] == [f"partition 0: ledger behind by {len(per_command(tail))} records; "
                                  f"compared at its position (offset {len(per_command(head))})"]  # fmt: skip

    status, resumed = gx_audit(capsys, broker, "--from-checkpoint", str(checkpoint))
    assert status == 0, resumed["violations"]
    assert resumed["chain_heads"] == report["chain_heads"]
    assert resumed["events"] == len(tail)
