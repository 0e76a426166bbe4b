"""`gx bench pipeline` runs the whole pipeline in one process and prints its figures.

No timing is asserted (benchmarks print figures); only that nothing is lost or duplicated.
"""

from __future__ import annotations

import json

import pytest

from exchange.cli import main

KEYS = {
    "orders",
    "orders_per_s",
    "fills",
    "settled_fills_per_s",
    "p50_ms",
    "p99_ms",
    "raw_loop_msgs_per_s",
    "ratio_vs_raw",
    "lost",
    "duplicated",
}


@pytest.mark.timeout(60)
def test_pipeline_bench_streams_orders_end_to_end_without_loss_or_duplicates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "pipeline", "--orders", "2000", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert KEYS <= report.keys()
    assert report["orders"] == 2000
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["settled_all"] is True
    assert report["fills"] > 0
    assert report["settled_fills"] == report["fills"]
    assert report["marketdata_missed_events"] == 0
