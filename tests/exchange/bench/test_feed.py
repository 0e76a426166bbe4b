"""`gx bench feed` runs subscribers against a live gateway and prints its figures.

No timing is asserted (benchmarks print figures); only that every trade reached every recorded
subscriber and the figures are there.
"""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from exchange.bench.feed_clients import _Subscriber
from exchange.cli.gx import main
from exchange.gateway.fanout import frame_pushes, text_frame


@pytest.mark.timeout(120)
def test_feed_bench_delivers_every_trade_to_its_subscribers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--subscribers", "6", "--recorded", "3", "--rate", "200", "--duration", "2"]
    assert main(["bench", "feed", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connected"] == 6
    assert report["updates"] == 400 and report["trades"] == 200
    assert report["missing"] == 0 and report["resyncs"] == 0
    assert report["lag_p50_ms"] is not None and report["lag_p99_ms"] >= report["lag_p50_ms"]
    assert report["messages"] >= 6 * 200  # every subscriber got every trade, at least
    # the lag splits at the gateway's hub: both parts measured, neither runs backwards
    assert report["command_to_gateway_p50_ms"] > 0 and report["gateway_to_client_p50_ms"] > 0
    assert report["command_to_gateway_p99_ms"] >= report["command_to_gateway_p50_ms"]
    assert report["gateway_to_client_p99_ms"] >= report["gateway_to_client_p50_ms"]
    assert report["book_updates_per_s"] > 0  # the load moves the book, not only the tape
    # the gateway's write passes ran during the load, each connection's write timed
    assert report["write_passes_per_s"] > 0 and report["write_us_per_connection"] > 0
    assert report["gateway_loop_cpu_pct"] > 0


@pytest.mark.timeout(60)
def test_write_floor_bench_times_every_connection(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--connections", "20", "--passes", "5", "--interval-ms", "1"]
    assert main(["bench", "writes", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connections"] == 20 and report["passes"] == 5
    assert 0 < report["pass_p50_ms"] <= report["pass_p90_ms"]
    assert report["write_p50_us"] > 0


def test_a_counting_subscriber_counts_every_push_however_the_reads_split() -> None:
    """Subscribers that only count find each push by its mark, also across two reads."""
    bodies = [
        orjson.dumps({"channel": "trades", "seq": i, "pad": "x" * (i % 7)}) for i in range(40)
    ]
    bodies.insert(17, orjson.dumps({"channel": "book", "type": "resync_required", "symbol": "S"}))
    parts: list[bytes] = []
    frame_pushes([body[1:] for body in bodies], 0, parts)
    stream = text_frame(b'{"id":1,"status":200,"result":{}}') + b"".join(parts)  # an answer too

    async def count(chunk: int) -> tuple[int, int]:
        counts = {"connected": 0, "messages": 0, "resyncs": 0, "first_ns": 0, "last_ns": 0}
        client = _Subscriber("h:1", "S", False, counts)
        client.upgraded = True
        for at in range(0, len(stream), chunk):
            client.data_received(stream[at : at + chunk])
        return counts["messages"], counts["resyncs"]

    for chunk in (1, 2, 5, 11, 12, 13, 23, 24, 64, len(stream)):
        assert asyncio.run(count(chunk)) == (len(bodies), 1), chunk
