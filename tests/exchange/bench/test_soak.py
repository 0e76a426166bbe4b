"""`gx bench soak` loads a real sandbox child process and reports its figures and its audit.

No timing or memory figure is asserted (benchmarks print figures); only that the load ran, the
audit passed, no subscriber saw a gap, and every figure is there. The subscribers' sequence
checks and the memory arithmetic are checked on their own, so that a broken check fails here.
"""

from __future__ import annotations

import asyncio
import json
import os

import orjson
import pytest

from exchange.bench import soak, soak_clients
from exchange.cli.gx import main

FIELDS = (
    "orders_per_s", "cancels_per_s", "fills", "order_round_trip_p50_ms",
    "order_round_trip_p99_ms", "deposits", "withdrawals_requested", "provisioning_requests",
    "subscribers_connected", "gaps", "audit_clean", "audits", "audit_events",
    "rss_growth_after_warmup_pct", "memory_flat", "processes",
)  # fmt: skip


@pytest.mark.timeout(180)
def test_soak_drives_the_sandbox_and_audits_it(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "soak", "--seconds", "8", "--subscribers", "20", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    for field in FIELDS:
        assert field in report, field
    assert report["orders"] > 0 and report["cancels"] > 0 and report["fills"] > 0
    assert report["order_errors"] == 0, report["errors"]
    assert report["deposits"] > 0 and report["withdrawals_requested"] > 0
    assert report["subscribers_connected"] == 20 and report["subscriber_messages"] > 0
    assert report["gaps"] == 0 and report["subscribers_closed_early"] == 0
    assert report["audit_clean"] is True and report["audit_violations"] == 0
    assert report["audit_ledger_compared"] is True
    labels = {p["label"] for p in report["processes"]}
    assert {"sandbox", "bench", "subscribers", "postgres postmaster"} <= labels
    assert report["sandbox_exit_status"] == 0
    assert report["gate_closure_lead_s"] == soak.gate_closure_lead_s  # the sandbox's option


def _push(conn_seq: int, **fields: object) -> bytes:
    return orjson.dumps({"conn_seq": conn_seq, **fields})


def test_subscriber_counts_every_break_of_a_sequence() -> None:
    async def check() -> dict[str, int]:
        counts = dict.fromkeys(
            ("messages", "resyncs", "book_updates", "trade_pushes", "conn_seq_gaps",
             "book_gaps", "trade_gaps"),
            0,
        )  # fmt: skip
        sub = soak_clients._Subscriber("h:1", "S", counts)
        pushes = [
            _push(1, channel="book", type="snapshot", seq=10),
            _push(2, channel="book", type="update", seq=11, prev_seq=10),
            _push(4, channel="book", type="update", seq=13, prev_seq=12),  # both skip one
            _push(5, channel="trades", type="update", seq=7, prev_seq=6),
            _push(6, channel="trades", type="update", seq=9, prev_seq=8),  # trades skip
            orjson.dumps({"id": 1, "result": {}}),  # an answer: no conn_seq, not counted
        ]
        for payload in pushes:
            sub._read(payload)
        return counts

    counts = asyncio.run(check())
    written: list[bytes] = []
    pong = soak_clients._Subscriber("h:1", "S", {"pings": 0})
    pong.transport = type("T", (), {"write": staticmethod(written.append)})()
    pong.upgraded = True
    asyncio.run(_feed(pong, b"\x89\x03abc"))  # the server's ping carrying "abc"
    assert written == [b"\x8a\x83\x00\x00\x00\x00abc"]  # a masked pong, the same payload
    assert counts["messages"] == 5
    assert (counts["conn_seq_gaps"], counts["book_gaps"], counts["trade_gaps"]) == (1, 1, 1)


async def _feed(sub: soak_clients._Subscriber, data: bytes) -> None:
    sub.data_received(data)


def test_memory_growth_compares_the_end_with_the_warm_up() -> None:
    memory = soak._Memory([os.getpid()])
    assert memory.sample("start") > 0
    memory.labels = {1: "sandbox", 2: "postgres backend", 3: "postgres backend", 4: "broker"}
    memory.samples = {
        "start": {1: 50, 2: 10, 4: 10},
        "warm": {1: 100, 2: 100, 4: 20},
        "end": {1: 130, 3: 500, 4: 40},  # 2 gone, 3 new: neither counts
    }
    report = memory.report()
    assert report["rss_growth_after_warmup_pct"] == 30.0
    assert report["sandbox_rss_growth_after_warmup_pct"] == 30.0
    # The broker's log fills its partitions: reported on its own, not counted in the total.
    assert report["broker_rss_growth_after_warmup_pct"] == 100.0
    assert report["memory_flat"] is False
    assert report["rss_warm_kib"] == 100 and report["rss_end_kib"] == 130
