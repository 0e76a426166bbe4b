"""`gx bench matching` runs end to end and prints its figures (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exchange.bench import matching as bench_matching
from exchange.cli.gx import main

REPLAY_KEYS = {
    "commands",
    "fills",
    "traded_lots",
    "kernel_commands_per_s",
    "batch_commands_per_s",
    "rss_mib",
    "compile_s",
    "peer",
    "peer_commands_per_s",
    "ratio_vs_peer",
    "ratio_kernel_vs_peer",
    "peer_fills",
    "fills_match",
}
RESTING_KEYS = {"instruments", "resting", "rss_mib", "rss_growth_mib"}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["bench", "matching", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_against_peer_fills_match(capsys: pytest.CaptureFixture[str]) -> None:
    report = _run(capsys, "--commands", "20000", "--peer", "lightmatchingengine")
    assert REPLAY_KEYS <= report.keys()
    assert report["commands"] == 20000
    assert report["fills_match"] is True
    assert report["peer_fills"] == report["fills"]
    for key in ("fills", "traded_lots", "kernel_commands_per_s", "batch_commands_per_s"):
        assert report[key] > 0, key
    for key in ("peer_commands_per_s", "ratio_vs_peer", "ratio_kernel_vs_peer", "rss_mib"):
        assert report[key] > 0, key


def test_resting_books_report_memory(capsys: pytest.CaptureFixture[str]) -> None:
    report = _run(capsys, "--instruments", "50", "--resting", "5000")
    assert RESTING_KEYS <= report.keys()
    assert report["instruments"] == 50
    assert report["resting"] == 5000
    assert report["rss_mib"] > 0


def test_written_workload_replays_with_same_fills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "workload.bin"
    generated = _run(capsys, "--commands", "3000", "--seed", "7", "--write-workload", str(path))
    assert path.stat().st_size == 3000 * 5 * 8
    assert np.array_equal(
        bench_matching.read_workload(path), bench_matching.generate_workload(3000, 7)
    )
    replayed = _run(capsys, "--workload", str(path))
    assert (replayed["fills"], replayed["traded_lots"]) == (
        generated["fills"],
        generated["traded_lots"],
    )


def test_workload_file_with_a_bad_side_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    np.array([[0, 1, 2, 2400, 1]], dtype="<i8").tofile(path)
    with pytest.raises(ValueError, match="side"):
        bench_matching.read_workload(path)
