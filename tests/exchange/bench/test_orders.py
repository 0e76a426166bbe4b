"""`gx bench orders` times WebSocket orders and the two-hop broker floor per fetch wait and rate,
and reads each process's CPU.

No timing is asserted (benchmarks print figures); only that every phase ran, every order was
answered and every figure is there.
"""

from __future__ import annotations

import json

import pytest

from exchange.cli.gx import main


@pytest.mark.timeout(240)
def test_orders_bench_times_orders_and_the_floor_with_their_cpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "orders", "--fetch-waits", "5", "--rates", "20", "--pairs", "2",
            "--duration", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accounts"] == 1 and report["pairs"] == 2
    run = report["fetch_wait_5ms"]
    assert run["errors"] == {"floor_lost": 0}  # every order answered, no floor record lost
    figures = run["rate_20"]
    assert figures["orders"] == figures["floor_records"] == 2 * 20
    for name in ("orders", "floor"):
        assert 0 < figures[f"{name}_p50_ms"] <= figures[f"{name}_p99_ms"]
    assert figures["orders_vs_floor_p50"] > 0 and len(figures["pairs_p50_ms"]) == 2
    processes = {"engine", "marketdata", "gateway", "broker", "total"}
    assert set(run["idle_cpu_ms_per_s"]) == set(figures["cpu_us_per_order"]) == processes
    assert figures["cpu_us_per_order"]["total"] > 0
