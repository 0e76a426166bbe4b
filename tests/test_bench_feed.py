"""`gx bench feed` runs subscribers against a live gateway and prints its figures.

No timing is asserted (benchmarks print figures); only that every trade reached every recorded
subscriber and the figures are there.
"""

from __future__ import annotations

import json

import pytest

from exchange.cli import main


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
    assert report["command_to_gateway_p50_ms"] > 0 and report["gateway_to_client_p50_ms"] >= 0
    assert report["book_updates_per_s"] > 0  # the load moves the book, not only the tape


@pytest.mark.timeout(60)
def test_write_floor_bench_times_every_connection(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--connections", "20", "--passes", "5", "--interval-ms", "1"]
    assert main(["bench", "writes", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connections"] == 20 and report["passes"] == 5
    assert 0 < report["pass_p50_ms"] <= report["pass_p90_ms"]
    assert report["write_p50_us"] > 0
