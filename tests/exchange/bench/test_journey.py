"""`gx bench journey` runs the deposit and confirm rounds and the floor, and prints its figures.

No timing is asserted (benchmarks print figures); only that every round ran and every figure is
there.
"""

from __future__ import annotations

import json

import pytest

from exchange.cli.gx import main

LATENCIES = ("deposit_to_balance", "deposit_to_order_accepted", "confirm_to_access", "floor")


@pytest.mark.timeout(120)
def test_journey_bench_times_deposits_confirms_and_the_floor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "journey", "--rounds", "2", "--confirm-rounds", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rounds"], report["confirm_rounds"], report["floor_samples"]) == (2, 2, 4)
    for name in LATENCIES:
        p50, p99, top = (report[f"{name}_{q}_ms"] for q in ("p50", "p99", "max"))
        assert 0 < p50 <= p99 <= top, name
    # the order is placed after the balance push that ends the first figure
    assert report["deposit_to_order_accepted_p50_ms"] > report["deposit_to_balance_p50_ms"]
    for name in LATENCIES[:-1]:
        assert report[f"{name}_vs_floor_p50"] > 0
    assert report["provider_ws_reconnects"] >= 0 and report["buyer_ws_reconnects"] >= 0
