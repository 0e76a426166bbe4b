"""`gx bench pipeline` runs the whole pipeline (stages in processes of their own, or on one loop).

No timing is asserted (benchmarks print figures); only that nothing is lost or duplicated.
"""

from __future__ import annotations

import json

import pytest

from exchange.cli.gx import main
from streams.settings import Settings

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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("placement", [[], ["--one-process"]], ids=["processes", "one-process"])
def test_pipeline_bench_streams_orders_end_to_end_without_loss_or_duplicates(
    capsys: pytest.CaptureFixture[str], placement: list[str]
) -> None:
    assert main(["bench", "pipeline", "--orders", "2000", "--json", *placement]) == 0
    report = json.loads(capsys.readouterr().out)
    assert KEYS <= report.keys()
    assert report["orders"] == 2000
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["settled_all"] is True
    assert report["fills"] > 0
    assert report["settled_fills"] == report["fills"]
    assert report["marketdata_missed_events"] == 0
    assert report["ledger_postings_sum"] == 0
    assert report["ledger_trades"] == report["fills"]
    # settlement yields cores to the latency path, as `gx settle` does (a stage on the
    # benchmark's own loop runs at its priority)
    settle_nice = 0 if placement else Settings().settle_nice
    assert report["stage_nice"] == {"engine": 0, "settlement": settle_nice, "marketdata": 0}
